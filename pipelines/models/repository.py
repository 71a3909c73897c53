from datetime import timedelta

from django.core.validators import MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from pipelines.validators import validate_git_ref_name, validate_relative_path, validate_repository_url, validate_tag_pattern


class RepositoryQuerySet(models.QuerySet):
    def due_for_poll(self, now=None):
        """Enabled repositories whose poll interval has passed (never-polled ones first)."""
        now = now or timezone.now()
        due = [r for r in self.filter(enabled=True).order_by(models.F("last_polled_at").asc(nulls_first=True))
               if r.last_polled_at is None or r.last_polled_at + timedelta(seconds=r.poll_interval) <= now]
        return due


class Repository(models.Model):
    class ReleaseFrom(models.TextChoices):
        TAGS = "tags", "Tags matching the pattern"
        COMMITS = "commits", "Every commit on the branch"

    name = models.SlugField(max_length=100, unique=True)
    url = models.CharField(
        max_length=500,
        validators=[validate_repository_url],
        help_text="https://…, ssh://…, git@host:path or an absolute local path.",
    )
    web_url = models.URLField(blank=True, help_text="Optional: link commits to the git host, e.g. https://github.com/org/repo")
    branch = models.CharField(max_length=200, default="main", validators=[validate_git_ref_name])
    release_from = models.CharField(max_length=10, choices=ReleaseFrom.choices, default=ReleaseFrom.TAGS)
    tag_pattern = models.CharField(max_length=100, default="v*", validators=[validate_tag_pattern])
    pipeline_path = models.CharField(max_length=200, default=".gitops.yml", validators=[validate_relative_path])
    poll_interval = models.PositiveIntegerField(default=60, validators=[MinValueValidator(5)], help_text="Seconds.")
    webhook_secret = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)

    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    # sha256 of the last `ls-remote` answer: equal means nothing moved and nothing is fetched.
    refs_fingerprint = models.CharField(max_length=64, blank=True)
    # Set by a webhook in the transaction that accepts it: the sweep polls it even if the queue lost the job.
    poll_requested_at = models.DateTimeField(null=True, blank=True)
    # Tags that match the pattern but can never be releases (on a blob or a tree, a name too long), with why.
    skipped_tags = models.JSONField(default=list, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RepositoryQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "repositories"

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("repository_detail", args=[self.name])

    def commit_url(self, sha):
        return f"{self.web_url.rstrip('/')}/commit/{sha}" if self.web_url else ""


class WebhookDelivery(models.Model):
    """Delivery ids already accepted, so that a replayed delivery is ignored."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="webhook_deliveries")
    delivery_id = models.CharField(max_length=200)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "delivery_id"], name="unique_webhook_delivery")]
