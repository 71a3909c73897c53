"""Change control: a held deployment becomes a ChangeRequest that eligible people decide on.

`ChangeRequest.approve()` and `reject()` are the one way to decide. Each locks the request row, checks
the policy and raises `DecisionRefused` (a PermissionDenied) with the reason in words; the deployment is
released through `Deployment.release_hold()`, whose compare-and-swap makes that happen once."""

from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from pipelines.models import AuditEvent, Deployment, FollowUp, Preview, Target
from pipelines.models.preview import PreviewStatus


class StagePolicy(models.Model):
    """The approval part of a lifecycle stage that holds its deployments (pipelines.Stage.requires_approval):
    who may approve, how many must, and the rules they decide under. The same environment may have
    different policies in different lifecycles."""

    stage = models.OneToOneField("pipelines.Stage", on_delete=models.CASCADE, related_name="approval_policy")
    required_approvals = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    # Not null: otherwise the stage's deployments would wait for approvals that nobody may give.
    approver_group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="+")
    allow_self_approval = models.BooleanField(default=False, help_text="Let the person who requested a change approve it.")
    block_commit_authors = models.BooleanField(
        default=True, help_text="Refuse approval from anyone whose e-mail authored a commit in the change."
    )
    approval_timeout = models.DurationField(null=True, blank=True, help_text="Optional, e.g. '3 00:00:00' for three days.")
    # Off by default: a decision through the API (a token with the `approve` scope) must be allowed per stage.
    allow_api_approval = models.BooleanField(
        default=False, help_text="Let approvers decide through the API (a token with the 'approve' scope), under the same rules."
    )

    # Off by default: a rollback after a failure (pipelines/rollback.py) waits for approval like any change.
    pre_approved_rollback = models.BooleanField(
        "pre-approved rollback", default=False,
        help_text="When the stage rolls back on failure, deploy the rollback to the release that ran here before "
                  "without a new approval (recorded as approved by this policy). Off: the rollback opens a change "
                  "request at once.")

    class Meta:
        verbose_name_plural = "stage policies"
        constraints = [
            models.CheckConstraint(condition=models.Q(required_approvals__gte=1), name="policy_needs_one_approval_at_least"),
        ]

    def __str__(self):
        return f"approval policy of {self.stage}"


# The audit action of each verdict. (Before 2026-12 a rejection was recorded as 'change_request.rejectd_by';
# the audit log's filter finds those under the right spelling too.)
DECISION_ACTIONS = {"approve": "change_request.approved_by", "reject": "change_request.rejected_by"}


class DecisionRefused(PermissionDenied):
    """This person may not decide on this request now; the message says why."""


class ChangeRequestQuerySet(models.QuerySet):
    def pending(self):
        return self.filter(status=ChangeRequest.Status.PENDING)

    def awaiting(self, user):
        """Pending requests this user could approve: in the approver group, not yet decided by them, and
        not their own request unless its stage allows that. (The commit-author rule is left to
        `refusal_reason`, which the page shows: it needs the e-mails stored as JSON.)"""
        own_and_not_allowed = models.Q(requested_by=user, stage__approval_policy__allow_self_approval=False)
        decided = Decision.objects.filter(change_request=models.OuterRef("pk"), user=user,
                                          preview_number=models.OuterRef("current_preview"))
        return (
            self.pending()
            .filter(stage__approval_policy__approver_group__in=user.groups.all())
            .with_current_preview()
            .exclude(models.Exists(decided))
            .exclude(own_and_not_allowed)
        )

    def decidable_ids(self, user, now=None):
        """The ids of the pending requests `user` may decide now (`refusal_reason(user)` is None), in one query.

        SQL narrows `awaiting(user)` by what needs no JSON: not expired, the deployment still held, its latest
        preview (if any) succeeded, the change read from git when the commit-author rule is on. The rule
        itself is applied here over `author_emails` (JSON, which SQLite cannot search): one small row per
        pending request of the user's groups, fine for hundreds. Not checked: whether a later success on the
        target made the preview stale (a query per request); the page says so when it is opened."""
        now = now or timezone.now()
        latest_preview_status = (Preview.objects.filter(deployment=models.OuterRef("deployment"))
                                 .order_by("-number").values("status")[:1])
        rows = (
            self.awaiting(user)
            .filter(deployment__status=Deployment.Status.AWAITING_APPROVAL)
            .exclude(expires_at__lte=now)
            .annotate(preview_status=models.Subquery(latest_preview_status))
            .filter(models.Q(preview_status__isnull=True) | models.Q(preview_status=PreviewStatus.SUCCEEDED))
            .values_list("pk", "author_emails", "stage__approval_policy__block_commit_authors", "summary__error")
        )
        email = (user.email or "").strip().lower()
        return [pk for pk, authors, authors_blocked, summary_error in rows
                if not authors_blocked or (email and email not in authors and not summary_error)]

    def decidable_by(self, user, now=None):
        """`decidable_ids` as a queryset: what the inbox lists under "Waiting on me"."""
        return self.filter(pk__in=self.decidable_ids(user, now))

    def with_current_preview(self):
        """Annotate `current_preview`: the number of the deployment's latest preview (0 without one), the
        one approvals count for."""
        latest = Preview.objects.filter(deployment=models.OuterRef("deployment")).order_by("-number").values("number")[:1]
        return self.annotate(current_preview=Coalesce(models.Subquery(latest), 0))


class ChangeRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        SUPERSEDED = "superseded", "Superseded"
        WITHDRAWN = "withdrawn", "Withdrawn"

    deployment = models.OneToOneField(Deployment, on_delete=models.PROTECT, related_name="change_request")
    # Denormalised from the deployment so that the inbox filters without joins through it.
    repository = models.ForeignKey("pipelines.Repository", on_delete=models.PROTECT, related_name="+")
    environment = models.ForeignKey("pipelines.Environment", on_delete=models.PROTECT, related_name="+")
    # The lifecycle stage the deployment waits in: its approval policy is the one that applies.
    stage = models.ForeignKey("pipelines.Stage", on_delete=models.PROTECT, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    required_approvals = models.PositiveSmallIntegerField()
    opened_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    status_reason = models.TextField(blank=True)
    # What the change contains, computed from the mirror when the request opens (see approvals/changes.py):
    # {"commits": [...], "files": [...], "pipeline_diff": str, "is_rollback": bool, "earlier_results": [...]}.
    summary = models.JSONField(default=dict, blank=True)
    # Lower-cased e-mails of the commits' authors and committers, for the "no approving your own commits"
    # rule: whoever committed a change (a rebase, a cherry-pick, a patch applied) had a hand in it too.
    author_emails = models.JSONField(default=list, blank=True)

    objects = ChangeRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at", "-id"]
        permissions = [
            ("override_gate", "Can promote a release that has not succeeded in the environment before"),
            ("deploy_during_freeze", "Can deploy to an environment during a freeze window"),
        ]

    def __str__(self):
        return f"Change request #{self.pk}: {self.deployment.release} → {self.environment}"

    def get_absolute_url(self):
        return reverse("change_request_detail", args=[self.pk])

    @property
    def is_pending(self):
        return self.status == self.Status.PENDING

    @property
    def policy(self):
        """The approval policy of its stage, or None when an admin removed it (then nobody may decide)."""
        return getattr(self.stage, "approval_policy", None)

    # --- the policy -----------------------------------------------------------------------------------

    def refusal_reason(self, user, now=None, *, preview=False):
        """Why `user` may not decide on this request now, in words; None when they may. `preview`: the
        deployment's latest preview when the caller has it already (None: it has none)."""
        now = now or timezone.now()
        environment, policy = self.environment, self.policy
        if self.status != self.Status.PENDING:
            return f"This change request is already {self.get_status_display().lower()}."
        if self.expires_at and self.expires_at <= now:
            return "This change request has expired."
        if self.deployment.status != Deployment.Status.AWAITING_APPROVAL:
            return f"The deployment is no longer waiting for approval (it is {self.deployment.get_status_display().lower()})."
        if policy is None:
            return (f"{environment} has no approval policy in the lifecycle {self.stage.lifecycle}, so nobody may "
                    f"decide; ask an admin to set one.")
        if not user.groups.filter(pk=policy.approver_group_id).exists():
            return f"Only members of {policy.approver_group.name!r} may decide on changes to {environment}."
        if self.requested_by_id == user.pk and not policy.allow_self_approval:
            return "You requested this change, so someone else has to approve it."
        if policy.block_commit_authors and not (user.email or "").strip():
            # Fail closed: without an e-mail nobody can tell whether this person wrote any of the commits.
            return (
                "You have no e-mail address on your account, so the portal cannot check that you did not author "
                "a commit in this change; ask an admin to set one."
            )
        if policy.block_commit_authors and user.email.strip().lower() in self.author_emails:
            return "You authored or committed a commit in this change, so someone else has to approve it."
        if policy.block_commit_authors and self.summary.get("error"):
            # Fail closed: without the commits, nobody can be shown not to be one of their authors.
            return "The change could not be read from git yet, so its commit authors are unknown; the portal retries."
        if preview is False:
            preview = self.latest_preview()
        if preview is not None and (refusal := preview.refusal() or preview.stale_reason()):
            return refusal
        number = preview.number if preview is not None else 0
        if self.decisions.filter(user=user, preview_number=number).exists():
            return "You have already decided on this change request."
        return None

    def latest_preview(self):
        """The deployment's latest preview, or None."""
        preview = (Preview.objects.select_related("base_release").filter(deployment_id=self.deployment_id)
                   .order_by("-number").first())
        if preview is not None:
            preview.deployment = self.deployment
        return preview

    def current_preview_number(self):
        """The number of the deployment's latest preview, 0 when it has none: approvals count only when
        given on it (one given on an earlier preview approved a picture that is out of date)."""
        latest = self.latest_preview()
        return latest.number if latest is not None else 0

    def approve(self, user, comment=""):
        return self._decide(user, Decision.Verdict.APPROVE, comment)

    def reject(self, user, comment):
        if not comment or not comment.strip():
            raise DecisionRefused("Say why you reject the change: a comment is required.")
        return self._decide(user, Decision.Verdict.REJECT, comment)

    def _decide(self, user, verdict, comment):
        with transaction.atomic():
            # One lock order everywhere (target, deployment, then the audit chain), so no decision deadlocks
            # with a promotion: an approval queues the deployment and supersedes older ones of its target.
            Target.objects.select_for_update().filter(repository_id=self.repository_id,
                                                      environment_id=self.environment_id).values_list("pk").first()
            # The row lock makes concurrent deciders queue up here; each then sees the others' decisions.
            # The deployment's row is locked too, before the first audit event.
            locked = ChangeRequest.objects.select_for_update(of=("self", "deployment")).select_related(
                "environment", "stage__lifecycle", "stage__approval_policy__approver_group", "deployment__release", "deployment__environment", "deployment__repository"
            ).get(pk=self.pk)
            # The preview it is given on: a new preview cannot be queued meanwhile, since that takes the
            # deployment's row lock (Deployment.succeed), which is held here.
            preview = locked.latest_preview()
            reason = locked.refusal_reason(user, preview=preview)
            if reason:
                raise DecisionRefused(reason)
            number = preview.number if preview is not None else 0
            decision = Decision.objects.create(change_request=locked, user=user, verdict=verdict, comment=comment,
                                               preview_number=number)
            locked._audit(DECISION_ACTIONS[verdict], user, {"comment": comment, "preview": number})
            if verdict == Decision.Verdict.REJECT:
                locked._close(self.Status.REJECTED, by=user, reason=comment)
                locked.deployment.reject(by=user, reason=f"Rejected by {user.get_username()}: {comment}")
            elif (locked.decisions.filter(verdict=Decision.Verdict.APPROVE, preview_number=number).count()
                  >= locked.required_approvals):
                locked._close(self.Status.APPROVED, by=user)
                locked.deployment.release_hold(by=user)
            if locked.status != self.Status.PENDING:
                # Mail is a follow-up of the decision: it lands with it, and a mail server that is down
                # delays it rather than losing it (or failing the decision).
                FollowUp.objects.schedule(
                    "mail.change_request_decided", deployment=locked.deployment, payload={"change_request": locked.pk}
                )
        self.refresh_from_db()
        return decision

    def approve_by_policy(self, *, reason):
        """Approved by the stage's policy rather than by people (a pre-approved rollback): closed as approved with
        `reason`, and its deployment let through; False when it was no longer pending. Same lock order as a
        decision: the target, the change request and its deployment, then the audit chain."""
        with transaction.atomic():
            Target.objects.select_for_update().filter(repository_id=self.repository_id,
                                                      environment_id=self.environment_id).values_list("pk").first()
            locked = ChangeRequest.objects.select_for_update(of=("self", "deployment")).select_related(
                "deployment__release", "deployment__environment", "deployment__repository").get(pk=self.pk)
            if locked.status != self.Status.PENDING:
                return False
            locked._close(self.Status.APPROVED, by=None, reason=reason)
            locked.deployment.release_hold(by=None)
            FollowUp.objects.schedule(
                "mail.change_request_decided", deployment=locked.deployment, payload={"change_request": locked.pk}
            )
        self.refresh_from_db()
        return True

    # --- closing without a decision ------------------------------------------------------------------

    def expire(self, now=None):
        with transaction.atomic():
            # The deployment's row before the first audit event (the lock order of pipelines/promotion.py).
            Deployment.objects.select_for_update().filter(pk=self.deployment_id).values_list("pk").first()
            if not self._close_if_pending(self.Status.EXPIRED, reason="No decision before the approval timeout."):
                return False
            self.deployment.cancel(reason="The approval request expired.")
        return True

    def supersede(self, *, reason):
        """The deployment was replaced by a newer candidate (pipelines already cancelled it)."""
        return self._close_if_pending(self.Status.SUPERSEDED, reason=reason)

    def withdraw(self, *, reason):
        return self._close_if_pending(self.Status.WITHDRAWN, reason=reason)

    def _close_if_pending(self, status, *, reason):
        with transaction.atomic():
            locked = ChangeRequest.objects.select_for_update().get(pk=self.pk)
            if locked.status != self.Status.PENDING:
                return False
            locked._close(status, by=None, reason=reason)
        self.refresh_from_db()
        return True

    def _close(self, status, *, by, reason=""):
        ChangeRequest.objects.filter(pk=self.pk).update(status=status, decided_at=timezone.now(), status_reason=reason)
        self.status = status
        self._audit(f"change_request.{status}", by, {"reason": reason})

    def _audit(self, action, actor, details):
        AuditEvent.objects.record(
            action=action, actor=actor, obj=self, repository=self.repository, environment=self.environment,
            details={"deployment": self.deployment_id, "release": self.deployment.release.version, **details},
        )


class Decision(models.Model):
    class Verdict(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"

    change_request = models.ForeignKey(ChangeRequest, on_delete=models.PROTECT, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    verdict = models.CharField(max_length=7, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    decided_at = models.DateTimeField(default=timezone.now)
    # The preview of the deployment it was given on (0: it had none). An approval counts only while that
    # preview is the latest: once the preview is run again (it went stale), everyone approves again.
    preview_number = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["decided_at", "id"]
        constraints = [models.UniqueConstraint(fields=["change_request", "user", "preview_number"],
                                               name="one_decision_per_person_per_preview")]

    def __str__(self):
        return f"{self.user} {self.get_verdict_display().lower()} #{self.change_request_id}"


class FreezeWindow(models.Model):
    """A time when deployments to some environments wait: one-off (starts_at–ends_at) or recurring
    (a cron rule for the start, read in `time_zone`, lasting `duration`). See approvals/freeze.py."""

    name = models.CharField(max_length=100)
    environments = models.ManyToManyField("pipelines.Environment", related_name="+")
    reason = models.TextField()
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    cron = models.CharField(max_length=100, blank=True, help_text="When a recurring window starts, e.g. '0 18 * * FRI'.")
    duration = models.DurationField(null=True, blank=True, help_text="How long a recurring window lasts, e.g. '2 15:00:00'.")
    time_zone = models.CharField(max_length=64, default="UTC", help_text="The time zone the cron rule is read in.")
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def is_recurring(self):
        return bool(self.cron)

    def clean(self):
        """Exactly one kind: a one-off window (start before end, no rule) or a recurring one (a valid
        cron rule, a positive duration, an IANA time zone)."""
        one_off = self.starts_at is not None or self.ends_at is not None
        recurring = bool(self.cron) or self.duration is not None
        if one_off and recurring:
            raise ValidationError(
                "A window is either one-off (a start and an end) or recurring (a cron rule and a duration), not both: "
                "clear one or the other."
            )
        if not one_off and not recurring:
            raise ValidationError(
                "Give a start and an end for a one-off window, "
                "or a cron rule, a duration and a time zone for a recurring one."
            )
        errors = {}
        if one_off:
            if self.starts_at is None:
                errors["starts_at"] = "A one-off window needs a start."
            if self.ends_at is None:
                errors["ends_at"] = "A one-off window needs an end."
            if self.starts_at and self.ends_at and self.starts_at >= self.ends_at:
                errors["ends_at"] = "The window must end after it starts."
        else:
            if not self.cron:
                errors["cron"] = "A recurring window needs a cron rule for when it starts, e.g. '0 18 * * FRI'."
            elif not croniter.is_valid(self.cron, strict=True):
                errors["cron"] = (
                    f"{self.cron!r} is not a valid cron rule: five fields, minute hour day-of-month month day-of-week, "
                    "e.g. '0 18 * * FRI' for every Friday at 18:00."
                )
            if self.duration is None or self.duration <= timedelta(0):
                errors["duration"] = (
                    "A recurring window needs a positive duration, e.g. '2 15:00:00' for 2 days 15 hours."
                )
            try:
                ZoneInfo(self.time_zone)
            except (ValueError, ZoneInfoNotFoundError):
                errors["time_zone"] = (
                    f"{self.time_zone!r} is not a known time zone; use an IANA name such as 'Europe/Berlin'."
                )
        if errors:
            raise ValidationError(errors)


class FreezeOverride(models.Model):
    """A deployment allowed to run during a freeze, by someone with the permission, with a reason."""

    deployment = models.OneToOneField(Deployment, on_delete=models.PROTECT, related_name="freeze_override")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
