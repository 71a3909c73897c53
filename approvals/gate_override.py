"""Promote through the pre-production gate (pipelines/stage_gate.py), or past it.

A person with `approvals.override_gate` may skip the gate with a written reason, which is audited together
with the deployment it let through."""

from django.db import transaction

from pipelines.stage_gate import GateClosed, environment_before, gate_reason
from pipelines.models import AuditEvent, Deployment
from pipelines.promotion import promote

__all__ = ["GateClosed", "environment_before", "gate_reason", "promote_through_gate"]


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
    deployment = promote(release, environment, by=by, reason=override_reason, trigger=Deployment.Trigger.MANUAL)
    if reason:
        # Recorded after promote() has locked the target: the audit chain's lock is always taken last.
        AuditEvent.objects.record(
            action="gate.overridden", actor=by, obj=release, repository=release.repository, environment=environment,
            details={"release": release.version, "gate": reason, "reason": override_reason,
                     "deployment": deployment.pk},
        )
    return deployment
