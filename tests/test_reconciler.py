"""The reconciler repairs what Redis or a dead worker lost; the database stays the truth."""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import django_rq
import pytest
from django.conf import settings
from django.utils import timezone

from pipelines import promotion, reconciler
from pipelines.models import AuditEvent, Deployment
from tests.conftest import child_env, kill_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent


def test_a_queued_deployment_whose_job_was_flushed_is_enqueued_again_and_runs(repository, staging, origin, make_release, run_workers):
    release = make_release(repository, "v1.0.0", commit_sha=origin.head(), pipeline=(origin.path / ".gitops.yml").read_text())
    deployment = promotion.promote(release, staging, by=None)
    django_rq.get_connection("deploy").flushdb()  # Redis lost everything

    assert reconciler.reconcile()["deployments_requeued"] == 1
    assert reconciler.reconcile()["deployments_requeued"] == 0, "a live job is not enqueued twice"
    run_workers()

    deployment.refresh_from_db()
    assert deployment.status == "succeeded"
    assert AuditEvent.objects.filter(action="deployment.requeued", object_id=str(deployment.pk)).count() == 1


def test_a_running_deployment_without_a_heartbeat_fails_as_worker_lost(repository, staging, make_release):
    deployment = promotion.promote(make_release(repository, "v1.0.0"), staging, by=None)
    deployment.claim(worker_name="host-1:4242")

    assert reconciler.reconcile()["deployments_lost"] == 0, "a fresh heartbeat is left alone"
    later = timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)
    assert reconciler.reconcile(now=later)["deployments_lost"] == 1

    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert deployment.error.startswith("Worker lost: no heartbeat from host-1:4242 since ")


def test_a_killed_worker_is_detected_and_the_next_deployment_of_its_target_runs(repository, staging, origin, make_release, tmp_path, run_workers):
    """A real rq worker process is killed with SIGKILL in the middle of a step."""
    # Outside the worker's data directory, which steps do not see; and no pid: a step may have a PID namespace of its own.
    pidfile = tmp_path / "step.started"
    origin.write(".gitops.yml", f"environments:\n  staging:\n    steps:\n      - run: echo started > {pidfile}; sleep 300\n")
    stuck = make_release(repository, "v1.0.0", commit_sha=origin.commit("slow"), pipeline=(origin.path / ".gitops.yml").read_text())
    deployment = promotion.promote(stuck, staging, by=None)

    worker = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "deploy"],
        cwd=BASE_DIR, env=child_env(tmp_path / "data"), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the step to start in the worker")
        # The machine dies: the worker, its work horse and the step all vanish at once.
        kill_tree(worker.pid)
        worker.wait()
    finally:
        kill_tree(worker.pid)

    origin.write(".gitops.yml", "environments:\n  staging:\n    steps:\n      - run: echo fixed\n")
    fixed = make_release(repository, "v1.0.1", commit_sha=origin.commit("fast"), pipeline=(origin.path / ".gitops.yml").read_text())
    following = promotion.promote(fixed, staging, by=None)
    assert Deployment.objects.get(pk=deployment.pk).status == "running"

    later = timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)
    assert reconciler.reconcile(now=later)["deployments_lost"] == 1
    run_workers()

    assert Deployment.objects.get(pk=deployment.pk).status == "failed"
    assert "Worker lost" in Deployment.objects.get(pk=deployment.pk).error
    assert Deployment.objects.get(pk=following.pk).status == "succeeded"


def _kill_quietly(pid):
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_deployment_waiting_behind_a_running_one_is_not_requeued_every_tick(repository, staging, make_release):
    running = promotion.promote(make_release(repository, "v1.0.0"), staging, by=None)
    running.claim(worker_name="w")
    waiting = promotion.promote(make_release(repository, "v1.1.0"), staging, by=None)
    django_rq.get_connection("deploy").flushdb()  # its job ran and ended on "target busy"

    assert reconciler.reconcile()["deployments_requeued"] == 0
    assert not AuditEvent.objects.filter(action="deployment.requeued", object_id=str(waiting.pk)).exists()
