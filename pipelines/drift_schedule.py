"""When drift checks run (pipelines/models/drift.py): every `drift_interval` of a stage (the reconciler's tick,
`manage.py checkdrift`), and on demand for chosen targets (`checkdrift --now`, the environment page)."""

from django.db.models import Exists, OuterRef, Q, Subquery

from pipelines.models import DriftCheck, Stage, Target
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
