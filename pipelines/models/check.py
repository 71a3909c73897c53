"""Checks: the `checks:` steps of a repository's pipeline file, run for new commits on its branches and for
open pull/merge requests, never deploying anywhere.

A Check is one run per (repository, commit, ref): fenced like a build (pipelines/models/run.py), on its own
queue, with the checks' own variables and the repository's check secrets only. A CheckRef is what people
see on the Branches tab: a branch, or a pull request with its number, title and author, and its head.

Results belong to the commit: the release of the same commit (after a merge on `main`) shows them, and a
stage that requires passing checks looks them up by the release's commit sha (`CheckQuerySet.refusal_for`).

Pull requests from forks: their code is anyone's, so their checks get no check secrets, run only sealed
(pipelines/runs/check.py) and, unless settings.GITOPS_FORK_CHECKS_WAIT is off, wait (`waiting`) until a
deployer presses "Run checks" (`Check.allow_to_run`), as GitHub asks before running a first-time
contributor's workflows. Only a webhook can tell a fork: its payload names the head's repository. A pull
request seen by polling alone (GitHub publishes every one, forks' included, under refs/pull/<n>/head) is
treated as from a fork until a webhook says it is from the repository itself (`CheckRef.from_fork`)."""

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from . import wakeups
from .audit import AuditEvent
from .run import FencedRun, KeepsArtifacts


class CheckRefKind(models.TextChoices):
    BRANCH = "branch", "Branch"
    PULL_REQUEST = "pull_request", "Pull request"


class CheckRefQuerySet(models.QuerySet):
    def record(self, repository, *, kind, name, head_sha, number=None, title=None, author=None, is_open=None,
               from_fork=None):
        """Create (open) or update the ref as git or the git host shows it now; a title, author, state or
        origin not given (polling does not know a pull request's) keeps what a webhook said."""
        defaults = {"head_sha": head_sha, "number": number, "updated_at": timezone.now()}
        if is_open is not None:
            defaults["is_open"] = is_open
        if from_fork is not None:
            defaults["from_fork"] = from_fork
        if title is not None:
            defaults["title"] = title[:500]
        if author is not None:
            defaults["author"] = author[:200]
        ref, _ = self.update_or_create(repository=repository, kind=kind, name=name, defaults=defaults)
        return ref

    def for_page(self, repository):
        """Open pull requests first (newest number first), then branches by name, then closed ones."""
        return self.filter(repository=repository).order_by(
            "-is_open", models.Case(models.When(kind=CheckRefKind.PULL_REQUEST, then=0), default=1),
            "-number", "name")


class CheckRef(models.Model):
    """A branch or a pull/merge request whose commits run the checks. `name` is the branch name, or
    `pull/<n>` (GitHub) / `merge-requests/<n>` (GitLab)."""

    Kind = CheckRefKind

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.CASCADE, related_name="check_refs")
    kind = models.CharField(max_length=20, choices=CheckRefKind.choices)
    name = models.CharField(max_length=300)
    number = models.PositiveIntegerField(null=True, blank=True)
    title = models.CharField(max_length=500, blank=True)
    author = models.CharField(max_length=200, blank=True)
    head_sha = models.CharField(max_length=40)
    is_open = models.BooleanField(default=True)
    # A pull request's origin as a webhook said it: True, its head is in another repository (a fork); False,
    # in this one; None, no webhook has said (polling cannot tell): treated as a fork.
    from_fork = models.BooleanField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    # The id the git host gave the one comment of a pull request's checks (a GitHub issue comment, a GitLab
    # merge request note): later results update it instead of posting another (pipelines/commit_status.py).
    comment_id = models.CharField(max_length=64, blank=True)

    objects = CheckRefQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "kind", "name"], name="one_check_ref_per_name")]

    def __str__(self):
        return f"#{self.number} {self.title}".strip() if self.kind == CheckRefKind.PULL_REQUEST else self.name

    @property
    def treated_as_fork(self):
        """Whether its checks run as a fork's: a pull request that no webhook said is from this repository."""
        return self.kind == CheckRefKind.PULL_REQUEST and self.from_fork is not False


class CheckStatus(models.TextChoices):
    # A fork's pull request: it runs once a deployer allows it (Check.allow_to_run).
    WAITING = "waiting", "Waiting for a deployer"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    # Never ran: a newer commit on the same ref came first.
    CANCELLED = "cancelled", "Cancelled"


CHECK_TRANSITIONS = {
    CheckStatus.WAITING: {CheckStatus.QUEUED, CheckStatus.CANCELLED},
    CheckStatus.QUEUED: {CheckStatus.RUNNING, CheckStatus.FAILED, CheckStatus.CANCELLED},
    CheckStatus.RUNNING: {CheckStatus.SUCCEEDED, CheckStatus.FAILED, CheckStatus.CANCELLED},
    CheckStatus.SUCCEEDED: set(),
    CheckStatus.FAILED: set(),
    CheckStatus.CANCELLED: set(),
}


class CheckQuerySet(models.QuerySet):
    def queue_for(self, repository, *, commit_sha, ref_name, by=None, from_fork=False):
        """Record the check of `commit_sha` on `ref_name` and wake a worker on the checks queue on commit; the
        check of a fork's pull request (`from_fork`) waits for a deployer instead, unless
        settings.GITOPS_FORK_CHECKS_WAIT is off. A check still queued or waiting for an older commit of that
        ref is cancelled: only the newest commit is worth the wait.

        A commit is checked once, whatever refs it heads: a branch pushed and opened as a pull request is one
        check, under the ref that came first, and its commit status serves both (it belongs to the commit). A
        later ref gets that check back, unless it was cancelled; a fork's check still waiting runs at once
        when the commit turns out to be this repository's own (a branch here, or a webhook saying so). A
        finished check that a pull request now heads has its comment written there (Check.schedule_comments)."""
        with transaction.atomic():
            existing = self.filter(repository=repository, commit_sha=commit_sha, ref_name=ref_name).first()
            if existing is None:
                existing = self.for_commit(repository, commit_sha).exclude(status=CheckStatus.CANCELLED).first()
            waiting = list(self.select_for_update().filter(repository=repository, ref_name=ref_name,
                                                           status__in=(CheckStatus.QUEUED, CheckStatus.WAITING))
                           .exclude(commit_sha=commit_sha))
            if existing is not None:
                self._cancel_replaced(waiting, commit_sha, ref_name, by=by)
                if existing.status == CheckStatus.WAITING and existing.from_fork and not from_fork:
                    existing.allow_to_run(by=by, from_this_repository=True)
                elif existing.is_finished:
                    existing.schedule_comments()
                return existing
            status = CheckStatus.WAITING if from_fork and settings.GITOPS_FORK_CHECKS_WAIT else CheckStatus.QUEUED
            check = self.create(repository=repository, commit_sha=commit_sha, ref_name=ref_name, status=status,
                                from_fork=from_fork)
            self._cancel_replaced(waiting, commit_sha, ref_name, by=by)
            AuditEvent.objects.record(action=f"check.{status}", actor=by, obj=check, **check.audit_scope(),
                                      details=check.audit_details())
            check.schedule_report()
            if status == CheckStatus.QUEUED:
                check.wake()
        return check

    @staticmethod
    def _cancel_replaced(waiting, commit_sha, ref_name, *, by):
        for older in waiting:
            older.transition(CheckStatus.CANCELLED, by=by, error=f"A newer commit ({commit_sha[:10]}) on {ref_name} "
                                                                 f"replaced it before it started.")

    def for_commit(self, repository, commit_sha):
        return self.filter(repository=repository, commit_sha=commit_sha).order_by("-created_at", "-id")

    def refusal_for(self, release):
        """Why `release` may not go to a stage that requires passing checks, in words, or "".

        Every named check of its commit counts: the portal's own (its latest run that was not cancelled, on
        any branch or pull request) and each external result reported through the API (the latest report of
        each reporter: when two reporters report the same name, both results must pass, so nobody's green
        hides CI's red). All must have passed, and at least one must exist."""
        from .external_check import ExternalCheck

        sha = release.commit_sha[:10]
        latest = self.for_commit(release.repository_id, release.commit_sha).exclude(status=CheckStatus.CANCELLED).first()
        external = list(ExternalCheck.objects.for_commit(release.repository_id, release.commit_sha))
        if latest is None and not external:
            return f"the checks of its commit {sha} have not run"
        reasons = []
        if latest is not None and latest.status == CheckStatus.FAILED:
            reasons.append(f"the checks of its commit {sha} failed (check #{latest.pk}: {latest.error})")
        elif latest is not None and latest.status != CheckStatus.SUCCEEDED:
            reasons.append(f"the checks of its commit {sha} are {latest.get_status_display().lower()}, not passed yet")
        failing = [check.refusal() for check in external if not check.passed]
        if failing:
            reasons.append(f"the external checks of its commit {sha} did not all pass ({'; '.join(failing)})")
        return " and ".join(reasons)


class Check(KeepsArtifacts, FencedRun):
    Status = CheckStatus
    TRANSITIONS = CHECK_TRANSITIONS

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.PROTECT, related_name="checks")
    commit_sha = models.CharField(max_length=40, db_index=True)
    ref_name = models.CharField(max_length=300, help_text="The branch or pull/merge request it ran for.")
    status = models.CharField(max_length=20, choices=CheckStatus.choices, db_index=True)
    # The names of the `checks:` steps read at the commit, set when it starts: what the page lists.
    steps = models.JSONField(default=list, blank=True)
    # Of a pull request from a fork (CheckRef.treated_as_fork when it was queued): no check secrets, sealed only.
    from_fork = models.BooleanField(default=False)
    # What its steps wrote to $GITOPS_OUTPUTS, written once with the success; {} until then. `summary` is the
    # one line its commit status says (pipelines/commit_status.py).
    outputs = models.JSONField(default=dict, blank=True)

    objects = CheckQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "commit_sha", "ref_name"], name="one_check_per_commit_and_ref"),
            models.CheckConstraint(condition=models.Q(status__in=CheckStatus.values), name="check_status_is_known"),
        ]

    def __str__(self):
        return f"check #{self.pk} of {self.commit_sha[:10]} on {self.ref_name}"

    def get_absolute_url(self):
        return reverse("check_detail", args=[self.pk])

    def audit_scope(self):
        return {"repository": self.repository}

    def audit_details(self):
        return {"commit": self.commit_sha, "ref": self.ref_name, "from_fork": self.from_fork}

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    # How each state reads on the git host (GitHub's states; pipelines/commit_status.py maps them for GitLab).
    HOST_STATES = {
        CheckStatus.WAITING: ("pending", "Waiting for a deployer to run it (a pull request from a fork)"),
        CheckStatus.QUEUED: ("pending", "Queued in the portal"),
        CheckStatus.RUNNING: ("pending", "Running in the portal"),
        CheckStatus.SUCCEEDED: ("success", "Passed"),
        CheckStatus.FAILED: ("failure", "Failed"),
        CheckStatus.CANCELLED: ("error", "Cancelled: a newer commit came first"),
    }
    HOST_CONTEXT = "gitops/checks"

    def schedule_report(self):
        """Record the report of this state to the git host (a follow-up; nothing when the repository reports
        no commit statuses). Called inside the transaction that records the state."""
        wakeups.ask("schedule_check_report", self)

    def transition(self, new_status, *, by=None, details=None, **fields):
        """As FencedRun.transition, with the report to the git host recorded in the same transaction."""
        with transaction.atomic():
            super().transition(new_status, by=by, details=details, **fields)
            self.schedule_report()
        return self

    @property
    def summary(self):
        """The one line the check wrote as `summary=…` to $GITOPS_OUTPUTS, or ""."""
        return (self.outputs or {}).get("summary", "")

    def schedule_comments(self):
        """Record the comment of this check's result on each open pull request it heads (a follow-up each;
        nothing when the repository reports nothing). Called inside the transaction that records it."""
        wakeups.ask("schedule_check_comments", self)

    def succeed(self, *, outputs=None, artifact=None):
        """Record the outputs and the artifact (a pipelines.artifacts.StoredArtifact, or None) with the success."""
        outputs = outputs or {}
        artifact_fields = self.artifact_fields(artifact)
        return self.transition(CheckStatus.SUCCEEDED, exit_code=0, outputs=outputs, **artifact_fields,
                               details={"outputs": sorted(outputs),
                                        "artifact_sha256": artifact_fields.get("artifact_sha256", "")})

    def allow_to_run(self, *, by, from_this_repository=False):
        """A deployer's "Run checks" of a waiting check (a fork's pull request): queued, audited with who allowed
        it, and a worker woken. It still runs sealed and without check secrets (pipelines/runs/check.py),
        unless `from_this_repository`: the git host said (a webhook after a poll) that the pull request is not
        from a fork after all. StaleStatus or InvalidTransition when it no longer waits (allowed by someone
        else, or replaced by a newer commit)."""
        fields = {"from_fork": False} if from_this_repository else {}
        with transaction.atomic():
            self.transition(CheckStatus.QUEUED, by=by, details={"from_this_repository": from_this_repository}, **fields)
            self.wake()
        return self


class CheckLogChunk(models.Model):
    check_run = models.ForeignKey(Check, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["check_run", "seq"], name="unique_check_log_chunk_seq")]
