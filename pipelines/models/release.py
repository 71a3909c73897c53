from functools import cached_property, lru_cache

from django.db import models, transaction
from django.urls import reverse

from .audit import AuditEvent
from .followup import DEPLOYMENTS_STOPPED, PROMOTE_REEVALUATE, FollowUp
from .tag_move import TagMove

from pipelines.pipeline_file import PipelineFileError, parse_pipeline


class Release(models.Model):
    """An immutable record of one version: the commit and the pipeline file as they were when detected."""

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.PROTECT, related_name="releases")
    version = models.CharField(max_length=200)
    commit_sha = models.CharField(max_length=40)
    message = models.TextField(blank=True)
    author_name = models.CharField(max_length=200, blank=True)
    author_email = models.CharField(max_length=254, blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    detected_at = models.DateTimeField(auto_now_add=True)
    pipeline_text = models.TextField(blank=True)
    pipeline_sha256 = models.CharField(max_length=64, blank=True)
    # Set when the release's own commit has no pipeline file and its repository takes it from the release branch
    # (Repository.pipeline_from_branch): the branch, and its head when recorded, the text above was read from.
    pipeline_commit_sha = models.CharField(max_length=40, blank=True)
    pipeline_branch = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True, help_text="Why this release can never deploy (missing or invalid pipeline file).")
    blocked = models.BooleanField(default=False)
    blocked_reason = models.TextField(blank=True)
    # Where the tag points now when that is not the release's commit (the release keeps its commit), and
    # whether it is gone: the state after the last TagMove, kept here so lists show it without a join.
    tag_moved_to = models.CharField(max_length=40, blank=True)
    tag_deleted = models.BooleanField(default=False)
    # pipelines.versions.sortable_version(version), set when recorded: lists ORDER BY it and page in SQL.
    version_key = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-detected_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "version"], name="unique_release_version"),
            models.CheckConstraint(condition=models.Q(commit_sha__regex=r"^[0-9a-f]{40}$"), name="release_commit_sha_is_full"),
            models.CheckConstraint(condition=models.Q(pipeline_commit_sha__regex=r"^([0-9a-f]{40})?$"),
                                   name="release_pipeline_commit_sha_is_full"),
        ]
        # A repository's newest release in one probe; the few invalid releases without reading the valid ones
        # (the dashboard asks both of every repository it orders).
        indexes = [
            models.Index(fields=["repository", "-version_key", "-id"], name="release_version_order"),  # release lists
            models.Index(fields=["repository", "-detected_at", "-id"], name="release_newest_first"),
            models.Index(fields=["repository", "-detected_at", "-id"], condition=models.Q(error__gt=""), name="release_invalid"),
        ]

    def __str__(self):
        return f"{self.repository.name} {self.version}"

    def get_absolute_url(self):
        return reverse("release_detail", args=[self.repository.name, self.version])

    @property
    def short_sha(self):
        return self.commit_sha[:10]

    @property
    def pipeline_from_branch(self):
        """True when the pipeline file was taken from the release branch, the release's own commit having none."""
        return bool(self.pipeline_commit_sha)

    @property
    def is_valid(self):
        return not self.error

    @property
    def tag_commit(self):
        """The commit the tag pointed to when last polled; None when it was deleted."""
        if self.tag_deleted:
            return None
        return self.tag_moved_to or self.commit_sha

    def record_tag_seen_at(self, sha, *, by):
        """The poller saw this release's tag on `sha` (None: the tag is gone). Returns the new TagMove, or None
        when that is where the last poll saw it too, so polling again records nothing twice.

        Call inside the poll's transaction with this row locked (select_for_update). Nothing is redeployed:
        the release keeps its commit; the move is recorded, audited with both commits, and the people who
        run it are told (a follow-up that the approvals app turns into mail)."""
        before = self.tag_commit
        if sha == before:
            return None
        if sha is None:
            kind = TagMove.Kind.DELETED
        elif sha == self.commit_sha:
            kind = TagMove.Kind.MOVED_BACK
        else:
            kind = TagMove.Kind.MOVED
        move = TagMove.objects.create(release=self, from_sha=before or "", to_sha=sha or "", kind=kind)
        self.tag_moved_to = "" if sha in (None, self.commit_sha) else sha
        self.tag_deleted = sha is None
        Release.objects.filter(pk=self.pk).update(tag_moved_to=self.tag_moved_to, tag_deleted=self.tag_deleted)
        AuditEvent.objects.record(
            action=f"release.tag_{kind}", actor=by, obj=self, repository=self.repository,
            details={"version": self.version, "released_commit": self.commit_sha,
                     "old_commit": before or "", "new_commit": sha or "", "tag_move": move.pk},
        )
        FollowUp.objects.schedule(TagMove.FOLLOW_UP, release=self, repository=self.repository,
                                  payload={"tag_move": move.pk})
        return move

    def block(self, *, by, reason):
        """Stop this release everywhere: never promoted, automatically or by hand, and whatever of it still
        waits is cancelled — queued deployments, approved ones waiting for a freeze, and held ones, whose
        change requests the upper layer closes as withdrawn (a DEPLOYMENTS_STOPPED follow-up, which also tells
        their requesters). A run that already started is left to finish; the runner refuses to start one of a
        blocked release (its last check before the first step). Unblocking opens nothing again by itself."""
        from pipelines.models import Deployment, Target

        reason = reason.strip()
        if not reason:
            raise ValueError("Give a reason for blocking the release.")
        waiting_statuses = [Deployment.Status.QUEUED, Deployment.Status.AWAITING_APPROVAL]
        with transaction.atomic():
            # The lock order of pipelines/promotion.py: targets, then deployments, then the audit chain.
            environments = Deployment.objects.filter(release=self, status__in=waiting_statuses).values("environment_id")
            list(Target.objects.select_for_update().filter(repository_id=self.repository_id,
                                                           environment_id__in=environments).order_by("pk"))
            waiting = list(Deployment.objects.filter(release=self, status__in=waiting_statuses).select_for_update()
                           .order_by("pk").select_related("release", "environment", "repository"))
            Release.objects.filter(pk=self.pk).update(blocked=True, blocked_reason=reason)
            AuditEvent.objects.record(
                action="release.blocked", actor=by, obj=self, repository=self.repository,
                details={"reason": reason, "cancelled": [d.pk for d in waiting]},
            )
            why = f"{self.version} was blocked by {by.get_username() if by else 'the portal'}: {reason}"
            for deployment in waiting:
                deployment.cancel(by=by, reason=why)
            if waiting:
                FollowUp.objects.schedule(DEPLOYMENTS_STOPPED, release=self, repository=self.repository,
                                          payload={"deployments": [d.pk for d in waiting], "reason": why})
        self.blocked, self.blocked_reason = True, reason

    def unblock(self, *, by):
        """Promotable again. Nothing cancelled by the block is reopened; the promotion decision of each stage
        is made again (a PROMOTE_REEVALUATE follow-up), so an automatic stage takes it if it is the newest."""
        with transaction.atomic():
            Release.objects.filter(pk=self.pk).update(blocked=False, blocked_reason="")
            AuditEvent.objects.record(action="release.unblocked", actor=by, obj=self, repository=self.repository)
            FollowUp.objects.schedule(PROMOTE_REEVALUATE, repository=self.repository, release=self,
                                      payload={"because": f"{self.version} was unblocked"})
        self.blocked, self.blocked_reason = False, ""

    def stages(self):
        """The stages of the repository's lifecycle whose environments this release's pipeline file names, in
        the lifecycle's order: the road this release takes."""
        from .lifecycle import Stage

        if self.pipeline is None:
            return []
        names = set(self.pipeline.names())
        return [stage for stage in Stage.objects.of(self.repository) if stage.environment.name in names]

    @cached_property
    def pipeline(self):
        """The parsed pipeline file; None for an invalid release."""
        if self.error:
            return None
        return _parsed(self.pipeline_text)


@lru_cache(maxsize=256)
def _parsed(text):
    """A release's file never changes once recorded: a worker parses each text once, not once per run (the
    spec is frozen dataclasses, safe to share). None for a text that does not parse."""
    try:
        return parse_pipeline(text)
    except PipelineFileError:
        return None
