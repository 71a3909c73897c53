"""When drift checks run (pipelines/models/drift.py): every `drift_interval` of a stage (the reconciler's tick,
`manage.py checkdrift`), and on demand for chosen targets (`checkdrift --now`, the environment page); and what
follows a drifted one where the stage corrects drift (`correct`)."""

from django.db.models import Exists, OuterRef, Q, Subquery

from pipelines import promotion
from pipelines.models import AuditEvent, Deployment, DriftCheck, Stage, Target
from pipelines.models.drift import ACTIVE


def _targets(repository=None, environment=None):
    """Targets where something runs, with what the checks need, optionally of one repository / environment."""
    targets = Target.objects.filter(current_release__isnull=False).select_related("repository", "environment",
                                                                                    "current_release")
    if repository is not None:
        targets = targets.filter(repository=repository)
    if environment is not None:
        targets = targets.filter(environment=environment)
    return targets


def due(now, repository=None, environment=None):
    """The targets whose stage has a drift interval, with no check waiting or running, whose last check was queued
    longer ago than that (or never): one query per stage that has an interval."""
    of_target = DriftCheck.objects.filter(repository=OuterRef("repository"), environment=OuterRef("environment"))
    last = of_target.order_by("-created_at").values("created_at")[:1]
    waiting = of_target.filter(status__in=ACTIVE)
    found = []
    for stage in Stage.objects.filter(drift_interval__isnull=False):
        found += list(_targets(repository, environment)
                      .filter(environment=stage.environment_id, repository__lifecycle=stage.lifecycle_id)
                      .annotate(last_checked=Subquery(last), waiting=Exists(waiting)).filter(waiting=False)
                      .filter(Q(last_checked__isnull=True) | Q(last_checked__lt=now - stage.drift_interval)))
    return found


def queue_due(now, repository=None, environment=None):
    """Queue the checks that are due; returns those queued (a target whose release has no `drift:` steps there
    queues none)."""
    queued = [DriftCheck.objects.queue_for(t.repository, t.environment, reason="the stage's drift interval")
              for t in due(now, repository, environment)]
    return [check for check in queued if check is not None]


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
