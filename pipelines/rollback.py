"""Automatic rollback: a deployment that fails in a stage that rolls back on failure is followed by a deployment of
the release that last succeeded on that target (trigger `rollback`, by nobody: the portal).

- The failure records the ROLLBACK_AFTER_FAILURE follow-up in its own transaction (Deployment._change_status), so
  a rollback is never lost to a crash; this module carries it out.
- What runs there is the target's `current_release`: written by the last success only (a failure leaves it), so it
  is the release that last succeeded — and verified, since verify steps are part of a success.
- The rollback goes through `promote`, so it obeys the stage: where the stage holds for approval, its deployment
  waits, and approvals either lets it through at once (the stage's policy has "pre-approved rollback") or opens a
  change request for it (approvals/opening.py). `promote` pauses the target's automatic deployment, so the failed
  release (or a newer one) is not deployed over the rollback until someone resumes it.
- No loops: a rollback that fails is not rolled back; the people answerable for the stage are mailed instead, as
  they are of every automatic rollback (approvals/notifications.py)."""

import logging

from django.db import transaction

from pipelines import promotion
from pipelines.models import AuditEvent, Deployment, FollowUp, Target

logger = logging.getLogger(__name__)

AUTOMATIC_ROLLBACK = Deployment.AUTOMATIC_ROLLBACK


def after_failure(follow_up):
    """The handler of the ROLLBACK_AFTER_FAILURE follow-up: deploy again what ran before the failed deployment.
    Idempotent (a follow-up may run twice): the rollback an earlier attempt created is returned."""
    failed = Deployment.objects.select_related("release", "repository", "environment").get(pk=follow_up.deployment_id)
    target = Target.objects.filter(repository=failed.repository, environment=failed.environment) \
        .select_related("current_release").first()
    good = target.current_release if target is not None else None
    since = Deployment.objects.for_target(failed.repository, failed.environment).filter(pk__gt=failed.pk)
    earlier = since.filter(trigger=Deployment.Trigger.ROLLBACK, triggered_by=None, created_at__gte=follow_up.created_at).first()
    if earlier is not None:
        return earlier
    reason = None
    if good is None:
        reason = "nothing succeeded on this target before"
    elif good.pk == failed.release_id:
        reason = f"{good.version} is what ran there before"
    elif since.exists():
        reason = "another deployment of this target came after the failed one"
    if reason:
        AuditEvent.objects.record(action="rollback.skipped", obj=failed, repository=failed.repository,
                                  environment=failed.environment,
                                  details={"release": failed.release.version, "reason": reason})
        return None
    why = (f"{AUTOMATIC_ROLLBACK}: {failed.release.version} (deployment #{failed.pk}) failed in {failed.environment}"
           f" ({failed.error[:300]}); back to {good.version}, which ran there before.")
    try:
        with transaction.atomic():  # the rollback and its mail land together
            rollback = promotion.promote(good, failed.environment, by=None, reason=why, trigger=Deployment.Trigger.ROLLBACK)
            FollowUp.objects.schedule(Deployment.ROLLBACK_MAIL, deployment=rollback, repository=failed.repository,
                                      payload={"what": "rolled_back", "failed": failed.pk})
        return rollback
    except promotion.PromotionError as exc:  # blocked since, say: said in the audit log, not retried forever
        AuditEvent.objects.record(action="rollback.skipped", obj=failed, repository=failed.repository,
                                  environment=failed.environment,
                                  details={"release": failed.release.version, "to": good.version, "reason": str(exc)})
        return None
