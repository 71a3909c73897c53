"""The periodic repair pass that keeps the database the source of truth.

- `queued` deployments whose rq job is gone (Redis down or flushed) are enqueued again;
- `running` deployments whose lease expired are failed with the reason their runner was lost;
- follow-ups that are due (never enqueued, lost with Redis, or failed and backing off) are enqueued again;
- then the hooks of `settings.GITOPS_RECONCILE_HOOKS` run (see pipelines/hooks.py).

A tick costs the same few queries however many deployments wait (a freeze may hold hundreds), and a
Redis outage only postpones the parts that need the queue."""

import logging
from datetime import timedelta

import django_rq
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError
from rq.job import Job, JobStatus

from pipelines import followups, hooks, jobs
from pipelines.models import AuditEvent, Deployment, StaleStatus
from pipelines.runner import wake_next_in_line

logger = logging.getLogger(__name__)

_LIVE_JOB_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def reconcile(now=None):
    now = now or timezone.now()
    report = {"worker_lost": fail_lost_workers(now)}
    try:
        report["requeued"] = requeue_lost_jobs(now)
        report["follow_ups"] = followups.redrive(now)
    except RedisError as exc:
        logger.warning("the queue is unreachable (%s); queued work will be enqueued again once it is back", exc)
        report["queue_unreachable"] = str(exc)
    report.update(hooks.run_reconcile_hooks(now))
    return report


def _live_job_ids(connection, job_ids):
    """The ids among `job_ids` whose rq job is waiting or running: one round trip to Redis."""
    job_ids = [job_id for job_id in job_ids if job_id]
    if not job_ids:
        return set()
    found = Job.fetch_many(job_ids, connection=connection)
    return {job.id for job in found if job is not None and job.get_status(refresh=False) in _LIVE_JOB_STATUSES}


def requeue_lost_jobs(now):
    """Wake queued deployments whose job is gone, unless a guard (a freeze) still holds them."""
    # A deployment queued behind a running one of its target is woken when that one ends, not here.
    busy = set(Deployment.objects.filter(status=Deployment.Status.RUNNING).values_list("repository_id", "environment_id"))
    queued = [
        deployment
        for deployment in Deployment.objects.filter(status=Deployment.Status.QUEUED).select_related("repository", "environment")
        if (deployment.repository_id, deployment.environment_id) not in busy
    ]
    if not queued:
        return 0
    live = _live_job_ids(django_rq.get_connection(jobs.DEPLOY_QUEUE), [deployment.job_id for deployment in queued])
    lost = [deployment for deployment in queued if deployment.job_id not in live]
    held = hooks.hold_reasons(lost, now) if lost else {}
    requeued = 0
    for deployment in lost:
        if deployment.pk in held:
            continue
        with transaction.atomic():
            AuditEvent.objects.record(
                action="deployment.requeued", obj=deployment, repository=deployment.repository,
                environment=deployment.environment, details={"reason": "it had no live queue job (Redis lost it, or what held it has ended)"},
            )
            jobs.enqueue_deployment(deployment)
        requeued += 1
    return requeued


def fail_lost_workers(now):
    deadline = now - timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER)
    lost = Deployment.objects.filter(status=Deployment.Status.RUNNING, heartbeat_at__lt=deadline).select_related(
        "release", "repository", "environment"
    )
    failed = 0
    for deployment in lost:
        try:
            deployment.fail(
                f"Worker lost: no heartbeat from {deployment.worker_name or 'its worker'} since "
                f"{deployment.heartbeat_at:%Y-%m-%d %H:%M:%S %Z}."
            )
        except StaleStatus:
            continue  # it finished while we looked
        failed += 1
        wake_next_in_line(deployment)
    return failed
