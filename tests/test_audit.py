"""The audit log is a keyed hash chain: any alteration, insertion, forgery or removal is detected."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pipelines.models import AuditEvent, AuditHead, AuditVerification
from pipelines.models.audit import GENESIS_ACTION, GENESIS_HASH, KEYED_ACTION, run_verification, schedule_verification_if_due

pytestmark = pytest.mark.django_db


def record_three(alice):
    for n in range(3):
        AuditEvent.objects.record(action="test.event", actor=alice, details={"n": n})


def test_each_event_links_to_the_one_before_and_carries_a_mac(alice):
    record_three(alice)
    events = list(AuditEvent.objects.order_by("seq"))
    assert events[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert all(len(e.mac) == 64 for e in events)
    assert AuditEvent.objects.first_broken() is None


def test_the_first_event_ever_is_the_genesis_marker(alice):
    record_three(alice)
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", "action")) == [
        (1, GENESIS_ACTION), (2, "test.event"), (3, "test.event"), (4, "test.event"),
    ]
    head = AuditHead.objects.get()
    last = AuditEvent.objects.get(seq=4)
    assert (head.seq, head.hash, head.mac) == (4, last.hash, last.mac)


def test_an_event_costs_two_statements_on_postgresql(alice):
    """Lock the head and read the chain's end from it; INSERT the event and move the head in one statement."""
    record_three(alice)
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        event = AuditEvent.objects.record(action="test.event", actor=alice, savepoint=False)
    assert len(queries) == (2 if connection.vendor == "postgresql" else 3), [q["sql"] for q in queries]
    assert AuditEvent.objects.get(pk=event.pk).seq == 5
    assert AuditEvent.objects.first_broken() is None


def test_a_fresh_install_is_intact():
    report = AuditEvent.objects.verify()
    assert report.intact and report.events == 0
    assert report.message == "intact: 0 events verified"


def test_an_event_altered_in_the_database_is_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s WHERE seq = 3", ['{"n": 99}'])
    assert AuditEvent.objects.first_broken() == (3, "event 3 was altered after it was recorded")


def test_a_removed_event_is_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq = 3")
    assert AuditEvent.objects.first_broken() == (3, "event 3 is missing (next stored is 4)")


def test_an_event_re_hashed_without_the_key_is_reported_by_its_mac(alice):
    record_three(alice)
    event = AuditEvent.objects.get(seq=4)
    event.details = {"n": 99}
    event.hash = event.compute_hash()
    AuditEvent.objects.filter(seq=4).update(details=event.details, hash=event.hash)
    seq, reason = AuditEvent.objects.first_broken()
    assert seq == 4 and reason.startswith("event 4 does not carry a valid MAC")


def test_the_actor_is_kept_by_name_when_the_user_is_deleted(alice):
    AuditEvent.objects.record(action="test.event", actor=alice)
    alice.delete()
    event = AuditEvent.objects.get(action="test.event")
    assert event.actor is None and event.actor_name == "alice"
    assert AuditEvent.objects.first_broken() is None


def test_events_cut_off_the_end_are_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq >= 3")
    assert AuditEvent.objects.first_broken() == (3, "events 3 to 4 are missing from the end of the log")


def test_events_cut_off_behind_the_head_stay_reported_after_later_events(alice):
    """A writer goes on from the signed head, not from the last event stored: later events do not close the gap."""
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq >= 3")
    AuditEvent.objects.record(action="test.event", actor=alice)
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [1, 2, 5]
    assert AuditEvent.objects.first_broken() == (3, "event 3 is missing (next stored is 5)")


def test_an_older_signed_head_put_back_does_not_stop_the_log(alice):
    """A replayed head points before events that are stored: the next event follows the stored chain instead of
    failing on a seq that is taken (every audited change would fail with it), and the chain holds."""
    record_three(alice)
    old_head = AuditHead.objects.values("seq", "hash", "mac", "signature").get()
    record_three(alice)
    AuditHead.objects.update(**old_head)
    with transaction.atomic():
        AuditEvent.objects.record(action="test.event", actor=alice, savepoint=False)
    AuditEvent.objects.record_many([dict(action="test.batch", details={"i": i}) for i in range(2)])
    AuditHead.objects.update(**old_head)
    AuditEvent.objects.record_many([dict(action="test.batch", details={"i": i}) for i in range(2)])
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, 13))
    assert AuditEvent.objects.first_broken() is None


def test_a_forged_head_is_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq = 4")
        cursor.execute("UPDATE pipelines_audithead SET seq = 3, hash = (SELECT hash FROM pipelines_auditevent WHERE seq = 3)")
    assert AuditEvent.objects.first_broken() == (
        4, "the record of the chain's head was altered (its signature does not match): events after #3 may have been cut off"
    )


def test_a_deleted_head_is_reported(alice):
    record_three(alice)
    AuditHead.objects.all().delete()
    assert AuditEvent.objects.first_broken() == (
        5, "the signed head of the chain is missing: events after #4 may have been cut off"
    )


def test_the_chain_survives_a_key_rotation_with_the_old_key_as_fallback(alice, settings):
    record_three(alice)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-key"
    assert AuditEvent.objects.first_broken() is None
    AuditEvent.objects.record(action="test.event", actor=alice)  # signed with the new key
    assert AuditEvent.objects.first_broken() is None
    settings.SECRET_KEY_FALLBACKS = []
    seq, reason = AuditEvent.objects.first_broken()
    assert seq == 1 and "does not carry a valid MAC" in reason


def test_an_audit_key_of_its_own_does_not_depend_on_secret_key(alice, settings):
    settings.GITOPS_AUDIT_KEY = "audit-key-1"
    record_three(alice)
    settings.SECRET_KEY = "rotated-without-fallbacks"
    assert AuditEvent.objects.first_broken() is None


def test_legacy_events_without_a_mac_are_accepted_only_before_the_keyed_marker(alice):
    record_three(alice)
    # As recorded before events carried a MAC: no genesis marker, no MACs.
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent")
        cursor.execute("DELETE FROM pipelines_audithead")
    previous = GENESIS_HASH
    for seq in (1, 2):
        event = AuditEvent(seq=seq, created_at=timezone.now(), actor_name="system", action="old.event", prev_hash=previous)
        event.hash = event.compute_hash()
        event.save()
        previous = event.hash
    AuditEvent.objects.record(action="new.event")
    assert list(AuditEvent.objects.order_by("seq").values_list("action", flat=True)) == [
        "old.event", "old.event", KEYED_ACTION, "new.event",
    ]
    report = AuditEvent.objects.verify()
    assert report.intact and report.legacy == 2
    assert "#1 to #2 are legacy events" in report.message

    AuditEvent.objects.filter(seq=4).update(mac="")  # a gap later is not legacy
    assert AuditEvent.objects.first_broken() == (
        4, "event 4 has no MAC but follows keyed events: it was inserted or its MAC removed"
    )


def test_urls_are_recorded_without_their_credentials(alice):
    event = AuditEvent.objects.record(action="test.event", details={
        "url": "https://user:s3cr3t-token@git.example.com/org/repo.git",
        "error": "Cannot reach https://s3cr3t-token@git.example.com/x: refused",
    })
    assert event.details == {
        "url": "https://***@git.example.com/org/repo.git", "error": "Cannot reach https://***@git.example.com/x: refused",
    }
    assert "s3cr3t-token" not in event.canonical_json()


# --- the verification job and its record -------------------------------------------------------------


def test_a_verification_is_recorded(alice):
    record_three(alice)
    verification = run_verification()
    assert verification.intact and verification.events == 4 and verification.first_bad_seq is None
    assert verification.finished_at >= verification.started_at
    assert verification.message == "intact: 4 events verified"


def test_a_failed_verification_names_the_first_bad_event(alice):
    record_three(alice)
    AuditEvent.objects.filter(seq=2).update(action="test.forged")
    verification = run_verification()
    assert verification.intact is False and verification.first_bad_seq == 2 and verification.events == 1
    assert verification.message == "broken at event #2: event 2 was altered after it was recorded"


def test_an_earlier_verification_exposes_a_replayed_head(alice):
    """Events cut off the end and an older, validly signed head put back: the last verification counted more."""
    record_three(alice)
    old_head = AuditHead.objects.values("seq", "hash", "signature").get()
    AuditEvent.objects.record(action="test.event")
    assert run_verification().intact
    AuditEvent.objects.filter(seq=5).delete()
    AuditHead.objects.update(**old_head)
    assert AuditEvent.objects.first_broken() == (
        5, "events 5 to 5 are missing: an earlier verification counted 5 intact events"
    )


def test_a_verification_is_scheduled_at_most_once_per_period(settings, django_capture_on_commit_callbacks):
    settings.GITOPS_AUDIT_VERIFY_EVERY = 3600
    now = timezone.now()
    with django_capture_on_commit_callbacks() as callbacks:
        first = schedule_verification_if_due(now)
    assert first is not None and first.finished_at is None and len(callbacks) == 1
    assert schedule_verification_if_due(now + timedelta(minutes=59)) is None
    assert schedule_verification_if_due(now + timedelta(minutes=61)) is not None
    assert AuditVerification.objects.count() == 2


def test_the_queued_verification_is_carried_out_once(alice):
    record_three(alice)
    queued = AuditVerification.objects.create(started_at=timezone.now())
    done = run_verification(queued.pk)
    assert done.pk == queued.pk and done.intact
    assert run_verification(queued.pk) is None  # a retried job does not walk again
