"""The approvals part of the periodic repair pass (settings.GITOPS_RECONCILE_HOOKS, see pipelines/hooks.py).

Each tick:
- a pending request whose deployment no longer waits is closed: superseded when pipelines cancelled it
  for a newer candidate, withdrawn otherwise;
- a held deployment without a change request gets one (a missed or failed signal loses nothing);
- a pending request past its `expires_at` expires, which cancels its deployment;
- a pending request whose change could not be read from git is read again (until then nobody may
  approve it where the commit-author rule applies: see ChangeRequest.refusal_reason);
- a freeze window that ended makes promotion decide again for the targets of its environments, once.
Each step is one query for the rows that need work; one row's failure never stops the others."""

import logging

from approvals import changes, freeze
from approvals.models import ChangeRequest
from approvals.opening import close_orphans, open_change_request
from pipelines.models import Deployment, DeploymentStateError

logger = logging.getLogger(__name__)


def reconcile(now):
    report = close_orphans(ChangeRequest.objects.pending())
    report["opened"] = open_missing()
    report["expired"] = expire_overdue(now)
    report["summaries_retried"] = retry_failed_summaries()
    report["freeze_ends"] = freeze.reevaluate_after_freezes(now)
    return report


def retry_failed_summaries():
    unread = ChangeRequest.objects.pending().filter(summary__error__isnull=False).exclude(summary__error="")
    failed = unread.select_related(
        "deployment__release", "deployment__repository", "deployment__environment", "deployment__previous_release"
    )
    mended = 0
    for change_request in failed:
        change = changes.inspect(change_request.deployment)
        if not change.summary.get("error"):
            ChangeRequest.objects.filter(pk=change_request.pk).update(summary=change.summary, author_emails=change.author_emails)
            mended += 1
    return mended


def open_missing():
    held = Deployment.objects.filter(status=Deployment.Status.AWAITING_APPROVAL, change_request__isnull=True)
    opened = 0
    for deployment in held.order_by("pk"):
        try:
            if open_change_request(deployment) is not None:
                opened += 1
        except Exception:
            logger.exception("opening a change request for deployment #%s failed", deployment.pk)
    return opened


def expire_overdue(now):
    overdue = ChangeRequest.objects.pending().filter(expires_at__lte=now).select_related(
        "deployment__release", "deployment__repository", "deployment__environment", "repository", "environment"
    )
    expired = 0
    for change_request in overdue:
        try:
            if change_request.expire(now):
                expired += 1
        except DeploymentStateError:
            # Its deployment moved on while we looked; the next tick closes the request as an orphan.
            logger.info("change request #%s was not expired: its deployment changed meanwhile", change_request.pk)
    return expired
