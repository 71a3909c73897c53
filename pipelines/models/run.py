"""What a build and a preview have in common: a fenced run of steps outside a deployment, with its own row.

The row's heartbeat is the run's lease, on the database's clock (see clock.py; the runner stops its step
when it cannot renew it, see pipelines/runner.Heartbeat); the reconciler fails a run whose heartbeat stopped
and wakes a queued one whose job was lost. Its log is stored in numbered chunks; what its steps left in
$GITOPS_ARTIFACTS/ is one tar.gz in the storage `gitops_artifacts` (pipelines/artifacts.py). Subclasses name
their statuses and transitions (`TRANSITIONS`), and say which repository and environment their audit events
belong to (`audit_scope`)."""

import os

from django.db import models, transaction
from django.db.models.functions import Now
from django.utils import timezone

from pipelines import run_log

from .audit import AuditEvent
from .clock import set_written
from .deployment import InvalidTransition, StaleStatus, this_host

RUNNING = "running"


class FencedRun(models.Model):
    TRANSITIONS = {}  # {status: {statuses it may become}}; those with no way out are finished

    artifact_name = models.CharField(max_length=500, blank=True, help_text="Name in the gitops_artifacts storage.")
    artifact_size = models.BigIntegerField(null=True, blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    job_id = models.CharField(max_length=100, blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
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
        """Move to `new_status` if allowed, with a compare-and-swap on the current status, and audit it."""
        old_status = self.status
        if new_status not in self.TRANSITIONS[old_status]:
            raise InvalidTransition(f"{self._noun} #{self.pk} is {self.get_status_display().lower()} and cannot "
                                    f"become {new_status}.")
        now = timezone.now()
        fields["status"] = new_status
        if new_status == RUNNING:
            fields.setdefault("started_at", now)
            fields.setdefault("heartbeat_at", Now())  # on the database's clock: see clock.py
        elif not self.TRANSITIONS[new_status]:
            fields.setdefault("finished_at", now)
        model = type(self)
        with transaction.atomic():
            if model.objects.filter(pk=self.pk, status=old_status).update(**fields) != 1:
                current = model.objects.filter(pk=self.pk).values_list("status", flat=True).first()
                raise StaleStatus(f"{self._noun} #{self.pk} is already {current}; nothing was changed.")
            AuditEvent.objects.record(
                action=f"{self._meta.model_name}.{new_status}", actor=by, obj=self, **self.audit_scope(),
                details={"from": old_status, "to": new_status, **self.audit_details(), **(details or {})},
            )
        set_written(self, fields)
        return self

    def claim(self, *, worker_name, runner_host=None, runner_pid=None, **fields):
        """Start running; StaleStatus when another worker (a second wake-up) got there first."""
        return self.transition(
            RUNNING, worker_name=worker_name,
            runner_host=runner_host if runner_host is not None else this_host(),
            runner_pid=runner_pid if runner_pid is not None else os.getpid(), **fields,
        )

    def fail(self, error, *, exit_code=None, by=None):
        return self.transition("failed", by=by, error=error, exit_code=exit_code, details={"error": error[:500]})

    def beat(self):
        """Record that the runner is alive. True means stop: the run is no longer running (the reconciler
        gave it up as lost), so its step must not go on. Raises on a database error (retried next beat)."""
        return type(self).objects.filter(pk=self.pk, status=RUNNING).update(heartbeat_at=Now()) != 1

    def record_step(self, pgid):
        type(self).objects.filter(pk=self.pk).update(step_pgid=pgid)
        self.step_pgid = pgid

    @staticmethod
    def artifact_fields(artifact):
        """The row's fields for a pipelines.artifacts.StoredArtifact (None: no artifacts)."""
        if artifact is None:
            return {}
        return {"artifact_name": artifact.name, "artifact_size": artifact.size, "artifact_sha256": artifact.sha256}

    # --- log -------------------------------------------------------------------------------------------

    def append_log(self, text, *, seq=None):
        """Store a piece of the log; a numbered piece sent again after a lost answer is stored once.
        The writer (runner.LogWriter) masks secrets before it gets here."""
        text = text.replace("\x00", "")
        if not text:
            return seq
        if seq is None:
            seq = (self.log_chunks.order_by("-seq").values_list("seq", flat=True).first() or 0) + 1
        chunk = self.log_chunks.model(**{self.log_chunks.field.name: self, "seq": seq, "text": text})
        self.log_chunks.model.objects.bulk_create([chunk], ignore_conflicts=True)
        return seq

    def log_since(self, seq):
        """The log after chunk `seq` as plain text (pipelines/run_log.plain), and the last chunk's seq."""
        chunks = self.log_chunks_since(seq)
        if not chunks:
            return "", seq
        return run_log.plain("".join(text for _, text, _ in chunks)), chunks[-1][0]

    def log_chunks_since(self, seq):
        """The stored chunks after `seq`, marks included (pipelines/run_log.py): [(seq, text, stored at)]."""
        return list(self.log_chunks.filter(seq__gt=seq).order_by("seq").values_list("seq", "text", "created_at"))
