"""The audit log page: filters, pagination, the last verification and "Verify now", and the CSV and JSON
exports an auditor can re-verify without the portal.

The first event ever recorded is the chain's genesis marker (#1, by "system"): the fixture's events are #2 to #6."""

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pipelines.models import AuditEvent, AuditVerification
from pipelines.models.audit import GENESIS_ACTION, GENESIS_HASH, run_verification


@pytest.fixture
def events(alice, bob, repository, staging, production):
    """Five events over three days: alice deploys to staging, bob decides on production, the system expires one."""
    moments = [datetime(2026, 3, day, 12, 0, tzinfo=UTC) for day in (1, 1, 2, 2, 3)]
    plan = [
        (alice, "deployment.created", repository, staging, {"release": "v1.0.0"}),
        (alice, "deployment.queued", repository, staging, {"release": "v1.0.0"}),
        (bob, "change_request.approved_by", repository, production, {"comment": "ship it — ✓"}),
        (bob, "change_request.approved", repository, production, {"reason": ""}),
        (None, "change_request.expired", None, None, {"reason": "No decision before the approval timeout."}),
    ]
    for moment, (actor, action, repo, env, details) in zip(moments, plan):
        with time_machine.travel(moment, tick=False):
            AuditEvent.objects.record(action=action, actor=actor, repository=repo, environment=env, details=details)
    return list(AuditEvent.objects.order_by("seq"))


def get(client, **params):
    return client.get(reverse("audit_log"), params).content.decode()


def seqs(html):
    """The event numbers listed on the page, in order."""
    body = html[html.index("<tbody>"):html.index("</tbody>")] if "<tbody>" in html else ""
    return [int(cell.split("</td>")[0]) for cell in body.split("<tr>\n        <td>")[1:]]


@pytest.mark.parametrize("method, name", [
    ("get", "audit_log"), ("get", "audit_export_csv"), ("get", "audit_export_json"), ("post", "audit_verify"),
])
def test_every_audit_view_requires_sign_in(client, db, method, name):
    url = reverse(name)
    response = getattr(client, method)(url)
    assert response.status_code == 302 and response.url == f"{reverse('login')}?next={url}"


def test_any_signed_in_user_reads_the_log_newest_first(client, charlie, events):
    client.force_login(charlie)
    html = get(client)
    assert seqs(html) == [6, 5, 4, 3, 2, 1]
    assert "<code>change_request.approved_by</code>" in html and f"<code>{GENESIS_ACTION}</code>" in html
    assert "ship it — ✓" in html  # details as JSON, readable
    assert "system" in html
    assert events[0].hash[:10] in html


@pytest.mark.parametrize("params, expected", [
    ({"actor": "alice"}, [3, 2]),
    ({"actor": "system"}, [6, 1]),
    ({"action": "change_request."}, [6, 5, 4]),
    ({"action": "change_request.approved"}, [5, 4]),
    ({"repository": "shop"}, [5, 4, 3, 2]),
    ({"environment": "production"}, [5, 4]),
    ({"date_from": "2026-03-02"}, [6, 5, 4]),
    ({"date_to": "2026-03-02"}, [5, 4, 3, 2, 1]),
    ({"date_from": "2026-03-02", "date_to": "2026-03-02", "actor": "bob", "environment": "production"}, [5, 4]),
    ({"actor": "nobody"}, []),
])
def test_it_filters(client, charlie, events, params, expected):
    client.force_login(charlie)
    assert seqs(get(client, **params)) == expected


def test_the_filter_selects_keep_the_chosen_repository_and_environment(client, charlie, events):
    client.force_login(charlie)
    html = get(client, repository="shop", environment="production")
    assert '<option value="shop" selected>shop</option>' in html
    assert '<option value="production" selected>production</option>' in html
    assert html.count(" selected>") == 2


def test_a_bad_date_is_reported_and_filters_nothing(client, charlie, events):
    client.force_login(charlie)
    html = get(client, date_from="yesterday", actor="bob")
    assert "From: Enter a valid date." in html
    assert seqs(html) == [5, 4]


def test_it_pages_fifty_at_a_time_keeping_the_filters(client, charlie, db):
    for n in range(120):
        AuditEvent.objects.record(action="test.event" if n % 2 else "other.event", details={"n": n})
    client.force_login(charlie)
    first = get(client, action="test.")
    assert seqs(first) == list(range(121, 21, -2))
    assert "Page 1 of 2" in first and 'href="?action=test.&amp;page=2"' in first
    second = get(client, action="test.", page=2)
    assert seqs(second) == list(range(21, 1, -2))
    assert 'href="?action=test.&amp;page=1"' in second


def test_the_page_makes_the_same_number_of_queries_for_few_or_many_events(client, charlie, events, repository, staging, django_assert_max_num_queries):
    client.force_login(charlie)
    with CaptureQueriesContext(connection) as few:
        get(client)
    assert len(few) <= 9
    for n in range(60):
        AuditEvent.objects.record(action="test.event", repository=repository, environment=staging, details={"n": n})
    with django_assert_max_num_queries(len(few)):
        html = get(client)
    assert len(seqs(html)) == 50


def test_the_page_does_not_walk_the_chain_by_itself(client, charlie, events):
    client.force_login(charlie)
    html = get(client)
    assert "not verified yet" in html
    assert not AuditVerification.objects.exists()


def test_only_staff_see_and_may_press_verify_now(client, charlie, events):
    client.force_login(charlie)
    assert "Verify now" not in get(client)
    assert client.post(reverse("audit_verify")).status_code == 403
    assert not AuditVerification.objects.exists()


@pytest.mark.django_db(transaction=True)  # the job runs in a forked work-horse, which sees only committed rows
def test_verify_now_queues_a_verification_job_and_the_page_shows_its_outcome(client, alice, events, run_workers):
    client.force_login(alice)
    html = get(client)
    assert f'action="{reverse("audit_verify")}"' in html and "Verify now" in html
    response = client.post(reverse("audit_verify"), {"query": "actor=bob"}, follow=True)
    assert response.redirect_chain == [(reverse("audit_log") + "?actor=bob", 302)]
    html = response.content.decode()
    assert "Verification queued" in html and "A verification is queued since" in html

    run_workers()
    verification = AuditVerification.objects.get()
    assert verification.intact and verification.events == 6
    html = get(client)
    checked_at = timezone.localtime(verification.finished_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f"Intact: 6 events verified, checked at <span title=" in html and checked_at in html
    assert "A verification is queued" not in html


def test_the_page_shows_a_failed_verification_naming_the_first_bad_event(client, charlie, events):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s WHERE seq = 4", ['{"comment": "ship it"}'])
    run_verification()
    client.force_login(charlie)
    html = get(client)
    assert "Broken at event #4: event 4 was altered after it was recorded (checked at" in html


# --- exports ---------------------------------------------------------------------------------------


def export(client, kind, **params):
    response = client.get(reverse(f"audit_export_{kind}"), params)
    assert response.status_code == 200 and response.streaming
    return response, b"".join(response.streaming_content).decode()


def rehash(record):
    """The event's hash recomputed from the export alone, as an auditor would (see AuditEvent.canonical_json)."""
    payload = {
        "seq": int(record["seq"]),
        "created_at": record["created_at"],
        "actor": record["actor"],
        "action": record["action"],
        "object": [record["object_type"], record["object_id"], record["object_repr"]],
        "repository_id": int(record["repository_id"]) if record["repository_id"] not in ("", None) else None,
        "environment_id": int(record["environment_id"]) if record["environment_id"] not in ("", None) else None,
        "details": record["details"],
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((record["prev_hash"] + canonical).encode()).hexdigest()


def assert_chain(records):
    previous = GENESIS_HASH
    for record in records:
        assert record["prev_hash"] == previous
        assert rehash(record) == record["hash"]
        previous = record["hash"]


def test_the_csv_export_has_every_event_and_re_verifies_outside_the_portal(client, charlie, events):
    client.force_login(charlie)
    response, text = export(client, "csv")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="audit-log.csv"'
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "seq", "created_at", "actor", "action", "object_type", "object_id", "object_repr",
        "repository", "repository_id", "environment", "environment_id", "details", "prev_hash", "hash",
    ]
    assert [row["seq"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[0]["action"] == GENESIS_ACTION
    third = rows[3]
    assert third["actor"] == "bob" and third["action"] == "change_request.approved_by"
    assert third["repository"] == "shop" and third["environment"] == "production"
    assert third["created_at"] == "2026-03-02T12:00:00+00:00"
    assert json.loads(third["details"]) == {"comment": "ship it — ✓"}
    assert rows[5]["actor"] == "system" and rows[5]["repository"] == ""

    assert_chain([{**row, "details": json.loads(row["details"])} for row in rows])


def test_the_json_export_re_verifies_outside_the_portal(client, charlie, events):
    client.force_login(charlie)
    response, text = export(client, "json")
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="audit-log.json"'
    records = json.loads(text)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[3]["details"] == {"comment": "ship it — ✓"}
    assert records[3]["environment"] == "production" and records[5]["environment_id"] is None
    assert_chain(records)


def test_an_altered_event_no_longer_verifies_in_the_export(client, charlie, events):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s WHERE seq = 3", ['{"release": "v6.6.6"}'])
    client.force_login(charlie)
    records = json.loads(export(client, "json")[1])
    assert rehash(records[2]) != records[2]["hash"]
    assert rehash(records[3]) == records[3]["hash"]


def test_exports_carry_only_the_filtered_events(client, charlie, events):
    client.force_login(charlie)
    rows = list(csv.DictReader(io.StringIO(export(client, "csv", actor="bob")[1])))
    assert [row["seq"] for row in rows] == ["4", "5"]
    records = json.loads(export(client, "json", environment="staging", date_to="2026-03-01")[1])
    assert [r["seq"] for r in records] == [2, 3]
    # each exported event still proves itself against the hash before it
    assert all(rehash(r) == r["hash"] for r in records)


def test_the_page_links_the_exports_with_its_filters(client, charlie, events):
    client.force_login(charlie)
    html = get(client, actor="bob", page=1)
    assert f'href="{reverse("audit_export_csv")}?actor=bob"' in html
    assert f'href="{reverse("audit_export_json")}?actor=bob"' in html


def test_an_empty_log_exports_an_empty_list(client, charlie, db):
    client.force_login(charlie)
    assert json.loads(export(client, "json")[1]) == []
    assert export(client, "csv")[1].splitlines()[0].startswith("seq,created_at,actor")


def test_the_export_streams_in_chunks(client, charlie, db):
    created = datetime(2026, 1, 1, tzinfo=UTC)
    rows, previous = [], GENESIS_HASH
    for seq in range(1, 4501):
        event = AuditEvent(seq=seq, created_at=created + timedelta(seconds=seq), actor_name="system", action="bulk.event",
                           details={"n": seq}, prev_hash=previous)
        event.hash = event.compute_hash()
        previous = event.hash
        rows.append(event)
    AuditEvent.objects.bulk_create(rows)
    client.force_login(charlie)
    response = client.get(reverse("audit_export_json"))
    with CaptureQueriesContext(connection) as queries:
        records = json.loads(b"".join(response.streaming_content))
    assert len(records) == 4500
    assert_chain(records)
    assert len(queries) <= 4  # a few chunks, not one query per event


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(client, charlie, db):
    starts = ["=HYPERLINK(\"http://evil\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    for actor in starts:
        AuditEvent.objects.record(action="test.event", actor=actor)
    client.force_login(charlie)
    rows = list(csv.DictReader(io.StringIO(export(client, "csv")[1], newline="")))
    assert [row["actor"] for row in rows[1:]] == ["'" + actor for actor in starts]
    assert rows[0]["actor"] == "system"  # an ordinary cell is left as it is
    records = json.loads(export(client, "json")[1])
    assert [r["actor"] for r in records[1:]] == starts  # the JSON export keeps the values as they are


def test_credentials_recorded_before_redaction_are_not_shown(client, charlie, db):
    """An event recorded in clear by an older version: the page and the exports still redact it."""
    event = AuditEvent(seq=1, created_at=timezone.now(), actor_name="alice", action="admin.change",
                       details={"values": {"url": ["https://user:old-t0ken@git.example.com/a.git", "x"]}},
                       prev_hash=GENESIS_HASH)
    event.hash = event.compute_hash()
    event.save()
    client.force_login(charlie)
    for text in (get(client), export(client, "csv")[1], export(client, "json")[1]):
        assert "old-t0ken" not in text and "https://***@git.example.com/a.git" in text


def test_a_filter_for_rejected_by_finds_rejections_recorded_under_the_old_misspelling(client, charlie, bob, db):
    # Events before the fix carry 'change_request.rejectd_by'; the chain is append-only, so they keep it.
    AuditEvent.objects.record(action="change_request.rejectd_by", actor=bob, details={"comment": "not today"})
    AuditEvent.objects.record(action="change_request.rejected_by", actor=bob, details={"comment": "nor tomorrow"})
    AuditEvent.objects.record(action="change_request.approved_by", actor=bob, details={"comment": "fine"})
    client.force_login(charlie)

    for text in ("change_request.rejected_by", "change_request.rejected", "rejected_by"):
        assert seqs(get(client, action=text)) == [3, 2], text
    assert seqs(get(client, action="approved_by")) == [4]
