"""rq jobs. Each takes ids, loads rows, and calls model methods; the database stays the truth and
the queue is only a wake-up call, so enqueueing twice or losing a job is harmless.

Enqueueing never fails the caller: with Redis away the row that needs the work is already committed,
and the reconciler enqueues it again once the queue is back (see `queue_was_unreachable`)."""

import logging
import threading

import django_rq
from django.db import transaction
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

DEPLOY_QUEUE = "deploy"
GIT_QUEUE = "git"
# Checks run code from any branch or pull request: their own queue, so that they never delay a deployment
# and can be given workers (machines) of their own that hold no deployment credentials.
CHECKS_QUEUE = "checks"


def deployment_job_id(deployment_id):
    return f"deployment-{deployment_id}"


# Per thread (a web request, a job): whether the last enqueue found Redis away, for `queue_was_unreachable`.
_last_enqueue = threading.local()


def _enqueue(queue_name, function, *args, **options):
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


def _enqueue_run(run, queue_name, function, job_id):
    """Record the job id on a run's row (deployment, build, preview, check) and wake a worker for it once
    the current transaction commits. Runs take as long as their steps: no rq timeout (each step has its own)."""
    type(run).objects.filter(pk=run.pk).update(job_id=job_id)
    run.job_id = job_id
    transaction.on_commit(
        lambda: _enqueue(queue_name, function, run.pk, job_id=job_id, job_timeout=-1, result_ttl=600,
                         failure_ttl=86400)
    )


def enqueue_deployment(deployment):
    """Wake a worker for a queued deployment once the current transaction commits."""
    _enqueue_run(deployment, DEPLOY_QUEUE, "pipelines.jobs.run_deployment", deployment_job_id(deployment.pk))


def build_job_id(build_id):
    return f"build-{build_id}"


def enqueue_build(build):
    """Wake a worker for a queued build (on the deploy queue: builds run on the machines that run
    deployments, in the worker's own process)."""
    _enqueue_run(build, DEPLOY_QUEUE, "pipelines.jobs.run_build", build_job_id(build.pk))


def preview_job_id(preview_id):
    return f"preview-{preview_id}"


def enqueue_preview(preview):
    """Wake a worker for a queued preview (on the deploy queue, like deployments: a preview runs with its
    environment's credentials, on the machines that may use them)."""
    _enqueue_run(preview, DEPLOY_QUEUE, "pipelines.jobs.run_preview", preview_job_id(preview.pk))


def check_job_id(check_id):
    return f"check-{check_id}"


def enqueue_check(check):
    """Wake a worker on the checks queue for a queued check."""
    _enqueue_run(check, CHECKS_QUEUE, "pipelines.jobs.run_check", check_job_id(check.pk))


def enqueue_poll(repository_id):
    transaction.on_commit(
        lambda: _enqueue(GIT_QUEUE, "pipelines.jobs.poll_repository", repository_id, job_id=f"poll-{repository_id}",
                         result_ttl=60)
    )


def enqueue_follow_up(follow_up_id):
    transaction.on_commit(lambda: enqueue_follow_up_now(follow_up_id))


def enqueue_follow_up_now(follow_up_id):
    return _enqueue(GIT_QUEUE, "pipelines.jobs.run_follow_up", follow_up_id, job_id=f"follow-up-{follow_up_id}",
                    result_ttl=60, failure_ttl=3600)


def run_deployment(deployment_id):
    from pipelines import runner

    runner.run_deployment(deployment_id)


def run_build(build_id):
    from pipelines import build_runner

    build_runner.run_build(build_id)


def run_preview(preview_id):
    from pipelines import preview_runner

    preview_runner.run_preview(preview_id)


def run_check(check_id):
    from pipelines import check_runner

    check_runner.run_check(check_id)


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
    job = _enqueue(GIT_QUEUE, "pipelines.jobs.poll_repository", repository_id, job_id=job_id, result_ttl=60)
    return "enqueued" if job is not None else "unreachable"


def enqueue_audit_verification(verification_id):
    """Wake a worker for a queued audit verification once the current transaction commits."""
    transaction.on_commit(
        lambda: _enqueue(GIT_QUEUE, "pipelines.jobs.verify_audit_chain", verification_id,
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
