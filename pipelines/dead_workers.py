"""The runs of a worker that died, failed with how it died, by the process that saw it die (runportal).

Only the parent of a worker learns its exit status (a signal such as SIGSEGV, or the OOM killer's SIGKILL);
the reconciler, which finds the runner gone later, can only say "killed or crashed". The fence is the
reconciler's own: a run is failed only once its step's process group is gone too (the step's supervisor
outlives its runner by at most its kill-after grace), so the next run of its target starts only after that.
Where steps run in a cgroup of their run (pipelines/sandbox.py), it is killed first, at once: with it every
process of the step, even a daemon that left the step's process group."""

import signal
from datetime import timedelta

from pipelines import sandbox
from pipelines.models import StaleStatus
from pipelines.models.run import this_host
from pipelines.reconciler import _process_group_alive
from pipelines.runs import registry


def how_it_ended(returncode):
    """A Popen return code in words: "signal 11 (SIGSEGV)" for a negative one, "status 3" otherwise."""
    if returncode >= 0:
        return f"status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {-returncode} ({name})"


def fail_runs_of(pid, *, started_at, returncode):
    """Fail the running runs of the dead worker `pid` (on this host, claimed since `started_at`, when that
    process started) whose step is gone. True when none of its runs is left running; False while a step
    still runs (ask again)."""
    host = this_host()
    reason = f"Worker lost: the worker process {pid} on {host} died: {how_it_ended(returncode)}."
    waiting = False
    for kind in registry.kinds():
        runs = kind.rows().filter(status="running", runner_host=host, runner_pid=pid,
                                  started_at__gte=started_at - timedelta(seconds=1))
        for run in runs:
            cgroup = sandbox.run_cgroup(run, runner_pid=pid)
            if cgroup is not None and not cgroup.kill(timeout=0.5):
                waiting = True
                continue
            if _process_group_alive(run.step_pgid):
                waiting = True
                continue
            try:
                run.fail(reason)
            except StaleStatus:
                continue  # the reconciler got there first
    return not waiting
