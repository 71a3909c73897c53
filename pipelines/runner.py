"""Run one deployment: claim it, materialise the release, run its steps, record the outcome.

Each step runs under `bash -eo pipefail` in its own process group with a scrubbed environment, so a
timeout or a cancel kills everything it started and the portal's own secrets never reach it."""

import codecs
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

from pipelines import git, hooks, promotion
from pipelines.models import Deployment, StaleStatus, TargetBusy

logger = logging.getLogger(__name__)

LOG_FLUSH_SECONDS = 0.25
LOG_FLUSH_BYTES = 64 * 1024
KILL_GRACE_SECONDS = 5


@dataclass
class StepOutcome:
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False


def run_deployment(deployment_id):
    deployment = (
        Deployment.objects.select_related("release", "environment", "repository", "previous_release")
        .filter(pk=deployment_id)
        .first()
    )
    if deployment is None or deployment.status != Deployment.Status.QUEUED:
        return  # a duplicate wake-up: someone else ran or cancelled it
    if hooks.hold_reason(deployment):
        return  # held (a freeze window): it stays queued and the reconciler wakes it when free
    try:
        deployment.claim(worker_name=f"{socket.gethostname()}:{os.getpid()}")
    except (StaleStatus, TargetBusy):
        return  # the running deployment of this target wakes the queue when it ends
    try:
        _execute(deployment)
    except Exception as exc:
        logger.exception("deployment %s crashed in the portal", deployment.pk)
        deployment.refresh_from_db()
        if deployment.status == Deployment.Status.RUNNING:
            deployment.fail(f"The portal could not run this deployment: {exc}")
    finally:
        wake_next_in_line(deployment)


def wake_next_in_line(deployment):
    """Queued deployments of the same target waited for this one; wake the oldest."""
    from pipelines import jobs

    following = (
        Deployment.objects.for_target(deployment.repository_id, deployment.environment_id)
        .filter(status=Deployment.Status.QUEUED)
        .order_by("created_at", "id")
        .first()
    )
    if following is not None:
        with transaction.atomic():
            jobs.enqueue_deployment(following)


class Heartbeat(threading.Thread):
    """Beats for the whole run (a slow fetch included), so the reconciler never takes a live deployment
    for a lost one; sets `stop` when someone asked for a cancel or the row is no longer running."""

    def __init__(self, deployment):
        super().__init__(name=f"heartbeat-{deployment.pk}", daemon=True)
        self.deployment = deployment
        self.stop = threading.Event()
        self._finished = threading.Event()

    def run(self):
        try:
            while not self._finished.wait(settings.GITOPS_HEARTBEAT_SECONDS):
                if self.deployment.beat():
                    self.stop.set()
        except Exception:
            logger.exception("heartbeat of deployment %s failed", self.deployment.pk)
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self._finished.set()
        self.join()


def _execute(deployment):
    spec = deployment.release.pipeline.environments[deployment.environment.name]
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"deployment-{deployment.pk}-", dir=settings.GITOPS_WORK_DIR))
    try:
        account = step_account()
        with Heartbeat(deployment) as heartbeat:
            git.materialise(deployment.repository, deployment.release.commit_sha, workdir)
            if account is not None:
                _hand_over(workdir, account)
            environment = step_environment(deployment, spec.variables, workdir, account)
            if not _run_steps(deployment, spec.steps, workdir, environment, heartbeat.stop, account):
                return
        deployment.succeed()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    promotion.on_deployment_succeeded(deployment)


def _run_steps(deployment, steps, workdir, environment, stop, account):
    """Run the steps in order; record how the first one that did not succeed ended. True when all succeeded."""
    for number, step in enumerate(steps, start=1):
        deployment.append_log(f"==> step {number}/{len(steps)}: {step.name}\n$ {step.run}\n")
        outcome = run_step(deployment, step, workdir, environment, stop, account)
        if outcome.cancelled:
            if Deployment.objects.filter(pk=deployment.pk, status=Deployment.Status.RUNNING).exists():
                deployment.append_log("==> cancelled\n")
                deployment.transition(Deployment.Status.CANCELLED, error=f"Cancelled during step '{step.name}'.")
            return False
        if outcome.timed_out:
            deployment.append_log(f"==> timed out after {step.timeout}s; the step's processes were killed\n")
            deployment.fail(f"Step '{step.name}' timed out after {step.timeout} s.", exit_code=outcome.exit_code)
            return False
        if outcome.exit_code != 0:
            deployment.fail(f"Step '{step.name}' exited with status {outcome.exit_code}.", exit_code=outcome.exit_code)
            return False
    return True


def step_account():
    """The unprivileged account steps run as (settings.GITOPS_STEP_USER), or None: as the worker itself.

    Under its own account a step cannot read the worker's environment (/proc/<pid>/environ), the portal's
    data directory or the worker's home, which the scrubbed environment alone does not prevent."""
    name = settings.GITOPS_STEP_USER
    if not name:
        return None
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"GITOPS_STEP_USER names {name!r}, which is not an account on this machine.") from None
    if os.geteuid() != 0 and account.pw_uid != os.geteuid():
        raise RuntimeError(f"Running steps as {name!r} (GITOPS_STEP_USER) needs the worker to run as root.")
    return account


def _hand_over(workdir, account):
    for directory, subdirectories, files in os.walk(workdir):
        for path in (directory, *(os.path.join(directory, name) for name in subdirectories + files)):
            os.lchown(path, account.pw_uid, account.pw_gid)


def step_environment(deployment, variables, workdir, account=None):
    """Only what a step needs: nothing of the portal's own environment leaks (SECRET_KEY, DATABASE_URL…)."""
    release, previous = deployment.release, deployment.previous_release
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": account.pw_dir if account else os.environ.get("HOME", str(workdir)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        **variables,
        "GITOPS_REPOSITORY": deployment.repository.name,
        "GITOPS_ENVIRONMENT": deployment.environment.name,
        "GITOPS_VERSION": release.version,
        "GITOPS_COMMIT": release.commit_sha,
        "GITOPS_PREVIOUS_VERSION": previous.version if previous else "",
        "GITOPS_PREVIOUS_COMMIT": previous.commit_sha if previous else "",
        "GITOPS_DEPLOYMENT_ID": str(deployment.pk),
        "GITOPS_TRIGGER": deployment.trigger,
    }


def run_step(deployment, step, workdir, environment, stop, account=None):
    """Run one step, streaming its output into the deployment log. Whatever happens here, even an
    exception of the portal's own, the step's process group does not outlive this function."""
    as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    process = subprocess.Popen(
        ["bash", "-eo", "pipefail", "-c", step.run],
        cwd=workdir,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, killed as a whole
        **as_account,
    )
    try:
        return _follow(deployment, step, process, stop)
    finally:
        _kill_group(process)  # whatever the step left behind in its group goes with it
        process.stdout.close()


def _follow(deployment, step, process, stop):
    output = process.stdout.fileno()
    os.set_blocking(output, False)
    # Incremental: a multi-byte character split across two reads is decoded whole.
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = []
    started = last_flush = time.monotonic()
    outcome = None
    while True:
        readable, _, _ = select.select([output], [], [], LOG_FLUSH_SECONDS)
        eof = False
        if readable:
            chunk = os.read(output, 65536)
            eof = not chunk
            pending.append(decoder.decode(chunk, final=eof))
        now = time.monotonic()
        if pending and (eof or now - last_flush >= LOG_FLUSH_SECONDS or sum(map(len, pending)) >= LOG_FLUSH_BYTES):
            deployment.append_log("".join(pending))
            pending.clear()
            last_flush = now
        if outcome is None and stop.is_set():
            outcome = StepOutcome(exit_code=_kill_group(process), cancelled=True)
        if outcome is None and now - started >= step.timeout:
            outcome = StepOutcome(exit_code=_kill_group(process), timed_out=True)
        if eof or (outcome is not None and not readable):
            break
        if process.poll() is not None and not readable:
            break  # exited; a background child may hold the pipe open, so do not wait for EOF
    pending.append(decoder.decode(b"", final=True))
    deployment.append_log("".join(pending))
    return outcome or StepOutcome(exit_code=process.wait())


def _kill_group(process):
    """SIGTERM the step's process group, SIGKILL it after a grace period; returns the exit status."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return process.wait()
    try:
        process.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the leader may be gone while others in its group linger
    except ProcessLookupError:
        pass
    return process.wait()
