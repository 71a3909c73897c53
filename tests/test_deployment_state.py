"""The deployment state machine: allowed moves only, compare-and-swap, one running per target, audited."""

import pytest
from django.db import IntegrityError

from pipelines.models import AuditEvent, Deployment, InvalidTransition, StaleStatus, TargetBusy

pytestmark = pytest.mark.django_db


def make_deployment(release, environment, status=Deployment.Status.QUEUED):
    return Deployment.objects.create(
        release=release, environment=environment, repository=release.repository, status=status,
        trigger=Deployment.Trigger.AUTO,
    )


def test_it_moves_queued_to_running_and_stamps_the_start(repository, staging, make_release):
    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    deployment.refresh_from_db()
    assert deployment.status == "running"
    assert deployment.started_at is not None and deployment.heartbeat_at is not None
    assert deployment.worker_name == "w1"


def test_it_refuses_a_transition_the_state_machine_forbids(repository, staging, make_release):
    deployment = make_deployment(make_release(repository, "v1"), staging, status=Deployment.Status.SUCCEEDED)
    with pytest.raises(InvalidTransition, match="succeeded and cannot become running"):
        deployment.claim(worker_name="w1")
    deployment.refresh_from_db()
    assert deployment.status == "succeeded"


def test_a_stale_copy_cannot_change_a_deployment_another_process_changed(repository, staging, make_release):
    deployment = make_deployment(make_release(repository, "v1"), staging)
    stale_copy = Deployment.objects.get(pk=deployment.pk)
    deployment.claim(worker_name="first")
    with pytest.raises(StaleStatus, match="already running"):
        stale_copy.claim(worker_name="second")
    deployment.refresh_from_db()
    assert deployment.worker_name == "first"
    assert AuditEvent.objects.filter(action="deployment.running").count() == 1


def test_only_one_deployment_runs_per_target(repository, staging, make_release):
    first = make_deployment(make_release(repository, "v1"), staging)
    second = make_deployment(make_release(repository, "v2"), staging)
    first.claim(worker_name="w1")
    with pytest.raises(TargetBusy):
        second.claim(worker_name="w2")
    second.refresh_from_db()
    assert second.status == "queued"


def test_the_database_refuses_two_running_deployments_of_one_target(repository, staging, make_release):
    make_deployment(make_release(repository, "v1"), staging, status=Deployment.Status.RUNNING)
    with pytest.raises(IntegrityError):
        make_deployment(make_release(repository, "v2"), staging, status=Deployment.Status.RUNNING)


def test_every_status_change_writes_an_audit_event(repository, staging, make_release, alice):
    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    deployment.fail("Step 'deploy' exited with status 1.", exit_code=1)
    events = list(AuditEvent.objects.filter(object_id=str(deployment.pk)).order_by("seq"))
    assert [e.action for e in events] == ["deployment.running", "deployment.failed"]
    assert events[1].details["from"] == "running"
    assert events[1].details["error"] == "Step 'deploy' exited with status 1."


def test_succeeding_records_what_now_runs_on_the_target(repository, staging, make_release):
    from pipelines.models import Target

    release = make_release(repository, "v1")
    target = Target.objects.for_pair(repository, staging)
    deployment = make_deployment(release, staging)
    deployment.claim(worker_name="w1")
    deployment.succeed()
    target.refresh_from_db()
    assert target.current_release == release


def test_cancelling_a_running_deployment_asks_the_runner_to_stop(repository, staging, make_release, alice):
    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    deployment.cancel(by=alice, reason="wrong version")
    assert deployment.status == "running"
    assert deployment.cancel_requested_at is not None
    assert deployment.beat() is True


def test_a_second_cancel_of_a_running_deployment_changes_nothing(repository, staging, make_release, alice, bob):
    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    deployment.cancel(by=alice, reason="wrong version")
    with pytest.raises(StaleStatus, match="cancel was already requested"):
        Deployment.objects.get(pk=deployment.pk).cancel(by=bob, reason="me too")
    assert AuditEvent.objects.filter(action="deployment.cancel_requested").count() == 1


def test_a_second_reject_changes_nothing(repository, production, make_release, alice, bob):
    deployment = make_deployment(make_release(repository, "v1"), production, status=Deployment.Status.AWAITING_APPROVAL)
    deployment.reject(by=alice, reason="not today")
    with pytest.raises(InvalidTransition):
        Deployment.objects.get(pk=deployment.pk).reject(by=bob, reason="me too")
    deployment.refresh_from_db()
    assert deployment.error == "not today"
    assert AuditEvent.objects.filter(action="deployment.rejected").count() == 1


def test_the_log_is_read_back_from_an_offset(repository, staging, make_release):
    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.append_log("one\n")
    deployment.append_log("two\n")
    text, last = deployment.log_since(0)
    assert (text, last) == ("one\ntwo\n", 2)
    assert deployment.log_since(1) == ("two\n", 2)
    assert deployment.log_since(2) == ("", 2)


# --- the target's lease (fenced runs) ------------------------------------------------------------------


def test_claiming_takes_the_lease_of_the_target_and_records_where_it_runs(repository, staging, make_release):
    import os
    import socket

    from pipelines.models import Target
    from pipelines.models.run import this_host

    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    target = Target.objects.get(repository=repository, environment=staging)
    deployment.refresh_from_db()
    assert target.lease_holder_id == deployment.pk
    assert target.lease_expires_at > deployment.heartbeat_at
    assert (deployment.runner_host, deployment.runner_pid) == (this_host(), os.getpid())
    assert deployment.runner_host.startswith(socket.gethostname())


def test_a_claim_is_refused_while_another_runs_lease_is_live_and_allowed_once_it_expired(repository, staging, make_release):
    """A holder that is no longer `running` here but whose runner may still run elsewhere: only the
    expiry of its lease (after which its runner has stopped its step itself) lets the next one start."""
    from datetime import timedelta

    from django.utils import timezone

    from pipelines.models import Target

    holder = make_deployment(make_release(repository, "v1"), staging, status=Deployment.Status.FAILED)
    target = Target.objects.for_pair(repository, staging)
    Target.objects.filter(pk=target.pk).update(lease_holder=holder, lease_expires_at=timezone.now() + timedelta(seconds=30))
    waiting = make_deployment(make_release(repository, "v2"), staging)

    with pytest.raises(TargetBusy, match=f"Deployment #{holder.pk} .* holds the target"):
        waiting.claim(worker_name="w2")
    assert Deployment.objects.get(pk=waiting.pk).status == "queued"
    assert not AuditEvent.objects.filter(action="deployment.running").exists()

    Target.objects.filter(pk=target.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    waiting.claim(worker_name="w2")
    assert Target.objects.get(pk=target.pk).lease_holder_id == waiting.pk


def test_a_beat_renews_the_lease(repository, staging, make_release):
    from datetime import timedelta

    from django.utils import timezone

    from pipelines.models import Target

    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    Target.objects.filter(repository=repository).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert deployment.beat() is False
    assert Target.objects.get(repository=repository).lease_expires_at > timezone.now()


@pytest.mark.parametrize("finish", ["succeed", "fail", "cancel"])
def test_finishing_a_run_releases_the_lease(repository, staging, make_release, finish):
    from pipelines.models import Target

    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    if finish == "succeed":
        deployment.succeed()
    elif finish == "fail":
        deployment.fail("Step 'deploy' exited with status 1.", exit_code=1)
    else:
        deployment.transition(Deployment.Status.CANCELLED, error="Cancelled during step 'deploy'.")
    target = Target.objects.get(repository=repository, environment=staging)
    assert (target.lease_holder_id, target.lease_expires_at) == (None, None)


def test_success_records_the_automatic_promotion_as_a_follow_up(repository, staging, make_release):
    from pipelines.models import FollowUp

    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.claim(worker_name="w1")
    deployment.succeed()
    assert list(FollowUp.objects.filter(deployment=deployment).values_list("kind", flat=True)) == ["promote.after_success"]


def test_a_log_piece_sent_twice_is_stored_once(repository, staging, make_release):
    deployment = make_deployment(make_release(repository, "v1"), staging)
    deployment.append_log("one\n", seq=1)
    deployment.append_log("one\n", seq=1)  # the answer to the first was lost; the writer sends it again
    deployment.append_log("two\n", seq=2)
    assert deployment.log_since(0) == ("one\ntwo\n", 2)
