"""Check results reported from outside the portal (GitHub Actions, GitLab CI…) through the API.

Only holders of `pipelines.report_checks` (CI service accounts) report, and each result is its reporter's:
one row per (repository, commit, name, reporter). A later report by the same reporter replaces its state (a CI
job goes pending, then success); another reporter's report of the same name is a result of its own, which
leaves the first untouched, and a stage counts both. Nothing runs here, so this is not a FencedRun, and nothing is reported back to the
git host: the result came from CI or the host itself, and the portal's own status context
(`Check.HOST_CONTEXT`) stays the portal's. A stage that requires passing checks counts them like the
portal's own (`CheckQuerySet.refusal_for`)."""

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.utils import timezone

from .audit import AuditEvent
from .followup import PROMOTE_REEVALUATE, FollowUp


# The permission to report (ExternalCheck.Meta.permissions); pipelines/permissions.py names it for pages and API.
REPORT_CHECKS = "pipelines.report_checks"


class ExternalCheckState(models.TextChoices):
    # The git hosts' own commit status states, so CI can pass on what it already says.
    PENDING = "pending", "Pending"
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    ERROR = "error", "Error"


class ReportRefused(PermissionDenied):
    """This user may not report check results; the message says why."""


class ExternalCheckQuerySet(models.QuerySet):
    def report(self, repository, *, commit_sha, name, state, by, target_url="", description=""):
        """Record `by`'s result `state` for the check `name` of `commit_sha` (a new one, or a change of `by`'s own
        earlier result of that name) with its audit event; returns (check, created). Another reporter's result
        of the same name is never touched. A report saying exactly what is recorded changes nothing."""
        if by is None or not by.has_perm(REPORT_CHECKS):
            who = by.get_username() if by is not None else "Nobody"
            raise ReportRefused(f"{who} does not have the permission {REPORT_CHECKS!r}: only CI service accounts "
                                f"given it report check results.")
        if state not in ExternalCheckState.values:
            raise ValueError(f"Unknown state {state!r}: one of {', '.join(ExternalCheckState.values)}.")
        now = timezone.now()
        finished_at = None if state == ExternalCheckState.PENDING else now
        with transaction.atomic():
            same_name = self.filter(repository=repository, commit_sha=commit_sha, name=name)
            check = same_name.select_for_update().filter(reported_by=by).first()
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
                check.updated_at, check.finished_at = now, finished_at
                check.save(update_fields=["state", "target_url", "description", "updated_at", "finished_at"])
            details = {"commit": commit_sha, "name": name, "state": state, "url": target_url,
                       "reporter": by.get_username()}
            if not created:
                details["previous_state"] = previous
            # Who else reported this name: their results stay and count too, which the log makes plain.
            others = same_name.exclude(pk=check.pk).select_related("reported_by")
            if others := sorted(other.reporter_name for other in others):
                details["other_reporters"] = others
            AuditEvent.objects.record(action="check.external_reported", actor=by, obj=check, repository=repository,
                                      details=details)
            if state == ExternalCheckState.SUCCESS:
                # A stage that requires passing checks may take the commit's release now, without CI promoting it.
                FollowUp.objects.schedule(PROMOTE_REEVALUATE, repository=repository,
                                          payload={"because": f"the check {name} of {commit_sha[:12]} passed"})
        return check, created

    def for_commit(self, repository, commit_sha):
        return (self.filter(repository=repository, commit_sha=commit_sha).select_related("reported_by")
                .order_by("name", "reported_by__username"))


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

    @property
    def reporter_name(self):
        # None only for results whose reporter's account was deleted since (the row stays, and still counts).
        return self.reported_by.get_username() if self.reported_by is not None else "a deleted user"

    def refusal(self):
        """Why this result does not pass, in words, or "". It names the reporter: a name may have several."""
        if self.passed:
            return ""
        said = f": {self.description}" if self.description else ""
        if self.state == ExternalCheckState.PENDING:
            return f"{self.name} (by {self.reporter_name}) is pending, not passed yet{said}"
        return f"{self.name} (by {self.reporter_name}) reported {self.state}{said}"
