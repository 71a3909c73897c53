"""The build of a release: the `build:` steps of its pipeline file, run once, before the first environment.

What the build leaves is stored with the release and never changes afterwards: its outputs (`key=value`
lines the steps wrote to $GITOPS_OUTPUTS) in the row, its artifacts (the files left in $GITOPS_ARTIFACTS/,
one tar.gz) in the storage `gitops_artifacts` (see pipelines/artifacts.py). Every later deployment step gets
both. A release whose build did not succeed deploys nowhere (pipelines.promotion.promote says why).

Its run is fenced like a deployment's, without a target to lease: the row's heartbeat is the lease, and
the runner stops its step when it cannot renew it (pipelines/runs/heartbeat.py); the reconciler fails a
build whose heartbeat stopped and re-enqueues a queued one whose job was lost."""

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from .audit import AuditEvent
from .followup import PROMOTE_NEW_RELEASE
from .run import FencedRun, KeepsArtifacts


class BuildStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


BUILD_TRANSITIONS = {
    BuildStatus.QUEUED: {BuildStatus.RUNNING, BuildStatus.FAILED, BuildStatus.CANCELLED},
    BuildStatus.RUNNING: {BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED},
    BuildStatus.SUCCEEDED: set(),
    BuildStatus.FAILED: set(),
    BuildStatus.CANCELLED: set(),
}
BUILD_FINISHED = {BuildStatus.SUCCEEDED, BuildStatus.FAILED, BuildStatus.CANCELLED}


class BuildQuerySet(models.QuerySet):
    def queue_for(self, release, *, by=None):
        """Record the build of `release` and wake a worker on commit; call inside the transaction that
        records the release (or a deployer asks for it). Returns the existing build when there is one: a
        release builds once."""
        build, created = self.get_or_create(release=release, defaults={"status": BuildStatus.QUEUED})
        if created:
            AuditEvent.objects.record(action="build.queued", actor=by, obj=build, repository=release.repository,
                                      details={"release": release.version, "commit": release.commit_sha})
            build.wake()
        return build


class Build(KeepsArtifacts, FencedRun):
    Status = BuildStatus
    TRANSITIONS = BUILD_TRANSITIONS

    release = models.OneToOneField("pipelines.Release", on_delete=models.PROTECT, related_name="build")
    status = models.CharField(max_length=20, choices=BuildStatus.choices, db_index=True)
    # Written once, with the success; {} until then.
    outputs = models.JSONField(default=dict, blank=True)

    objects = BuildQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=BuildStatus.values), name="build_status_is_known"),
        ]

    def __str__(self):
        return f"build #{self.pk} of {self.release}"

    @property
    def repository(self):
        return self.release.repository

    def audit_scope(self):
        return {"repository": self.release.repository}

    def audit_details(self):
        return {"release": self.release.version}

    def refusal(self):
        """Why the release cannot deploy because of its build, in words, or "" when it may."""
        if self.status == BuildStatus.SUCCEEDED:
            return ""
        if self.status == BuildStatus.FAILED:
            return f"its build failed: {self.error}"
        if self.status == BuildStatus.CANCELLED:
            return f"its build was cancelled: {self.error}"
        return f"its build is {self.get_status_display().lower()}; it deploys once the build succeeded"

    def succeed(self, *, outputs, artifact=None):
        """Record the outputs and the artifact (a pipelines.artifacts.StoredArtifact, or None) with the
        success, and the release's automatic promotion as a follow-up in the same transaction; returns that
        follow-up (None when the release goes nowhere automatically) for the runner to carry out at once.

        A release recorded after this one and on its way (built, promoted, or deployed) is newer: this one is
        then not promoted, or it would replace that one. A late old tag, recorded and never promoted, is not."""
        from pipelines.models import FollowUp, Release

        artifact_fields = self.artifact_fields(artifact)
        release = self.release
        with transaction.atomic():
            self.transition(BuildStatus.SUCCEEDED, exit_code=0, outputs=outputs, **artifact_fields,
                            details={"outputs": sorted(outputs), "artifact_sha256": artifact_fields.get("artifact_sha256", "")})
            later = Release.objects.filter(repository=release.repository_id, pk__gt=release.pk)
            newer = (later.filter(Q(build__isnull=False) | Q(deployments__isnull=False)).exists()
                     or FollowUp.objects.filter(kind=PROMOTE_NEW_RELEASE, release__in=later).exists())
            if newer or release.blocked or release.error:
                return None
            return FollowUp.objects.schedule(PROMOTE_NEW_RELEASE, release=release, enqueue=False,
                                             delay=settings.GITOPS_WORKER_LOST_AFTER)


class BuildLogChunk(models.Model):
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["build", "seq"], name="unique_build_log_chunk_seq")]
