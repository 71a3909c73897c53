"""The audit log, read-only, newest first (by seq; the cursor pages through the chain)."""

from datetime import UTC, datetime

from ninja import Router

from api import schemas
from api.errors import ApiError
from api.pagination import Page, paginate
from pipelines.models import AuditEvent

router = Router(tags=["audit"])


def event_out(event):
    return {"seq": event.seq, "created_at": event.created_at, "actor": event.actor_name, "action": event.action,
            "object_type": event.object_type, "object_id": event.object_id, "object_repr": event.object_repr,
            "repository": event.repository.name if event.repository else None,
            "environment": event.environment.name if event.environment else None, "details": event.details}


@router.get("/audit-events", response=Page[schemas.AuditEvent], url_name="api_audit_events")
def audit_events(request, action: str | None = None, actor: str | None = None, repository: str | None = None,
                 environment: str | None = None, since: datetime | None = None, cursor: str | None = None,
                 limit: int = 50):
    queryset = AuditEvent.objects.select_related("repository", "environment")
    if action:
        queryset = queryset.filter(action=action)
    if actor:
        queryset = queryset.filter(actor_name=actor)
    if repository:
        queryset = queryset.filter(repository__name=repository)
    if environment:
        queryset = queryset.filter(environment__name=environment)
    if since:
        queryset = queryset.filter(created_at__gte=_in_utc(since))
    return paginate(queryset, cursor=cursor, limit=limit, serialize=event_out)


def _in_utc(moment):
    """`moment` in UTC: ISO 8601 (and Python) allow offsets up to ±23:59, PostgreSQL only up to ±15:59."""
    if moment.tzinfo is None:
        return moment  # in the portal's time zone, as Django reads a naive time
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(422, "invalid", f"since: {moment.isoformat()} is outside the years 1 to 9999 once in UTC.") from None
