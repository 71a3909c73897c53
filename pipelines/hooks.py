"""Extension points through which upper layers (approvals) take part without `pipelines` importing them.

Both are lists of dotted paths in settings, so the direction of dependency stays one way:
- GITOPS_DEPLOY_GUARDS: functions `(deployment, now) -> str | None`; a non-empty answer keeps a queued
  deployment waiting (a freeze window, say) and says why. The reconciler wakes it again later.
- GITOPS_RECONCILE_HOOKS: functions `(now) -> summary`, run by the reconciler after its own repairs."""

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string


def hold_reason(deployment, now=None):
    """Why this queued deployment may not start now, or None."""
    now = now or timezone.now()
    for path in settings.GITOPS_DEPLOY_GUARDS:
        reason = import_string(path)(deployment, now)
        if reason:
            return reason
    return None


def run_reconcile_hooks(now):
    return {path: import_string(path)(now) for path in settings.GITOPS_RECONCILE_HOOKS}
