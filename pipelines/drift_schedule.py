"""When drift checks run (pipelines/models/drift.py): every `drift_interval` of a stage (the reconciler's tick,
`manage.py checkdrift`), and on demand for chosen targets (`checkdrift --now`, the environment page); and what
follows a drifted one where the stage corrects drift (`correct`)."""

from django.db import transaction
from django.db.models import F, OuterRef, Q, Subquery

from pipelines import promotion
from pipelines.models import AuditEvent, Deployment, DriftCheck, Stage, Target
from pipelines.models.drift import ACTIVE, drift_steps
from pipelines.runs import kernel


def _targets(repository=None, environment=None):
    """Targets where something runs, with what the checks need, optionally of one repository / environment."""
    targets = Target.objects.filter(current_release__isnull=False).select_related("repository", "environment",
                                                                                    "current_release")
    if repository is not None:
        targets = targets.filter(repository=repository)
    if environment is not None:
        targets = targets.filter(environment=environment)
    return targets


def due(now, repository=None, environment=None, limit=None):
    """The targets whose stage has a drift interval, with no check waiting or running, whose last check was queued
    longer ago than that (or never), the most overdue first (at most `limit`): one query per stage that has an
    interval, reading only the rows it returns."""
    last = (DriftCheck.objects.filter(repository=OuterRef("repository"), environment=OuterRef("environment"))
            .order_by("-created_at").values("created_at")[:1])
    stages = list(Stage.objects.filter(drift_interval__isnull=False))
    # The few targets with a check waiting or running, read once: left out by id, a plan that stays cheap whatever
    # the table's statistics say (a correlated anti-join was planned as a loop over every check, per target).
    waiting = set(DriftCheck.objects.filter(status__in=ACTIVE).values_list("repository_id", "environment_id")) \
        if stages else set()
    found = []
    for stage in stages:
        busy = [repository_id for repository_id, environment_id in waiting if environment_id == stage.environment_id]
        targets = (_targets(repository, environment)
                   .filter(environment=stage.environment_id, repository__lifecycle=stage.lifecycle_id)
                   .exclude(repository__in=busy)
                   .annotate(last_checked=Subquery(last))
                   .filter(Q(last_checked__isnull=True) | Q(last_checked__lt=now - stage.drift_interval))
                   .order_by(F("last_checked").asc(nulls_first=True), "pk"))
        found += list(targets[:limit] if limit is not None else targets)
    found.sort(key=lambda t: (t.last_checked is not None, t.last_checked or now))
    return found[:limit] if limit is not None else found


# At most this many drift checks are queued per tick of the reconciler, the most overdue first: the tick stays short
# however many targets fall due at once, and what is left is queued at the next ticks. At the default tick of 5 s
# that is 600 a minute: 2,000 targets checked every 5 minutes are all queued within 3 minutes (bench/drift_tick.py).
DUE_PER_TICK = 50


def queue_due(now, repository=None, environment=None, limit=DUE_PER_TICK):
    """Queue the checks that are due, in a few statements however many: one INSERT of the checks, one UPDATE of
    their job ids, the audit events in one append, one round trip to Redis. Returns those queued (a target whose
    release has no `drift:` steps there queues none)."""
    wanted = [t for t in due(now, repository, environment, limit) if _has_drift_steps(t)]
    if not wanted:
        return []
    reason = "the stage's drift interval"
    with transaction.atomic():
        checks = DriftCheck.objects.bulk_create([
            DriftCheck(repository=t.repository, environment=t.environment, release=t.current_release,
                       status=DriftCheck.Status.QUEUED, reason=reason) for t in wanted])
        AuditEvent.objects.record_many([
            {"action": "driftcheck.queued", "obj": check, **check.audit_scope(),
             "details": {**check.audit_details(), "reason": reason}} for check in checks])
        kernel.enqueue_many(checks)
    return checks


def _has_drift_steps(target):
    return bool(drift_steps(target.current_release, target.environment))


def queue_now(repository=None, environment=None, *, by=None, reason="asked for now"):
    """Queue a check of every chosen target now, due or not; returns those queued (or already waiting)."""
    queued = [DriftCheck.objects.queue_for(t.repository, t.environment, reason=reason, by=by)
              for t in _targets(repository, environment)]
    return [check for check in queued if check is not None]


def correct(follow_up):
    """The handler of CORRECT_DRIFT: deploy again the release the drifted check found changed, through promote
    (so a stage that holds for approval holds the correction, and a freeze holds it), unless something else
    was deployed there since. Idempotent: the correction an earlier attempt made is returned."""
    check = DriftCheck.objects.select_related("repository", "environment", "release").get(
        pk=follow_up.payload["drift_check"])
    reason = f"Correcting drift: drift check #{check.pk} found {check.environment} is not what {check.release.version} says."
    earlier = Deployment.objects.for_target(check.repository, check.environment).filter(
        trigger=Deployment.Trigger.RECONCILE, reason=reason).first()
    if earlier is not None:
        return earlier
    target = Target.objects.filter(repository=check.repository, environment=check.environment).first()
    refusal = None
    if target is None or target.current_release_id != check.release_id:
        refusal = "another release was deployed there since the check"
    else:
        try:
            return promotion.promote(check.release, check.environment, by=None, reason=reason,
                                     trigger=Deployment.Trigger.RECONCILE)
        except promotion.PromotionError as exc:
            refusal = str(exc)
    AuditEvent.objects.record(action="drift.correction_skipped", obj=check, **check.audit_scope(),
                              details={**check.audit_details(), "reason": refusal})
    return None
