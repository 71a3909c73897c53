"""The append-only, hash-chained, keyed audit log.

Each event's hash covers the previous event's hash and the event's own canonical JSON, so altering,
inserting or deleting a stored row breaks the chain from that point on. `seq` is unique: two writers
can never both extend the chain from the same predecessor.

Anyone who can write to the database can also re-hash a chain, so each event also carries a MAC: an
HMAC-SHA256 of its hash under the audit key, which lives in the environment (GITOPS_AUDIT_KEY, else
derived from SECRET_KEY), never in the database. The head of the chain (its last seq and hash) is signed
with the same key. Verification checks every MAC and anchors the walk on the signed head, so rewriting
and re-hashing, appending, cutting events off the end and deleting everything are all reported.

Writers queue on the head row: each locks it (SELECT … FOR UPDATE, the audit lock, always the last lock of
an audited transaction), links its events after the head's seq and hash, and moves the head in the same
statement as the INSERT. A signed head is trusted to be the chain's end, so a writer never reads the events:
events cut off behind a signed head leave a gap that verification reports, even after later events.

How the chain proves where it starts: the first event ever recorded is a keyed marker,
`audit.genesis` at #1. A log recorded before events were keyed starts with events that have no MAC;
they are accepted as "legacy, hash-chained only" only as an unbroken prefix closed by the keyed marker
`audit.keyed`. An empty log is accepted only while the portal holds nothing the log must have recorded.
"""

import contextvars
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from pipelines.redaction import redact, redact_text

from . import wakeups

GENESIS_HASH = "0" * 64
GENESIS_ACTION = "audit.genesis"
KEYED_ACTION = "audit.keyed"
_EVENT_SALT = "gitops.audit.event"
_HEAD_SALT = "gitops.audit.head"


# --- the audit key ---------------------------------------------------------------------------------


def audit_keys():
    """The current audit key first, then the old ones that still verify (as SECRET_KEY_FALLBACKS does).

    Without GITOPS_AUDIT_KEY the key is SECRET_KEY (and its fallbacks), always used through salted_hmac
    with a salt of its own, so no other signature of the portal can stand in for an audit MAC."""
    fallbacks = list(getattr(settings, "GITOPS_AUDIT_KEY_FALLBACKS", []))
    key = getattr(settings, "GITOPS_AUDIT_KEY", "")
    if key:
        return [key, *fallbacks]
    return [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", []), *fallbacks]


def _mac(value, salt, key):
    return salted_hmac(salt, value, secret=key, algorithm="sha256").hexdigest()


def _matches_a_known_key(value, salt, mac, keys):
    return bool(mac) and any(constant_time_compare(_mac(value, salt, key), mac) for key in keys)


def event_mac(hash_, key=None):
    return _mac(hash_, _EVENT_SALT, key or audit_keys()[0])


def _sign(seq, hash_):
    return _mac(f"{seq}:{hash_}", _HEAD_SALT, audit_keys()[0])


# --- recording ---------------------------------------------------------------------------------------


class AuditEventQuerySet(models.QuerySet):
    def record(self, *, action, actor=None, obj=None, repository=None, environment=None, details=None,
               savepoint=True):
        """Append one event. Call inside the transaction that makes the change, so both land or neither.

        Credentials in URLs are redacted before the event is hashed: what is recorded is what may be shown.
        `savepoint=False` when the caller's own atomic block is the unit that a failure rolls back (a run's
        change of status): one attempt, without the SAVEPOINT and RELEASE round trips. Nothing is lost: the
        head row's lock serialises writers; the retry below is for a batch after a replayed head (see _append_many)."""
        entry = dict(action=action, actor=actor, obj=obj, repository=repository, environment=environment,
                     details=redact(details or {}))
        if not savepoint:
            with transaction.atomic(savepoint=False):
                return self._append_many([entry])[0]
        return self._append_with_retries([entry])[0]

    def record_many(self, entries):
        """Append several events in one go: `entries` are dicts of record()'s keyword arguments, in order.

        One lock of the head, one INSERT and one move of the head, however many events: a first poll
        records thousands of releases."""
        if not entries:
            return []
        entries = [{**entry, "details": redact(entry.get("details") or {})} for entry in entries]
        return self._append_with_retries(entries)

    def _append_with_retries(self, entries):
        for attempt in range(5):
            try:
                with transaction.atomic():
                    # After a lost race, the chain's end is read from the events themselves (see _append_many).
                    return self._append_many(entries, trust_head=attempt == 0)
            except IntegrityError:
                if attempt == 4:
                    raise

    def _append_many(self, entries, *, trust_head=True):
        """Link `entries` after the chain's end, INSERT them and move the head onto the last.

        The head row carries what the next event needs (the last seq, hash and MAC) and its lock, taken
        here, is the audit lock: two statements per event, the locking read and the INSERT with the
        move of the head. The head is trusted only when its signature holds and the chain is keyed;
        otherwise (the first event of an installation, a legacy or altered head) the end is read from the
        events, as it always was, and the keyed chain is started when it has not been."""
        head = _locked_head()
        trusted = trust_head and _is_signed_keyed_head(head)
        last = head if trusted else self.order_by("-seq").only("seq", "hash", "mac").first()
        events = []
        if last is None or not last.mac:
            # The keyed chain starts here: once per installation, so it costs nothing on later events.
            last = _link(_start_marker(last), after=last)
            events.append(last)
        for entry in entries:
            last = _link(_new_event(**entry), after=last)
            events.append(last)
        if _store(events):
            return events[-len(entries):]
        if trusted:
            # An event already holds the next seq: the head was put back behind the chain (an older signed
            # head replayed). Go on after the events actually stored, as the chain itself says.
            return self._append_many(entries, trust_head=False)
        raise IntegrityError("audit event seq taken while the head was locked")

    # --- verifying -----------------------------------------------------------------------------------

    def verify(self):
        """Walk the whole chain; a ChainReport naming the first bad event, if any, and why."""
        return _ChainWalk().run(self.order_by("seq"))

    def first_broken(self):
        """(seq, reason) of the first event that does not hold, or None when the chain is intact."""
        report = self.verify()
        return None if report.intact else (report.first_bad_seq, report.reason)


# How the person acting reached the portal, when not through its pages: "token ci-deploy" while an API request
# authenticated by that token runs. Every event recorded for a person inside says so in its details.
_acting_via = contextvars.ContextVar("audit_acting_via", default="")


@contextmanager
def acting_via(channel=""):
    """Record the events of the block as done "via <channel>": model methods keep taking the user as `by`,
    and the audit log still tells a token's use from a click. Whatever `act_via()` sets inside ends with it."""
    reset = _acting_via.set(channel)
    try:
        yield
    finally:
        _acting_via.reset(reset)


def act_via(channel):
    """From here to the end of the enclosing `acting_via()` block (the API's middleware opens one per request)."""
    _acting_via.set(channel)


def _new_event(*, action, actor=None, obj=None, repository=None, environment=None, details=None):
    via = _acting_via.get()
    if via and getattr(actor, "pk", None):
        details = {**(details or {}), "via": via}
    return AuditEvent(
        action=action,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_name=_actor_name(actor),
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=redact_text(str(obj))[:300] if obj is not None else "",
        repository=repository,
        environment=environment,
        details=details or {},
    )


def _link(event, *, after):
    """Give `event` its place in the chain after `after` (None: the first event): seq, hash and MAC."""
    event.seq = (after.seq + 1) if after else 1
    event.created_at = timezone.now()
    event.prev_hash = after.hash if after else GENESIS_HASH
    event.hash = event.compute_hash()
    event.mac = event_mac(event.hash)
    return event


def _start_marker(last):
    if last is None:
        return AuditEvent(actor_name="system", action=GENESIS_ACTION,
                          details={"note": "The first event of this portal's audit log."})
    return AuditEvent(actor_name="system", action=KEYED_ACTION, details={
        "legacy_events": last.seq,
        "note": f"Events #1 to #{last.seq} were recorded without a MAC: they are hash-chained only.",
    })


def _locked_head():
    """The head row, locked to the end of the transaction: every audit writer queues here, one at a time.

    The row is made the first time (an installation's first event, or after the head was deleted); two
    first writers both end up waiting on the one row (ON CONFLICT DO NOTHING waits for the other's commit)."""
    table = connection.ops.quote_name(AuditHead._meta.db_table)
    sql = f"SELECT seq, hash, mac, signature FROM {table} WHERE id = %s"
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"  # SQLite has no row locks: its IMMEDIATE transactions serialise every writer
    with connection.cursor() as cursor:
        cursor.execute(sql, [AuditHead.SINGLETON])
        row = cursor.fetchone()
        if row is None:
            AuditHead.objects.bulk_create([AuditHead(pk=AuditHead.SINGLETON, seq=0, hash=GENESIS_HASH)],
                                          ignore_conflicts=True)
            cursor.execute(sql, [AuditHead.SINGLETON])
            row = cursor.fetchone()
    seq, hash_, mac, signature = row
    return AuditHead(pk=AuditHead.SINGLETON, seq=seq, hash=hash_, mac=mac, signature=signature)


def _is_signed_keyed_head(head):
    """Whether the next event may follow the head without reading the chain: it was signed with the audit key
    (by a writer, never edited since) and it ends a keyed chain (it carries its last event's MAC)."""
    return bool(head.seq and head.mac) and _matches_a_known_key(
        f"{head.seq}:{head.hash}", _HEAD_SALT, head.signature, audit_keys())


def _store(events):
    """INSERT `events` (linked in order) and move the head onto the last, signed. False when the one event's seq
    was already taken, and then nothing was written (a batch raises IntegrityError instead)."""
    if len(events) == 1:
        return _insert_and_move_head(events[0])
    AuditEvent.objects.bulk_create(events)
    with connection.cursor() as cursor:
        cursor.execute(*_head_update(events[-1]))
    return True


def _insert_and_move_head(event):
    """The hot path of every audited change, one statement on PostgreSQL: the INSERT in a CTE of the head's
    UPDATE. SQLite cannot put an INSERT in a WITH clause: two statements there."""
    fields = [field for field in AuditEvent._meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    insert_sql = (f"INSERT INTO {quote(AuditEvent._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
                  f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT DO NOTHING RETURNING id")
    insert_params = [field.get_db_prep_save(getattr(event, field.attname), connection) for field in fields]
    head_sql, head_params = _head_update(event)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"WITH event AS ({insert_sql}) {head_sql} AND EXISTS (SELECT FROM event) "
                           "RETURNING (SELECT id FROM event)", [*insert_params, *head_params])
            row = cursor.fetchone()
        else:
            cursor.execute(insert_sql, insert_params)
            row = cursor.fetchone()
            if row is not None:
                cursor.execute(head_sql, head_params)
    if row is None:
        return False
    event.pk, event._state.adding = row[0], False
    return True


def _head_update(event):
    """The UPDATE that moves the head onto `event`, signed: (sql, params)."""
    sql = (f"UPDATE {connection.ops.quote_name(AuditHead._meta.db_table)} "
           "SET seq = %s, hash = %s, mac = %s, signature = %s WHERE id = %s")
    return sql, [event.seq, event.hash, event.mac, _sign(event.seq, event.hash), AuditHead.SINGLETON]

def _actor_name(actor):
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return actor.get_username()


# --- verifying -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    """What a walk over the chain found: how many events held, and the first that did not (and why)."""

    events: int
    legacy: int = 0
    first_bad_seq: int | None = None
    reason: str = ""

    @property
    def intact(self):
        return self.first_bad_seq is None

    @property
    def message(self):
        if not self.intact:
            return f"broken at event #{self.first_bad_seq}: {self.reason}"
        text = f"intact: {self.events} events verified"
        if self.legacy:
            text += (f" (#1 to #{self.legacy} are legacy events, recorded before events carried a MAC: "
                     "hash-chained only)")
        return text


class _ChainWalk:
    def run(self, events):
        # The head is read before the walk: every event up to it is committed and must be seen; events
        # appended while we walk come after it and must carry a valid MAC of their own.
        self.keys = audit_keys()
        self.head = AuditHead.objects.filter(pk=AuditHead.SINGLETON).first()
        self.head_signed = self.head is not None and _matches_a_known_key(
            f"{self.head.seq}:{self.head.hash}", _HEAD_SALT, self.head.signature, self.keys
        )
        self.prev_hash, self.count, self.keyed_from, self.legacy = GENESIS_HASH, 0, None, 0
        for event in events.iterator(chunk_size=2000):
            problem = self._event_problem(event)
            if problem:
                return ChainReport(self.count, self.legacy, *problem)
            if event.mac and self.keyed_from is None:
                self.keyed_from = event.seq
            self.legacy += not event.mac
            self.prev_hash, self.count = event.hash, self.count + 1
        problem = self._end_problem() or _history_problem(self.count)
        return ChainReport(self.count, self.legacy, *(problem or ()))

    def _event_problem(self, event):
        seq, expected = event.seq, self.count + 1
        if seq != expected:
            return expected, f"event {expected} is missing (next stored is {seq})"
        if event.prev_hash != self.prev_hash:
            return seq, f"event {seq} does not link to the event before it"
        if event.compute_hash() != event.hash:
            return seq, f"event {seq} was altered after it was recorded"
        if event.mac:
            if not _matches_a_known_key(event.hash, _EVENT_SALT, event.mac, self.keys):
                return seq, (f"event {seq} does not carry a valid MAC: it was rewritten and re-hashed, "
                             "or forged, without the audit key")
            if self.keyed_from is None and event.action != (GENESIS_ACTION if seq == 1 else KEYED_ACTION):
                return seq, f"event {seq} is the first keyed event but not the marker that starts the keyed chain"
        elif self.keyed_from is not None:
            return seq, f"event {seq} has no MAC but follows keyed events: it was inserted or its MAC removed"
        elif event.action in (GENESIS_ACTION, KEYED_ACTION) or (self.head_signed and seq > self.head.seq):
            return seq, f"event {seq} has no MAC: it was forged or its MAC removed"
        if self.head_signed and seq == self.head.seq and event.hash != self.head.hash:
            return seq, f"event {seq} does not match the signed head of the chain"
        return None

    def _end_problem(self):
        last, head = self.count, self.head
        if head is None:
            if last:
                return last + 1, f"the signed head of the chain is missing: events after #{last} may have been cut off"
            return _empty_log_problem()
        if not self.head_signed:
            return last + 1, (f"the record of the chain's head was altered (its signature does not match): "
                              f"events after #{last} may have been cut off")
        if head.seq > last:
            return last + 1, f"events {last + 1} to {head.seq} are missing from the end of the log"
        return None


def _empty_log_problem():
    """An empty log is a fresh install, unless the portal holds what the log must have recorded.

    Witnesses are rows always written together with their event: a release (release.recorded), a
    deployment (deployment.created) and an admin change. Not repositories or users: `seeddemo`, a shell or
    `createsuperuser` make those without an event, and a fresh demo must verify as intact."""
    from django.apps import apps

    witnesses = [("pipelines", "Release", "release", "releases"),
                 ("pipelines", "Deployment", "deployment", "deployments"),
                 ("admin", "LogEntry", "admin change", "admin changes")]
    held = []
    for app_label, model_name, singular, plural in witnesses:
        if not apps.is_installed(f"django.contrib.{app_label}") and app_label != "pipelines":
            continue
        count = apps.get_model(app_label, model_name)._default_manager.count()
        if count:
            held.append(f"{count} {singular if count == 1 else plural}")
    if held:
        return 1, f"the audit log is empty but the portal holds {', '.join(held)}: its events were deleted"
    return None


def _history_problem(count):
    """An earlier verification saw more events than there are now: the end was cut off (and the head replayed)."""
    seen = AuditVerification.objects.filter(intact=True).aggregate(most=models.Max("events"))["most"] or 0
    if seen > count:
        return count + 1, (f"events {count + 1} to {seen} are missing: an earlier verification "
                           f"counted {seen} intact events")
    return None


def run_verification(verification_id=None):
    """Walk the chain now and record the outcome: in the AuditVerification that was queued, or a new one.

    Returns that AuditVerification, or None when the queued one was already carried out."""
    started = timezone.now()
    if verification_id is None:
        verification = AuditVerification.objects.create(started_at=started)
    elif not AuditVerification.objects.filter(pk=verification_id, finished_at=None).update(started_at=started, message=""):
        return None  # a retry of a job that already finished
    else:
        verification = AuditVerification.objects.get(pk=verification_id)
    report = AuditEvent.objects.verify()
    verification.finished_at = timezone.now()
    verification.intact = report.intact
    verification.events = report.events
    verification.first_bad_seq = report.first_bad_seq
    verification.message = report.message
    verification.save(update_fields=["finished_at", "intact", "events", "first_bad_seq", "message"])
    return verification


def queue_verification(now=None):
    """Record a pending verification and wake a worker for it once the current transaction commits."""
    verification = AuditVerification.objects.create(started_at=now or timezone.now(), message="Waiting for a worker.")
    wakeups.ask("enqueue_audit_verification", verification.pk)
    return verification


def schedule_verification_if_due(now=None):
    """Queue a verification unless one was queued or run in the last GITOPS_AUDIT_VERIFY_EVERY seconds.

    Called by the reconciler on every tick: one query when nothing is due."""
    now = now or timezone.now()
    every = timedelta(seconds=getattr(settings, "GITOPS_AUDIT_VERIFY_EVERY", 3600))
    latest = AuditVerification.objects.order_by("-started_at").values_list("started_at", flat=True).first()
    if latest is not None and latest > now - every:
        return None
    return queue_verification(now)


# --- the rows --------------------------------------------------------------------------------------------


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
    """One row: where the chain ends, signed, so that removing its last events does not go unnoticed.

    It is also what the next event needs (the last seq, hash and MAC) and the audit lock: writers lock this
    row, last in their transaction, and the next seq is the head's plus one."""

    SINGLETON = 1
    seq = models.PositiveBigIntegerField()
    hash = models.CharField(max_length=64)
    # The last event's MAC: empty while the chain ends in legacy events (the next writer starts the keyed chain).
    mac = models.CharField(max_length=64, blank=True, default="")
    signature = models.CharField(max_length=64)


class AuditVerification(models.Model):
    """The outcome of one walk over the chain (a job runs it; the audit page shows the last).

    A row with no finished_at is queued or running; `message` is ChainReport.message once it finished."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    intact = models.BooleanField(null=True)
    events = models.PositiveBigIntegerField(default=0)
    first_bad_seq = models.PositiveBigIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
