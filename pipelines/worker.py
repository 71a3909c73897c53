"""The rq worker class of the portal (settings.RQ["WORKER_CLASS"]): a worker that outlives a Redis outage
and runs every kind of run (deployments, builds, previews, checks) in its own process.

rq's own loop quits on most errors that reach it, and one that meets Redis away as a job ends (its
bookkeeping after the job, a maintenance task) exits for good. The database holds the truth and the
reconciler re-enqueues what the queue lost, so the right response is to wait for Redis and go on.

Runs go in the worker's process, not in a forked work-horse. A work-horse costs each run a fork,
a fresh database connection (a new PostgreSQL backend with cold caches) and its teardown: about 40 ms
of a no-op deployment's 80. The run needs none of a work-horse's protection: it catches its own errors,
its step runs in a sandbox under a supervisor that dies with this process, and its lease fences it if
this process dies. Other jobs (polls, follow-ups: git and handlers of other apps) still fork."""

import gc
import logging
import threading
import time
import uuid

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Worker
from rq.exceptions import StopRequested
from rq.worker import WorkerStatus

from pipelines import forks

logger = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30
# Jobs run in the worker's own process (see above): every kind of run (pipelines/runs/kernel.py).
IN_PROCESS_JOBS = frozenset({"pipelines.runs.kernel.run"})


class PortalWorker(Worker):
    def work(self, burst=False, **options):
        _hide_this_processs_environment()
        _probe_the_step_sandbox()
        wait = 1.0
        while True:
            try:
                worked = super().work(burst=burst, **options)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                worked = False
                logger.warning("worker %s lost Redis (%s)", self.name, exc)
            if burst or self._stopping():
                return worked
            # rq's loop ended without being asked to stop: most likely Redis went away. Wait for it,
            # then start again under a fresh name (the old one may still be registered as alive).
            try:
                wait = self._wait_for_redis(wait)
            except StopRequested:
                return worked
            if self._stopping():
                return worked
            self.name = uuid.uuid4().hex

    def execute_job(self, job, queue):
        if job.func_name not in IN_PROCESS_JOBS:
            return super().execute_job(job, queue)
        execution = self.prepare_execution(job)
        forks.clean_database_connections()
        try:
            with _RqHeartbeats(self, job, execution):
                self.perform_job(job, queue, execution)
        finally:
            forks.clean_database_connections()
        self.set_state(WorkerStatus.IDLE)

    def kill_horse(self, *args, **kwargs):
        """rq's "stop job" command kills the work-horse's process group; with no work-horse (a run in this
        process) that group would be the worker's own. The run is cancelled instead, as the portal's cancel
        does it (recorded, audited, its step stopped at once: pipelines/runs/kernel.stop_job)."""
        if not self.horse_pid:
            from pipelines.runs import kernel

            if not kernel.stop_job(self.get_current_job_id()):
                logger.warning("worker %s: asked to stop job %s, which runs no run here", self.name,
                               self.get_current_job_id())
            return
        super().kill_horse(*args, **kwargs)

    def _stopping(self):
        return self._stop_requested or self._shutdown_requested_date is not None

    def _wait_for_redis(self, wait):
        while not self._stopping():
            try:
                self.connection.ping()
                return 1.0
            except RedisError as exc:
                logger.warning("worker %s: Redis is unreachable (%s); trying again in %.0f s", self.name, exc, wait)
                time.sleep(wait)  # a worker with nothing to do may wait: this is not a test
                wait = min(wait * 2, MAX_WAIT_SECONDS)
        return wait


class _RqHeartbeats:
    """What rq's loop does for a forked work-horse while it waits for it: keep the worker's, the job's and
    the execution's heartbeats in Redis fresh, so that a long step is not taken for an abandoned job.
    A thread, since the job runs in the main one; Redis being away only skips a beat."""

    def __init__(self, worker, job, execution):
        self.worker, self.job, self.execution = worker, job, execution
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"rq-heartbeat-{job.id}", daemon=True)

    def _beat(self):
        while not self.finished.wait(self.worker.job_monitoring_interval):
            try:
                self.worker.maintain_heartbeats(self.job, self.execution)
            except Exception as exc:
                logger.warning("worker %s: could not renew the heartbeats of job %s (%s)", self.worker.name,
                               self.job.id, exc)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.finished.set()
        self.thread.join()



def _probe_the_step_sandbox():
    """Probe the step sandbox once (bubblewrap, else Landlock: pipelines/sandbox.py) and say which seal is in
    force, before any work-horse is forked: each inherits the answer, instead of probing again (and warning
    again where one does not work) for every deployment. And import what the
    jobs need, for the same reason: what is not imported here, every work-horse imports again."""
    from django.conf import settings
    from django.db import connections
    from django.utils.module_loading import import_string

    from pipelines import followups, promotion, sandbox, tracking  # noqa: F401
    from pipelines.runs import kernel, steps  # noqa: F401

    for path in [*settings.GITOPS_DEPLOY_GUARDS, *settings.GITOPS_FOLLOW_UP_HANDLERS.values()]:
        import_string(path)
    try:
        sandbox.seal_for(steps.step_account())
    except Exception:
        logger.exception("could not probe the step sandbox here; each run will probe it itself")
    connections.close_all()  # a work-horse must never share a database connection with its parent
    # What is imported now stays as it is in every work-horse: out of the collector's sight, its pages are
    # not written (copied) by each horse's garbage collections.
    gc.freeze()


def _hide_this_processs_environment():
    """PR_SET_DUMPABLE=0 on the worker itself (its work-horses do the same): /proc/<worker>/environ holds
    SECRET_KEY, DATABASE_URL and REDIS_URL, and a step running as the worker's own user could read it."""
    from pipelines.runs import process

    process.hide_environment()
