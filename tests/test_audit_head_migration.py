"""Upgrading an installation: the head gets the MAC of the event it points at, so the first event recorded after
the upgrade already follows the head alone, and the chain stays intact across the upgrade."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from pipelines.models import AuditEvent, AuditHead
from pipelines.models.audit import GENESIS_HASH, _sign, event_mac

BEFORE = [("pipelines", "0023_every_run_can_be_cancelled")]

pytestmark = pytest.mark.django_db(transaction=True)


def migrate(targets):
    MigrationExecutor(connection).migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


@pytest.fixture
def leaves():
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    yield leaves
    migrate(leaves)  # the rest of the suite expects the latest schema


def test_the_head_carries_its_last_events_mac_after_the_upgrade(leaves):
    old = migrate(BEFORE)
    # Two keyed events and their signed head, as the code before the upgrade wrote them.
    previous = GENESIS_HASH
    for seq, action in ((1, "audit.genesis"), (2, "old.event")):
        event = AuditEvent(seq=seq, created_at=timezone.now(), actor_name="system", action=action, prev_hash=previous)
        event.hash = event.compute_hash()
        old.get_model("pipelines", "AuditEvent").objects.create(
            seq=seq, created_at=event.created_at, actor_name="system", action=action, details={},
            prev_hash=previous, hash=event.hash, mac=event_mac(event.hash))
        previous = event.hash
    old.get_model("pipelines", "AuditHead").objects.create(pk=AuditHead.SINGLETON, seq=2, hash=previous,
                                                           signature=_sign(2, previous))
    migrate(leaves)

    assert AuditHead.objects.get().mac == event_mac(previous)
    AuditEvent.objects.record(action="new.event")
    assert list(AuditEvent.objects.order_by("seq").values_list("action", flat=True)) == [
        "audit.genesis", "old.event", "new.event",
    ]
    assert AuditEvent.objects.first_broken() is None
