"""The audit log is a hash chain: any alteration, insertion or removal is detected."""

import pytest
from django.db import connection

from pipelines.models import AuditEvent
from pipelines.models.audit import GENESIS_HASH

pytestmark = pytest.mark.django_db


def record_three(alice):
    for n in range(3):
        AuditEvent.objects.record(action="test.event", actor=alice, details={"n": n})


def test_each_event_links_to_the_one_before(alice):
    record_three(alice)
    events = list(AuditEvent.objects.order_by("seq"))
    assert events[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert AuditEvent.objects.first_broken() is None


def test_an_event_altered_in_the_database_is_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s WHERE seq = 2", ['{"n": 99}'])
    assert AuditEvent.objects.first_broken() == (2, "event 2 was altered after it was recorded")


def test_a_removed_event_is_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq = 2")
    assert AuditEvent.objects.first_broken() == (2, "event 2 is missing (next stored is 3)")


def test_the_actor_is_kept_by_name_when_the_user_is_deleted(alice):
    AuditEvent.objects.record(action="test.event", actor=alice)
    alice.delete()
    event = AuditEvent.objects.get()
    assert event.actor is None and event.actor_name == "alice"
    assert AuditEvent.objects.first_broken() is None


def test_events_cut_off_the_end_are_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq >= 2")
    assert AuditEvent.objects.first_broken() == (2, "events 2 to 3 are missing from the end of the log")


def test_a_forged_head_is_reported(alice):
    record_three(alice)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq = 3")
        cursor.execute("UPDATE pipelines_audithead SET seq = 2, hash = (SELECT hash FROM pipelines_auditevent WHERE seq = 2)")
    assert AuditEvent.objects.first_broken() == (2, "the record of the chain's head was altered (its signature does not match)")


def test_the_head_survives_a_key_rotation_with_the_old_key_as_fallback(alice, settings):
    record_three(alice)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-key"
    assert AuditEvent.objects.first_broken() is None
