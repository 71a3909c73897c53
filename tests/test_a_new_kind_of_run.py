"""A new kind of run is one model, one kind and one migration: the probe kind (tests/probe_kind), which nothing
in the portal knows of, is claimed, logged, fenced, cancelled and reconciled by the run kernel alone, with the
real PortalWorker (in this process, and as a `manage.py rqworker` process)."""

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import django_rq
import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rq.command import send_stop_job_command

from pipelines import reconciler
from pipelines.models import AuditEvent, DeploymentStateError
from pipelines.runs import kernel, registry
from tests.conftest import child_env, kill_tree, wait_for
from tests.probe_kind.models import Probe

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent


def queue_probe(script):
    with transaction.atomic():
        probe = Probe.objects.create(status="queued", script=script)
        probe.wake()
    return probe


def actions(probe):
    return list(AuditEvent.objects.filter(object_type="probe_kind.probe", object_id=str(probe.pk))
                .order_by("id").values_list("action", flat=True))


@pytest.fixture
def worker_process(tmp_path):
    """A real `manage.py rqworker deploy` (PortalWorker) on the test settings, where the probe kind is registered."""
    process = subprocess.Popen([sys.executable, "manage.py", "rqworker", "deploy"], cwd=BASE_DIR,
                               env=child_env(tmp_path / "data"), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield process
    kill_tree(process.pid)
    process.wait()


def test_the_probe_kind_is_in_the_registry_beside_the_four_kinds_of_the_portal():
    assert {kind.name for kind in registry.kinds()} >= {"deployment", "build", "preview", "check", "probe"}
    assert registry.for_job_id("probe-12") == (registry.get("probe"), 12)


def test_the_real_worker_runs_a_probe_through_the_kernel_and_audits_each_change(run_workers):
    probe = queue_probe('echo "hello from probe $PROBE_ID"')
    assert probe.job_id == f"probe-{probe.pk}"

    run_workers()

    probe.refresh_from_db()
    assert probe.status == "succeeded", probe.error
    assert f"hello from probe {probe.pk}" in probe.log_since(0)[0]
    assert actions(probe) == ["probe.running", "probe.succeeded"]


def test_a_second_wake_up_of_a_probe_runs_nothing(tmp_path):
    counter = tmp_path / "runs"
    probe = queue_probe(f"echo run >> {counter}")
    kernel.run("probe", probe.pk)
    kernel.run("probe", probe.pk)
    assert counter.read_text() == "run\n"
    with pytest.raises(DeploymentStateError, match="is succeeded and cannot become running"):
        Probe.objects.get(pk=probe.pk).claim(worker_name="a second worker")


def _started(probe, flag):
    wait_for(lambda: flag.exists(), "the probe's step to start in the worker")
    return Probe.objects.get(pk=probe.pk)


def test_the_portals_cancel_stops_a_running_probe_within_two_seconds_and_is_audited(tmp_path, worker_process, alice):
    flag = tmp_path / "started"
    probe = _started(queue_probe(f"echo started > {flag}; exec sleep 300"), flag)

    asked = time.monotonic()
    probe.cancel(by=alice, reason="no longer needed")
    wait_for(lambda: Probe.objects.get(pk=probe.pk).status == "cancelled", "the probe to be cancelled", timeout=2.0)
    print(f"cancelled {time.monotonic() - asked:.2f} s after the request")

    probe.refresh_from_db()
    assert probe.error == "Cancelled during step 'probe'."
    assert actions(probe) == ["probe.running", "probe.cancel_requested", "probe.cancelled"]
    requested = AuditEvent.objects.get(object_id=str(probe.pk), action="probe.cancel_requested")
    assert requested.actor == alice and requested.details["reason"] == "no longer needed"


def test_rqs_stop_job_command_cancels_a_running_probe_and_says_so(tmp_path, worker_process):
    flag = tmp_path / "started"
    probe = _started(queue_probe(f"echo started > {flag}; exec sleep 300"), flag)

    send_stop_job_command(django_rq.get_connection("deploy"), probe.job_id)
    wait_for(lambda: Probe.objects.get(pk=probe.pk).status == "cancelled", "the probe to be cancelled", timeout=2.0)

    requested = AuditEvent.objects.get(object_id=str(probe.pk), action="probe.cancel_requested")
    assert requested.details["reason"] == "Stopped by rq's stop-job command."
    assert worker_process.poll() is None, "the worker goes on: only the run stopped"


def test_a_queued_probe_is_cancelled_at_once_and_never_runs(tmp_path, run_workers, alice):
    flag = tmp_path / "ran"
    probe = queue_probe(f"touch {flag}")
    Probe.objects.get(pk=probe.pk).cancel(by=alice, reason="changed my mind")
    run_workers()
    assert Probe.objects.get(pk=probe.pk).status == "cancelled" and not flag.exists()


def test_the_reconciler_fails_a_probe_whose_worker_was_killed_and_requeues_one_whose_job_was_lost(
        tmp_path, worker_process, run_workers):
    flag = tmp_path / "started"
    running = _started(queue_probe(f"echo started > {flag}; exec sleep 300"), flag)
    worker_process.send_signal(signal.SIGKILL)
    worker_process.wait()

    later = timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)
    assert reconciler.reconcile(now=later)["probes_lost"] == 1
    running.refresh_from_db()
    assert running.status == "failed" and running.error.startswith("Worker lost: ")

    lost = queue_probe("echo again")
    django_rq.get_queue("deploy").empty()  # Redis lost its job
    assert reconciler.reconcile()["probes_requeued"] == 1
    run_workers()
    assert Probe.objects.get(pk=lost.pk).status == "succeeded"
    assert "probe.requeued" in actions(lost)
