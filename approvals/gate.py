"""The pre-production gate: a release reaches an environment only after it succeeded in the one before.

A person with `approvals.override_gate` may skip the gate with a written reason, which is audited."""

from django.db import transaction

from pipelines.models import AuditEvent, Deployment
from pipelines.promotion import PromotionError, environments_for, promote


class GateClosed(PromotionError):
    pass


def environment_before(release, environment):
    """The environment the release's pipeline file names just before `environment`, or None."""
    earlier = [env for env in environments_for(release) if env.position < environment.position]
    return earlier[-1] if earlier else None


def gate_reason(release, environment):
    """Why the gate is closed for this release and environment, in words; None when it is open."""
    before = environment_before(release, environment)
    if before is None:
        return None
    succeeded = Deployment.objects.filter(release=release, environment=before, status=Deployment.Status.SUCCEEDED)
    if succeeded.exists():
        return None
    return f"{release.version} has not succeeded in {before} yet; it must before it goes to {environment}."


def promote_through_gate(release, environment, *, by, override_reason=""):
    """A deployer's Promote: the gate first, then `pipelines.promotion.promote` (which holds the
    deployment for approval where the environment requires it)."""
    with transaction.atomic():  # an override is audited only together with the deployment it let through
        return _promote_through_gate(release, environment, by=by, override_reason=override_reason)


def _promote_through_gate(release, environment, *, by, override_reason):
    reason = gate_reason(release, environment)
    if reason:
        if not override_reason.strip():
            raise GateClosed(reason)
        if not by.has_perm("approvals.override_gate"):
            raise GateClosed(f"{reason} Only someone allowed to override the gate may skip it.")
        AuditEvent.objects.record(
            action="gate.overridden", actor=by, obj=release, repository=release.repository, environment=environment,
            details={"release": release.version, "gate": reason, "reason": override_reason},
        )
    return promote(release, environment, by=by, reason=override_reason, trigger=Deployment.Trigger.MANUAL)
