"""Approvals' part of the insights page (pipelines/insights.py gives the period and filters): how long
change requests wait for a decision, per environment and per approver.

- per environment: from a change request's opening to its closing by a decision (approved or rejected),
  for requests decided in the period;
- per approver: from the opening of the change request to that person's decision, for decisions in the
  period (an approval that was not the last one needed counts too: it is that person's wait).
Two queries, values lists bounded by the period and the filters."""

from collections import defaultdict
from dataclasses import dataclass

from approvals.models import ChangeRequest, Decision
from pipelines import charts
from pipelines.insights import median, percentile
from pipelines.templatetags.portal import duration


@dataclass
class Wait:
    name: str
    waits: list

    @property
    def count(self):
        return len(self.waits)

    @property
    def median(self):
        return median(self.waits)

    @property
    def p90(self):
        return percentile(self.waits, 90)


def approval_waits(scope):
    """{"environments": [Wait], "approvers": [Wait]} for `scope` (a pipelines.insights.Scope)."""
    decided = (ChangeRequest.objects.filter(scope.filters_q(), decided_at__gte=scope.start, decided_at__lt=scope.end,
                                            status__in=[ChangeRequest.Status.APPROVED, ChangeRequest.Status.REJECTED])
               .order_by().values_list("environment__name", "opened_at", "decided_at"))
    decisions = (Decision.objects.filter(scope.filters_q("change_request__"), decided_at__gte=scope.start,
                                         decided_at__lt=scope.end)
                 .order_by().values_list("user__username", "change_request__opened_at", "decided_at"))
    return {"environments": _grouped(decided), "approvers": _grouped(decisions)}


def _grouped(rows):
    waits = defaultdict(list)
    for name, opened_at, decided_at in rows:
        waits[name].append(decided_at - opened_at)
    return [Wait(name, values) for name, values in sorted(waits.items())]


def chart(waits):
    """Median wait per environment, one bar each."""
    bars = [(w.name, w.median.total_seconds() / 3600, f"{w.name}: median {duration(w.median)} over {w.count} change requests")
            for w in waits["environments"]]
    return charts.bar_chart(title="Approval wait", bars=bars, unit=" h",
                            description="Median hours from a change request's opening to its decision, per environment.")
