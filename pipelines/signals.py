"""The one documented hook from `pipelines` up to `approvals`.

`deployment_held` is sent after the transaction that put a deployment in `awaiting_approval` commits,
with `deployment=`. Receivers must not rely on it alone: the reconciler also finds held deployments
without a change request, so a missed signal loses nothing."""

from django.dispatch import Signal

deployment_held = Signal()
