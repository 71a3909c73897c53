"""Run one deployment: claim it with its target's lease, materialise the release, run its steps, record
the outcome.

Each step runs under `bash -eo pipefail` in its own process group with a scrubbed environment, so a
timeout or a cancel kills everything it started and the portal's own secrets never reach it.

Fencing: a run never overlaps the next run of its target.
- The run holds its target's lease (Deployment.claim), renewed by the heartbeat. When the heartbeat has
  not renewed for half of GITOPS_WORKER_LOST_AFTER, the run kills its step itself, so by the time the
  lease expires and the reconciler may fail it and start the next one, nothing of it runs any more.
- A step dies with the process that runs it: the rq worker itself (pipelines/worker.py runs deployments in
  its own process), or a forked work-horse, which gets SIGKILL when the worker dies (PR_SET_PDEATHSIG). The
  step's supervisor (pipelines/sandbox.py) gets SIGTERM when that process dies and takes the step's whole
  process group with it; the supervisor also holds the step's timeout when no runner is left.
- A database blip (a restart, a terminated backend) does not fail a run: the log is buffered and
  retried, beats are retried, and the outcome is retried for up to half of GITOPS_WORKER_LOST_AFTER.
- A cancel is checked before every step, the first included."""

import codecs
import ctypes
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Subquery
from django.db.utils import InterfaceError, OperationalError

from pipelines import build_runner, followups, git, hooks, masking, preview_runner, run_log, sandbox
from pipelines.models import Check, Deployment, EnvironmentSecret, Preview, Release, Stage, StaleStatus, TargetBusy
from pipelines.models.deployment import this_host
from pipelines.secrets import SecretUnreadable

logger = logging.getLogger(__name__)

LOG_FLUSH_SECONDS = 0.25
LOG_FLUSH_BYTES = 64 * 1024
KILL_GRACE_SECONDS = 5
STDOUT, STDERR = "stdout", "stderr"
# What a database blip looks like from here: the connection dropped or the server refused it.
DATABASE_BLIP = (OperationalError, InterfaceError)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
if sys.platform.startswith("linux"):
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
else:  # pragma: no cover - the portal's workers run on Linux
    _prctl = None


class WorkerGone(RuntimeError):
    """The rq worker that forked this work-horse died before the run began."""


@dataclass
class StepOutcome:
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False
    lost: bool = False


def run_deployment(deployment_id):
    deployment = (
        Deployment.objects.select_related("release__repository", "environment", "repository", "previous_release")
        .filter(pk=deployment_id)
        .first()
    )
    if deployment is None or deployment.status != Deployment.Status.QUEUED:
        return  # a duplicate wake-up: someone else ran or cancelled it
    if hooks.hold_reason(deployment):
        return  # held (a freeze window): it stays queued and the reconciler wakes it when free
    seal_work_horse()
    try:
        deployment.claim(worker_name=f"{socket.gethostname()}:{os.getpid()}", runner_host=this_host(),
                         runner_pid=os.getpid())
    except (StaleStatus, TargetBusy):
        return  # the running deployment of this target wakes the queue when it ends
    log = LogWriter(deployment)
    try:
        with Heartbeat(deployment) as heartbeat:
            _execute(deployment, heartbeat, log)
    except (SystemExit, KeyboardInterrupt):
        # The worker is stopping cold (a second SIGTERM or Ctrl-C) during the run: the step's group is
        # already killed (run_step). One attempt to say so; if it fails, the reconciler finds the runner gone.
        logger.warning("deployment %s: the worker stopped during the run", deployment.pk)
        try:
            log.close()
            deployment.fail("The worker running this deployment was shut down during the run; its step was stopped.")
        except Exception:
            logger.exception("could not record that deployment %s was stopped", deployment.pk)
        raise
    except sandbox.StepsUnsealed as exc:  # not a crash: said in the log already, and the reason is the error
        log.close()
        _record(deployment, "failure", lambda: deployment.fail(str(exc)))
    except Exception as exc:
        logger.exception("deployment %s crashed in the portal", deployment.pk)
        try:
            log.close()
        except Exception:
            logger.exception("could not store the end of the log of deployment %s", deployment.pk)
        error = f"The portal could not run this deployment: {exc}"
        _record(deployment, "failure", lambda: deployment.fail(error))
    finally:
        try:
            wake_next_in_line(deployment)
        except Exception:
            logger.exception("could not wake the deployment after #%s; the reconciler will", deployment.pk)


def seal_work_horse():
    """In a forked rq work-horse: die with the worker, and hide this process's environment.

    PR_SET_PDEATHSIG: when the rq worker is SIGKILLed, its work-horse gets SIGKILL too (and the step's
    supervisor then stops the step), instead of running on unseen. PR_SET_DUMPABLE=0: /proc/<horse>/environ,
    which holds SECRET_KEY, DATABASE_URL and REDIS_URL, becomes unreadable to a step running as the same
    user. Does nothing where the run is in the worker's own process (PortalWorker runs deployments itself
    and made itself non-dumpable; SimpleWorker in tests), whose parent is no worker of ours to die with."""
    worker_pid = _forking_worker_pid()
    if worker_pid is None or _prctl is None:
        return
    _prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != worker_pid:  # it died before the signal was armed: nobody would kill us
        raise WorkerGone(f"The rq worker {worker_pid} that forked this work-horse is gone; "
                         f"the deployment stays queued.")


def _forking_worker_pid():
    """The pid of the rq worker when this process is a work-horse it forked, else None."""
    from rq import get_current_job
    from rq.worker import Worker

    job = get_current_job()
    if job is None or not job.worker_name:
        return None
    try:
        pid = job.connection.hget(Worker.redis_worker_namespace_prefix + job.worker_name, "pid")
    except Exception:
        logger.warning("could not ask Redis which process runs worker %s", job.worker_name, exc_info=True)
        return None
    pid = int(pid) if pid else None
    return pid if pid is not None and pid != os.getpid() else None


def _die_with_the_runner():
    """preexec_fn of the step's supervisor: SIGTERM when the process (strictly: the thread) that started it dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


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


def _reset_connection():
    """After a database error: drop this thread's connection so the next query opens a fresh one."""
    close_old_connections()
    try:
        if not connection.in_atomic_block:
            connection.close()
    except Exception:
        pass


def _record(deployment, what, action):
    """Record the run's outcome (`action`), retrying through a database blip for up to half of
    GITOPS_WORKER_LOST_AFTER: the run's lease is good that long. True once recorded."""
    deadline = time.monotonic() + settings.GITOPS_WORKER_LOST_AFTER / 2
    delay, failed_before = 0.2, False
    while True:
        try:
            if failed_before:  # an attempt may have committed before its answer was lost
                deployment.refresh_from_db(fields=["status"])
                if deployment.status != Deployment.Status.RUNNING:
                    return False
            action()
            return True
        except StaleStatus:
            return False  # no longer running: cancelled, or given up as lost
        except DATABASE_BLIP as exc:
            if time.monotonic() + delay > deadline:
                logger.error("could not record the %s of deployment %s: %s", what, deployment.pk, exc)
                return False
            logger.warning("recording the %s of deployment %s failed (%s); retrying", what, deployment.pk, exc)
            failed_before = True
            _reset_connection()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class LogWriter:
    """The deployment's log on its way to the database: secrets masked (also when one is split across
    two chunks of output), and buffered, so a flush that fails keeps its text for the next one; a
    database blip loses no line and never reaches the step."""

    def __init__(self, deployment, secrets=None):
        """`deployment`: anything with `log_chunks` and `append_log()` (a Build too); `secrets`: what to mask,
        by default the deployment's (masking.secrets_for)."""
        self.deployment = deployment
        self.secrets = masking.secrets_for(deployment) if secrets is None else secrets
        # One masker per stream: a secret split across two reads of stdout is masked even when a line of
        # stderr came in between.
        self.maskers = {stream: masking.StreamMasker(self.secrets) for stream in (STDOUT, STDERR)}
        self.pending = []
        self.failing_since = None
        self.seq = 0  # the run writes the whole log of the deployment it has just claimed
        self.last_stream, self.at_line_start = STDOUT, True

    def mask_also(self, values):
        """Mask these values too (the environment's secrets); called before anything is written."""
        self.secrets = {*self.secrets, *masking.environment_secrets(values)}
        self.maskers = {stream: masking.StreamMasker(self.secrets) for stream in (STDOUT, STDERR)}

    def write(self, text, *, stream=STDOUT):
        """Add text of a stream: STDOUT (also what the runner says) or STDERR, whose lines are marked."""
        self._add(self.maskers[stream].feed(text), stream)

    def _add(self, text, stream):
        if not text:
            return
        if stream != self.last_stream and not self.at_line_start:
            self.pending.append("\n")  # the other stream's line was cut short by this one
            self.at_line_start = True
        if stream == STDERR:
            text = run_log.mark_errors(text, at_line_start=self.at_line_start)
        self.pending.append(text)
        self.last_stream, self.at_line_start = stream, text.endswith("\n")

    def step_started(self, number, total, step):
        self.write(run_log.step_started(number, total, step.name, step.run))

    def step_ended(self, number, total, outcome, seconds):
        if outcome.timed_out:
            status = "timed out"
        elif outcome.cancelled:
            status = "cancelled"
        elif outcome.lost:
            status = "stopped"
        else:
            status = "succeeded" if outcome.exit_code == 0 else "failed"
        self._add("\n" if not self.at_line_start else "", self.last_stream)
        self.write(run_log.step_ended(number, total, status=status, exit_code=outcome.exit_code, seconds=seconds))

    def flush(self, *, final=False):
        """Store what is pending; False when the database did not take it (it stays pending)."""
        if final:
            for stream, masker in self.maskers.items():
                self._add(masker.finish(), stream)
        if not self.pending:
            return True
        text = "".join(self.pending)
        try:
            # Numbered: a piece sent again after a lost answer is not stored twice.
            self.deployment.append_log(text, seq=self.seq + 1)
        except DATABASE_BLIP as exc:
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                logger.warning("could not store the log of deployment %s (%s); keeping it to retry",
                               self.deployment.pk, exc)
            _reset_connection()
            return False
        self.seq += 1
        self.pending = []
        self.failing_since = None
        return True

    def pending_size(self):
        return sum(map(len, self.pending))

    def close(self):
        """Store everything left, retrying for up to half of GITOPS_WORKER_LOST_AFTER."""
        deadline = time.monotonic() + settings.GITOPS_WORKER_LOST_AFTER / 2
        while not self.flush(final=True):
            if time.monotonic() > deadline:
                logger.error("gave up storing the end of the log of deployment %s", self.deployment.pk)
                return False
            time.sleep(0.25)
        return True


class Heartbeat:
    """Beats for the whole run (a slow fetch included), renewing the run's lease of its target, so the
    reconciler never takes a live deployment for a lost one. Sets `stop` when someone asked for a cancel
    or the row is no longer running.

    Two threads. The beat thread survives failures: it drops its connection and tries again at the next
    beat. The watch thread touches no database, so it cannot hang with it: when no beat has renewed the
    lease for half of GITOPS_WORKER_LOST_AFTER, it sets `lost` and `stop` and kills the step's process
    group itself; the lease expires only after that, and only then may the next run of the target start."""

    def __init__(self, deployment):
        self.deployment = deployment  # anything with `pk` and `beat()` (a Build too)
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.silent_for = 0.0
        self.step_pgid = None
        self.renewed_at = time.monotonic()  # claim() took the lease just now
        self._finished = threading.Event()
        self._threads = [
            threading.Thread(target=self._beat, name=f"heartbeat-{deployment.pk}", daemon=True),
            threading.Thread(target=self._watch, name=f"lease-watch-{deployment.pk}", daemon=True),
        ]

    def _beat(self):
        try:
            while not self._finished.wait(settings.GITOPS_HEARTBEAT_SECONDS) and not self.lost.is_set():
                try:
                    if self.deployment.beat():
                        self.stop.set()
                    else:
                        self.renewed_at = time.monotonic()
                except Exception as exc:
                    logger.warning("heartbeat of deployment %s failed (%s); retrying at the next beat",
                                   self.deployment.pk, exc)
                    _reset_connection()
        finally:
            try:
                connection.close()  # this thread's own connection
            except Exception:
                pass

    def _watch(self):
        limit = settings.GITOPS_WORKER_LOST_AFTER / 2
        while not self._finished.wait(min(0.25, limit / 10)):
            silent = time.monotonic() - self.renewed_at
            if silent >= limit:
                self.silent_for = silent
                self.lost.set()
                self.stop.set()
                logger.error("deployment %s could not renew its lease for %.0f s; stopping its step",
                             self.deployment.pk, silent)
                self.kill_step()
                return

    def kill_step(self):
        pgid = self.step_pgid
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def lost_reason(self):
        return f"Lost its lease: the database did not answer for {self.silent_for:.0f} s, so the run stopped its step."

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self._finished.set()
        for thread in self._threads:
            thread.join()


def _execute(deployment, heartbeat, log):
    spec = deployment.release.pipeline.environments[deployment.environment.name]
    try:
        secrets = EnvironmentSecret.objects.values_for(deployment.environment)  # once per run, before any output
    except SecretUnreadable as exc:
        reason = str(exc)  # names the secret, never its value
        log.write(f"==> {reason}\n")
        log.close()
        _record(deployment, "failure", lambda: deployment.fail(reason))
        return
    log.mask_also(secrets.values())
    # Fail closed: what is applied must be what was approved (pipelines/models/preview.py).
    refusal = Preview.objects.refusal_for(deployment)
    if refusal:
        reason = f"Not applied: {refusal}"
        log.write(f"==> {reason}\n")
        log.close()
        _record(deployment, "failure", lambda: deployment.fail(reason))
        return
    # The last check before the first step: a release blocked, or whose required checks stopped passing, since
    # this deployment was let through never runs.
    reason = _refusal_to_start(deployment)
    if reason:
        log.write(f"==> {reason}\n")
        log.close()
        _record(deployment, "cancellation", lambda: deployment.transition(
            Deployment.Status.CANCELLED, error=reason, details={"reason": reason}))
        return
    replaced = sorted(set(secrets) & set(spec.variables))
    if replaced:  # said in the log, so a file variable that seems ignored is explained
        log.write(f"==> the environment's secrets replace the pipeline file's variables {', '.join(replaced)}\n")
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"deployment-{deployment.pk}-", dir=settings.GITOPS_WORK_DIR))
    built = None
    try:
        account = step_account()
        git.materialise(deployment.repository, deployment.release.commit_sha, workdir)
        environment = step_environment(deployment, spec.variables, workdir, account, secrets=secrets)
        # What the release's build left: its outputs as GITOPS_OUTPUT_*, its artifacts unpacked afresh.
        built = build_runner.hand_to_deployment(deployment, environment)
        # What its approved preview left (a saved plan), on top: what was approved is what is applied.
        built = preview_runner.hand_to_deployment(deployment, environment, built, log)
        if account is not None:
            _hand_over(workdir, account)
            if built is not None:
                _hand_over(built, account)
        shared = (built,) if built is not None else ()
        if not _run_steps(deployment, spec.steps, workdir, environment, heartbeat, log, account, shared):
            return
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if built is not None:
            shutil.rmtree(built, ignore_errors=True)
    log.close()
    # The automatic promotion is a follow-up recorded with the success (see Deployment.succeed), carried
    # out here at once; should this fail or the runner die first, the reconciler re-drives it.
    recorded = {}
    if _record(deployment, "success", lambda: recorded.update(follow_up=deployment.succeed())) and recorded["follow_up"]:
        try:
            followups.carry_out(recorded["follow_up"].pk, before_due=True)
        except Exception:
            logger.exception("the promotion after deployment %s failed; the reconciler retries it", deployment.pk)


def _refusal_to_start(deployment):
    """Why the deployment must not start now, in words, or "": its release is blocked, or its stage requires
    passing checks and they no longer pass (CI reported a failure after the promotion)."""
    # One query on the path every deployment takes: the release's block, read afresh, and its stage's rule.
    stage = Stage.objects.filter(lifecycle_id=deployment.repository.lifecycle_id, environment_id=deployment.environment_id)
    blocked, reason, checks_required = Release.objects.filter(pk=deployment.release_id).annotate(
        checks_required=Subquery(stage.values("requires_passing_checks")[:1])
    ).values_list("blocked", "blocked_reason", "checks_required").get()
    if blocked:
        return f"Not run: {deployment.release.version} is blocked ({reason})."
    if checks_required:
        refusal = Check.objects.refusal_for(deployment.release)
        if refusal:
            return f"Not run: {deployment.environment} requires passing checks and {refusal}."
    return ""


def _cancel_requested(deployment):
    """Asked from the database, before every step: the heartbeat alone could be a beat late. A database
    that does not answer now says nothing; the heartbeat goes on asking."""
    try:
        return not Deployment.objects.filter(pk=deployment.pk, status=Deployment.Status.RUNNING,
                                             cancel_requested_at=None).exists()
    except DATABASE_BLIP:
        _reset_connection()
        return False


def _why_stopped(deployment):
    """(status, whether a cancel was asked for) as the database has them, or (None, None) when it does not
    answer."""
    try:
        found = Deployment.objects.filter(pk=deployment.pk).values_list("status", "cancel_requested_at").first()
    except DATABASE_BLIP:
        _reset_connection()
        return None, None
    return (found[0], found[1] is not None) if found else (None, None)


def _run_steps(deployment, steps, workdir, environment, heartbeat, log, account, shared=()):
    """Run the steps in order; record how the first one that did not succeed ended. True when all succeeded."""
    for number, step in enumerate(steps, start=1):
        if heartbeat.stop.is_set() or _cancel_requested(deployment):
            _stopped(deployment, heartbeat, log, f"before step '{step.name}'")
            return False
        log.step_started(number, len(steps), step)
        started = time.monotonic()
        outcome = run_step(deployment, step, workdir, environment, heartbeat, log, account, shared=shared)
        log.step_ended(number, len(steps), outcome, time.monotonic() - started)
        if outcome.cancelled or outcome.lost:
            _stopped(deployment, heartbeat, log, f"during step '{step.name}'")
            return False
        if outcome.timed_out:
            log.write(f"==> timed out after {step.timeout}s; the step's processes were killed\n")
            log.close()
            _record(deployment, "failure", lambda: deployment.fail(
                f"Step '{step.name}' timed out after {step.timeout} s.", exit_code=outcome.exit_code))
            return False
        if outcome.exit_code != 0:
            log.close()
            _record(deployment, "failure", lambda: deployment.fail(
                f"Step '{step.name}' exited with status {outcome.exit_code}.", exit_code=outcome.exit_code))
            return False
    return True


def _stopped(deployment, heartbeat, log, when):
    """The run stops early: its lease was lost, a cancel was asked for, or it was given up."""
    if heartbeat.lost.is_set():
        log.write(f"==> {heartbeat.lost_reason()}\n")
        log.close()
        _record(deployment, "lost lease", lambda: deployment.fail(heartbeat.lost_reason()))
        return
    status, cancel_asked = _why_stopped(deployment)
    if status not in (None, Deployment.Status.RUNNING):
        log.close()
        return  # given up (the reconciler) or finished elsewhere: nothing left to record
    if cancel_asked is False:  # still running, nobody asked: its lease went to no one it knows of
        reason = "The run stopped: its target's lease was no longer its own."
        log.write(f"==> {reason}\n")
        log.close()
        _record(deployment, "lost lease", lambda: deployment.fail(reason))
        return
    log.write("==> cancelled\n")
    log.close()
    _record(deployment, "cancel",
            lambda: deployment.transition(Deployment.Status.CANCELLED, error=f"Cancelled {when}."))


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


def step_environment(deployment, variables, workdir, account=None, *, secrets):
    """The environment of a deploy step: the pipeline file's `variables`, then its environment's `secrets`
    ({name: value}, loaded by the caller once per run; a secret wins over a file variable of the same name,
    as the admin's value should), then the deployment's GITOPS_ variables."""
    release, previous = deployment.release, deployment.previous_release
    return scrubbed_environment(workdir, account, variables={**variables, **secrets}, gitops={
        "GITOPS_REPOSITORY": deployment.repository.name,
        "GITOPS_ENVIRONMENT": deployment.environment.name,
        "GITOPS_VERSION": release.version,
        "GITOPS_COMMIT": release.commit_sha,
        "GITOPS_PREVIOUS_VERSION": previous.version if previous else "",
        "GITOPS_PREVIOUS_COMMIT": previous.commit_sha if previous else "",
        "GITOPS_DEPLOYMENT_ID": str(deployment.pk),
        "GITOPS_TRIGGER": deployment.trigger,
    })


def scrubbed_environment(workdir, account=None, *, variables, gitops):
    """Only what a step needs: nothing of the portal's own environment leaks (SECRET_KEY, DATABASE_URL…).

    Steps that are not deploy steps (build, checks) call this directly: it looks nothing up, so no
    environment's secrets reach them; only step_environment adds the ones its caller loaded."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": account.pw_dir if account else os.environ.get("HOME", str(workdir)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        **variables,
        **gitops,
    }


def run_step(deployment, step, workdir, environment, heartbeat, log, account=None, *, shared=()):
    """Run one step, streaming its output into the deployment log. Whatever happens here, even an
    exception of the portal's own, the step's process group does not outlive this function.

    `deployment`: anything with `record_step()` (a Build too); `shared`: folders besides `workdir` the step
    may use (see sandbox.wrap)."""
    refusal = sandbox.refusal(account)
    if refusal is not None:  # no seal works here: the step does not start (the run fails with the reason)
        log.write(f"==> {refusal}\n")
        raise sandbox.StepsUnsealed(refusal)
    # What leaves the step's process group and session (`setsid`, a double fork) is still caught: in the
    # run's cgroup where this machine gives one, else as an orphan of this process (its child subreaper).
    cgroup = sandbox.run_cgroup(deployment)
    if cgroup is not None:
        cgroup.create()
    else:
        _become_subreaper()
    children_before = _children()
    with sandbox.sealed(["bash", "-eo", "pipefail", "-c", step.run], account=account, workdir=workdir,
                        timeout=step.timeout, shared=shared, environment=environment,
                        preexec=_seal_step_child(cgroup, account)) as (command, preexec, seal):
        if seal is None:
            log.write("==> UNSEALED: no sandbox works here and GITOPS_ALLOW_UNSEALED_STEPS=1 lets this step run "
                      "anyway; it can read the portal's keys, its database and every environment's secrets\n")
        try:
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,  # on its own pipe, so its lines are marked in the log
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=preexec,
            )
        except BaseException:
            if cgroup is not None:
                cgroup.kill()
            raise
    heartbeat.step_pgid = process.pid
    try:
        _record_step(deployment, process.pid)
        return _follow(step, process, heartbeat, log)
    finally:
        _kill_group(process)  # whatever the step left behind in its group goes with it
        _kill_leftovers(cgroup, children_before)  # and what it left outside its group
        heartbeat.step_pgid = None
        process.stdout.close()
        process.stderr.close()


def _seal_step_child(cgroup, account):
    """The preexec_fn of the step's supervisor: into the run's cgroup while it may still move itself, then
    to the step's account, then the parent-death signal (a change of user would clear it)."""
    def seal():
        if cgroup is not None:
            cgroup.join()
        if account is not None:
            os.setgroups([])
            os.setregid(account.pw_gid, account.pw_gid)
            os.setreuid(account.pw_uid, account.pw_uid)
        _die_with_the_runner()
    return seal


def _become_subreaper():
    """Processes a step orphans (a daemon of `setsid` and a double fork) become this process's children
    rather than init's, so `_kill_leftovers` finds them. Set once, for the life of the process."""
    if _prctl is not None:
        _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children():
    """This process's children now, by (pid, start time): a pid alone could be reused."""
    found = set()
    for child in psutil.Process().children():
        try:
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return found


def _kill_leftovers(cgroup, children_before):
    """After the step's group: kill what the step left elsewhere. With a cgroup, everything in it; without,
    the orphans this process adopted during the step (its new children) and all they started, stopped first
    so none forks away while the others die, then reaped."""
    if cgroup is not None:
        cgroup.kill()
        return
    adopted = []
    for child in psutil.Process().children():
        try:
            if (child.pid, child.create_time()) not in children_before:
                adopted += [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for action in (psutil.Process.suspend, psutil.Process.kill):
        for process in adopted:
            try:
                action(process)
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(adopted, timeout=KILL_GRACE_SECONDS)


def _record_step(deployment, pgid):
    try:
        deployment.record_step(pgid)
    except DATABASE_BLIP as exc:
        logger.warning("could not record the process group of deployment %s (%s)", deployment.pk, exc)
        _reset_connection()


def _follow(step, process, heartbeat, log):
    """Stream the step's stdout and stderr into the log (stderr lines marked) until it ends."""
    streams = {process.stdout.fileno(): STDOUT, process.stderr.fileno(): STDERR}
    # Incremental: a multi-byte character split across two reads is decoded whole.
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in streams}
    for fd in streams:
        os.set_blocking(fd, False)
    open_fds = set(streams)
    started = last_flush = time.monotonic()
    outcome = None
    while True:
        readable, _, _ = select.select(list(open_fds), [], [], LOG_FLUSH_SECONDS) if open_fds else ([], [], [])
        for fd in readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            log.write(run_log.without_marks(decoders[fd].decode(chunk, final=not chunk)), stream=streams[fd])
        eof = not open_fds
        now = time.monotonic()
        if log.pending and (eof or now - last_flush >= LOG_FLUSH_SECONDS or log.pending_size() >= LOG_FLUSH_BYTES):
            log.flush()  # a failure keeps the text pending for the next flush
            last_flush = now
        if outcome is None and heartbeat.stop.is_set():
            lost = heartbeat.lost.is_set()
            outcome = StepOutcome(exit_code=_kill_group(process), cancelled=not lost, lost=lost)
        if outcome is None and now - started >= step.timeout:
            outcome = StepOutcome(exit_code=_kill_group(process), timed_out=True)
        if eof or (outcome is not None and not readable):
            break
        if process.poll() is not None and not readable:
            break  # exited; a background child may hold a pipe open, so do not wait for EOF
    for fd, decoder in decoders.items():
        log.write(run_log.without_marks(decoder.decode(b"", final=True)), stream=streams[fd])
    log.flush(final=True)
    if outcome is None:
        exit_code = process.wait()
        # The supervisor (`timeout`) ended it: exit status 124, or 137 after its SIGKILL.
        timed_out = exit_code in (124, 137) and time.monotonic() - started >= step.timeout - 0.5
        outcome = StepOutcome(exit_code=exit_code, timed_out=timed_out)
    return outcome


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
