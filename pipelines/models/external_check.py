"""Check results reported from outside the portal (GitHub Actions, GitLab CI…) through the API.

One row per (repository, commit, name): a later report of the same name replaces the state (a CI job goes
pending, then success). Nothing runs here, so this is not a FencedRun, and nothing is reported back to the
git host: the result came from CI or the host itself, and the portal's own status context
(`Check.HOST_CONTEXT`) stays the portal's. A stage that requires passing checks counts them like the
portal's own (`CheckQuerySet.refusal_for`)."""

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from .audit import AuditEvent


class ExternalCheckState(models.TextChoices):
    # The git hosts' own commit status states, so CI can pass on what it already says.
    PENDING = "pending", "Pending"
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    ERROR = "error", "Error"


class ExternalCheckQuerySet(models.QuerySet):
    def report(self, repository, *, commit_sha, name, state, target_url="", description="", by=None):
        """Record `state` for the check `name` of `commit_sha` (a new one, or a change of the existing one) with
        its audit event; returns (check, created). A report saying exactly what is recorded changes nothing."""
        if state not in ExternalCheckState.values:
            raise ValueError(f"Unknown state {state!r}: one of {', '.join(ExternalCheckState.values)}.")
        now = timezone.now()
        finished_at = None if state == ExternalCheckState.PENDING else now
        with transaction.atomic():
            check = self.select_for_update().filter(repository=repository, commit_sha=commit_sha, name=name).first()
            created = check is None
            if created:
                check = self.create(repository=repository, commit_sha=commit_sha, name=name, state=state,
                                    target_url=target_url, description=description, reported_by=by,
                                    created_at=now, updated_at=now, finished_at=finished_at)
            elif (check.state, check.target_url, check.description) == (state, target_url, description):
                return check, False
            else:
                previous = check.state
                check.state, check.target_url, check.description = state, target_url, description
                check.reported_by, check.updated_at, check.finished_at = by, now, finished_at
                check.save(update_fields=["state", "target_url", "description", "reported_by", "updated_at",
                                          "finished_at"])
            details = {"commit": commit_sha, "name": name, "state": state, "url": target_url}
            if not created:
                details["previous_state"] = previous
            AuditEvent.objects.record(action="check.external_reported", actor=by, obj=check, repository=repository,
                                      details=details)
        return check, created

    def for_commit(self, repository, commit_sha):
        return self.filter(repository=repository, commit_sha=commit_sha).order_by("name")


class ExternalCheck(models.Model):
    State = ExternalCheckState
    source = "external"

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.CASCADE, related_name="external_checks")
    commit_sha = models.CharField(max_length=40)
    name = models.CharField(max_length=200, help_text="What CI calls it, e.g. 'ci/tests' or 'github-actions/build'.")
    state = models.CharField(max_length=20, choices=ExternalCheckState.choices)
    target_url = models.URLField(max_length=1000, blank=True)
    description = models.CharField(max_length=500, blank=True)
    reported_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)  # None while pending

    objects = ExternalCheckQuerySet.as_manager()

    class Meta:
        ordering = ["name", "reported_by_id"]
        # Given to CI service accounts: a token's `checks:report` scope works only while its holder has it.
        permissions = [("report_checks", "Can report the results of external checks (CI service accounts)")]
        constraints = [
            # Per reporter: a report replaces only its own reporter's result, never another's of the same name.
            # (Rows whose reporter was deleted have none; NULLs never collide, so those all stay and count.)
            models.UniqueConstraint(fields=["repository", "commit_sha", "name", "reported_by"],
                                    name="one_external_check_per_name_and_reporter"),
            models.CheckConstraint(condition=models.Q(state__in=ExternalCheckState.values),
                                   name="external_check_state_is_known"),
        ]

    def __str__(self):
        return f"{self.name} of {self.commit_sha[:10]}"

    @property
    def passed(self):
        return self.state == ExternalCheckState.SUCCESS

    def refusal(self):
        """Why this result does not pass, in words, or ""."""
        if self.passed:
            return ""
        said = f": {self.description}" if self.description else ""
        if self.state == ExternalCheckState.PENDING:
            return f"{self.name} is pending, not passed yet{said}"
        return f"{self.name} reported {self.state}{said}"
