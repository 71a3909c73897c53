"""Drift checks: is what runs on a target still what git says? The `drift:` steps of the environment, run in a
checkout of the release deployed there (exit 0: in sync; 2: drifted, as `terraform plan -detailed-exitcode`;
anything else: the check failed). A kind of run like the others (pipelines/runs/drift.py): claimed, fenced,
logged, cancelled and reconciled by the run kernel; its outcome is the target's sync state.

Queued every `drift_interval` of the stage (the reconciler), after each deployment there, and on demand (the
environment page, `manage.py checkdrift`); one at a time per target. Never during a deployment of the same
target, and a check that a deployment cut short is not believed: it is run again after it."""

from django.db import models, transaction
from django.db.models import OuterRef, Subquery
from django.urls import reverse

from .audit import AuditEvent
from .run import FencedRun


class DriftStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    IN_SYNC = "in_sync", "In sync"
    DRIFTED = "drifted", "Drifted"
    FAILED = "failed", "Check failed"
    CANCELLED = "cancelled", "Cancelled"


DRIFT_TRANSITIONS = {
    DriftStatus.QUEUED: {DriftStatus.RUNNING, DriftStatus.FAILED, DriftStatus.CANCELLED},
    DriftStatus.RUNNING: {DriftStatus.IN_SYNC, DriftStatus.DRIFTED, DriftStatus.FAILED, DriftStatus.CANCELLED},
    DriftStatus.IN_SYNC: set(),
    DriftStatus.DRIFTED: set(),
    DriftStatus.FAILED: set(),
    DriftStatus.CANCELLED: set(),
}
ACTIVE = (DriftStatus.QUEUED, DriftStatus.RUNNING)
# The follow-up that tells the people answerable for the stage of a drifted target (approvals/notifications.py).
DRIFT_MAIL = "mail.drift"
# What a target's sync state is read from: the checks that said something about reality.
OUTCOMES = (DriftStatus.IN_SYNC, DriftStatus.DRIFTED, DriftStatus.FAILED)


def drift_steps(release, environment):
    """The `drift:` steps of `environment` in the file of `release` (what runs there); () when it has none."""
    spec = release.pipeline.environments.get(environment.name) if release is not None and release.pipeline else None
    return spec.drift if spec is not None else ()


class DriftCheckQuerySet(models.QuerySet):
    def for_target(self, repository, environment):
        return self.filter(repository=repository, environment=environment)

    def newest_answer(self):
        """The checks of the target of an outer query on Target that said something (in sync, drifted, check
        failed), newest first: Subquery(DriftCheck.objects.newest_answer().values("status")[:1]) is its sync state."""
        return self.filter(repository=OuterRef("repository_id"), environment=OuterRef("environment_id"),
                           status__in=OUTCOMES).order_by("-finished_at", "-id")

    def queue_for(self, repository, environment, *, reason, by=None):
        """Queue a drift check of the release running on the target and wake a worker on commit; the one queued
        or running already is returned instead. None when nothing runs there or its file has no `drift:` steps
        for the environment. Locks the Target row first (the lock order of every change to a target)."""
        from .environment import Target

        with transaction.atomic():
            target = (Target.objects.select_for_update(of=("self",)).filter(repository=repository, environment=environment)
                      .select_related("current_release").first())
            release = target.current_release if target is not None else None
            if not drift_steps(release, environment):
                return None
            active = self.for_target(repository, environment).filter(status__in=ACTIVE).first()
            if active is not None:
                return active
            check = self.create(repository=repository, environment=environment, release=release,
                                status=DriftStatus.QUEUED, reason=reason)
            AuditEvent.objects.record(action="driftcheck.queued", actor=by, obj=check, **check.audit_scope(),
                                      details={**check.audit_details(), "reason": reason})
            check.wake()
        return check

    def drifted_since(self, check):
        """When the drift that `check` found began: the first drifted check of its target since the last one in
        sync before it (its own time when none came before)."""
        mine = self.for_target(check.repository_id, check.environment_id)
        back = (mine.filter(status=DriftStatus.IN_SYNC, finished_at__lt=check.finished_at)
                .order_by("-finished_at").values_list("finished_at", flat=True).first())
        drifted = mine.filter(status=DriftStatus.DRIFTED, finished_at__lte=check.finished_at)
        if back is not None:
            drifted = drifted.filter(finished_at__gt=back)
        return drifted.order_by("finished_at").values_list("finished_at", flat=True).first() or check.finished_at

    def latest_outcomes(self, targets):
        """{(repository id, environment id): the newest check of that target that said something (in sync,
        drifted, check failed)}, for the pages: two queries however many targets and however long their history."""
        from .environment import Target

        newest = (Target.objects.filter(pk__in=[t.pk for t in targets])
                  .annotate(check_id=Subquery(self.newest_answer().values("pk")[:1])).exclude(check_id=None)
                  .values_list("repository_id", "environment_id", "check_id"))
        pairs = {check_id: (repository_id, environment_id) for repository_id, environment_id, check_id in newest}
        return {pairs[pk]: check for pk, check in self.in_bulk(list(pairs)).items()}


class DriftCheck(FencedRun):
    Status = DriftStatus
    TRANSITIONS = DRIFT_TRANSITIONS

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.CASCADE, related_name="drift_checks")
    environment = models.ForeignKey("pipelines.Environment", on_delete=models.PROTECT, related_name="drift_checks")
    # What ran there when it was queued: the checkout it checks.
    release = models.ForeignKey("pipelines.Release", on_delete=models.PROTECT, related_name="drift_checks")
    status = models.CharField(max_length=20, choices=DriftStatus.choices, db_index=True)
    reason = models.TextField(blank=True, help_text="Why it runs: the stage's interval, a deployment, or a person.")

    objects = DriftCheckQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["repository", "environment", "status"], name="drift_check_target"),
                   # The scheduler's "last checked when" of each target (pipelines/drift_schedule.due).
                   models.Index(fields=["repository", "environment", "-created_at"], name="drift_check_last")]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=DriftStatus.values), name="drift_check_status_is_known"),
        ]

    def __str__(self):
        return f"drift check #{self.pk} of {self.repository} in {self.environment}"

    def get_absolute_url(self):
        return reverse("drift_check_detail", args=[self.pk])

    def audit_scope(self):
        return {"repository": self.repository, "environment": self.environment}

    def audit_details(self):
        return {"release": self.release.version}

    def record_drifted(self):
        """The check found reality is not what the release says: recorded, and where the stage corrects drift,
        the correction is recorded with it (a follow-up: pipelines/drift_schedule.correct)."""
        from .followup import CORRECT_DRIFT, FollowUp
        from .lifecycle import Stage

        with transaction.atomic():
            self.transition(DriftStatus.DRIFTED, exit_code=2)
            FollowUp.objects.schedule(DRIFT_MAIL, repository=self.repository, payload={"drift_check": self.pk})
            stage = Stage.objects.for_target(self.repository, self.environment_id)
            if stage is not None and stage.correct_drift:
                FollowUp.objects.schedule(CORRECT_DRIFT, repository=self.repository, payload={"drift_check": self.pk})
        return self


class DriftCheckLogChunk(models.Model):
    drift_check = models.ForeignKey(DriftCheck, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["drift_check", "seq"], name="unique_drift_check_log_chunk_seq")]
