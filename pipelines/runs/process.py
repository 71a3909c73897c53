"""What a process that runs a run sets on itself (Linux prctl), and the worker it may have been forked by."""

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

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
                         f"the run stays queued.")


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


def die_with_the_runner():
    """preexec_fn of the step's supervisor: SIGTERM when the process (strictly: the thread) that started it dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def become_subreaper():
    """Processes a step orphans (a daemon of `setsid` and a double fork) become this process's children
    rather than init's, so the step's leftovers are found (steps.py). Set once, for the life of the process."""
    if _prctl is not None:
        _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def hide_environment():
    """PR_SET_DUMPABLE=0: /proc/<pid>/environ holds SECRET_KEY, DATABASE_URL and REDIS_URL, and a step running
    as this process's own user could read it otherwise."""
    if _prctl is not None:
        _prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
