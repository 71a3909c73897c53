"""The preview of a held deployment: the `preview:` steps of its environment (`terraform plan`, say), run
against that environment with its variables and secrets while the deployment waits for approval.

Its log and artifacts are shown on the change request; the deployment's steps get its artifacts in
$GITOPS_ARTIFACTS/, so what is approved is what is applied. A preview shows the target as it was when the
preview started (`base_deployment`: the last deployment that succeeded there). Once another deployment of
that target runs a step after the preview started, whatever its outcome (a failed or cancelled run may have
applied half its steps), that picture is stale: when that run ends, Deployment.transition queues the next
preview (number + 1) of every deployment still held there, approvals given on the earlier one stop counting (approvals.Decision
records the number it was given on), and the runner refuses to apply a deployment whose latest preview
has not succeeded or is stale (Preview.objects.refusal_for, asked by pipelines/runs/deploy.py)."""

from django.db import models, transaction
from django.db.models import Max, Q
from django.utils import timezone

from .audit import AuditEvent
from .run import InvalidTransition
from .run import FencedRun, KeepsArtifacts


class PreviewStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    # Never ran (the deployment stopped waiting, or a newer preview replaced it first), or was cancelled.
    CANCELLED = "cancelled", "Cancelled"


PREVIEW_TRANSITIONS = {
    PreviewStatus.QUEUED: {PreviewStatus.RUNNING, PreviewStatus.FAILED, PreviewStatus.CANCELLED},
    PreviewStatus.RUNNING: {PreviewStatus.SUCCEEDED, PreviewStatus.FAILED, PreviewStatus.CANCELLED},
    PreviewStatus.SUCCEEDED: set(),
    PreviewStatus.FAILED: set(),
    PreviewStatus.CANCELLED: set(),
}


class PreviewQuerySet(models.QuerySet):
    def queue_for(self, deployment, *, reason, by=None):
        """Record the next preview of `deployment` (number 1, 2, …) and wake a worker on commit; an earlier
        one that has not started yet is cancelled, replaced by this one. Call inside the transaction that
        holds the deployment, or that made its latest preview stale, with the deployment's row locked."""
        with transaction.atomic():
            last = self.filter(deployment=deployment).aggregate(last=Max("number"))["last"] or 0
            for waiting in self.filter(deployment=deployment, status=PreviewStatus.QUEUED):
                waiting.transition(PreviewStatus.CANCELLED, by=by, error=f"Replaced by preview #{last + 1}: {reason}",
                                   details={"reason": reason})
            preview = self.create(deployment=deployment, number=last + 1, status=PreviewStatus.QUEUED, reason=reason)
            AuditEvent.objects.record(action="preview.queued", actor=by, obj=preview, **preview.audit_scope(),
                                      details={**preview.audit_details(), "reason": reason})
            preview.wake()
        return preview

    def run_again(self, deployment, *, by):
        """Queue the next preview of a held deployment whose latest one failed (a cloud API that was down,
        say) or was cancelled; InvalidTransition saying why when there is nothing to run again."""
        from pipelines.models import Deployment

        with transaction.atomic():
            locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
            if locked.status != Deployment.Status.AWAITING_APPROVAL:
                raise InvalidTransition(f"Deployment #{locked.pk} is {locked.get_status_display().lower()}; only "
                                        f"the preview of a held deployment is run again.")
            latest = self.latest_for(locked)
            if latest is None or latest.status not in (PreviewStatus.FAILED, PreviewStatus.CANCELLED):
                status = latest.get_status_display().lower() if latest else "missing"
                raise InvalidTransition(f"The preview of deployment #{locked.pk} is {status}; only a failed or "
                                        f"cancelled preview is run again.")
            reason = f"{by.get_username()} ran it again after preview #{latest.number} {latest.status}."
            return self.queue_for(locked, by=by, reason=reason)

    def latest_for(self, deployment):
        return self.filter(deployment=deployment).order_by("-number").first()

    def refusal_for(self, deployment):
        """Why `deployment` may not be approved or applied because of its preview, in words; "" when it may
        (its latest preview succeeded on the target as it still is, or it has no preview)."""
        return self.to_apply(deployment)[1]

    def to_apply(self, deployment):
        """(the latest preview of `deployment` or None, why it may not be applied in words or "")."""
        latest = self.select_related("base_deployment__release").filter(deployment=deployment).order_by("-number").first()
        if latest is None:
            return None, ""
        return latest, latest.refusal() or latest.stale_reason()


class Preview(KeepsArtifacts, FencedRun):
    Status = PreviewStatus
    TRANSITIONS = PREVIEW_TRANSITIONS

    deployment = models.ForeignKey("pipelines.Deployment", on_delete=models.PROTECT, related_name="previews")
    number = models.PositiveIntegerField(help_text="1 for the first preview of the deployment, then 2, 3 … when re-run.")
    status = models.CharField(max_length=20, choices=PreviewStatus.choices, db_index=True)
    reason = models.TextField(blank=True, help_text="Why it runs: the deployment was held, or an earlier preview went stale.")
    # What the preview looked at, set when it starts: the last deployment that succeeded on the target then,
    # and its release (None: nothing had run there). Another success there makes the preview stale.
    base_deployment = models.ForeignKey("pipelines.Deployment", null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="+")
    base_release = models.ForeignKey("pipelines.Release", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")

    objects = PreviewQuerySet.as_manager()

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "number"], name="unique_preview_number_per_deployment"),
            models.CheckConstraint(condition=models.Q(status__in=PreviewStatus.values), name="preview_status_is_known"),
        ]

    def __str__(self):
        return f"preview #{self.number} of deployment #{self.deployment_id}"

    def audit_scope(self):
        return {"repository": self.deployment.repository, "environment": self.deployment.environment}

    def audit_details(self):
        return {"deployment": self.deployment_id, "number": self.number, "release": self.deployment.release.version}

    def refusal(self):
        """Why its deployment may not be approved because of this preview, in words, or "" when it may."""
        if self.status == PreviewStatus.SUCCEEDED:
            return ""
        if self.status == PreviewStatus.FAILED:
            return f"Preview #{self.number} failed: {self.error} Approval waits for a preview that succeeds."
        if self.status == PreviewStatus.CANCELLED:
            return f"Preview #{self.number} was cancelled: {self.error}"
        return (f"Preview #{self.number} is {self.get_status_display().lower()}: it has not finished; approve what "
                f"it shows once it has.")

    def stale_reason(self):
        """Why what this preview showed is out of date, in words, or "": another deployment ran a step on the
        target after this preview started (or is running one still), whatever its outcome. A run that failed
        or was cancelled half-way changed the target as surely as one that succeeded."""
        from pipelines.models import Deployment

        if self.started_at is None:
            return ""
        later = (Deployment.objects.for_target(self.deployment.repository_id, self.deployment.environment_id)
                 .exclude(pk=self.deployment_id).filter(step_pgid__isnull=False, started_at__isnull=False)
                 .filter(Q(finished_at__isnull=True) | Q(finished_at__gt=self.started_at))
                 .select_related("release").order_by("-started_at", "-id").first())
        if later is None:
            return ""
        what = "is running a step" if later.finished_at is None else f"ran a step and {later.get_status_display().lower()}"
        return (f"Preview #{self.number} is stale: {later.release.version} (deployment #{later.pk}) {what} on "
                f"{self.deployment.environment} after it started; a new preview has to show the change again.")

    def claim(self, *, worker_name, runner_host=None, runner_pid=None):
        """Start running, recording what has run on the target until now (the picture this preview takes).

        The deployment's row is locked first: Deployment.succeed locks the held deployments of its target
        before it records a success, so a preview starts either before that success (and is queued again
        by it) or after it (and sees it)."""
        from pipelines.models import Deployment

        with transaction.atomic():
            Deployment.objects.select_for_update().filter(pk=self.deployment_id).values_list("pk").first()
            base = last_success(self.deployment)
            return super().claim(worker_name=worker_name, runner_host=runner_host, runner_pid=runner_pid,
                                 base_deployment=base, base_release_id=base.release_id if base else None)

    def succeed(self, *, artifact=None):
        fields = self.artifact_fields(artifact)
        return self.transition(PreviewStatus.SUCCEEDED, exit_code=0, **fields,
                               details={"artifact_sha256": fields.get("artifact_sha256", "")})


def last_success(deployment):
    """The deployment that succeeded last on the target of `deployment` (what runs there), or None."""
    from pipelines.models import Deployment

    return (Deployment.objects.for_target(deployment.repository_id, deployment.environment_id)
            .filter(status=Deployment.Status.SUCCEEDED).select_related("release")
            .order_by("-finished_at", "-id").first())


class PreviewLogChunk(models.Model):
    preview = models.ForeignKey(Preview, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["preview", "seq"], name="unique_preview_log_chunk_seq")]
