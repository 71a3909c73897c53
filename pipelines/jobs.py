"""rq jobs other than runs (polls, follow-ups, the reconciler, audit verification), and how they are enqueued.
Each takes ids, loads rows, and calls model methods (pipelines/queues.py: the queue is only a wake-up call).
Every kind of run has one job, `pipelines.runs.kernel.run` (pipelines/runs/)."""

import logging

import django_rq
from django.db import transaction
from redis.exceptions import RedisError

from pipelines.queues import CHECKS_QUEUE, DEPLOY_QUEUE, GIT_QUEUE, enqueue, queue_was_unreachable  # noqa: F401

logger = logging.getLogger(__name__)


def enqueue_poll(repository_id):
    transaction.on_commit(
        lambda: enqueue(GIT_QUEUE, "pipelines.jobs.poll_repository", repository_id, job_id=f"poll-{repository_id}",
                         result_ttl=60)
    )


def enqueue_follow_up(follow_up_id):
    transaction.on_commit(lambda: enqueue_follow_up_now(follow_up_id))


def enqueue_follow_up_now(follow_up_id):
    return enqueue(GIT_QUEUE, "pipelines.jobs.run_follow_up", follow_up_id, job_id=f"follow-up-{follow_up_id}",
                    result_ttl=60, failure_ttl=3600)


def poll_repository(repository_id):
    from pipelines import tracking
    from pipelines.models import Repository

    repository = Repository.objects.pollable().filter(pk=repository_id).first()
    if repository is not None:
        tracking.poll_repository(repository)


def run_follow_up(follow_up_id):
    from pipelines import followups

    followups.carry_out(follow_up_id)


def reconcile():
    from pipelines import reconciler

    reconciler.reconcile()


def poll_job_id(repository_id):
    return f"poll-{repository_id}"


_PENDING_JOB_STATUSES = ("queued", "started", "deferred", "scheduled")


def enqueue_poll_unless_pending(repository_id):
    """Enqueue a poll now unless one for this repository waits or runs: "enqueued", "pending" or "unreachable".

    The scheduler calls it every tick for each due repository; a second poll job would only repeat the first."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    job_id = poll_job_id(repository_id)
    try:
        connection = django_rq.get_connection(GIT_QUEUE)
        try:
            if Job.fetch(job_id, connection=connection).get_status(refresh=False) in _PENDING_JOB_STATUSES:
                return "pending"
        except NoSuchJobError:
            pass
    except RedisError as exc:
        logger.warning("could not look up job %s (%s); the next tick tries again", job_id, exc)
        return "unreachable"
    job = enqueue(GIT_QUEUE, "pipelines.jobs.poll_repository", repository_id, job_id=job_id, result_ttl=60)
    return "enqueued" if job is not None else "unreachable"


def enqueue_audit_verification(verification_id):
    """Wake a worker for a queued audit verification once the current transaction commits."""
    transaction.on_commit(
        lambda: enqueue(GIT_QUEUE, "pipelines.jobs.verify_audit_chain", verification_id,
                         job_id=f"audit-verification-{verification_id}", result_ttl=60, failure_ttl=86400)
    )


def verify_audit_chain(verification_id=None):
    """Walk the audit chain and record the outcome as an AuditVerification (see pipelines/models/audit.py)."""
    from pipelines.models.audit import run_verification

    run_verification(verification_id)


def install_wakeups():
    """Carry out the models' requests to wake a worker (pipelines/models/wakeups.py); PipelinesConfig.ready.
    Each enqueues once the current transaction commits, as the models expect."""
    from pipelines.models import wakeups

    wakeups.install("enqueue_poll", enqueue_poll)
    wakeups.install("enqueue_follow_up", enqueue_follow_up)
    wakeups.install("enqueue_audit_verification", enqueue_audit_verification)
