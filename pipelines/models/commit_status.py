from django.db import models
from django.utils import timezone


class ReportedCommitStatus(models.Model):
    """The last state reported to the git host for one (repository, commit, context).

    Reports are follow-ups, retried with back-off, so an older one ("pending") may be carried out after a
    newer one ("success") went through. `follow_up_id` orders them (a later follow-up has a larger id): a
    report older than the one recorded here is skipped, never sent over it."""

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.CASCADE, related_name="+")
    sha = models.CharField(max_length=64)
    context = models.CharField(max_length=255)
    state = models.CharField(max_length=10)
    follow_up_id = models.BigIntegerField(default=0)
    reported_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "sha", "context"],
                                               name="one_reported_status_per_context")]

    def __str__(self):
        return f"{self.context} {self.state} on {self.sha[:12]}"
