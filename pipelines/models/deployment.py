from contextlib import contextmanager

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Case, F, Q, Sum, When
from django.db.models.functions import Now
from django.urls import reverse
from django.utils import timezone

from pipelines import run_log

from .clock import now_plus
from .drift import DriftCheck, drift_steps
from .followup import DEPLOYMENTS_STOPPED, PROMOTE_AFTER_SUCCESS, ROLLBACK_AFTER_FAILURE
from .run import FencedRun, TargetBusy


class Status(models.TextChoices):
    AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    REJECTED = "rejected", "Rejected"


ALLOWED_TRANSITIONS = {
    Status.AWAITING_APPROVAL: {Status.QUEUED, Status.REJECTED, Status.CANCELLED},
    Status.QUEUED: {Status.RUNNING, Status.CANCELLED},
    Status.RUNNING: {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED},
    Status.SUCCEEDED: set(),
    Status.FAILED: set(),
    Status.CANCELLED: set(),
    Status.REJECTED: set(),
}
FINISHED = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.REJECTED}


class DeploymentQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=[Status.AWAITING_APPROVAL, Status.QUEUED, Status.RUNNING])

    def for_target(self, repository, environment):
        return self.filter(repository=repository, environment=environment)


class Deployment(FencedRun):
    Status = Status
    TRANSITIONS = ALLOWED_TRANSITIONS

    class Trigger(models.TextChoices):
        AUTO = "auto", "Automatic"
        MANUAL = "manual", "Manual"
        ROLLBACK = "rollback", "Rollback"
        RETRY = "retry", "Retry"
        # Deploying again what runs there, because a drift check found reality changed (pipelines/drift_schedule.py).
        RECONCILE = "reconcile", "Drift correction"

    release = models.ForeignKey("pipelines.Release", on_delete=models.PROTECT, related_name="deployments")
    environment = models.ForeignKey("pipelines.Environment", on_delete=models.PROTECT, related_name="deployments")
    # Denormalised from the release so that the database can hold "one running per target".
    repository = models.ForeignKey("pipelines.Repository", on_delete=models.PROTECT, related_name="deployments")
    previous_release = models.ForeignKey("pipelines.Release", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # Set when a newer candidate for the same target cancelled this one before it ran.
    superseded_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=20, choices=Status.choices, db_index=True)
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)

    queued_at = models.DateTimeField(null=True, blank=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("deploy", "Can promote, retry, roll back and pause deployments")]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "environment"],
                condition=models.Q(status="running"),
                name="one_running_deployment_per_target",
            ),
            models.CheckConstraint(condition=models.Q(status__in=Status.values), name="deployment_status_is_known"),
        ]
        indexes = [
            models.Index(fields=["repository", "environment", "status"]),
            # The insights page: deployments of one stage finished in a period (pipelines/insights.py).
            models.Index(fields=["environment", "status", "finished_at"], name="deployment_stage_finished"),
            # … the next success on a target after a failure, and whether a rollback replaced a release there.
            models.Index(fields=["repository", "environment", "status", "finished_at"], name="deployment_target_finished"),
            models.Index(fields=["repository", "environment", "previous_release"], condition=models.Q(trigger="rollback"),
                         name="deployment_rollbacks"),
            # The dashboard's states (pipelines/dashboard.py): the few deployments that wait, fail or run, read
            # from the index alone.
            models.Index(fields=["id", "status"], name="deployment_waits_or_runs",
                         condition=models.Q(status__in=["awaiting_approval", "failed", "running", "queued"])),
        ]

    def __str__(self):
        return f"#{self.pk} {self.release} → {self.environment}"

    def get_absolute_url(self):
        return reverse("deployment_detail", args=[self.pk])

    def audit_scope(self):
        return {"repository": self.repository, "environment": self.environment}

    def audit_details(self):
        return {"release": self.release.version}

    # --- the one way a status changes ------------------------------------------------------------

    def transition(self, new_status, *, by=None, details=None, **fields):
        """FencedRun.transition, with the target: a deployment that stops running lets go of its target's
        lease, makes the previews of the deployments held there stale if it ran a step there, and wakes the
        deployment queued next for the target.

        Raises InvalidTransition for a move the state machine forbids, StaleStatus when another process
        changed the row first, TargetBusy when the target already has a running deployment."""
        self._check_transition(new_status)
        with self._busy_target(new_status), transaction.atomic():
            self._change_status(new_status, by=by, details=details, fields=fields)
        return self

    def _change_status(self, new_status, *, by, details, fields, target_fields=None):
        """FencedRun._change_status with the target, inside the caller's transaction. A deployment that stops
        running first writes its Target row (which locks it: row locks before the audit record, which takes
        the audit chain's, Target first, the same order as promote(), so the two never deadlock), letting go
        of the lease and writing `target_fields` in the same UPDATE; then it locks the deployments waiting for
        the target: those held for approval, whose previews it makes stale, and the one queued next, woken
        once this commits."""
        if new_status == Status.QUEUED:
            fields.setdefault("queued_at", timezone.now())
        waiting = []
        was_running = self.status == Status.RUNNING
        if was_running:
            self._let_go_of_target(**(target_fields or {}))
            waiting = list(Deployment.objects.for_target(self.repository_id, self.environment_id)
                           .filter(status__in=(Status.AWAITING_APPROVAL, Status.QUEUED))
                           .select_for_update().order_by("created_at", "id"))
        super()._change_status(new_status, by=by, details=details, fields=fields)
        if self.step_pgid is not None:
            # It ran a step on the target, whatever its outcome: what the previews showed is out of date.
            self._queue_stale_previews([d for d in waiting if d.status == Status.AWAITING_APPROVAL], new_status)
        following = next((d for d in waiting if d.status == Status.QUEUED), None)
        if following is not None:
            following.wake()  # it waited for this one
        if was_running and new_status == Status.FAILED:
            self._roll_back_if_the_stage_says_so()

    # How an automatic rollback's reason begins (pipelines/rollback.py); approvals' policy and mail look for it.
    AUTOMATIC_ROLLBACK = "Automatic rollback"
    # The follow-up that tells the people answerable for the stage (approvals/notifications.py): payload
    # {"what": "rolled_back" | "rollback_failed", "failed": the failed deployment's id}.
    ROLLBACK_MAIL = "mail.rollback"

    @property
    def is_automatic_rollback(self):
        """A rollback the portal started after a failure, not one a person asked for."""
        return (self.trigger == self.Trigger.ROLLBACK and self.triggered_by_id is None
                and self.reason.startswith(self.AUTOMATIC_ROLLBACK))

    def _roll_back_if_the_stage_says_so(self):
        """A failure in a stage that rolls back on failure: record the rollback (pipelines/rollback.py) in the
        failure's own transaction. Never for a rollback that failed: no loops; the people answerable for the
        stage are told instead, for a person to take over."""
        from pipelines.models import FollowUp, Stage

        if self.is_automatic_rollback:
            FollowUp.objects.schedule(self.ROLLBACK_MAIL, deployment=self, repository=self.repository,
                                      payload={"what": "rollback_failed", "failed": self.pk})
            return
        if self.trigger == self.Trigger.ROLLBACK:
            return
        stage = Stage.objects.for_target(self.repository, self.environment_id)
        if stage is not None and stage.rollback_on_failure:
            FollowUp.objects.schedule(ROLLBACK_AFTER_FAILURE, deployment=self, repository=self.repository)

    @contextmanager
    def _busy_target(self, new_status):
        """The database's "one running per target" refusing a start, said as TargetBusy."""
        try:
            yield
        except IntegrityError as exc:
            if new_status == Status.RUNNING:
                raise TargetBusy(f"Another deployment of {self.repository} is running in {self.environment}.") from exc
            raise

    # --- named steps of the lifecycle ---------------------------------------------------------------

    def release_hold(self, *, by):
        """Approval given: the held deployment joins the queue, and an older deployment of its target that
        is still waiting there (approved earlier and held by a freeze, or queued behind a run) is superseded:
        whatever waits for a target, the newest approval is what runs last.

        Lock order: the Target row, then the deployments, then the audit chain (callers that decide under
        a lock take the target first too: see approvals' ChangeRequest._decide)."""
        from pipelines.models import FollowUp

        with transaction.atomic():
            self.lock_target()
            older = list(Deployment.objects.for_target(self.repository_id, self.environment_id)
                         .filter(status=Status.QUEUED, pk__lt=self.pk).select_for_update().order_by("id")
                         .select_related("release"))
            self.transition(Status.QUEUED, by=by)
            for deployment in older:
                deployment.supersede(by=by, newer=self)
            if older:
                FollowUp.objects.schedule(DEPLOYMENTS_STOPPED, release=self.release, repository=self.repository,
                                          payload={"deployments": [d.pk for d in older], "reason": older[0].error})
            self.wake()
        return self

    def reject(self, *, by, reason=""):
        return self.transition(Status.REJECTED, by=by, error=reason, details={"reason": reason})

    def supersede(self, *, by, newer):
        """A newer candidate for the same target replaces this one, which has not run yet."""
        reason = f"Superseded by {newer.release.version} (deployment #{newer.pk})."
        return self.transition(Status.CANCELLED, by=by, error=reason, superseded_by=newer,
                               details={"reason": reason, "superseded_by": newer.pk})

    def claim(self, *, worker_name, runner_host=None, runner_pid=None):
        """Start running: the deployment and the lease of its target, in one transaction.

        The lease is a compare-and-swap that succeeds only when the target has no holder or the holder's
        lease expired, which is after that holder's runner stopped its step by itself (see pipelines/runs/heartbeat.py):
        so the next run of a target starts only once the old one is fenced. Raises TargetBusy otherwise."""
        from pipelines.models import Target

        self._check_transition(Status.RUNNING)
        # One transaction, no savepoint inside: the Target row first, then the run, then the audit chain.
        with self._busy_target(Status.RUNNING), transaction.atomic():
            # The lease's end is on the database's clock, whatever this host's says (see clock.py).
            free = Q(lease_holder__isnull=True) | Q(lease_expires_at__lt=Now()) | Q(lease_holder=self.pk)
            lease = {"lease_holder": self.pk, "lease_expires_at": self._lease_end()}
            # The compare-and-swap is the first statement and locks the Target row itself; the row is read
            # (made if missing) only when it fails, to try once more and to say who holds it.
            mine = Target.objects.filter(repository=self.repository_id, environment=self.environment_id)
            if mine.filter(free).update(**lease) != 1:
                target = self.lock_target()
                if Target.objects.filter(free, pk=target.pk).update(**lease) != 1:
                    raise TargetBusy(
                        f"Deployment #{target.lease_holder_id} of {self.repository} in {self.environment} holds the "
                        f"target until {target.lease_expires_at:%Y-%m-%d %H:%M:%S %Z}; this one waits for it."
                    )
            fields = self._claim_fields(worker_name, runner_host, runner_pid, step_pgid=None)
            self._change_status(Status.RUNNING, by=None, details=None, fields=fields)
        return self

    def succeed(self, *, follows=None):
        """Record success, what now runs on the target, and the automatic promotion as a follow-up; returns
        that follow-up (None when the release goes nowhere next), for the runner to carry out at once.
        `follows`: whether a next stage deploys automatically, when the caller knows (else it is looked up);
        the follow-up decides again what to promote, so only its being recorded depends on it.

        The follow-up is not enqueued: the runner carries it out right after this commits, in the same
        process, and the reconciler re-drives it after GITOPS_WORKER_LOST_AFTER if the runner died first.
        Lock order: the Target row first, then the run, then the audit chain; one transaction, no savepoint."""
        from pipelines.models import FollowUp

        follows = self.next_stage() is not None if follows is None else follows
        self._check_transition(Status.SUCCEEDED)
        with transaction.atomic():
            # What now runs there is written with the lease's release: one UPDATE of the Target row.
            self._change_status(Status.SUCCEEDED, by=None, details=None, fields={"exit_code": 0},
                                target_fields={"current_release": self.release})
            if drift_steps(self.release, self.environment):
                # Is what was just deployed what runs there? Asked at once (pipelines/models/drift.py).
                DriftCheck.objects.queue_for(self.repository, self.environment, reason=f"after deployment #{self.pk}")
            if not follows:
                return None
            return FollowUp.objects.schedule(PROMOTE_AFTER_SUCCESS, deployment=self, enqueue=False,
                                             delay=settings.GITOPS_WORKER_LOST_AFTER)

    def next_stage(self):
        """Where a success of this deployment may promote its release automatically, or None: the next stage
        of the lifecycle that its file names, if that one deploys automatically; never after a rollback,
        which stays put. Whether that stage takes the release's version is decided when promoting, so that
        a refusal is recorded with its reason (pipelines/promotion.py)."""
        if self.trigger == self.Trigger.ROLLBACK:
            return None
        stages = self.release.stages()
        here = next((n for n, stage in enumerate(stages) if stage.environment_id == self.environment_id), None)
        if here is None or here + 1 >= len(stages):
            return None
        following = stages[here + 1]
        return following if following.auto_deploy else None

    def _queue_stale_previews(self, held, outcome):
        """Run again the preview of each deployment in `held` whose latest one started before this run ended
        (one still queued will see it); approvals given on the earlier preview stop counting."""
        from pipelines.models import Preview

        for deployment in held:
            latest = Preview.objects.latest_for(deployment)
            if latest is None or latest.status == Preview.Status.QUEUED:
                continue
            reason = (f"{self.release.version} (deployment #{self.pk}) {outcome} on {self.environment} after "
                      f"preview #{latest.number} started, having run a step there, so what it showed is out of date.")
            Preview.objects.queue_for(deployment, reason=reason)

    def beat(self):
        """Record that the runner is alive and renew the lease of its target. True means stop: a cancel was
        asked for, or the deployment is no longer running or no longer holds its target (the reconciler
        gave it up as lost, say), so its step must not go on. Raises on a database error: the caller
        retries at the next beat.

        Separate statements, each its own transaction: no lock is held across them, so a beat cannot take
        part in a deadlock with a transition (which locks the Target first)."""
        from pipelines.models import Target

        alive = Deployment.objects.filter(pk=self.pk, status=Status.RUNNING).update(heartbeat_at=Now())
        if alive != 1:
            return True
        # Renewed while a cancel is carried out too: the run still owns its target until its step is gone.
        renewed = Target.objects.filter(repository=self.repository_id, environment=self.environment_id).filter(
            Q(lease_holder=self.pk) | Q(lease_holder__isnull=True)
        ).update(lease_holder=self.pk, lease_expires_at=self._lease_end())
        if renewed != 1:
            return True
        return Deployment.objects.filter(pk=self.pk, cancel_requested_at__isnull=False).exists()

    # --- the target's lease ------------------------------------------------------------------------------

    def lock_target(self):
        """Lock (creating if need be) the Target row of this deployment; every transaction that changes a
        running deployment takes it first."""
        from pipelines.models import Target

        mine = Target.objects.select_for_update().filter(repository=self.repository_id, environment=self.environment_id)
        target = mine.first()
        if target is None:
            Target.objects.for_pair(self.repository, self.environment)
            target = mine.get()
        return target

    def _let_go_of_target(self, **also):
        """One UPDATE of this deployment's Target row, which takes the row's lock: the lease is let go of if
        this deployment holds it (only its own target is ever leased to a deployment: claim, beat), and
        `also` is written."""
        from pipelines.models import Target

        mine = Q(lease_holder=self.pk)
        updated = Target.objects.filter(repository=self.repository_id, environment=self.environment_id).update(
            lease_holder=Case(When(mine, then=None), default=F("lease_holder")),
            lease_expires_at=Case(When(mine, then=None), default=F("lease_expires_at")), **also)
        if not updated:  # no row yet (a run started without a claim, as tests do): made, then written
            self.lock_target()
            self._let_go_of_target(**also)

    @staticmethod
    def _lease_end():
        return now_plus(settings.GITOPS_WORKER_LOST_AFTER)

    # --- log -----------------------------------------------------------------------------------------

    def append_log(self, text, *, seq=None):
        """FencedRun.append_log, with known secret values masked here too (pipelines/masking.py): whatever
        writes a deployment's log, a secret of its environment never reaches the database."""
        from pipelines import masking

        if getattr(self, "_log_secrets", None) is None:
            self._log_secrets = masking.secrets_for(self)
        return super().append_log(masking.mask(text, self._log_secrets), seq=seq)

    def _log_chunk(self, seq, text):
        return DeploymentLogChunk.of(self, seq, text)

    def log_tail(self, limit):
        """What the deployment page shows of the log, read without reading all of a long one:
        (chunks as run_log.tail gives them, how many earlier lines it leaves out, whether the log is unmarked).

        The newest chunks are read first, in growing batches, until they hold more than `limit` lines; of the
        chunks before them only those holding a step's line are read (run_log.tail keeps just those lines), and
        the rest are only counted, by the line counts stored with them. A log of fewer than LOG_TAIL_BATCH
        chunks, as most are, costs one query."""
        chunks = self.log_chunks.values_list("seq", "text", "created_at")
        newest, lines, batch = [], 0, LOG_TAIL_BATCH
        while True:
            read = list((chunks.filter(seq__lt=newest[-1][0]) if newest else chunks).order_by("-seq")[:batch])
            newest += read
            lines += sum(text.count("\n") for _, text, _ in read)
            if len(read) < batch:  # the whole log is read
                newest.reverse()
                shown, hidden = run_log.tail(newest, limit)
                return shown, hidden, run_log.is_unmarked(newest)
            if lines > limit:
                break
            batch *= 4
        newest.reverse()
        earlier = chunks.filter(seq__lt=newest[0][0])
        with_steps = list(earlier.filter(has_step_lines=True).order_by("seq"))
        left_out = earlier.filter(has_step_lines=False).aggregate(lines=Sum("line_count"))["lines"] or 0
        shown, hidden = run_log.tail(with_steps + newest, limit)
        return shown, hidden + left_out, run_log.is_unmarked(with_steps + newest)


# The deployment page reads the newest chunks of a log in batches of this many, then four times as many, ...
LOG_TAIL_BATCH = 64


class DeploymentLogChunk(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    # Known when the chunk is stored, so that the page of a long log reads its tail, the chunks with step
    # lines and these counts, not the whole text (Deployment.log_tail).
    line_count = models.PositiveIntegerField(default=0)
    has_step_lines = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "seq"], name="unique_log_chunk_seq")]

    @classmethod
    def of(cls, deployment, seq, text):
        return cls(deployment=deployment, seq=seq, text=text, line_count=text.count("\n"),
                   has_step_lines=run_log.has_step_lines(text))
