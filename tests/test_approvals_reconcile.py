"""The approvals part of the reconciler: nothing held is left without a request, overdue requests expire,
and requests whose deployment moved on are closed."""

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine
from django.utils import timezone

from approvals import reconcile as approvals_reconcile
from approvals.models import ChangeRequest
from approvals.opening import open_change_request
from pipelines import promotion, reconciler
from pipelines.models import AuditEvent, Deployment, FollowUp, Target
from tests.conftest import set_policy

pytestmark = pytest.mark.django_db

START = datetime(2025, 3, 3, 9, 0, tzinfo=dt_timezone.utc)


def lose_follow_ups():
    """As if the held deployments' follow-ups had been carried out wrongly or dropped: the backstop must act."""
    FollowUp.objects.filter(kind="deployment.held").update(done_at=timezone.now())


@pytest.fixture
def releases(repository, origin, production, make_release):
    running = make_release(repository, "v1.0.0", commit_sha=origin.head())
    Target.objects.filter(pk=Target.objects.for_pair(repository, production).pk).update(current_release=running)
    v110 = make_release(repository, "v1.1.0", commit_sha=origin.commit("Add the app"))
    v120 = make_release(repository, "v1.2.0", commit_sha=origin.commit("Greet the world"))
    return running, v110, v120


def test_it_opens_a_request_for_a_held_deployment_whose_follow_up_was_lost(production, releases, alice):
    deployment = promotion.promote(releases[1], production, by=alice)
    lose_follow_ups()
    assert not ChangeRequest.objects.exists()

    report = reconciler.reconcile()  # the scheduler's tick, which runs the approvals hook

    assert report["approvals.reconcile.reconcile"] == {"opened": 1, "superseded": 0, "withdrawn": 0, "expired": 0, "summaries_retried": 0,
                                                         "freeze_ends": 0}
    change_request = ChangeRequest.objects.get(deployment=deployment)
    assert change_request.status == "pending" and change_request.requested_by == alice
    assert [c["subject"] for c in change_request.summary["commits"]] == ["Add the app"]
    assert approvals_reconcile.reconcile(timezone.now())["opened"] == 0, "one request per deployment"


def test_it_expires_a_request_after_the_environments_timeout_and_cancels_its_deployment(production, releases, alice):
    set_policy(production, approval_timeout=timedelta(hours=1))
    with time_machine.travel(START, tick=False) as traveller:
        deployment = promotion.promote(releases[1], production, by=alice)
        change_request = open_change_request(deployment)

        traveller.shift(timedelta(minutes=59))
        assert approvals_reconcile.reconcile(timezone.now())["expired"] == 0
        change_request.refresh_from_db()
        assert change_request.status == "pending"

        traveller.shift(timedelta(minutes=1))
        assert approvals_reconcile.reconcile(timezone.now())["expired"] == 1

    change_request.refresh_from_db()
    deployment.refresh_from_db()
    assert change_request.status == "expired"
    assert change_request.decided_at == START + timedelta(hours=1)
    assert deployment.status == "cancelled" and deployment.error == "The approval request expired."
    assert AuditEvent.objects.filter(action="change_request.expired", object_id=str(change_request.pk)).exists()


def test_a_request_without_timeout_never_expires(production, releases, alice):
    change_request = open_change_request(promotion.promote(releases[1], production, by=alice))
    assert approvals_reconcile.reconcile(timezone.now() + timedelta(days=365))["expired"] == 0
    change_request.refresh_from_db()
    assert change_request.status == "pending"


def test_it_supersedes_a_pending_request_whose_deployment_a_newer_candidate_replaced(
    production, releases, alice
):
    older = promotion.promote(releases[1], production, by=alice)
    older_request = open_change_request(older)
    newer = promotion.promote(releases[2], production, by=alice)  # cancels the older one
    lose_follow_ups()

    report = approvals_reconcile.reconcile(timezone.now())

    assert report == {"superseded": 1, "withdrawn": 0, "opened": 1, "expired": 0, "summaries_retried": 0,
                      "freeze_ends": 0}
    older_request.refresh_from_db()
    assert older_request.status == "superseded"
    assert older_request.status_reason == f"Superseded by v1.2.0 (deployment #{newer.pk})."
    assert ChangeRequest.objects.get(deployment=newer).status == "pending"


def test_it_withdraws_a_pending_request_whose_deployment_was_cancelled_for_another_reason(production, releases, alice):
    deployment = promotion.promote(releases[1], production, by=alice)
    change_request = open_change_request(deployment)
    deployment.cancel(by=alice, reason="Wrong release")

    assert approvals_reconcile.reconcile(timezone.now())["withdrawn"] == 1

    change_request.refresh_from_db()
    assert change_request.status == "withdrawn"
    assert change_request.status_reason == "The deployment is cancelled: Wrong release"
    assert AuditEvent.objects.filter(action="change_request.withdrawn", object_id=str(change_request.pk)).exists()


def test_a_tick_with_nothing_to_do_makes_five_queries_however_many_requests_are_pending(
    repository, production, make_release, origin, alice, django_assert_num_queries
):
    for number in range(5):
        release = make_release(repository, f"v1.{number}.0", commit_sha=origin.commit(f"Change {number}"))
        deployment = Deployment.objects.create(
            release=release, environment=production, repository=repository,
            status=Deployment.Status.AWAITING_APPROVAL, trigger=Deployment.Trigger.MANUAL, triggered_by=alice,
        )
        open_change_request(deployment)
    with django_assert_num_queries(5):  # orphans, held without a request, overdue, unread changes, ended freezes
        report = approvals_reconcile.reconcile(timezone.now())
    assert report == {"superseded": 0, "withdrawn": 0, "opened": 0, "expired": 0, "summaries_retried": 0,
                      "freeze_ends": 0}
