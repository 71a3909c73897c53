"""The runner: real subprocesses in a checkout of the release commit, scrubbed environment, streamed
log, timeouts and cancels that kill the whole process group, and the outcome recorded."""

import os
import threading
import time
from pathlib import Path

import pytest

from pipelines import promotion
from pipelines.models import Deployment
from pipelines.runs import kernel

pytestmark = pytest.mark.django_db(transaction=True)


def pipeline_with(run, timeout=None, variables=None):
    lines = ["environments:", "  staging:"]
    if variables:
        lines.append("    variables: {" + ", ".join(f"{k}: {v}" for k, v in variables.items()) + "}")
    lines += ["    steps:", "      - name: deploy", f"        run: {run}"]
    if timeout:
        lines.append(f"        timeout: {timeout}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def release_of(repository, make_release, origin):
    """A release of the origin repository's current commit with the given pipeline file."""

    def make(pipeline, version="v1.0.0"):
        origin.write(".gitops.yml", pipeline)
        sha = origin.commit(f"pipeline for {version}")
        return make_release(repository, version, pipeline=pipeline, commit_sha=sha)

    return make


def deploy_to_staging(release, staging):
    return promotion.promote(release, staging, by=None, trigger=Deployment.Trigger.AUTO)


def wait_for(condition, timeout=20.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message}")


def log_of(deployment):
    return deployment.log_since(0)[0]


def test_it_runs_the_step_in_a_checkout_of_the_release_commit(release_of, staging, origin, tmp_path):
    origin.write("app.txt", "version one\n")
    release = release_of(pipeline_with("cat app.txt"))
    origin.write("app.txt", "version two\n")
    origin.commit("later change that must not be deployed")
    deployment = deploy_to_staging(release, staging)

    kernel.run("deployment", deployment.pk)

    deployment.refresh_from_db()
    assert deployment.status == "succeeded", log_of(deployment)
    assert "version one" in log_of(deployment)
    assert "version two" not in log_of(deployment)
    assert list((tmp_path / "work").iterdir()) == [], "the checkout is removed afterwards"


def test_the_step_sees_the_gitops_variables_and_none_of_the_portals_secrets(release_of, staging, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "portal-secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://portal:pw@db/portal")
    monkeypatch.setenv("REDIS_URL", "redis://secret-redis")
    release = release_of(pipeline_with("env | sort", variables={"REGION": "eu-west-1"}))
    deployment = deploy_to_staging(release, staging)

    kernel.run("deployment", deployment.pk)

    deployment.refresh_from_db()
    log = log_of(deployment)
    assert deployment.status == "succeeded", log
    assert "GITOPS_VERSION=v1.0.0" in log
    assert f"GITOPS_COMMIT={release.commit_sha}" in log
    assert "GITOPS_ENVIRONMENT=staging" in log
    assert "GITOPS_REPOSITORY=shop" in log
    assert f"GITOPS_DEPLOYMENT_ID={deployment.pk}" in log
    assert "GITOPS_TRIGGER=auto" in log
    assert "REGION=eu-west-1" in log
    assert "portal-secret" not in log and "SECRET_KEY" not in log
    assert "DATABASE_URL" not in log and "REDIS_URL" not in log


def test_a_failing_step_fails_the_deployment_with_its_log_and_stops_there(release_of, staging, production):
    release = release_of(pipeline_with("echo about to fail; exit 3"))
    deployment = deploy_to_staging(release, staging)

    kernel.run("deployment", deployment.pk)

    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert deployment.exit_code == 3
    assert deployment.error == "Step 'deploy' exited with status 3."
    assert "about to fail" in log_of(deployment)
    assert not Deployment.objects.filter(environment=production).exists()


def test_pipefail_makes_a_failing_pipeline_fail_the_step(release_of, staging):
    deployment = deploy_to_staging(release_of(pipeline_with("false | cat")), staging)
    kernel.run("deployment", deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == "failed"


def test_success_promotes_to_the_next_environment_and_records_the_current_release(release_of, staging, production, run_workers):
    from pipelines.models import FollowUp, Target

    pipeline = pipeline_with("echo ok") + "  production:\n    steps:\n      - run: echo prod\n"
    release = release_of(pipeline)
    deployment = deploy_to_staging(release, staging)

    kernel.run("deployment", deployment.pk)

    assert Target.objects.get(repository=release.repository, environment=staging).current_release == release
    # The promotion is a follow-up recorded with the success, and the runner carries it out at once.
    assert FollowUp.objects.get(deployment=deployment).kind == "promote.after_success"
    assert FollowUp.objects.get(deployment=deployment).done_at is not None
    held = Deployment.objects.get(environment=production)
    assert held.status == "awaiting_approval" and held.release == release


def test_a_step_that_runs_too_long_is_killed_with_its_children(release_of, staging, tmp_path):
    release = release_of(pipeline_with("sleep 301.1 & wait", timeout=1))
    deployment = deploy_to_staging(release, staging)

    kernel.run("deployment", deployment.pk)

    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert deployment.error == "Step 'deploy' timed out after 1 s."
    assert "timed out after 1s" in log_of(deployment)
    wait_for(lambda: not _sleepers("301.1"), timeout=5, message="the step's child to be gone")


def test_the_log_streams_to_the_database_while_the_step_runs(release_of, staging, tmp_path):
    go_on = tmp_path / "go-on"
    release = release_of(pipeline_with(f"printf 'line-%s\\n' one; while [ ! -e {go_on} ]; do sleep 0.05; done; printf 'line-%s\\n' two"))
    deployment = deploy_to_staging(release, staging)
    worker = threading.Thread(target=_run_in_thread, args=(deployment.pk,))
    worker.start()
    try:
        wait_for(lambda: "line-one" in log_of(deployment), message="the first line in the log")
        assert Deployment.objects.get(pk=deployment.pk).status == "running"
        assert "line-two" not in log_of(deployment)
    finally:
        go_on.touch()
        worker.join(timeout=30)
    assert Deployment.objects.get(pk=deployment.pk).status == "succeeded"
    assert "line-two" in log_of(deployment)


def test_cancelling_a_running_deployment_kills_its_step(release_of, staging, settings, alice, tmp_path):
    settings.GITOPS_HEARTBEAT_SECONDS = 0.1
    release = release_of(pipeline_with("printf 'step-%s\\n' started; sleep 302.2"))
    deployment = deploy_to_staging(release, staging)
    worker = threading.Thread(target=_run_in_thread, args=(deployment.pk,))
    worker.start()
    try:
        wait_for(lambda: "step-started" in log_of(deployment), message="the step to start")
        Deployment.objects.get(pk=deployment.pk).cancel(by=alice, reason="wrong build")
    finally:
        worker.join(timeout=30)
    deployment.refresh_from_db()
    assert deployment.status == "cancelled"
    assert deployment.error == "Cancelled during step 'deploy'."
    assert not _sleepers("302.2")


def test_a_duplicate_wake_up_does_not_run_a_deployment_twice(release_of, staging, tmp_path):
    counter = tmp_path / "runs"
    deployment = deploy_to_staging(release_of(pipeline_with(f"echo run >> {counter}")), staging)
    kernel.run("deployment", deployment.pk)
    kernel.run("deployment", deployment.pk)
    assert counter.read_text() == "run\n"


def test_a_queued_deployment_waits_for_the_running_one_of_its_target(release_of, staging, alice):
    first = deploy_to_staging(release_of(pipeline_with("echo one"), version="v1"), staging)
    first.claim(worker_name="elsewhere")
    second = promotion.promote(release_of(pipeline_with("echo two"), version="v2"), staging, by=alice)
    kernel.run("deployment", second.pk)
    assert Deployment.objects.get(pk=second.pk).status == "queued"


def _run_in_thread(deployment_id):
    from django.db import connection

    try:
        kernel.run("deployment", deployment_id)
    finally:
        connection.close()


def _sleepers(duration):
    """Live `sleep <duration>` processes: steps may run in a PID namespace of their own, where the pid
    they see of themselves means nothing outside, so tests find them by a unique command line."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["cmdline"] == ["sleep", duration] and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state in /proc says it is gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_step_stops_when_its_deployment_was_given_up_as_lost(release_of, staging, settings, tmp_path):
    settings.GITOPS_HEARTBEAT_SECONDS = 0.1
    deployment = deploy_to_staging(release_of(pipeline_with("sleep 303.3")), staging)
    worker = threading.Thread(target=_run_in_thread, args=(deployment.pk,))
    worker.start()
    try:
        wait_for(lambda: _sleepers("303.3"), message="the step to start")
        Deployment.objects.get(pk=deployment.pk).fail("Worker lost: no heartbeat.")  # as the reconciler does
    finally:
        worker.join(timeout=30)
    assert not worker.is_alive()
    wait_for(lambda: not _sleepers("303.3"), timeout=5, message="the step to be gone")
    deployment.refresh_from_db()
    assert deployment.status == "failed" and deployment.error == "Worker lost: no heartbeat."


def test_output_with_nul_bytes_and_split_characters_is_kept_readable(release_of, staging):
    run = "printf 'before\\0after\\n'; printf 'é\\n%.0s' $(seq 40000)"
    deployment = deploy_to_staging(release_of(pipeline_with(run)), staging)
    kernel.run("deployment", deployment.pk)
    deployment.refresh_from_db()
    log = log_of(deployment)
    assert deployment.status == "succeeded", deployment.error
    assert "beforeafter" in log
    assert log.count("é\n") == 40000
    assert "\ufffd" not in log, "a character split between two reads was decoded whole"


def test_the_heartbeat_goes_on_while_the_release_is_materialised(release_of, staging, settings, monkeypatch):
    """A slow fetch must not look like a lost worker."""
    from pipelines import git

    settings.GITOPS_HEARTBEAT_SECONDS = 0.05
    deployment = deploy_to_staging(release_of(pipeline_with("true")), staging)
    materialise, beats = git.materialise, []

    def slow_materialise(repository, sha, destination):
        first = Deployment.objects.get(pk=deployment.pk).heartbeat_at
        wait_for(lambda: Deployment.objects.get(pk=deployment.pk).heartbeat_at != first, message="a heartbeat")
        beats.append(True)
        materialise(repository, sha, destination)

    monkeypatch.setattr(git, "materialise", slow_materialise)
    kernel.run("deployment", deployment.pk)
    assert beats and Deployment.objects.get(pk=deployment.pk).status == "succeeded"


@pytest.mark.skipif(os.geteuid() != 0, reason="running steps as another account needs a root worker")
def test_a_step_run_as_its_own_account_cannot_read_the_workers_environment(release_of, staging, settings, tmp_path):
    import tempfile

    settings.GITOPS_STEP_USER = "nobody"
    settings.GITOPS_WORK_DIR = Path(tempfile.mkdtemp(prefix="gitops-steps-"))  # tmp_path is root-only (0700)
    settings.GITOPS_WORK_DIR.chmod(0o711)
    # The worker is this process (the runner runs in it here); its pid as this machine sees it.
    run = f"id -un; touch made-by-the-step; cat /proc/{os.getpid()}/environ >/dev/null 2>&1 && echo LEAK-ED || echo SEAL-ED"
    deployment = deploy_to_staging(release_of(pipeline_with(run)), staging)
    try:
        kernel.run("deployment", deployment.pk)
    finally:
        settings.GITOPS_WORK_DIR.rmdir()
    deployment.refresh_from_db()
    log = log_of(deployment)
    assert deployment.status == "succeeded", log
    assert "\nnobody\n" in log
    assert "\nSEAL-ED\n" in log and "\nLEAK-ED" not in log
