"""The build of a release: the `build:` steps of its pipeline file, run once, before the first environment.

What the build leaves is stored with the release and never changes afterwards: its outputs (`key=value`
lines the steps wrote to $GITOPS_OUTPUTS) in the row, its artifacts (the files left in $GITOPS_ARTIFACTS/,
one tar.gz) in the storage `gitops_artifacts` (see pipelines/artifacts.py). Every later deployment step gets
both. A release whose build did not succeed deploys nowhere (pipelines.promotion.promote says why).

Its run is fenced like a deployment's, without a target to lease: the row's heartbeat is the lease, and
the runner stops its step when it cannot renew it (pipelines/runner.Heartbeat); the reconciler fails a
build whose heartbeat stopped and re-enqueues a queued one whose job was lost."""

import os

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from .audit import AuditEvent
from .deployment import InvalidTransition, StaleStatus, this_host


class BuildStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


BUILD_TRANSITIONS = {
    BuildStatus.QUEUED: {BuildStatus.RUNNING, BuildStatus.FAILED},
    BuildStatus.RUNNING: {BuildStatus.SUCCEEDED, BuildStatus.FAILED},
    BuildStatus.SUCCEEDED: set(),
    BuildStatus.FAILED: set(),
}
BUILD_FINISHED = {BuildStatus.SUCCEEDED, BuildStatus.FAILED}


class BuildQuerySet(models.QuerySet):
    def queue_for(self, release, *, by=None):
        """Record the build of `release` and wake a worker on commit; call inside the transaction that
        records the release (or a deployer asks for it). Returns the existing build when there is one: a
        release builds once."""
        from pipelines import jobs

        build, created = self.get_or_create(release=release, defaults={"status": BuildStatus.QUEUED})
        if created:
            AuditEvent.objects.record(action="build.queued", actor=by, obj=build, repository=release.repository,
                                      details={"release": release.version, "commit": release.commit_sha})
            jobs.enqueue_build(build)
        return build


class Build(models.Model):
    Status = BuildStatus

    release = models.OneToOneField("pipelines.Release", on_delete=models.PROTECT, related_name="build")
    status = models.CharField(max_length=20, choices=BuildStatus.choices, db_index=True)
    # Written once, with the success; {} until then.
    outputs = models.JSONField(default=dict, blank=True)
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

    @property
    def is_finished(self):
        return self.status in BUILD_FINISHED

    @property
    def succeeded(self):
        return self.status == BuildStatus.SUCCEEDED

    def refusal(self):
        """Why the release cannot deploy because of its build, in words, or "" when it may."""
        if self.status == BuildStatus.SUCCEEDED:
            return ""
        if self.status == BuildStatus.FAILED:
            return f"its build failed: {self.error}"
        return f"its build is {self.get_status_display().lower()}; it deploys once the build succeeded"

    # --- the one way a status changes ------------------------------------------------------------------

    def transition(self, new_status, *, by=None, details=None, **fields):
        """Move to `new_status` if allowed, with a compare-and-swap on the current status, and audit it."""
        old_status = self.status
        if new_status not in BUILD_TRANSITIONS[old_status]:
            raise InvalidTransition(f"Build #{self.pk} is {self.get_status_display().lower()} and cannot become {new_status}.")
        now = timezone.now()
        fields["status"] = new_status
        if new_status == BuildStatus.RUNNING:
            fields.setdefault("started_at", now)
            fields.setdefault("heartbeat_at", now)
        elif new_status in BUILD_FINISHED:
            fields.setdefault("finished_at", now)
        with transaction.atomic():
            if Build.objects.filter(pk=self.pk, status=old_status).update(**fields) != 1:
                current = Build.objects.filter(pk=self.pk).values_list("status", flat=True).first()
                raise StaleStatus(f"Build #{self.pk} is already {current}; nothing was changed.")
            AuditEvent.objects.record(
                action=f"build.{new_status}", actor=by, obj=self, repository=self.release.repository,
                details={"from": old_status, "to": new_status, "release": self.release.version, **(details or {})},
            )
        for name, value in fields.items():
            setattr(self, name, value)
        return self

    def claim(self, *, worker_name, runner_host=None, runner_pid=None):
        """Start running; StaleStatus when another worker (a second wake-up) got there first."""
        return self.transition(
            BuildStatus.RUNNING, worker_name=worker_name,
            runner_host=runner_host if runner_host is not None else this_host(),
            runner_pid=runner_pid if runner_pid is not None else os.getpid(),
        )

    def succeed(self, *, outputs, artifact=None):
        """Record the outputs and the artifact (a pipelines.artifacts.StoredArtifact, or None) with the
        success, and the release's automatic promotion as a follow-up in the same transaction; returns that
        follow-up (None when the release goes nowhere automatically) for the runner to carry out at once.

        A release recorded after this one and on its way (built, promoted, or deployed) is newer: this one is
        then not promoted, or it would replace that one. A late old tag, recorded and never promoted, is not."""
        from pipelines import followups
        from pipelines.models import FollowUp, Release

        artifact_fields = {}
        if artifact is not None:
            artifact_fields = {"artifact_name": artifact.name, "artifact_size": artifact.size,
                               "artifact_sha256": artifact.sha256}
        release = self.release
        with transaction.atomic():
            self.transition(BuildStatus.SUCCEEDED, exit_code=0, outputs=outputs, **artifact_fields,
                            details={"outputs": sorted(outputs), "artifact_sha256": artifact_fields.get("artifact_sha256", "")})
            later = Release.objects.filter(repository=release.repository_id, pk__gt=release.pk)
            newer = (later.filter(Q(build__isnull=False) | Q(deployments__isnull=False)).exists()
                     or FollowUp.objects.filter(kind=followups.PROMOTE_NEW_RELEASE, release__in=later).exists())
            if newer or release.blocked or release.error:
                return None
            return FollowUp.objects.schedule(followups.PROMOTE_NEW_RELEASE, release=release, enqueue=False,
                                             delay=settings.GITOPS_WORKER_LOST_AFTER)

    def fail(self, error, *, exit_code=None, by=None):
        return self.transition(BuildStatus.FAILED, by=by, error=error, exit_code=exit_code, details={"error": error[:500]})

    def beat(self):
        """Record that the runner is alive. True means stop: the build is no longer running (the reconciler
        gave it up as lost), so its step must not go on. Raises on a database error (retried next beat)."""
        return Build.objects.filter(pk=self.pk, status=BuildStatus.RUNNING).update(heartbeat_at=timezone.now()) != 1

    def record_step(self, pgid):
        Build.objects.filter(pk=self.pk).update(step_pgid=pgid)
        self.step_pgid = pgid

    # --- log -------------------------------------------------------------------------------------------

    def append_log(self, text, *, seq=None):
        """Store a piece of the log; a numbered piece sent again after a lost answer is stored once.
        The writer (runner.LogWriter) masks secrets before it gets here."""
        text = text.replace("\x00", "")
        if not text:
            return seq
        if seq is None:
            seq = (self.log_chunks.order_by("-seq").values_list("seq", flat=True).first() or 0) + 1
        BuildLogChunk.objects.bulk_create([BuildLogChunk(build=self, seq=seq, text=text)], ignore_conflicts=True)
        return seq

    def log_since(self, seq):
        """The log chunks after `seq`, as (text, last seq)."""
        chunks = list(self.log_chunks.filter(seq__gt=seq).order_by("seq").values_list("seq", "text"))
        if not chunks:
            return "", seq
        return "".join(text for _, text in chunks), chunks[-1][0]


class BuildLogChunk(models.Model):
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["build", "seq"], name="unique_build_log_chunk_seq")]
