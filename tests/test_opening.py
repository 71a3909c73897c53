"""Opening change requests: a held deployment gets exactly one, with the environment's policy of that moment,
and a newer candidate for the same target supersedes the older pending request."""

import threading
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from approvals.models import ChangeRequest, StagePolicy
from approvals.opening import open_change_request
from pipelines import promotion
from pipelines.models import AuditEvent, Deployment, FollowUp, Target
from tests.conftest import set_policy, set_stage, stage_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def releases(repository, origin, production, make_release):
    """v1.0.0 runs in production; v1.1.0 adds a commit by Erin, v1.2.0 one more by Dana."""
    running = make_release(repository, "v1.0.0", commit_sha=origin.head())
    Target.objects.filter(pk=Target.objects.for_pair(repository, production).pk).update(current_release=running)
    origin.write("app.py", "print('hello')\n")
    v110 = make_release(repository, "v1.1.0", commit_sha=origin.commit("Add the app", author_email="Erin@Example.com"))
    origin.write("app.py", "print('hello, world')\n")
    v120 = make_release(repository, "v1.2.0", commit_sha=origin.commit("Greet the world"))
    return running, v110, v120


def test_a_held_deployment_opens_a_request_with_the_environments_approvals_and_timeout(
    production, releases, alice, run_follow_ups
):
    set_policy(production, required_approvals=2, approval_timeout=timedelta(hours=4))
    opened_at = datetime(2025, 3, 3, 9, 0, tzinfo=dt_timezone.utc)

    with time_machine.travel(opened_at, tick=False):
        deployment = promotion.promote(releases[1], production, by=alice)
        run_follow_ups()  # the deployment.held follow-up opens the request

    change_request = ChangeRequest.objects.get(deployment=deployment)
    assert change_request.status == "pending"
    assert (change_request.repository, change_request.environment) == (deployment.repository, production)
    assert change_request.requested_by == alice
    assert change_request.required_approvals == 2
    assert change_request.opened_at == opened_at
    assert change_request.expires_at == opened_at + timedelta(hours=4)
    # Erin authored v1.1.0's commit, and Dana (the test repository's committer) committed it: both count.
    assert change_request.author_emails == ["dana@example.com", "erin@example.com"]
    assert [c["subject"] for c in change_request.summary["commits"]] == ["Add the app"]
    event = AuditEvent.objects.get(action="change_request.opened")
    assert (event.actor, event.object_id, event.environment) == (alice, str(change_request.pk), production)
    assert event.details["release"] == "v1.1.0" and event.details["required_approvals"] == 2


def test_the_request_keeps_the_approvals_required_when_it_opened(production, releases, alice):
    change_request = open_change_request(promotion.promote(releases[1], production, by=alice))
    set_policy(production, required_approvals=3)
    change_request.refresh_from_db()
    assert change_request.required_approvals == 1


def test_an_automatic_promotion_opens_a_request_without_requester_or_expiry(repository, production, releases):
    deployment = promotion.promote(releases[1], production, by=None, trigger=Deployment.Trigger.AUTO)
    change_request = open_change_request(deployment)
    assert change_request.requested_by is None
    assert change_request.expires_at is None
    assert AuditEvent.objects.get(action="change_request.opened").actor_name == "system"


def test_opening_twice_gives_the_one_request_and_one_audit_event(production, releases, alice):
    deployment = promotion.promote(releases[1], production, by=alice)
    first = open_change_request(deployment)
    second = open_change_request(deployment)
    assert first.pk == second.pk
    assert ChangeRequest.objects.count() == 1
    assert AuditEvent.objects.filter(action="change_request.opened").count() == 1


def test_it_opens_nothing_for_a_deployment_that_no_longer_waits_for_approval(production, releases, alice):
    deployment = promotion.promote(releases[1], production, by=alice)
    deployment.cancel(by=alice, reason="Wrong release")
    assert open_change_request(deployment) is None
    assert not ChangeRequest.objects.exists()


def test_a_newer_candidate_supersedes_the_older_pending_request(
    production, releases, alice, bob, run_follow_ups
):
    older = promotion.promote(releases[1], production, by=alice)
    run_follow_ups()
    older_request = ChangeRequest.objects.get(deployment=older)

    newer = promotion.promote(releases[2], production, by=bob)
    run_follow_ups()

    older_request.refresh_from_db()
    assert older_request.status == "superseded"
    assert older_request.status_reason == f"Superseded by v1.2.0 (deployment #{newer.pk})."
    assert older_request.decided_at is not None
    assert ChangeRequest.objects.get(deployment=newer).status == "pending"
    event = AuditEvent.objects.get(action="change_request.superseded")
    assert event.object_id == str(older_request.pk)
    assert event.details["reason"] == older_request.status_reason


def test_a_request_for_another_target_is_not_superseded(
    repository, staging, production, releases, alice, run_follow_ups
):
    set_stage(staging, requires_approval=True)
    StagePolicy.objects.create(stage=stage_of(staging), approver_group=stage_of(production).approval_policy.approver_group)
    promotion.promote(releases[1], staging, by=alice)
    promotion.promote(releases[2], production, by=alice)
    run_follow_ups()
    assert sorted(ChangeRequest.objects.values_list("environment__name", "status")) == [
        ("production", "pending"), ("staging", "pending")
    ]


def test_a_failure_while_opening_is_retried_later_and_never_raised_into_pipelines(
    production, releases, alice, settings, run_follow_ups
):
    settings.GITOPS_FOLLOW_UP_HANDLERS = {**settings.GITOPS_FOLLOW_UP_HANDLERS, "deployment.held": f"{__name__}.git_is_away"}
    deployment = promotion.promote(releases[1], production, by=alice)  # does not raise
    run_follow_ups()
    (follow_up,) = FollowUp.objects.filter(kind="deployment.held", deployment=deployment)
    assert follow_up.done_at is None and follow_up.attempts == 1
    assert follow_up.last_error == "the git host did not answer"
    assert follow_up.due_at > timezone.now(), "it backs off before the next attempt"
    assert not ChangeRequest.objects.exists()


def git_is_away(follow_up):
    raise RuntimeError("the git host did not answer")


@pytest.mark.django_db(transaction=True)
def test_concurrent_openers_open_exactly_one_request(production, releases, alice):
    if connection.vendor != "postgresql":
        pytest.skip("needs a database where threads really run concurrently")
    # Held, its follow-up not carried out yet: the threads below race to open the request.
    deployment = promotion.promote(releases[1], production, by=alice)
    assert not ChangeRequest.objects.exists()
    openers = 8
    barrier = threading.Barrier(openers)
    opened, errors = [], []

    def open_it():
        try:
            barrier.wait(timeout=30)
            opened.append(open_change_request(deployment).pk)
        except Exception as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=open_it) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(opened) == openers and len(set(opened)) == 1
    assert ChangeRequest.objects.count() == 1
    assert AuditEvent.objects.filter(action="change_request.opened").count() == 1


def test_a_request_for_a_backport_over_a_newer_release_records_that_it_rolls_back(
    repository, origin, production, make_release, alice
):
    from tests.test_change_summary import backport_over_newer, now_running

    newer, older, _, _, _ = backport_over_newer(origin, repository, make_release)
    now_running(repository, production, newer)

    change_request = open_change_request(promotion.promote(older, production, by=alice))

    assert change_request.summary["direction"] == "diverged"
    event = AuditEvent.objects.get(action="change_request.opened")
    assert (event.details["from"], event.details["is_rollback"], event.details["direction"]) == ("v8.6.1", True, "diverged")
    assert (event.details["commit_count"], event.details["added_count"]) == (10, 1)
