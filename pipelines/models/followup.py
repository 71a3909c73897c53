"""Follow-ups: work that must happen after a commit, recorded in the transaction that causes it.

Waking a worker, the automatic promotion to the next environment, opening a change request, mail: each
is a row written beside the change that needs it, so it lands with it or not at all. A job carries it
out (claimed with a compare-and-swap, retried with back-off); the reconciler re-drives what is left,
so neither a Redis outage nor a crash between commit and enqueue loses it. Handlers are idempotent:
a follow-up may run more than once, never zero times."""

from datetime import timedelta

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from . import wakeups

# Kinds that models schedule themselves (pipelines/followups.py carries them out; models import nothing above).
# Deployments stopped before they ran, for a reason their requesters must hear of (a blocked release, a newer
# approval): payload {"deployments": [ids], "reason": ...}. The upper layer closes their change requests and mails.
DEPLOYMENTS_STOPPED = "deployments.stopped"
# Something that promotion decides on changed (auto-deploy resumed, a release unblocked, a check passed, a
# lifecycle edited): make the decision again for the repository's stages (payload {"environment": id} for one).
PROMOTE_REEVALUATE = "promote.reevaluate"
# A deployment succeeded: promote its release to the next stage (payload none; the deployment is the row's).
PROMOTE_AFTER_SUCCESS = "promote.after_success"
# A build succeeded: promote its release into the first stage.
PROMOTE_NEW_RELEASE = "promote.new_release"
# A deployment failed in a stage that rolls back on failure: deploy again what ran there before (pipelines/rollback.py).
ROLLBACK_AFTER_FAILURE = "rollback.after_failure"
# A drift check found its target drifted where the stage corrects drift: deploy again what runs there
# (pipelines/drift_schedule.py; payload {"drift_check": id}).
CORRECT_DRIFT = "drift.correct"

CLAIM_SECONDS = 300  # a handler that takes longer is taken for dead and may run again
MAX_BACKOFF_SECONDS = 600


class FollowUpQuerySet(models.QuerySet):
    def schedule(self, kind, *, deployment=None, release=None, repository=None, payload=None, delay=0, enqueue=True):
        """Record a follow-up; call inside the transaction that causes it. Its job is enqueued on commit.

        With `enqueue=False` the caller carries it out itself right after the commit (no job, no fork),
        and the reconciler re-drives it once `delay` has passed if that attempt never happened."""
        follow_up = self.create(
            kind=kind, deployment=deployment, release=release, repository=repository, payload=payload or {},
            due_at=timezone.now() + timedelta(seconds=delay),
        )
        if enqueue:
            wakeups.ask("enqueue_follow_up", follow_up.pk)
        return follow_up

    def pending(self):
        return self.filter(done_at__isnull=True)

    def unclaimed(self, now):
        """Pending and not claimed by a live attempt."""
        return self.pending().filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))

    def due(self, now):
        """Pending, due, and not claimed by a live attempt."""
        return self.unclaimed(now).filter(due_at__lte=now)


class FollowUp(models.Model):
    kind = models.CharField(max_length=64)
    deployment = models.ForeignKey("pipelines.Deployment", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    release = models.ForeignKey("pipelines.Release", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    repository = models.ForeignKey("pipelines.Repository", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    due_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    done_at = models.DateTimeField(null=True, blank=True)

    objects = FollowUpQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["done_at", "due_at"], name="followup_pending_due")]

    def __str__(self):
        return f"follow-up #{self.pk} {self.kind}"

    def claim(self, now=None, *, before_due=False):
        """Take this follow-up for one attempt. False when it is done, not due (unless `before_due`: the
        process that recorded it carries it out at once), or another attempt holds it."""
        now = now or timezone.now()
        claimable = FollowUp.objects.unclaimed(now) if before_due else FollowUp.objects.due(now)
        claimed = (
            claimable.filter(pk=self.pk)
            .update(claimed_until=now + timedelta(seconds=CLAIM_SECONDS), attempts=F("attempts") + 1)
        )
        if claimed:
            self.refresh_from_db()
        return claimed == 1

    def complete(self):
        FollowUp.objects.filter(pk=self.pk).update(done_at=timezone.now(), claimed_until=None, last_error="")

    def retry_later(self, error):
        """Back off exponentially (5 s, 10 s, 20 s … at most 10 min) and let the reconciler pick it up."""
        delay = min(MAX_BACKOFF_SECONDS, 5 * 2 ** max(0, self.attempts - 1))
        FollowUp.objects.filter(pk=self.pk).update(
            claimed_until=None, last_error=str(error)[:2000], due_at=timezone.now() + timedelta(seconds=delay)
        )
