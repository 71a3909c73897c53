"""The rq queues: how the portal wakes a worker. The database stays the truth and a queue is only a wake-up
call, so enqueueing twice or losing a job is harmless.

Enqueueing never fails the caller: with Redis away the row that needs the work is already committed, and the
reconciler enqueues it again once the queue is back (see `queue_was_unreachable`)."""

import logging
import threading

import django_rq
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

DEPLOY_QUEUE = "deploy"
GIT_QUEUE = "git"
# Checks run code from any branch or pull request: their own queue, so that they never delay a deployment
# and can be given workers (machines) of their own that hold no deployment credentials.
CHECKS_QUEUE = "checks"
# Drift checks: their own queue, listed last by the workers, so a deployment never waits behind them.
DRIFT_QUEUE = "drift"

# Per thread (a web request, a job): whether the last enqueue found Redis away, for `queue_was_unreachable`.
_last_enqueue = threading.local()


def enqueue(queue_name, function, *args, **options):
    """Enqueue now; on a Redis error log and return None: the database row re-drives it later."""
    try:
        job = django_rq.get_queue(queue_name, commit_mode="auto").enqueue(function, *args, **options)
    except RedisError as exc:
        logger.warning("could not enqueue %s%r (%s); the reconciler will enqueue it once Redis is back", function, args, exc)
        _last_enqueue.failed = True
        return None
    _last_enqueue.failed = False
    return job


def queue_was_unreachable():
    """True when the last enqueue of this thread found Redis away (and forget it): a page can then say that
    the work is recorded and starts once the queue is back, instead of pretending it started."""
    failed = getattr(_last_enqueue, "failed", False)
    _last_enqueue.failed = False
    return failed
