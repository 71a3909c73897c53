from datetime import timedelta

from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from pipelines import secrets
from pipelines.git_urls import host_and_path
from pipelines.models import wakeups
from pipelines.models.lifecycle import default_lifecycle_id
from pipelines.validators import validate_branch_patterns, validate_git_ref_name, validate_relative_path, validate_repository_url, validate_tag_pattern


MAX_POLL_BACKOFF = 600  # a failing repository is still tried every 10 minutes at least


class RepositoryQuerySet(models.QuerySet):
    def visible(self):
        """Repositories not archived: the ones the dashboard lists and the portal polls."""
        return self.filter(archived_at__isnull=True)

    def pollable(self):
        return self.visible().filter(enabled=True)

    def due_for_poll(self, now=None):
        """Enabled, unarchived repositories to poll now: asked for by a webhook, never polled, or past their
        delay (the interval, longer while polls fail). Asked-for ones first, then the longest waiting."""
        now = now or timezone.now()
        due = [r for r in self.pollable() if r.is_due_for_poll(now)]
        return sorted(due, key=lambda r: (r.poll_requested_at is None, r.last_polled_at is not None,
                                          r.last_polled_at or now))


class Repository(models.Model):
    class ReleaseFrom(models.TextChoices):
        TAGS = "tags", "Tags matching the pattern"
        COMMITS = "commits", "Every commit on the branch"

    class GitHost(models.TextChoices):
        AUTOMATIC = "", "Automatic, from the URL (github.com, gitlab.*)"
        GITHUB = "github", "GitHub"
        GITLAB = "gitlab", "GitLab"
        NONE = "none", "None: report no commit statuses"

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
    pipeline_from_branch = models.BooleanField(
        "Pipeline from the branch for older releases", default=False,
        help_text="For adopting a repository with history: a release whose commit has no pipeline file takes the "
                  "one at the head of the branch when it is recorded, and keeps it. Turned on, the releases "
                  "recorded invalid for lack of the file are read again at the next poll.")
    poll_interval = models.PositiveIntegerField(default=60, validators=[MinValueValidator(5)], help_text="Seconds.")
    webhook_secret = models.CharField(max_length=200, blank=True)
    check_branches = models.CharField(
        max_length=500, blank=True, validators=[validate_branch_patterns],
        help_text="Branches whose new commits run the checks: globs separated by spaces, e.g. 'feature/* fix-*'. "
                  "Blank: every branch except the release branch. Open pull/merge requests always run them.")
    enabled = models.BooleanField(default=True)
    lifecycle = models.ForeignKey(
        "pipelines.Lifecycle", on_delete=models.PROTECT, related_name="repositories", default=default_lifecycle_id,
        help_text="The stages its releases go through, and each stage's rules.")

    # Reporting checks as commit statuses (pipelines/commit_status.py).
    git_host = models.CharField(max_length=10, choices=GitHost.choices, default="", blank=True,
                                help_text="Where commit statuses are reported.")
    api_url = models.URLField(
        blank=True, help_text="The git host's API. Blank: https://api.github.com, or https://<host>/api/v4 for "
                              "GitLab. Set it for GitHub Enterprise (https://<host>/api/v3) or a GitLab elsewhere.")
    host_project = models.CharField(
        max_length=300, blank=True, help_text="owner/repository on GitHub, the project's path on GitLab "
                                             "(group/subgroup/project). Blank: taken from the URL.")
    # Only ever the ciphertext (pipelines/secrets.py); the admin's write-only field sets it through set_api_token.
    api_token_ciphertext = models.TextField(blank=True, editable=False)

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
    # Archived instead of deleted: its releases, deployments and audit events keep pointing at it. Not polled,
    # no webhooks, not on the dashboard; restoring brings it back as it was.
    archived_at = models.DateTimeField(null=True, blank=True)

    objects = RepositoryQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "repositories"
        # The dashboard's states: the few repositories the portal cannot reach, without reading them all.
        indexes = [models.Index(fields=["id"], condition=~models.Q(last_error=""), name="repository_unreachable")]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("repository_detail", args=[self.name])

    @property
    def is_archived(self):
        return self.archived_at is not None

    def archive(self, *, by):
        """Hide it and stop polling it, keeping its history. Returns False when it was archived already."""
        return self._set_archived(timezone.now(), "repository.archived", by)

    def restore(self, *, by):
        """Bring an archived repository back. Returns False when it was not archived."""
        return self._set_archived(None, "repository.restored", by)

    def _set_archived(self, value, action, by):
        from pipelines.models import AuditEvent

        with transaction.atomic():
            # Compare-and-swap: of two clicks, one changes it and records it; the other changes nothing.
            changed = Repository.objects.filter(pk=self.pk, archived_at__isnull=value is not None).update(archived_at=value)
            if changed:
                AuditEvent.objects.record(action=action, actor=by, obj=self, repository=self)
        if changed:
            self.archived_at = value
        return bool(changed)

    def request_poll(self, *, by):
        """Ask for a poll now: recorded first (the sweep serves it if the queue is away), then a worker is
        woken on commit. Git runs in the worker, never in the web request."""
        from pipelines.models import AuditEvent

        with transaction.atomic():
            Repository.objects.filter(pk=self.pk).update(poll_requested_at=timezone.now())
            AuditEvent.objects.record(action="repository.poll_requested", actor=by, obj=self, repository=self)
            wakeups.ask("enqueue_poll", self.pk)

    def poll_delay(self):
        """Seconds between polls: the interval, doubled per consecutive failure up to MAX_POLL_BACKOFF."""
        if not self.consecutive_failures:
            return self.poll_interval
        backoff = self.poll_interval * 2 ** min(self.consecutive_failures, 20)
        return max(self.poll_interval, min(backoff, MAX_POLL_BACKOFF))

    def is_due_for_poll(self, now):
        if self.poll_requested_at is not None or self.last_polled_at is None:
            return True
        return self.last_polled_at + timedelta(seconds=self.poll_delay()) <= now

    def commit_url(self, sha):
        return f"{self.web_url.rstrip('/')}/commit/{sha}" if self.web_url else ""

    def runs_checks_on(self, branch):
        """True when a new commit on `branch` (a name without refs/heads/) runs the checks."""
        from fnmatch import fnmatchcase

        if branch == self.branch:
            return False  # the release branch makes releases; its commits' checks are those of their pull requests
        patterns = self.check_branches.split()
        return not patterns or any(fnmatchcase(branch, pattern) for pattern in patterns)

    # --- the git host, for commit statuses -------------------------------------------------------------

    def set_api_token(self, value):
        """Encrypt the token with the first key of GITOPS_SECRETS_KEYS ("" removes it); SecretsNotConfigured
        without a key."""
        self.api_token_ciphertext = secrets.encrypt(value) if value else ""

    def api_token(self):
        """The plain token, or "" when none is set. SecretUnreadable when no key opens it."""
        if not self.api_token_ciphertext:
            return ""
        return secrets.decrypt(self.api_token_ciphertext, name=f"API token of repository {self.name}")

    @property
    def has_api_token(self):
        return bool(self.api_token_ciphertext)

    @property
    def git_host_address(self):
        """(host name, path without .git) of the URL, or ("", "") for a local path."""
        return host_and_path(self.url)

    @property
    def effective_git_host(self):
        """"github", "gitlab" or "" (none): the chosen host, or the one the URL's host name says."""
        if self.git_host == self.GitHost.NONE:
            return ""
        if self.git_host:
            return self.git_host
        host = self.git_host_address[0]
        if host in ("github.com", "www.github.com"):
            return self.GitHost.GITHUB
        if host == "gitlab.com" or host.startswith("gitlab."):
            return self.GitHost.GITLAB
        return ""

    @property
    def git_host_label(self):
        return self.GitHost(self.effective_git_host).label if self.effective_git_host else ""

    @property
    def effective_api_url(self):
        if self.api_url:
            return self.api_url.rstrip("/")
        host = self.git_host_address[0]
        if self.effective_git_host == self.GitHost.GITHUB:
            # GitHub Enterprise Server serves its API under /api/v3 of its own host.
            return "https://api.github.com" if host in ("github.com", "www.github.com", "") else f"https://{host}/api/v3"
        if self.effective_git_host == self.GitHost.GITLAB and host:
            return f"https://{host}/api/v4"
        return ""

    @property
    def effective_host_project(self):
        return self.host_project.strip().strip("/") or self.git_host_address[1]

    @property
    def reports_commit_statuses(self):
        """True when checks are reported to the git host: a host, a token and a project to report to."""
        return bool(self.effective_git_host and self.has_api_token and self.effective_api_url
                    and self.effective_host_project)

    @property
    def display_url(self):
        """The URL as people may see it: a token or password in it is shown as ***."""
        from pipelines.git import display_url  # git.py imports GitPython: only when a page needs it

        return display_url(self.url)


class WebhookDelivery(models.Model):
    """Delivery ids already accepted, so that a replayed delivery is ignored."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="webhook_deliveries")
    delivery_id = models.CharField(max_length=200)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "delivery_id"], name="unique_webhook_delivery")]
