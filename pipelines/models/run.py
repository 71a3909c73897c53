"""What every kind of run has in common (a deployment, a build, a preview, a check): a fenced run of steps with
its own row, claimed by a compare-and-swap, its status changed only through `transition()` (a compare-and-swap
plus its audit event), its lease a heartbeat on the database's clock (clock.py; the runner stops its step when
it cannot renew it, pipelines/runs/heartbeat.py), cancelled the same way, its log stored in numbered chunks.
The run kernel (pipelines/runs/) drives it; the reconciler fails a run whose heartbeat stopped and wakes a
queued one whose job was lost.

Subclasses name their statuses and transitions (`TRANSITIONS`), their log chunk model (`log_chunks`), and which
repository and environment their audit events belong to (`audit_scope`)."""

import os
import socket

from django.db import models, transaction
from django.db.models.functions import Now
from django.utils import timezone

from pipelines import run_log

from . import wakeups
from .audit import AuditEvent
from .clock import set_written

QUEUED, RUNNING, CANCELLED = "queued", "running", "cancelled"


def this_host():
    """Where a run happens, as recorded in `runner_host`: the host name and the PID namespace. Two
    processes see each other's pids only when both agree, so a reconciler that finds the runner's pid
    gone knows it died only then (containers on one host may share a host name, never a namespace)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()} {namespace}"


class DeploymentStateError(Exception):
    """A change of status of a run that cannot happen; the message says why in words."""


class InvalidTransition(DeploymentStateError):
    pass


class StaleStatus(DeploymentStateError):
    """Another process changed the run first (a second click, a second worker)."""


class TargetBusy(DeploymentStateError):
    """Another deployment of the same repository is already running in this environment."""


class FencedRun(models.Model):
    TRANSITIONS = {}  # {status: {statuses it may become}}; those with no way out are finished

    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    job_id = models.CharField(max_length=100, blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    # Where the run happens, so that a reconciler on the same host can tell a dead runner from a slow one.
    runner_host = models.CharField(max_length=200, blank=True)
    runner_pid = models.IntegerField(null=True, blank=True)
    step_pgid = models.IntegerField(null=True, blank=True, help_text="Process group of the step running now.")

    class Meta:
        abstract = True

    @property
    def is_finished(self):
        return not self.TRANSITIONS[self.status]

    @property
    def succeeded(self):
        return self.status == "succeeded"

    @property
    def duration(self):
        if self.started_at:
            return (self.finished_at or timezone.now()) - self.started_at
        return None

    def audit_scope(self):
        """{"repository": …, "environment": …} of the audit events of this run."""
        raise NotImplementedError

    def audit_details(self):
        return {}

    @property
    def _noun(self):
        return self._meta.verbose_name.capitalize()

    # --- the one way a status changes ------------------------------------------------------------------

    def transition(self, new_status, *, by=None, details=None, **fields):
        """Move to `new_status` if allowed, with a compare-and-swap on the current status, and audit it.

        Raises InvalidTransition for a move the state machine forbids, StaleStatus when another process
        changed the row first."""
        self._check_transition(new_status)
        with transaction.atomic():
            self._change_status(new_status, by=by, details=details, fields=fields)
        return self

    def _check_transition(self, new_status):
        if new_status not in self.TRANSITIONS[self.status]:
            raise InvalidTransition(f"{self._noun} #{self.pk} is {self.get_status_display().lower()} and cannot "
                                    f"become {new_status}.")

    def _change_status(self, new_status, *, by, details, fields):
        """The compare-and-swap and its audit event, inside the caller's transaction."""
        old_status = self.status
        now = timezone.now()
        fields["status"] = new_status
        if new_status == RUNNING:
            fields.setdefault("started_at", now)
            fields.setdefault("heartbeat_at", Now())  # on the database's clock: see clock.py
        elif not self.TRANSITIONS[new_status]:
            fields.setdefault("finished_at", now)
        model = type(self)
        if model.objects.filter(pk=self.pk, status=old_status).update(**fields) != 1:
            current = model.objects.filter(pk=self.pk).values_list("status", flat=True).first()
            raise StaleStatus(f"{self._noun} #{self.pk} is already {current}; nothing was changed.")
        # No savepoint of its own: every caller runs this inside an atomic block of its own (transition, a
        # kind's claim or success), which a failure rolls back whole.
        AuditEvent.objects.record(
            action=f"{self._meta.model_name}.{new_status}", actor=by, obj=self, **self.audit_scope(),
            details={"from": old_status, "to": new_status, **self.audit_details(), **(details or {})},
            savepoint=False,
        )
        set_written(self, fields)

    def claim(self, *, worker_name, runner_host=None, runner_pid=None, **fields):
        """Start running; StaleStatus when another worker (a second wake-up) got there first."""
        return self.transition(RUNNING, **self._claim_fields(worker_name, runner_host, runner_pid, **fields))

    @staticmethod
    def _claim_fields(worker_name, runner_host, runner_pid, **fields):
        """What a claim writes besides the status: who runs it, and where."""
        return {"worker_name": worker_name, "runner_host": runner_host if runner_host is not None else this_host(),
                "runner_pid": runner_pid if runner_pid is not None else os.getpid(), **fields}

    def fail(self, error, *, exit_code=None, by=None):
        return self.transition("failed", by=by, error=error, exit_code=exit_code, details={"error": error[:500]})

    def cancel(self, *, by=None, reason=""):
        """Cancel a run that has not started; ask the runner of a running one to stop its step (it records
        the cancellation once the step is gone). Audited either way; DeploymentStateError saying why when
        the run is finished or a cancel was already asked for."""
        if self.status != RUNNING:
            return self.transition(CANCELLED, by=by, error=reason,
                                   details={"reason": reason})
        model = type(self)
        with transaction.atomic():
            asked = model.objects.filter(pk=self.pk, status=RUNNING, cancel_requested_at=None).update(
                cancel_requested_at=timezone.now())
            if asked != 1:
                raise StaleStatus(f"{self._noun} #{self.pk} is no longer running, or a cancel was already requested.")
            AuditEvent.objects.record(action=f"{self._meta.model_name}.cancel_requested", actor=by, obj=self,
                                      **self.audit_scope(), details={"reason": reason})
            wakeups.ask("stop_run", self)  # its worker stops the step now, not at its next heartbeat
        self.refresh_from_db()
        return self

    def wake(self):
        """Wake a worker for this queued run once the current transaction commits (pipelines/runs/kernel.py)."""
        wakeups.ask("enqueue_run", self)

    def beat(self):
        """Record that the runner is alive. True means stop: a cancel was asked for, or the run is no longer
        running (the reconciler gave it up as lost), so its step must not go on. Raises on a database error
        (retried next beat)."""
        model = type(self)
        if model.objects.filter(pk=self.pk, status=RUNNING).update(heartbeat_at=Now()) != 1:
            return True
        return model.objects.filter(pk=self.pk, cancel_requested_at__isnull=False).exists()

    def record_step(self, pgid):
        """The process group of the step running now, so a reconciler on this host can tell whether
        anything of this run can still be running."""
        type(self).objects.filter(pk=self.pk).update(step_pgid=pgid)
        self.step_pgid = pgid

    # --- log -------------------------------------------------------------------------------------------

    def append_log(self, text, *, seq=None):
        """Store a piece of the log; a numbered piece sent again after a lost answer is stored once.
        The writer (pipelines/runs/log.py) masks secrets before it gets here. Returns the seq used."""
        text = text.replace("\x00", "")  # PostgreSQL text cannot hold NUL; a step may print anything
        if not text:
            return seq
        if seq is None:
            seq = (self.log_chunks.order_by("-seq").values_list("seq", flat=True).first() or 0) + 1
        self.log_chunks.model.objects.bulk_create([self._log_chunk(seq, text)], ignore_conflicts=True)
        return seq

    def _log_chunk(self, seq, text):
        return self.log_chunks.model(**{self.log_chunks.field.name: self, "seq": seq, "text": text})

    def log_since(self, seq):
        """The log after chunk `seq` as plain text (pipelines/run_log.plain), and the last chunk's seq."""
        chunks = self.log_chunks_since(seq)
        if not chunks:
            return "", seq
        return run_log.plain("".join(text for _, text, _ in chunks)), chunks[-1][0]

    def log_chunks_since(self, seq):
        """The stored chunks after `seq`, marks included (pipelines/run_log.py): [(seq, text, stored at)]."""
        return list(self.log_chunks.filter(seq__gt=seq).order_by("seq").values_list("seq", "text", "created_at"))


class KeepsArtifacts(models.Model):
    """A run whose steps leave artifacts in $GITOPS_ARTIFACTS/, kept as one tar.gz in the storage
    `gitops_artifacts` (pipelines/artifacts.py)."""

    artifact_name = models.CharField(max_length=500, blank=True, help_text="Name in the gitops_artifacts storage.")
    artifact_size = models.BigIntegerField(null=True, blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        abstract = True

    @staticmethod
    def artifact_fields(artifact):
        """The row's fields for a pipelines.artifacts.StoredArtifact (None: no artifacts)."""
        if artifact is None:
            return {}
        return {"artifact_name": artifact.name, "artifact_size": artifact.size, "artifact_sha256": artifact.sha256}
