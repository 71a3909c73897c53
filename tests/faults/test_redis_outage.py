"""Redis is only the wake-up call: with it down, people's actions still succeed, nothing is lost, and the
workers are still there when it comes back.

A real redis-server of the test's own is stopped while a real `manage.py rqworker` runs a deployment."""

import subprocess
import sys

import psutil
import pytest
from django.conf import settings
from django.urls import reverse

from approvals.models import ChangeRequest
from pipelines import promotion, reconciler
from pipelines.models import Deployment, FollowUp
from tests.conftest import child_env, kill_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = """\
environments:
  staging:
    steps:
      - run: touch {ran}/staging-started && sleep 2
  production:
    steps:
      - run: echo "$GITOPS_VERSION" >> {ran}/production
"""


def test_an_approval_while_redis_is_down_succeeds_and_its_deployment_runs_once_when_redis_is_back(
    queues_on_private_redis, repository, origin, staging, production, make_release, alice, bob, client, tmp_path,
    run_follow_ups,
):
    redis_server = queues_on_private_redis
    ran = tmp_path / "ran"
    ran.mkdir()
    pipeline = PIPELINE.format(ran=ran)
    origin.write(".gitops.yml", pipeline)
    release = make_release(repository, "v1.0.0", commit_sha=origin.commit("pipeline"), pipeline=pipeline)
    held = promotion.promote(release, production, by=alice)
    run_follow_ups()  # opens the change request
    change_request = ChangeRequest.objects.get(deployment=held)
    promotion.promote(release, staging, by=alice)

    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "rqworker", "deploy", "git"],
        env=child_env(tmp_path / "worker-data", REDIS_URL=redis_server.url, GITOPS_HEARTBEAT_SECONDS=1),
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: (ran / "staging-started").exists(), "the staging step to start", timeout=60)
        redis_server.stop()

        client.force_login(bob)
        response = client.post(reverse("change_request_approve", args=[change_request.pk]), {"comment": "ok"}, follow=True)
        assert response.status_code == 200, "the approval succeeds for the person who gave it"
        assert "The work queue is unreachable right now: this is recorded and starts by itself" in response.content.decode()
        assert Deployment.objects.get(pk=held.pk).status == "queued"

        # The staging run ends while Redis is away; the worker must wait for it rather than exit.
        wait_for(lambda: Deployment.objects.get(environment=staging).status == "succeeded", "the staging run", timeout=60)
        wait_for(lambda: "Redis is unreachable" in log.read_text(), "the worker to wait for Redis", timeout=60)
        assert worker.poll() is None, log.read_text()

        redis_server.start()
        report = reconciler.reconcile()  # the scheduler's next tick
        assert report["deployments_requeued"] == 1 and report["follow_ups"] >= 1

        wait_for(lambda: Deployment.objects.get(pk=held.pk).status == "succeeded", "production to deploy", timeout=90)
        decided_mail = FollowUp.objects.get(kind="mail.change_request_decided")
        wait_for(lambda: FollowUp.objects.get(pk=decided_mail.pk).done_at, "the decision's mail", timeout=60)
        assert worker.poll() is None and psutil.pid_exists(worker.pid), "the worker outlived the outage"
    finally:
        kill_tree(worker.pid)
        worker.wait()

    assert (ran / "production").read_text() == "v1.0.0\n", "production ran exactly once"
    assert Deployment.objects.filter(release=release, environment=production).count() == 1
