"""The CSV export of approvals' part of the insights page."""

from django.contrib.auth.decorators import login_required

from approvals.insights import approval_waits
from pipelines.csv_export import csv_attachment
from pipelines.insights import hours, scope_from


@login_required
def approval_wait_export_csv(request):
    scope = scope_from(request.GET)
    waits = approval_waits(scope)
    rows = [[kind[:-1], wait.name, wait.count, hours(wait.median), hours(wait.p90)]
            for kind in ("environments", "approvers") for wait in waits[kind]]
    return csv_attachment(["per", "name", "decisions", "median_hours", "p90_hours"], rows, "approval-wait.csv")
