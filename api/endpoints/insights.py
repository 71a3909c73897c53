"""The delivery insights (the four DORA keys) as numbers: the insights page's own figures
(pipelines/insights.py) for the same filters. Durations are in seconds."""

from ninja import Query, Router

from api import schemas
from api.errors import ApiError
from pipelines import insights as figures_of

router = Router(tags=["insights"])


def _seconds(value):
    return None if value is None else value.total_seconds()


def _bucket_out(bucket):
    return {"start": bucket.start, "end": bucket.end, "deployments": bucket.deployments, "failed": bucket.failed,
            "rolled_back": bucket.rolled_back, "change_failure_rate": bucket.change_failure_rate,
            "lead_time_median_seconds": _seconds(bucket.lead_time_median),
            "lead_time_p90_seconds": _seconds(bucket.lead_time_p90),
            "time_to_restore_median_seconds": _seconds(bucket.restore_median)}


@router.get("/insights", response=schemas.Insights, url_name="api_insights",
            summary="Deployment frequency, lead time, change failure rate and time to restore")
def insights(request, period: str | None = None, from_: str | None = Query(None, alias="from"), to: str | None = None,
             repository: str | None = None, lifecycle: str | None = None, environment: str | None = None):
    """`period` is 7d, 30d (the default), 90d or 365d, or `from`/`to` dates (YYYY-MM-DD, inclusive); the
    figures are about the last stage of each repository's lifecycle, or `environment` when given. A filter
    that cannot be read is refused (the page leaves it out and says so; a script would rather know)."""
    params = {"period": period, "from": from_, "to": to, "repository": repository, "lifecycle": lifecycle,
              "environment": environment}
    scope = figures_of.scope_from({key: value for key, value in params.items() if value})
    if scope.errors:
        raise ApiError(422, "invalid", " ".join(scope.errors))
    delivery = figures_of.delivery(scope)
    return {"period": scope.period, "start": scope.start, "end": scope.end,
            "repository": scope.repository.name if scope.repository else None,
            "lifecycle": scope.lifecycle.name if scope.lifecycle else None,
            "environment": scope.environment.name if scope.environment else None,
            "deployments": delivery.deployments, "deployments_per_day": delivery.per_day,
            "deployments_per_week": delivery.per_week, "failed": delivery.failed,
            "rolled_back": delivery.rolled_back, "change_failure_rate": delivery.change_failure_rate,
            "lead_time_count": delivery.lead_count, "lead_time_median_seconds": _seconds(delivery.lead_time_median),
            "lead_time_p90_seconds": _seconds(delivery.lead_time_p90),
            "time_to_restore_median_seconds": _seconds(delivery.restore_median),
            "open_outages": delivery.open_outages, "buckets": [_bucket_out(bucket) for bucket in delivery.buckets]}
