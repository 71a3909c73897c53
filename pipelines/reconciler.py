"""The periodic repair pass that keeps the database the source of truth.

- for every kind of run (pipelines/runs/registry.py): `running` ones whose runner is lost are failed with the
  reason (a build's release then deploys nowhere and says why; a preview's deployment cannot be approved),
  (a deployment's failure wakes the next one of its target); `queued` ones whose rq job is
  gone (Redis down or flushed) are enqueued again (a deployment unless a guard, a freeze, holds it);
- drift checks that are due (a stage's drift interval) are queued;
- follow-ups that are due (never enqueued, lost with Redis, or failed and backing off) are enqueued again;
- the audit chain is verified by a job every GITOPS_AUDIT_VERIFY_EVERY seconds;
- then the hooks of `settings.GITOPS_RECONCILE_HOOKS` run (see pipelines/hooks.py).

A tick costs the same few queries however many deployments wait (a freeze may hold hundreds), and a
Redis outage only postpones the parts that need the queue."""

import logging
import os
from datetime import timedelta

import django_rq
import psutil
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from redis.exceptions import RedisError
from rq.job import Job, JobStatus

from pipelines import drift_schedule, followups, hooks, sandbox
from pipelines.models import AuditEvent, Deployment, StaleStatus
from pipelines.models.audit import schedule_verification_if_due
from pipelines.models.clock import database_now
from pipelines.models.run import this_host
from pipelines.queues import DEPLOY_QUEUE
from pipelines.runs import registry

# Set by `runportal` in its children's environment: its own pid (see _supervised_by_a_live_runportal).
SUPERVISOR_ENV = "GITOPS_SUPERVISOR_PID"

logger = logging.getLogger(__name__)

_LIVE_JOB_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}


def reconcile(now=None):
    """One tick. `now` moves time (tests); by default the lost runs are told on the database's clock, the
    one their heartbeats are written on (a worker's or this host's may be minutes off), and the rest on this
    host's, like the times it compares with (follow-ups due, freeze windows)."""
    runs_now = now or database_now()
    now = now or timezone.now()
    report = {f"{kind.name}s_lost": fail_lost_runs(kind, runs_now) for kind in registry.kinds()}
    try:
        for kind in registry.kinds():
            report[f"{kind.name}s_requeued"] = (requeue_lost_deployments(now) if kind.model is Deployment
                                                 else requeue_lost_runs(kind))
        report["follow_ups"] = followups.redrive(now)
        report["audit_verification_queued"] = schedule_verification_if_due(now) is not None
        report["drift_checks_queued"] = len(drift_schedule.queue_due(now))
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


def requeue_lost_deployments(now):
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
    live = _live_job_ids(django_rq.get_connection(DEPLOY_QUEUE), [deployment.job_id for deployment in queued])
    lost = [deployment for deployment in queued if deployment.job_id not in live]
    held = hooks.hold_reasons(lost, now) if lost else {}
    requeued = 0
    for deployment in lost:
        if deployment.pk in held:
            continue
        with transaction.atomic():
            # Its row before the audit chain (the lock order of pipelines/promotion.py), and still queued.
            if not Deployment.objects.select_for_update().filter(pk=deployment.pk, status=Deployment.Status.QUEUED).exists():
                continue
            AuditEvent.objects.record(
                action="deployment.requeued", obj=deployment, repository=deployment.repository,
                environment=deployment.environment, details={"reason": "it had no live queue job (Redis lost it, or what held it has ended)"},
            )
            deployment.wake()
        requeued += 1
    return requeued


def fail_lost_runs(kind, now):
    """Fail the running runs of `kind` whose runner is lost, with the true reason (a deployment's failure wakes the
    next one of its target: Deployment.transition). `now` is the database's (see reconcile).

    Only once the run is fenced: its lease expired (no heartbeat for GITOPS_WORKER_LOST_AFTER, and the
    runner stops its own step after half of that), or, on the runner's own host, its runner process and its
    step's process group are both gone, so nothing of it can still run (this makes the next run start
    soon after a kill -9). One query, however many run."""
    lost_after = timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER)
    # A step's supervisor outlives a killed runner by at most its kill-after grace; the runner died
    # at most one beat after its last one.
    settled = timedelta(seconds=settings.GITOPS_HEARTBEAT_SECONDS + sandbox.KILL_AFTER_SECONDS + 1)
    here = this_host()
    candidates = kind.rows().filter(status="running").filter(
        Q(heartbeat_at__lt=now - lost_after) | Q(runner_host=here, heartbeat_at__lt=now - settled)
    )
    failed = 0
    for run in candidates:
        reason = _lost_reason(run, now, lost_after, here)
        if reason is None:
            continue
        try:
            run.fail(reason)
        except StaleStatus:
            continue  # it finished while we looked
        failed += 1
    return failed


def _supervised_by_a_live_runportal():
    """Whether this reconciler runs under a live `runportal` (its scheduler child): then the workers that die on
    this host are that process's children, and it fails their runs itself, with how they died (a signal the
    reconciler cannot know). The lease stays the backstop should it fail to."""
    pid = os.environ.get(SUPERVISOR_ENV, "")
    return pid.isdigit() and _process_alive(int(pid), None)


def _lost_reason(run, now, lost_after, here):
    """Why a running run is lost, in words; None while it may still be running."""
    runner_died = run.runner_host == here and not _process_alive(run.runner_pid, run.started_at)
    expired = run.heartbeat_at < now - lost_after
    if runner_died and not expired and _supervised_by_a_live_runportal():
        return None  # runportal reaped it and says how it died (pipelines/dead_workers.py)
    # What its steps left outside their process group (a `setsid` daemon) goes with its dead runner.
    cgroup = sandbox.run_cgroup(run, runner_pid=run.runner_pid) if runner_died else None
    if cgroup is not None and not cgroup.kill(timeout=1) and not expired:
        return None  # not fenced while anything of it lives on
    if not expired and not (runner_died and not _process_group_alive(run.step_pgid)):
        return None
    if runner_died:
        return f"Worker lost: the worker process {run.runner_pid} on {run.runner_host} died (killed or crashed)."
    return (f"Worker lost: no heartbeat from {run.worker_name or 'its worker'} since "
            f"{run.heartbeat_at:%Y-%m-%d %H:%M:%S %Z}.")


def requeue_lost_runs(kind):
    """Wake queued runs of `kind` whose job is gone (Redis lost it): one round trip to Redis, however many wait."""
    queued = list(kind.rows().filter(status="queued"))
    if not queued:
        return 0
    live = _live_job_ids(django_rq.get_connection(kind.queue), [run.job_id for run in queued])
    requeued = 0
    for run in queued:
        if run.job_id in live:
            continue
        with transaction.atomic():
            if not kind.model.objects.select_for_update().filter(pk=run.pk, status="queued").exists():
                continue
            AuditEvent.objects.record(action=f"{kind.name}.requeued", obj=run, **run.audit_scope(),
                                      details={"reason": "it had no live queue job (Redis lost it)"})
            run.wake()
        requeued += 1
    return requeued


def _process_alive(pid, since):
    """Whether process `pid` of this host still runs and is the one that started at `since` (not a reuse)."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return since is None or process.create_time() <= since.timestamp() + 1
    except psutil.NoSuchProcess:
        return False


def _process_group_alive(pgid):
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
