"""The rq worker class of the portal (settings.RQ["WORKER_CLASS"]): a worker that outlives a Redis outage.

rq's own loop quits on most errors that reach it, and one that meets Redis away as a job ends (its
bookkeeping after the job, a maintenance task) exits for good. The database holds the truth and the
reconciler re-enqueues what the queue lost, so the right response is to wait for Redis and go on."""

import gc
import logging
import time
import uuid

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Worker
from rq.exceptions import StopRequested

logger = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30


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


def _probe_the_step_sandbox():
    """Probe bubblewrap once, before any work-horse is forked: each inherits the answer, instead of
    probing again (and warning again where it does not work) for every deployment. And import what the
    jobs need, for the same reason: what is not imported here, every work-horse imports again."""
    from django.conf import settings
    from django.db import connections
    from django.utils.module_loading import import_string

    from pipelines import followups, promotion, runner, sandbox, tracking  # noqa: F401

    for path in [*settings.GITOPS_DEPLOY_GUARDS, *settings.GITOPS_FOLLOW_UP_HANDLERS.values()]:
        import_string(path)
    try:
        sandbox.bubblewrap_for(runner.step_account())
    except Exception:
        logger.exception("could not probe the step sandbox here; each run will probe it itself")
    connections.close_all()  # a work-horse must never share a database connection with its parent
    # What is imported now stays as it is in every work-horse: out of the collector's sight, its pages are
    # not written (copied) by each horse's garbage collections.
    gc.freeze()


def _hide_this_processs_environment():
    """PR_SET_DUMPABLE=0 on the worker itself (its work-horses do the same): /proc/<worker>/environ holds
    SECRET_KEY, DATABASE_URL and REDIS_URL, and a step running as the worker's own user could read it."""
    from pipelines import runner

    if runner._prctl is not None:
        runner._prctl(runner.PR_SET_DUMPABLE, 0, 0, 0, 0)
