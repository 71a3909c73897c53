"""The append-only, hash-chained audit log.

Each event's hash covers the previous event's hash and the event's own canonical JSON, so altering,
inserting or deleting a stored row breaks the chain from that point on. `seq` is unique: two writers
can never both extend the chain from the same predecessor.
"""

import hashlib
import json

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

GENESIS_HASH = "0" * 64
# Any fixed number; PostgreSQL serialises audit writers on it for the length of their transaction.
_AUDIT_LOCK_KEY = 0x617564697400


class AuditEventQuerySet(models.QuerySet):
    def record(self, *, action, actor=None, obj=None, repository=None, environment=None, details=None):
        """Append one event. Call inside the transaction that makes the change, so both land or neither."""
        for attempt in range(5):
            try:
                with transaction.atomic():
                    return self._append(action, actor, obj, repository, environment, details or {})
            except IntegrityError:
                if attempt == 4:
                    raise

    def _append(self, action, actor, obj, repository, environment, details):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])
        last = self.order_by("-seq").only("seq", "hash").first()
        event = AuditEvent(
            seq=(last.seq + 1) if last else 1,
            created_at=timezone.now(),
            actor=actor if getattr(actor, "pk", None) else None,
            actor_name=_actor_name(actor),
            action=action,
            object_type=obj._meta.label_lower if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
            object_repr=str(obj)[:300] if obj is not None else "",
            repository=repository,
            environment=environment,
            details=details,
            prev_hash=last.hash if last else GENESIS_HASH,
        )
        event.hash = event.compute_hash()
        event.save(force_insert=True)
        AuditHead.objects.update_or_create(
            pk=AuditHead.SINGLETON, defaults={"seq": event.seq, "hash": event.hash, "signature": _sign(event.seq, event.hash)}
        )
        return event

    def first_broken(self):
        """The first event whose hash or link does not hold, or a gap in `seq`; None when the chain is intact.

        Returns (seq, reason)."""
        prev_hash, expected_seq = GENESIS_HASH, 1
        for event in self.order_by("seq").iterator(chunk_size=2000):
            if event.seq != expected_seq:
                return expected_seq, f"event {expected_seq} is missing (next stored is {event.seq})"
            if event.prev_hash != prev_hash:
                return event.seq, f"event {event.seq} does not link to the event before it"
            if event.compute_hash() != event.hash:
                return event.seq, f"event {event.seq} was altered after it was recorded"
            prev_hash, expected_seq = event.hash, expected_seq + 1
        return _check_head(expected_seq - 1, prev_hash)


def _sign(seq, hash_):
    return salted_hmac("gitops.audit.head", f"{seq}:{hash_}", algorithm="sha256").hexdigest()


def _signed_by_a_known_key(head):
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    expected = (salted_hmac("gitops.audit.head", f"{head.seq}:{head.hash}", secret=key, algorithm="sha256").hexdigest() for key in keys)
    return any(constant_time_compare(signature, head.signature) for signature in expected)


def _check_head(last_seq, last_hash):
    """The walk ended at (last_seq, last_hash): is that where the signed head says the chain ends?"""
    head = AuditHead.objects.filter(pk=AuditHead.SINGLETON).first()
    if head is None:
        return (1, "the record of the chain's head is missing") if last_seq else None
    if not _signed_by_a_known_key(head):
        return head.seq, "the record of the chain's head was altered (its signature does not match)"
    if head.seq > last_seq:
        return last_seq + 1, f"events {last_seq + 1} to {head.seq} are missing from the end of the log"
    if head.seq == last_seq and head.hash != last_hash:
        return last_seq, f"event {last_seq} does not match the signed head of the chain"
    return None  # head.seq < last_seq: events appended while we walked


def _actor_name(actor):
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return actor.get_username()


class AuditEvent(models.Model):
    seq = models.PositiveBigIntegerField(unique=True)
    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    repository = models.ForeignKey("pipelines.Repository", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    environment = models.ForeignKey("pipelines.Environment", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    # A keyed MAC over `hash` (key from the environment, not the database): re-hashing is not enough to forge.
    mac = models.CharField(max_length=64, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]

    def __str__(self):
        return f"#{self.seq} {self.actor_name} {self.action} {self.object_repr}"

    def canonical_json(self):
        # The actor and the scope are hashed by name and id, which stay fixed even if a user is removed.
        payload = {
            "seq": self.seq,
            "created_at": self.created_at.isoformat(),
            "actor": self.actor_name,
            "action": self.action,
            "object": [self.object_type, self.object_id, self.object_repr],
            "repository_id": self.repository_id,
            "environment_id": self.environment_id,
            "details": self.details,
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)

    def compute_hash(self):
        return hashlib.sha256((self.prev_hash + self.canonical_json()).encode()).hexdigest()


class AuditHead(models.Model):
    """One row: where the chain ends, signed, so that removing its last events does not go unnoticed."""

    SINGLETON = 1
    seq = models.PositiveBigIntegerField()
    hash = models.CharField(max_length=64)
    signature = models.CharField(max_length=64)


class AuditVerification(models.Model):
    """The outcome of one walk over the chain (a job runs it; the audit page shows the last)."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    intact = models.BooleanField(null=True)
    events = models.PositiveBigIntegerField(default=0)
    first_bad_seq = models.PositiveBigIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
