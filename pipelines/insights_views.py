"""The insights page: how a team delivers (the DORA keys of pipelines/insights.py) as SVG charts with the
numbers beside them, and their CSV export. The approval wait is approvals' part of the page: it fills the
slot "insights.after" (pipelines knows nothing of change requests)."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from pipelines import charts, insights
from pipelines.csv_export import csv_attachment
from pipelines.templatetags.portal import duration

CSV_HEADER = ["period_start", "period_end", "deployments", "failed", "rolled_back", "change_failure_rate",
              "lead_time_median_hours", "lead_time_p90_hours", "time_to_restore_median_hours"]


@login_required
def insights_page(request):
    scope = insights.scope_from(request.GET)
    figures = insights.delivery(scope)
    return render(request, "pipelines/insights.html", {
        "scope": scope, "figures": figures, "choices": insights.filter_choices(), "periods": list(insights.PERIODS),
        "rows": [_row(bucket, scope) for bucket in figures.buckets],
        "frequency_chart": _frequency_chart(figures), "lead_time_chart": _lead_time_chart(figures),
    })


@login_required
def insights_export_csv(request):
    scope = insights.scope_from(request.GET)
    figures = insights.delivery(scope)
    rows = [_csv_row(b.start, b.end, b) for b in figures.buckets]
    rows.append(_csv_row(scope.start, scope.end, figures))
    return csv_attachment(CSV_HEADER, rows, "delivery-insights.csv")


def _csv_row(start, end, figures):
    rate = figures.change_failure_rate
    return [start.isoformat(), end.isoformat(), figures.deployments, figures.failed, figures.rolled_back,
            "" if rate is None else f"{rate:.4f}", insights.hours(figures.lead_time_median),
            insights.hours(figures.lead_time_p90), insights.hours(figures.restore_median)]


def _label(bucket, scope):
    return f"{bucket.start:%b %d}" if scope.bucket_size.days == 1 else f"wk {bucket.start:%b %d}"


def _row(bucket, scope):
    rate = bucket.change_failure_rate
    return {"label": f"{bucket.start:%a %b %d}", "start": bucket.start, "deployments": bucket.deployments,
            "failed": bucket.failed, "rolled_back": bucket.rolled_back,
            "change_failure_rate": "" if rate is None else f"{rate:.0%}",
            "lead_time": duration(bucket.lead_time_median), "restore": duration(bucket.restore_median)}


def _frequency_chart(figures):
    scope = figures.scope
    bars = [(_label(b, scope), b.deployments, f"{_label(b, scope)}: {b.deployments} successful deployments")
            for b in figures.buckets]
    per = "day" if scope.bucket_size.days == 1 else "week"
    return charts.bar_chart(
        title="Deployment frequency", bars=bars,
        description=f"Successful deployments to the last stage per {per}: {figures.deployments} in the period.")


def _lead_time_chart(figures):
    scope = figures.scope
    points = []
    for b in figures.buckets:
        value = b.lead_time_median
        hours = None if value is None else value.total_seconds() / 3600
        tooltip = f"{_label(b, scope)}: " + (f"median {duration(value)}" if value is not None else "no release reached the last stage")
        points.append((_label(b, scope), hours, tooltip))
    median = figures.lead_time_median
    return charts.line_chart(
        title="Lead time for changes", points=points, unit=" h",
        description="Median hours from commit to first success in the last stage, per bucket; "
                    + (f"median over the period {duration(median)}." if median is not None else "none in the period."))
