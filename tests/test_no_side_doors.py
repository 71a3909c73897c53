"""Change control with no side doors: the approved, newest, unblocked release is what runs.

Each test drives the real models, the real approval gate and a real rq worker whose steps append the version they
deployed to a file, so "what ran, in which order" is read from what the steps did."""

from datetime import timedelta

import pytest
from django.core import mail

from approvals.models import ChangeRequest, DecisionRefused, FreezeWindow
from pipelines import promotion, reconciler
from pipelines.models import AuditEvent, Deployment, FollowUp, Preview, Target
from pipelines.models.followup import PROMOTE_REEVALUATE
from tests.conftest import ci_reporter, set_stage
from tests.test_freeze import DURING, FREEZE_ENDS, FREEZE_STARTS, PIPELINE, ran  # noqa: F401 (ran: a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def release_of(origin, repository, make_release, ran):
    def make(version):
        pipeline = PIPELINE.format(ran=ran)
        origin.write(".gitops.yml", pipeline)
        origin.write("VERSION", version)
        return make_release(repository, version, commit_sha=origin.commit(version), pipeline=pipeline)

    return make


def ran_in(ran, environment):
    path = ran / environment
    return path.read_text().split() if path.exists() else []


def held(release, environment, *, by):
    """A deployment held for approval, with its change request opened as approvals opens it."""
    from approvals.opening import open_change_request

    deployment = promotion.promote(release, environment, by=by)
    return deployment, open_change_request(deployment)


def test_two_releases_approved_during_a_freeze_end_with_the_newer_in_production(
        release_of, production, alice, bob, ran, run_workers, run_follow_ups, time_machine):
    window = FreezeWindow.objects.create(name="Year-end", reason="Close.", starts_at=FREEZE_STARTS, ends_at=FREEZE_ENDS)
    window.environments.set([production])
    time_machine.move_to(DURING)
    older, newer = release_of("v1.0.0"), release_of("v1.1.0")

    first, first_request = held(older, production, by=alice)
    first_request.approve(bob, "ok")  # approved, then waits for the freeze
    second, second_request = held(newer, production, by=alice)
    second_request.approve(bob, "ok")
    run_workers()

    first.refresh_from_db()
    assert first.status == "cancelled" and first.superseded_by_id == second.pk, "the older approval still waits"
    assert first.error == f"Superseded by v1.1.0 (deployment #{second.pk})."
    assert AuditEvent.objects.filter(action="deployment.cancelled", details__superseded_by=second.pk).exists()
    run_follow_ups()
    assert any("Will not run" in message.subject and "v1.0.0" in message.subject for message in mail.outbox), \
        "the requester of the superseded deployment was not told"

    time_machine.move_to(FREEZE_ENDS + timedelta(minutes=1))
    reconciler.reconcile()
    run_workers()
    assert ran_in(ran, "production") == ["v1.1.0"]
    assert Target.objects.get(environment=production).current_release == newer


def test_a_release_blocked_while_its_change_request_is_pending_is_never_approved_into_production(
        release_of, production, alice, bob, django_user_model, approvers, ran, run_workers, run_follow_ups):
    release = release_of("v2.0.0")
    deployment, change_request = held(release, production, by=alice)

    release.block(by=alice, reason="Corrupts the ledger.")

    deployment.refresh_from_db()
    assert deployment.status == "cancelled"
    assert "v2.0.0 was blocked by alice: Corrupts the ledger." in deployment.error
    with pytest.raises(DecisionRefused):
        change_request.approve(bob, "ok")
    run_follow_ups()
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.WITHDRAWN
    assert "Corrupts the ledger." in change_request.status_reason
    run_workers()
    assert ran_in(ran, "production") == []
    assert AuditEvent.objects.filter(action="release.blocked", details__cancelled=[deployment.pk]).exists()

    release.unblock(by=alice)
    deployment.refresh_from_db()
    assert deployment.status == "cancelled", "unblocking reopened what the block closed"
    assert not ChangeRequest.objects.pending().exists()


def test_blocking_cancels_an_approved_deployment_waiting_for_a_freeze(
        release_of, production, alice, bob, ran, run_workers, time_machine):
    window = FreezeWindow.objects.create(name="Year-end", reason="Close.", starts_at=FREEZE_STARTS, ends_at=FREEZE_ENDS)
    window.environments.set([production])
    time_machine.move_to(DURING)
    release = release_of("v3.0.0")
    deployment, change_request = held(release, production, by=alice)
    change_request.approve(bob, "ok")

    release.block(by=alice, reason="Bad build.")

    time_machine.move_to(FREEZE_ENDS + timedelta(minutes=1))
    reconciler.reconcile()
    run_workers()
    deployment.refresh_from_db()
    assert deployment.status == "cancelled"
    assert ran_in(ran, "production") == []


def test_the_runner_refuses_to_start_a_release_blocked_after_it_was_queued(release_of, staging, ran, run_workers):
    release = release_of("v4.0.0")
    deployment = promotion.promote(release, staging, by=None)
    # Blocked behind the block's back (as a race with a claim would leave it): only the runner's check is left.
    type(release).objects.filter(pk=release.pk).update(blocked=True, blocked_reason="Found a bug.")

    run_workers()

    deployment.refresh_from_db()
    assert deployment.status == "cancelled"
    assert deployment.error == "Not run: v4.0.0 is blocked (Found a bug.)."
    assert ran_in(ran, "staging") == []


@pytest.fixture
def held_with_a_preview(origin, repository, make_release, production, alice, run_workers):
    """(an older release, a newer one's deployment held in production whose preview succeeded, that preview)."""
    pipeline = ("environments:\n  production:\n    preview:\n      - run: echo plan\n"
                "    steps:\n      - run: echo applied-half; exit 3\n")
    origin.write(".gitops.yml", pipeline)
    first = make_release(repository, "v1.0.0", commit_sha=origin.commit("one"), pipeline=pipeline)
    origin.write("x", "2")
    second = make_release(repository, "v1.1.0", commit_sha=origin.commit("two"), pipeline=pipeline)
    waiting = promotion.promote(second, production, by=alice)
    run_workers()
    preview = Preview.objects.latest_for(waiting)
    assert preview.status == "succeeded" and preview.stale_reason() == ""
    return first, waiting, preview


def another_run_on(target_of, release):
    """A deployment of the same target claimed outside promotion (as another portal or an admin would)."""
    other = Deployment.objects.create(release=release, environment=target_of.environment,
                                      repository=target_of.repository, status="queued", trigger="manual")
    return other.claim(worker_name="test")


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_a_held_preview_goes_stale_when_a_run_on_its_target_fails_or_is_cancelled_after_a_step(
        held_with_a_preview, outcome):
    first, waiting, preview = held_with_a_preview
    other = another_run_on(waiting, first)
    other.record_step(4242)
    assert "is running a step on production" in Preview.objects.latest_for(waiting).stale_reason()
    if outcome == "failed":
        other.fail("Step 1 exited with status 3.", exit_code=3)
    else:
        other.transition(Deployment.Status.CANCELLED, error="Cancelled by alice.")

    stale = Preview.objects.get(pk=preview.pk).stale_reason()
    assert f"v1.0.0 (deployment #{other.pk}) ran a step and {outcome} on production after it started" in stale
    latest = Preview.objects.latest_for(waiting)
    assert latest.number == 2 and latest.status == "queued", "the held deployment's preview was not run again"


def test_a_run_that_stopped_before_its_first_step_leaves_the_preview_current(held_with_a_preview):
    first, waiting, _ = held_with_a_preview
    another_run_on(waiting, first).fail("The checkout failed.")
    assert Preview.objects.latest_for(waiting).stale_reason() == ""


def test_resuming_auto_deploy_promotes_the_release_that_arrived_while_paused(
        release_of, repository, staging, alice, ran, run_workers, run_follow_ups):
    target = Target.objects.for_pair(repository, staging)
    target.pause(by=alice, reason="Investigating.")
    release = release_of("v5.0.0")
    assert promotion.on_release_recorded(release) is None
    run_workers()
    assert ran_in(ran, "staging") == []

    target.resume(by=alice)
    assert FollowUp.objects.filter(kind=PROMOTE_REEVALUATE, done_at=None).count() == 1
    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == ["v5.0.0"]

    run_follow_ups()  # once: carrying the follow-ups out again promotes nothing more
    run_workers()
    assert Deployment.objects.filter(release=release, environment=staging).count() == 1


def test_unblocking_the_newest_release_promotes_it_but_never_goes_back_to_an_older_one(
        release_of, repository, staging, alice, ran, run_workers, run_follow_ups):
    older = release_of("v6.0.0")
    promotion.on_release_recorded(older)
    run_workers()
    newer = release_of("v6.1.0")
    newer.block(by=alice, reason="Wait for the fix.")
    assert promotion.on_release_recorded(newer) is None

    newer.unblock(by=alice)
    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == ["v6.0.0", "v6.1.0"]

    # Nothing older is promoted by re-evaluation, even once the newer one is blocked again.
    newer.block(by=alice, reason="Regression.")
    Target.objects.get(repository=repository, environment=staging).resume(by=alice)
    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == ["v6.0.0", "v6.1.0"]


def test_reevaluation_moves_a_release_on_only_after_it_succeeded_in_the_stage_before(
        release_of, repository, staging, production, alice, ran, run_workers, run_follow_ups):
    set_stage(production, auto_deploy=True, requires_approval=False)
    Target.objects.for_pair(repository, staging).pause(by=alice, reason="Hold.")
    release_of("v7.0.0")

    assert promotion.reevaluate(repository) == [], "promoted past a stage it never succeeded in"

    Target.objects.get(repository=repository, environment=staging).resume(by=alice)
    run_follow_ups()
    run_workers()
    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == ["v7.0.0"]
    assert ran_in(ran, "production") == ["v7.0.0"]


def test_a_passing_external_check_promotes_what_the_stage_held_back_for_it(
        release_of, repository, staging, alice, django_user_model, ran, run_workers, run_follow_ups):
    from pipelines.models import ExternalCheck

    set_stage(staging, requires_passing_checks=True)
    release = release_of("v8.0.0")
    assert promotion.on_release_recorded(release) is None  # refused: no check has passed yet
    ci = ci_reporter(django_user_model)

    ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="ci/tests", state="failure", by=ci)
    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == []

    ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="ci/tests", state="success", by=ci)
    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == ["v8.0.0"], "CI had to call promote itself"


def test_editing_a_lifecycle_promotes_what_a_stage_now_takes(
        release_of, repository, staging, production, alice, client, ran, run_workers, run_follow_ups):
    from django.urls import reverse

    from pipelines.models import Lifecycle

    set_stage(staging, auto_deploy=False)
    promotion.on_release_recorded(release_of("v9.0.0"))
    run_workers()
    assert ran_in(ran, "staging") == []
    lifecycle = Lifecycle.objects.get(name="default")
    first, second = lifecycle.stages.order_by("position")
    client.force_login(alice)
    response = client.post(reverse("admin:pipelines_lifecycle_change", args=[lifecycle.pk]), {
        "name": "default", "description": "", "_save": "Save",
        "stages-TOTAL_FORMS": 2, "stages-INITIAL_FORMS": 2, "stages-MIN_NUM_FORMS": 0, "stages-MAX_NUM_FORMS": 1000,
        "stages-0-id": first.pk, "stages-0-lifecycle": lifecycle.pk, "stages-0-position": 10,
        "stages-0-environment": staging.pk, "stages-0-auto_deploy": "on", "stages-0-take_prereleases": "on",
        "stages-1-id": second.pk, "stages-1-lifecycle": lifecycle.pk, "stages-1-position": 20,
        "stages-1-environment": production.pk, "stages-1-requires_approval": "on", "stages-1-take_prereleases": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]

    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == ["v9.0.0"]


def test_a_deployment_whose_required_checks_failed_after_it_was_let_through_does_not_start(
        release_of, repository, staging, django_user_model, ran, run_workers):
    from pipelines.models import ExternalCheck

    set_stage(staging, requires_passing_checks=True)
    ci = ci_reporter(django_user_model)
    release = release_of("v10.0.0")
    ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="ci/tests", state="success", by=ci)
    deployment = promotion.promote(release, staging, by=None)

    ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="ci/tests", state="failure", by=ci)
    run_workers()

    deployment.refresh_from_db()
    assert deployment.status == "cancelled"
    assert deployment.error.startswith("Not run: staging requires passing checks and the external checks of its commit")
    assert ran_in(ran, "staging") == []


def test_a_freeze_that_ends_makes_promotion_decide_again_once(
        release_of, repository, staging, ran, run_workers, run_follow_ups, time_machine):
    window = FreezeWindow.objects.create(name="Year-end", reason="Close.", starts_at=FREEZE_STARTS, ends_at=FREEZE_ENDS)
    window.environments.set([staging])
    time_machine.move_to(DURING)
    set_stage(staging, auto_deploy=False)
    promotion.on_release_recorded(release_of("v11.0.0"))  # not taken: the stage did not deploy automatically then
    set_stage(staging, auto_deploy=True)  # changed behind the admin's back: nothing decided again yet
    Target.objects.for_pair(repository, staging)
    assert reconciler.reconcile()["approvals.reconcile.reconcile"]["freeze_ends"] == 0, "not over yet"

    time_machine.move_to(FREEZE_ENDS + timedelta(minutes=1))
    assert reconciler.reconcile()["approvals.reconcile.reconcile"]["freeze_ends"] == 1
    assert reconciler.reconcile()["approvals.reconcile.reconcile"]["freeze_ends"] == 0, "once per end"
    run_follow_ups()
    run_workers()
    assert ran_in(ran, "staging") == ["v11.0.0"]
