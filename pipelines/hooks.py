"""Extension points through which upper layers (approvals) take part without `pipelines` importing them.

All are dotted paths in settings, so the direction of dependency stays one way:
- GITOPS_DEPLOY_GUARDS: functions `(deployments, now) -> {deployment id: reason}`; a reason keeps a queued
  deployment waiting (a freeze window, say) and says why. The reconciler wakes it again later. They take
  many deployments at once so that a reconciler tick costs the same few queries however many wait.
- GITOPS_RECONCILE_HOOKS: functions `(now) -> summary`, run by the reconciler after its own repairs.
- GITOPS_FOLLOW_UP_HANDLERS: {kind: function(follow_up)} for follow-ups the upper layer handles
  (see pipelines/followups.py).
- GITOPS_DASHBOARD_NOTES: functions `(request, deployments) -> DashboardNotes` saying what the upper layer
  knows about the dashboard's cells (`deployments`: the cells' last deployments as DeploymentState) (who must approve, which environment is frozen until when), each in a
  fixed number of queries however many cells the page shows.
- GITOPS_APPROVER_CHECKS: functions `(user, deployment) -> bool`, true when the upper layer counts `user`
  among those who approve for the stage `deployment` goes through (who may read what its preview left)."""

from dataclasses import dataclass, field
from typing import NamedTuple

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string


def hold_reasons(deployments, now=None):
    """{deployment id: why it may not start now} for those of `deployments` that a guard holds."""
    now = now or timezone.now()
    deployments = list(deployments)
    reasons = {}
    for path in settings.GITOPS_DEPLOY_GUARDS:
        for deployment_id, reason in import_string(path)(deployments, now).items():
            reasons.setdefault(deployment_id, reason)
    return reasons


def hold_reason(deployment, now=None):
    """Why this queued deployment may not start now, or None."""
    return hold_reasons([deployment], now).get(deployment.pk)


def run_reconcile_hooks(now):
    return {path: import_string(path)(now) for path in settings.GITOPS_RECONCILE_HOOKS}


class DeploymentState(NamedTuple):
    """What the dashboard knows of a cell's last deployment: enough to ask about it, cheaper than a model."""

    pk: int
    status: str
    environment_id: int
    repository_id: int


@dataclass(frozen=True)
class Note:
    """What a dashboard cell waits for, in words, and where to go to act on it ("" when nowhere)."""

    text: str
    url: str = ""


@dataclass
class DashboardNotes:
    deployments: dict = field(default_factory=dict)  # {deployment id: Note} for what a deployment waits for
    environments: dict = field(default_factory=dict)  # {environment id: Note} for a whole column (a freeze)


def dashboard_notes(request, deployments):
    """The notes of every GITOPS_DASHBOARD_NOTES function for these deployments, merged (first one wins)."""
    deployments = list(deployments)
    merged = DashboardNotes()
    for path in getattr(settings, "GITOPS_DASHBOARD_NOTES", ()):
        notes = import_string(path)(request, deployments)
        for mine, theirs in ((merged.deployments, notes.deployments), (merged.environments, notes.environments)):
            for key, note in theirs.items():
                mine.setdefault(key, note)
    return merged


def may_approve(user, deployment):
    """Whether any GITOPS_APPROVER_CHECKS function counts `user` among the approvers of `deployment`'s stage."""
    return any(import_string(path)(user, deployment) for path in getattr(settings, "GITOPS_APPROVER_CHECKS", ()))
