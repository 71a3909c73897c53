"""One step of a run: `bash -eo pipefail -c <run>` in its own process group, sealed (pipelines/sandbox.py),
under its own account where one is set, its output streamed into the run's log; and what its environment holds.

Whatever happens, nothing a step started outlives it: its process group is killed when it ends, times out or
is stopped, and what left the group (a `setsid` daemon) dies with the run's cgroup, or as an orphan of this
process (its child subreaper)."""

import codecs
import logging
import os
import pwd
import select
import signal
import subprocess
import time
from dataclasses import dataclass

import psutil
from django.conf import settings

from pipelines import run_log, sandbox

from .blips import DATABASE_BLIP, reset_connection
from .log import LOG_FLUSH_BYTES, LOG_FLUSH_SECONDS, STDERR, STDOUT
from .process import become_subreaper, die_with_the_runner

logger = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 5
# A cancelled step gets this long after SIGTERM before SIGKILL: a cancel stops the step within 2 s.
CANCEL_GRACE_SECONDS = 1.5


@dataclass
class StepOutcome:
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False
    lost: bool = False


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


def hand_over(workdir, account):
    """Give the step's account what it works in (the checkout, the artifacts folder)."""
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
    environment's secrets reach them; only the deploy kind's environment adds the ones its run loaded."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": account.pw_dir if account else os.environ.get("HOME", str(workdir)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        **variables,
        **gitops,
    }


def run_step(run, step, workdir, environment, heartbeat, log, account=None, *, shared=()):
    """Run one step, streaming its output into the run's log. Whatever happens here, even an
    exception of the portal's own, the step's process group does not outlive this function.

    `run`: the claimed FencedRun; `shared`: folders besides `workdir` the step
    may use (see sandbox.wrap)."""
    refusal = sandbox.refusal(account)
    if refusal is not None:  # no seal works here: the step does not start (the run fails with the reason)
        log.write(f"==> {refusal}\n")
        raise sandbox.StepsUnsealed(refusal)
    # What leaves the step's process group and session (`setsid`, a double fork) is still caught: in the
    # run's cgroup where this machine gives one, else as an orphan of this process (its child subreaper).
    cgroup = sandbox.run_cgroup(run)
    if cgroup is not None:
        cgroup.create()
    else:
        become_subreaper()
    children_before = _children() if cgroup is None else set()  # with a cgroup, its kill takes every leftover
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
        _record_step(run, process.pid)
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
        die_with_the_runner()
    return seal


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


def _record_step(run, pgid):
    try:
        run.record_step(pgid)
    except DATABASE_BLIP as exc:
        logger.warning("could not record the process group of %s (%s)", run, exc)
        reset_connection()


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
        # Stored every LOG_FLUSH_SECONDS while the step runs; what a short step printed goes with what follows
        # it (the step's end line, the next step's start), in one piece: one INSERT, not one per step.
        if log.pending and (now - last_flush >= LOG_FLUSH_SECONDS or log.pending_size() >= LOG_FLUSH_BYTES):
            log.flush()  # a failure keeps the text pending for the next flush
            last_flush = now
        if outcome is None and heartbeat.stop.is_set():
            lost = heartbeat.lost.is_set()
            grace = KILL_GRACE_SECONDS if lost else CANCEL_GRACE_SECONDS
            outcome = StepOutcome(exit_code=_kill_group(process, grace=grace), cancelled=not lost, lost=lost)
        if outcome is None and now - started >= step.timeout:
            outcome = StepOutcome(exit_code=_kill_group(process), timed_out=True)
        if eof or (outcome is not None and not readable):
            break
        if process.poll() is not None and not readable:
            break  # exited; a background child may hold a pipe open, so do not wait for EOF
    for fd, decoder in decoders.items():
        log.write(run_log.without_marks(decoder.decode(b"", final=True)), stream=streams[fd])
    log.end_streams()
    if outcome is None:
        exit_code = process.wait()
        # The supervisor (`timeout`) ended it: exit status 124, or 137 after its SIGKILL.
        timed_out = exit_code in (124, 137) and time.monotonic() - started >= step.timeout - 0.5
        outcome = StepOutcome(exit_code=exit_code, timed_out=timed_out)
    return outcome


def _kill_group(process, *, grace=KILL_GRACE_SECONDS):
    """SIGTERM the step's process group, SIGKILL it after `grace` seconds; returns the exit status."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return process.wait()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the leader may be gone while others in its group linger
    except ProcessLookupError:
        pass
    return process.wait()
