from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.urls import reverse
from django.utils import timezone

from .audit import AuditEvent


class DeploymentStateError(Exception):
    """A change of status that cannot happen; the message says why in words."""


class InvalidTransition(DeploymentStateError):
    pass


class StaleStatus(DeploymentStateError):
    """Another process changed the deployment first (a second click, a second worker)."""


class TargetBusy(DeploymentStateError):
    """Another deployment of the same repository is already running in this environment."""


class Status(models.TextChoices):
    AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    REJECTED = "rejected", "Rejected"


ALLOWED_TRANSITIONS = {
    Status.AWAITING_APPROVAL: {Status.QUEUED, Status.REJECTED, Status.CANCELLED},
    Status.QUEUED: {Status.RUNNING, Status.CANCELLED},
    Status.RUNNING: {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED},
    Status.SUCCEEDED: set(),
    Status.FAILED: set(),
    Status.CANCELLED: set(),
    Status.REJECTED: set(),
}
FINISHED = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.REJECTED}


class DeploymentQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=[Status.AWAITING_APPROVAL, Status.QUEUED, Status.RUNNING])

    def for_target(self, repository, environment):
        return self.filter(repository=repository, environment=environment)


class Deployment(models.Model):
    Status = Status

    class Trigger(models.TextChoices):
        AUTO = "auto", "Automatic"
        MANUAL = "manual", "Manual"
        ROLLBACK = "rollback", "Rollback"
        RETRY = "retry", "Retry"

    release = models.ForeignKey("pipelines.Release", on_delete=models.PROTECT, related_name="deployments")
    environment = models.ForeignKey("pipelines.Environment", on_delete=models.PROTECT, related_name="deployments")
    # Denormalised from the release so that the database can hold "one running per target".
    repository = models.ForeignKey("pipelines.Repository", on_delete=models.PROTECT, related_name="deployments")
    previous_release = models.ForeignKey("pipelines.Release", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # Set when a newer candidate for the same target cancelled this one before it ran.
    superseded_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=20, choices=Status.choices, db_index=True)
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    job_id = models.CharField(max_length=100, blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    # Where the run happens, so that a reconciler on the same host can tell a dead runner from a slow one.
    runner_host = models.CharField(max_length=200, blank=True)
    runner_pid = models.IntegerField(null=True, blank=True)
    step_pgid = models.IntegerField(null=True, blank=True, help_text="Process group of the step running now.")

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("deploy", "Can promote, retry, roll back and pause deployments")]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "environment"],
                condition=models.Q(status="running"),
                name="one_running_deployment_per_target",
            ),
            models.CheckConstraint(condition=models.Q(status__in=Status.values), name="deployment_status_is_known"),
        ]
        indexes = [models.Index(fields=["repository", "environment", "status"])]

    def __str__(self):
        return f"#{self.pk} {self.release} → {self.environment}"

    def get_absolute_url(self):
        return reverse("deployment_detail", args=[self.pk])

    @property
    def is_finished(self):
        return self.status in FINISHED

    @property
    def duration(self):
        if self.started_at:
            return (self.finished_at or timezone.now()) - self.started_at
        return None

    # --- the one way a status changes ------------------------------------------------------------

    def transition(self, new_status, *, by=None, details=None, **fields):
        """Move to `new_status` if allowed, with a compare-and-swap on the current status, and audit it.

        Raises InvalidTransition for a move the state machine forbids, StaleStatus when another process
        changed the row first, TargetBusy when the target already has a running deployment."""
        old_status = self.status
        if new_status not in ALLOWED_TRANSITIONS[old_status]:
            raise InvalidTransition(f"Deployment #{self.pk} is {self.get_status_display().lower()} and cannot become {new_status}.")
        now = timezone.now()
        fields["status"] = new_status
        if new_status == Status.QUEUED:
            fields.setdefault("queued_at", now)
        elif new_status == Status.RUNNING:
            fields.setdefault("started_at", now)
            fields.setdefault("heartbeat_at", now)
        elif new_status in FINISHED:
            fields.setdefault("finished_at", now)
        try:
            with transaction.atomic():
                updated = Deployment.objects.filter(pk=self.pk, status=old_status).update(**fields)
                if updated != 1:
                    current = Deployment.objects.filter(pk=self.pk).values_list("status", flat=True).first()
                    raise StaleStatus(f"Deployment #{self.pk} is already {current}; nothing was changed.")
                AuditEvent.objects.record(
                    action=f"deployment.{new_status}",
                    actor=by,
                    obj=self,
                    repository=self.repository,
                    environment=self.environment,
                    details={"from": old_status, "to": new_status, "release": self.release.version, **(details or {})},
                )
        except IntegrityError as exc:
            if new_status == Status.RUNNING:
                raise TargetBusy(f"Another deployment of {self.repository} is running in {self.environment}.") from exc
            raise
        for name, value in fields.items():
            setattr(self, name, value)
        return self

    # --- named steps of the lifecycle ---------------------------------------------------------------

    def release_hold(self, *, by):
        """Approval given: the held deployment joins the queue."""
        from pipelines import jobs

        self.transition(Status.QUEUED, by=by)
        jobs.enqueue_deployment(self)
        return self

    def reject(self, *, by, reason=""):
        return self.transition(Status.REJECTED, by=by, error=reason, details={"reason": reason})

    def supersede(self, *, by, newer):
        """A newer candidate for the same target replaces this one, which has not run yet."""
        reason = f"Superseded by {newer.release.version} (deployment #{newer.pk})."
        return self.transition(Status.CANCELLED, by=by, error=reason, superseded_by=newer,
                               details={"reason": reason, "superseded_by": newer.pk})

    def cancel(self, *, by=None, reason=""):
        """Cancel a deployment that has not run yet; ask the runner to stop one that is running."""
        if self.status == Status.RUNNING:
            with transaction.atomic():
                asked = Deployment.objects.filter(pk=self.pk, status=Status.RUNNING, cancel_requested_at=None).update(
                    cancel_requested_at=timezone.now()
                )
                if asked != 1:
                    raise StaleStatus(f"Deployment #{self.pk} is no longer running, or a cancel was already requested.")
                AuditEvent.objects.record(
                    action="deployment.cancel_requested", actor=by, obj=self, repository=self.repository,
                    environment=self.environment, details={"reason": reason},
                )
            self.refresh_from_db()
            return self
        return self.transition(Status.CANCELLED, by=by, error=reason, details={"reason": reason})

    def claim(self, *, worker_name):
        return self.transition(Status.RUNNING, worker_name=worker_name)

    def succeed(self):
        from pipelines.models import Target

        with transaction.atomic():
            self.transition(Status.SUCCEEDED, exit_code=0)
            Target.objects.filter(repository=self.repository, environment=self.environment).update(
                current_release=self.release
            )
        return self

    def fail(self, error, *, exit_code=None, by=None):
        return self.transition(Status.FAILED, by=by, error=error, exit_code=exit_code, details={"error": error[:500]})

    def beat(self):
        """Record that the runner is alive. True means stop: a cancel was asked for, or the deployment is no
        longer running (the reconciler gave it up as lost, say), so its step must not go on."""
        alive = Deployment.objects.filter(pk=self.pk, status=Status.RUNNING, cancel_requested_at=None).update(
            heartbeat_at=timezone.now()
        )
        return alive != 1

    # --- log -----------------------------------------------------------------------------------------

    def append_log(self, text):
        text = text.replace("\x00", "")  # PostgreSQL text cannot hold NUL; a step may print anything
        if not text:
            return
        last = self.log_chunks.order_by("-seq").values_list("seq", flat=True).first() or 0
        DeploymentLogChunk.objects.create(deployment=self, seq=last + 1, text=text)

    def log_since(self, seq):
        """The log chunks after `seq`, as (text, last seq)."""
        chunks = list(self.log_chunks.filter(seq__gt=seq).order_by("seq").values_list("seq", "text"))
        if not chunks:
            return "", seq
        return "".join(text for _, text in chunks), chunks[-1][0]


class DeploymentLogChunk(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "seq"], name="unique_log_chunk_seq")]
