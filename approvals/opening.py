"""Opening a change request for a held deployment.

`pipelines` records a `deployment.held` follow-up in the transaction that holds a deployment; its job
calls `on_deployment_held` (settings.GITOPS_FOLLOW_UP_HANDLERS), and a failure (git away, say) is retried.
The reconciler also opens a request for any held deployment without one. Opening is idempotent: one
request per deployment, however many callers race."""

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals import changes
from approvals.models import ChangeRequest
from pipelines.models import AuditEvent, Deployment, FollowUp, Stage

logger = logging.getLogger(__name__)



def on_deployment_held(follow_up):
    """The handler of the `deployment.held` follow-up; raises to be retried."""
    open_change_request(follow_up.deployment)


def open_change_request(deployment):
    """The change request of a held deployment, opened now if it has none; None when it is not held.

    What the change contains is read from git before the transaction, so no lock waits on git."""
    existing = ChangeRequest.objects.filter(deployment_id=deployment.pk).first()
    if existing is not None:
        return existing
    deployment = Deployment.objects.select_related(
        "release", "environment", "repository", "triggered_by", "previous_release"
    ).get(pk=deployment.pk)
    if deployment.status != Deployment.Status.AWAITING_APPROVAL:
        return None
    environment = deployment.environment
    stage = Stage.objects.select_related("lifecycle").for_target(deployment.repository, environment)
    if stage is None:
        # The repository moved to a lifecycle without this environment while the deployment waited.
        deployment.cancel(reason=f"{deployment.repository} now follows the lifecycle {deployment.repository.lifecycle}, "
                                 f"which does not deploy to {environment}.")
        return None
    policy = getattr(stage, "approval_policy", None)
    change = changes.inspect(deployment)
    with transaction.atomic():
        # The row lock orders us against a concurrent cancel (a newer candidate) and a second opener.
        status = Deployment.objects.select_for_update().filter(pk=deployment.pk).values_list("status", flat=True).get()
        if status != Deployment.Status.AWAITING_APPROVAL:
            return None
        opened_at = timezone.now()
        try:
            with transaction.atomic():
                change_request = ChangeRequest.objects.create(
                    deployment=deployment,
                    repository=deployment.repository,
                    environment=environment,
                    stage=stage,
                    requested_by=deployment.triggered_by,
                    required_approvals=policy.required_approvals if policy else 1,
                    opened_at=opened_at,
                    expires_at=opened_at + policy.approval_timeout if policy and policy.approval_timeout else None,
                    summary=change.summary,
                    author_emails=change.author_emails,
                )
        except IntegrityError:
            return ChangeRequest.objects.get(deployment_id=deployment.pk)  # another caller opened it first
        AuditEvent.objects.record(
            action="change_request.opened",
            actor=deployment.triggered_by,
            obj=change_request,
            repository=deployment.repository,
            environment=environment,
            details={
                "deployment": deployment.pk,
                "release": deployment.release.version,
                "commit": deployment.release.commit_sha,
                "from": (change.summary["from"] or {}).get("version"),
                "lifecycle": stage.lifecycle.name,
                "required_approvals": change_request.required_approvals,
                "expires_at": change_request.expires_at.isoformat() if change_request.expires_at else None,
                # Which way it goes, by git ancestry: "rollback" or "diverged" take commit_count commits out.
                "direction": change.summary["direction"],
                "is_rollback": change.summary["is_rollback"],
                "commit_count": change.summary["commit_count"],
                "added_count": change.summary["added_count"],
            },
        )
        close_orphans(
            ChangeRequest.objects.pending()
            .filter(repository_id=deployment.repository_id, environment_id=environment.pk)
            .exclude(pk=change_request.pk)
        )
        FollowUp.objects.schedule(
            "mail.change_request_opened", deployment=deployment, payload={"change_request": change_request.pk}
        )
    if deployment.is_automatic_rollback and policy is not None and policy.pre_approved_rollback:
        change_request.approve_by_policy(reason=f"Pre-approved rollback: the approval policy of {stage} lets a "
                                                f"rollback after a failure through without a new approval.")
    return change_request


def close_orphans(change_requests):
    """Close the pending requests among `change_requests` whose deployment no longer waits for approval.

    Superseded when pipelines cancelled it for a newer candidate, withdrawn otherwise.
    Returns {"superseded": n, "withdrawn": n}."""
    closed = {"superseded": 0, "withdrawn": 0}
    orphans = change_requests.exclude(deployment__status=Deployment.Status.AWAITING_APPROVAL).select_related(
        "deployment__release", "repository", "environment"
    )
    for change_request in orphans:
        deployment = change_request.deployment
        if deployment.superseded_by_id is not None:
            if change_request.supersede(reason=deployment.error):
                closed["superseded"] += 1
        else:
            status = deployment.get_status_display().lower()
            reason = f"The deployment is {status}" + (f": {deployment.error}" if deployment.error else ".")
            if change_request.withdraw(reason=reason):
                closed["withdrawn"] += 1
    return closed


def on_deployments_stopped(follow_up):
    """The follow-up handler of pipelines' DEPLOYMENTS_STOPPED (a blocked release, a newer approval): close
    the stopped deployments' pending change requests at once (withdrawn or superseded, with the reason), so
    that nobody is asked to decide on them, and tell each requester. Idempotent: a retry closes nothing twice,
    and mail goes out only with the attempt that succeeds."""
    from approvals import notifications

    ids = follow_up.payload.get("deployments", [])
    close_orphans(ChangeRequest.objects.pending().filter(deployment_id__in=ids))
    notifications.notify_stopped(ids, follow_up.payload.get("reason", ""))

