"""What approvals adds to the dashboard's cells (settings.GITOPS_DASHBOARD_NOTES): for a deployment waiting
for approval, how many approvals it has of how many, from which group, with a link to its change request;
for an environment frozen now, until when. Three queries however many cells the page shows."""

from functools import lru_cache

from django.db.models import Count, F, Q
from django.utils import timezone

from approvals.context_processors import request_freezes
from approvals.models import ChangeRequest, Decision
from pipelines.hooks import DashboardNotes, Note
from pipelines.models import Deployment
from pipelines.url_patterns import url_pattern


@lru_cache(maxsize=1)
def _pending_with_approvals():
    """Pending requests with how many approvals count for them: built once per process (it holds no values),
    since building it costs more than the query it makes."""
    return (
        ChangeRequest.objects.pending().with_current_preview()
        .annotate(approvals=Count("decisions", filter=Q(decisions__verdict=Decision.Verdict.APPROVE,
                                                        decisions__preview_number=F("current_preview"))))
        .values("pk", "deployment_id", "required_approvals", "approvals", "stage__approval_policy__approver_group__name")
    )


def notes(request, deployments):
    waiting = [d.pk for d in deployments if d.status == Deployment.Status.AWAITING_APPROVAL]
    by_deployment = {}
    if waiting:
        requests = _pending_with_approvals().filter(deployment__in=waiting)
        change_url = url_pattern("change_request_detail", 987654321)
        for change in requests:
            group = change["stage__approval_policy__approver_group__name"] or "nobody (no approval policy)"
            text = f"{change['approvals']} of {change['required_approvals']} approvals from {group}"
            by_deployment[change["deployment_id"]] = Note(text, change_url.format(change["pk"]))
    environments = {
        freeze.environment.pk: Note(f"frozen until {timezone.localtime(freeze.until):%Y-%m-%d %H:%M %Z}")
        for freeze in request_freezes(request)
    }
    return DashboardNotes(deployments=by_deployment, environments=environments)
