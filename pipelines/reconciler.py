"""The periodic repair pass that keeps the database the source of truth.

- `queued` deployments whose rq job is gone (Redis down or flushed) are enqueued again;
- `running` deployments whose heartbeat stopped are failed with "worker lost";
- then the hooks of `settings.GITOPS_RECONCILE_HOOKS` run (see pipelines/hooks.py)."""

import logging
from datetime import timedelta

import django_rq
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from pipelines import hooks, jobs
from pipelines.models import AuditEvent, Deployment, StaleStatus
from pipelines.runner import wake_next_in_line

logger = logging.getLogger(__name__)

_LIVE_JOB_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def reconcile(now=None):
    now = now or timezone.now()
    report = {"requeued": requeue_lost_jobs(now), "worker_lost": fail_lost_workers(now)}
    report.update(hooks.run_reconcile_hooks(now))
    return report


def _job_is_live(connection, job_id):
    if not job_id:
        return False
    try:
        return Job.fetch(job_id, connection=connection).get_status() in _LIVE_JOB_STATUSES
    except NoSuchJobError:
        return False


def requeue_lost_jobs(now):
    """Wake queued deployments whose job is gone, unless a guard (a freeze) still holds them."""
    connection = django_rq.get_connection(jobs.DEPLOY_QUEUE)
    requeued = 0
    # A deployment queued behind a running one of its target is woken when that one ends, not here.
    busy = set(Deployment.objects.filter(status=Deployment.Status.RUNNING).values_list("repository_id", "environment_id"))
    queued = Deployment.objects.filter(status=Deployment.Status.QUEUED).select_related("repository", "environment")
    for deployment in queued:
        if (deployment.repository_id, deployment.environment_id) in busy:
            continue
        if _job_is_live(connection, deployment.job_id) or hooks.hold_reason(deployment, now):
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
