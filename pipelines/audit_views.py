"""The audit log page, its CSV and JSON exports, and verifying the chain on demand.

The page and the exports share one filter. Exports stream in `seq` order with every field the hash
covers (see AuditEvent.canonical_json), so an auditor can re-verify the chain without the portal.
Verifying reads every event, so it runs as a job (hourly, and when staff press "Verify now"); the page
shows the last outcome and when it ran.

Credentials in URLs are redacted before an event is recorded; the page and the exports redact again,
for events recorded before that rule. CSV cells that a spreadsheet would take for a formula get a
leading apostrophe (OWASP's advice on CSV injection): strip it before re-hashing such a cell."""

import csv
import json
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from pipelines.models import AuditEvent, AuditVerification, Environment, Repository
from pipelines.models.audit import queue_verification
from pipelines.redaction import redact, redact_text

EVENTS_PER_PAGE = 50
EXPORT_CHUNK_SIZE = 2000
EXPORT_COLUMNS = [
    "seq", "created_at", "actor", "action", "object_type", "object_id", "object_repr",
    "repository", "repository_id", "environment", "environment_id", "details", "prev_hash", "hash",
]
# A cell starting with one of these is a formula (or becomes one) in a spreadsheet.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


# Actions once recorded under a wrong spelling. The chain is append-only, so old events keep theirs; a filter
# for the right spelling finds them as well.
FORMER_SPELLINGS = {
    "change_request.rejected_by": ["change_request.rejectd_by"],
}


def action_matches(text):
    """Events whose action starts with `text`, or (without a dot in it) whose action's last part does, so
    that 'rejected_by' finds 'change_request.rejected_by'; former spellings of what it names count too."""
    condition = Q(action__startswith=text)
    if "." not in text:
        condition |= Q(action__contains="." + text)
    for action, former in FORMER_SPELLINGS.items():
        if action.startswith(text) or ("." not in text and action.partition(".")[2].startswith(text)):
            condition |= Q(action__in=former)
    return condition


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=64, help_text="The start of an action, e.g. 'change_request.' or 'rejected_by'")
    repository = forms.CharField(required=False, max_length=100)
    environment = forms.CharField(required=False, max_length=100)
    date_from = forms.DateField(required=False, label="From")
    date_to = forms.DateField(required=False, label="To")

    def filter(self, events):
        """The events matching the valid fields; an invalid one (a bad date) filters nothing and shows its error."""
        self.is_valid()
        data = self.cleaned_data
        if data.get("actor"):
            events = events.filter(actor_name=data["actor"])
        if data.get("action"):
            events = events.filter(action_matches(data["action"]))
        if data.get("repository"):
            events = events.filter(repository__name=data["repository"])
        if data.get("environment"):
            events = events.filter(environment__name=data["environment"])
        if data.get("date_from"):
            events = events.filter(created_at__gte=_start_of_day(data["date_from"]))
        if data.get("date_to"):
            events = events.filter(created_at__lt=_start_of_day(data["date_to"] + timedelta(days=1)))
        return events


def _start_of_day(day):
    """Midnight of `day` in the portal's time zone, the zone its pages show times in."""
    return timezone.make_aware(datetime.combine(day, time.min))


def _filtered(request):
    form = AuditFilterForm(request.GET)
    return form, form.filter(AuditEvent.objects.select_related("repository", "environment"))


@dataclass
class AuditRow:
    event: AuditEvent
    details: str  # compact JSON, credentials redacted
    object_repr: str


@login_required
def audit_log(request):
    form, events = _filtered(request)
    page = Paginator(events.order_by("-seq"), EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "rows": [_row(event) for event in page],
        "repositories": list(Repository.objects.values_list("name", flat=True)),
        "environments": list(Environment.objects.values_list("name", flat=True)),
        **_verification_state(),
    }
    return render(request, "pipelines/audit_log.html", context)


def _row(event):
    details = json.dumps(redact(event.details), ensure_ascii=False, sort_keys=True)
    return AuditRow(event, details, redact_text(event.object_repr))


def _verification_state():
    """The last finished verification, and the one waiting for a worker if it is newer."""
    latest = list(AuditVerification.objects.all()[:1])
    if latest and latest[0].finished_at is None:
        return {"pending_verification": latest[0],
                "last_verification": AuditVerification.objects.exclude(finished_at=None).first()}
    return {"pending_verification": None, "last_verification": latest[0] if latest else None}


@require_POST
@login_required
def audit_verify(request):
    """Staff: queue a walk over the whole chain now; its outcome appears on the page when a worker is done."""
    if not request.user.is_staff:
        raise PermissionDenied("Only staff may start a verification of the audit chain.")
    queue_verification()
    messages.info(request, "Verification queued: the outcome appears here once a worker has walked the chain.")
    query = QueryDict(request.POST.get("query", "")).urlencode()
    return redirect(reverse("audit_log") + (f"?{query}" if query else ""))


# --- exports -----------------------------------------------------------------------------------------


def _record(event):
    return {
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_name,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": redact_text(event.object_repr),
        "repository": event.repository.name if event.repository_id else "",
        "repository_id": event.repository_id,
        "environment": event.environment.name if event.environment_id else "",
        "environment_id": event.environment_id,
        "details": redact(event.details),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _records(request):
    _, events = _filtered(request)
    for event in events.order_by("seq").iterator(chunk_size=EXPORT_CHUNK_SIZE):
        yield _record(event)


class _Echo:
    """A file-like object whose write() hands back the line, for csv.writer to stream through."""

    def write(self, value):
        return value


def _csv_lines(records):
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for record in records:
        record["details"] = json.dumps(record["details"], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        yield writer.writerow([_spreadsheet_safe(record[column]) for column in EXPORT_COLUMNS])


def _spreadsheet_safe(value):
    """A cell a spreadsheet shows as text: one that would start a formula gets a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _json_lines(records):
    yield "[\n"
    separator = ""
    for record in records:
        yield separator + json.dumps(record, ensure_ascii=False)
        separator = ",\n"
    yield "\n]\n"


def _attachment(lines, content_type, filename):
    response = StreamingHttpResponse(lines, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
def audit_export_csv(request):
    return _attachment(_csv_lines(_records(request)), "text/csv; charset=utf-8", "audit-log.csv")


@login_required
def audit_export_json(request):
    return _attachment(_json_lines(_records(request)), "application/json", "audit-log.json")
