"""An attacker with database access but without the audit key cannot rewrite the audit log unnoticed.

Every attack here is raw SQL on the portal's own database, as someone holding its credentials would do it:
re-hashing with sha256 exactly as AuditEvent.compute_hash does, moving the head, appending, deleting
everything, cutting the end off. `manage.py verifyaudit` must name the first bad event each time."""

import hashlib
import json
from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils.crypto import salted_hmac

from pipelines.models import AuditEvent, AuditVerification
from pipelines.models.audit import queue_verification
from pipelines.models.lifecycle import default_lifecycle_id

pytestmark = pytest.mark.django_db

COLUMNS = ["seq", "created_at", "actor_name", "action", "object_type", "object_id", "object_repr", "repository_id",
           "environment_id", "details", "prev_hash", "hash", "mac"]


@pytest.fixture
def log(alice, repository, staging):
    """The genesis marker (#1) and five events (#2 to #6)."""
    for n in range(5):
        AuditEvent.objects.record(action="deployment.queued", actor=alice, repository=repository, environment=staging,
                                  details={"release": f"v1.{n}.0"})


# --- the attacker's tools: SQL and sha256, nothing of the portal's ---------------------------------------


def rows():
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM pipelines_auditevent ORDER BY seq")
        return [dict(zip(COLUMNS, row)) for row in cursor.fetchall()]


def attacker_hash(row, prev_hash):
    created_at = row["created_at"]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    if created_at.tzinfo is None:  # SQLite stores UTC without its offset
        created_at = created_at.replace(tzinfo=UTC)
    details = json.loads(row["details"]) if isinstance(row["details"], str) else row["details"]
    payload = {
        "seq": row["seq"], "created_at": created_at.isoformat(), "actor": row["actor_name"], "action": row["action"],
        "object": [row["object_type"], row["object_id"], row["object_repr"]],
        "repository_id": row["repository_id"], "environment_id": row["environment_id"], "details": details,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def rewrite_and_rehash(seq, details, *, mac_key=None):
    """Change event `seq`'s details, then re-hash it and every later event so that every link holds again."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s WHERE seq = %s", [json.dumps(details), seq])
        previous = None
        for row in rows():
            if row["seq"] < seq:
                previous = row["hash"]
                continue
            new_hash = attacker_hash(row, previous)
            mac = forged_mac(new_hash, mac_key) if mac_key else row["mac"]  # without the key: keep the old MAC
            cursor.execute("UPDATE pipelines_auditevent SET prev_hash = %s, hash = %s, mac = %s WHERE seq = %s",
                           [previous, new_hash, mac, row["seq"]])
            previous = new_hash
    return previous


def forged_mac(hash_, key):
    return salted_hmac("gitops.audit.event", hash_, secret=key, algorithm="sha256").hexdigest()


def append(previous, *, mac="", mac_key=None):
    last = rows()[-1]
    row = {**last, "seq": last["seq"] + 1, "action": "deployment.succeeded", "details": {"note": "nothing to see"}}
    row["hash"] = attacker_hash(row, previous)
    row["mac"] = forged_mac(row["hash"], mac_key) if mac_key else mac
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO pipelines_auditevent (seq, created_at, actor_name, action, object_type, object_id, object_repr,"
            " repository_id, environment_id, details, prev_hash, hash, mac) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [row["seq"], row["created_at"], row["actor_name"], row["action"], row["object_type"], row["object_id"],
             row["object_repr"], row["repository_id"], row["environment_id"], json.dumps(row["details"]), previous,
             row["hash"], row["mac"]],
        )
    return row


def move_head(seq, hash_):
    """Point the head at a new end; its signature cannot be recomputed without the key, so it is left."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_audithead SET seq = %s, hash = %s", [seq, hash_])


def verifyaudit():
    """Run `manage.py verifyaudit`; return its error message, or None when it says the log is intact."""
    try:
        call_command("verifyaudit", stdout=open("/dev/null", "w"))
    except CommandError as error:
        return str(error)
    return None


# --- rewrite and append --------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["left as it was", "moved to the new end", "moved with a stolen MAC"])
def test_a_rewritten_re_hashed_and_extended_chain_is_reported_at_the_rewritten_event(log, head):
    assert verifyaudit() is None
    previous = rewrite_and_rehash(3, {"release": "v6.6.6"})
    mac = rows()[-1]["mac"] if head == "moved with a stolen MAC" else ""
    appended = append(previous, mac=mac)
    if head != "left as it was":
        move_head(appended["seq"], appended["hash"])
    # every link holds: only a key the attacker lacks tells the story
    assert all(r["hash"] == attacker_hash(r, p) for r, p in zip(rows()[1:], [r["hash"] for r in rows()]))

    error = verifyaudit()
    assert error is not None
    assert error.startswith("Audit log broken at event #3: event 3 does not carry a valid MAC"), error
    verification = AuditVerification.objects.latest("started_at")
    assert (verification.intact, verification.first_bad_seq) == (False, 3)


def test_an_appended_event_without_a_valid_mac_is_reported(log):
    last = rows()[-1]
    append(last["hash"], mac=last["mac"])
    assert verifyaudit().startswith("Audit log broken at event #7: event 7 does not carry a valid MAC")


# --- deleting everything ---------------------------------------------------------------------------------


def wipe():
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent")
        cursor.execute("DELETE FROM pipelines_audithead")


def test_deleting_every_event_and_the_head_is_reported(log, make_release, repository):
    make_release(repository, "v1.0.0")
    wipe()
    assert verifyaudit() == ("Audit log broken at event #1: the audit log is empty but the portal holds 1 release: "
                             "its events were deleted")


def test_deleting_every_event_after_admin_changes_is_reported(client, alice, origin):
    client.force_login(alice)
    client.post(reverse("admin:pipelines_repository_add"), {
        "name": "shop", "url": origin.url, "branch": "main", "release_from": "tags", "tag_pattern": "v*",
        "pipeline_path": ".gitops.yml", "poll_interval": 60, "webhook_secret": "", "lifecycle": default_lifecycle_id(), "_save": "Save",
        "check_secrets-TOTAL_FORMS": 0, "check_secrets-INITIAL_FORMS": 0, "check_secrets-MIN_NUM_FORMS": 0,
        "check_secrets-MAX_NUM_FORMS": 1000,
    })
    wipe()
    assert verifyaudit() == ("Audit log broken at event #1: the audit log is empty but the portal holds "
                             "1 admin change: its events were deleted")


def test_a_demo_repository_made_without_an_event_is_not_taken_for_a_wipe(repository):
    assert verifyaudit() is None


def test_deleting_everything_after_a_verification_is_reported_by_its_record(alice):
    AuditEvent.objects.record(action="test.event", actor=alice)
    assert verifyaudit() is None
    wipe()
    assert verifyaudit() == ("Audit log broken at event #1: events 1 to 2 are missing: an earlier verification "
                             "counted 2 intact events")


def test_a_fresh_install_is_intact(db):
    assert verifyaudit() is None
    assert AuditVerification.objects.get().message == "intact: 0 events verified"


# --- truncation ------------------------------------------------------------------------------------------


def test_events_cut_off_the_end_are_reported(log):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq >= 5")
    assert verifyaudit() == "Audit log broken at event #5: events 5 to 6 are missing from the end of the log"


def test_events_cut_off_the_end_with_the_head_moved_back_are_reported(log):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq >= 5")
    move_head(4, rows()[-1]["hash"])
    assert verifyaudit() == ("Audit log broken at event #5: the record of the chain's head was altered (its signature "
                             "does not match): events after #4 may have been cut off")


def test_events_cut_off_the_end_with_the_head_deleted_are_reported(log):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq >= 5")
        cursor.execute("DELETE FROM pipelines_audithead")
    assert verifyaudit() == ("Audit log broken at event #5: the signed head of the chain is missing: events after #4 "
                             "may have been cut off")


def test_events_cut_off_with_an_old_signed_head_put_back_are_reported_after_a_verification(log, alice):
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq, hash, signature FROM pipelines_audithead")
        old_head = cursor.fetchone()
    AuditEvent.objects.record(action="test.event", actor=alice)
    assert verifyaudit() is None  # the hourly job saw 7 events
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq = 7")
        cursor.execute("UPDATE pipelines_audithead SET seq = %s, hash = %s, signature = %s", list(old_head))
    assert verifyaudit() == ("Audit log broken at event #7: events 7 to 7 are missing: an earlier verification "
                             "counted 7 intact events")


# --- keys ------------------------------------------------------------------------------------------------


def test_events_keyed_with_an_old_key_in_the_fallbacks_still_verify(alice, settings):
    settings.GITOPS_AUDIT_KEY = "the-2025-audit-key"
    AuditEvent.objects.record(action="test.event", actor=alice)
    settings.GITOPS_AUDIT_KEY = "the-2026-audit-key"
    settings.GITOPS_AUDIT_KEY_FALLBACKS = ["the-2025-audit-key"]
    AuditEvent.objects.record(action="test.event", actor=alice)
    assert verifyaudit() is None
    macs = [row["mac"] for row in rows()]
    assert macs[2] == forged_mac(rows()[2]["hash"], "the-2026-audit-key"), "new events use the current key"

    settings.GITOPS_AUDIT_KEY_FALLBACKS = []
    assert verifyaudit().startswith("Audit log broken at event #1: event 1 does not carry a valid MAC")


def test_an_event_forged_with_an_unknown_key_is_reported(log, settings):
    previous = rewrite_and_rehash(4, {"release": "v6.6.6"}, mac_key="a-key-the-attacker-made-up")
    appended = append(previous, mac_key="a-key-the-attacker-made-up")
    move_head(appended["seq"], appended["hash"])
    assert verifyaudit().startswith("Audit log broken at event #4: event 4 does not carry a valid MAC")


# --- the verification job and the page -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the job runs in a forked work-horse, which sees only committed rows
def test_the_verification_job_records_a_forgery_and_the_page_shows_it(log, client, charlie, run_workers):
    previous = rewrite_and_rehash(3, {"release": "v6.6.6"})
    append(previous)
    queue_verification()
    run_workers()
    verification = AuditVerification.objects.get()
    assert (verification.intact, verification.first_bad_seq, verification.events) == (False, 3, 2)
    client.force_login(charlie)
    html = client.get(reverse("audit_log")).content.decode()
    assert "Broken at event #3: event 3 does not carry a valid MAC" in html and "(checked at" in html
