from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from .audit import AuditEvent
from .followup import PROMOTE_REEVALUATE, FollowUp


class Environment(models.Model):
    """A real place to deploy to, shared by all repositories; freeze windows belong to it. Which
    repositories deploy here, in what order and under which rules is their lifecycle's (Stage)."""

    name = models.SlugField(max_length=100, unique=True)
    position = models.PositiveIntegerField(unique=True, help_text="Where it is listed among environments: lower comes first.")

    class Meta:
        ordering = ["position", "name"]

    def __str__(self):
        return self.name


class TargetQuerySet(models.QuerySet):
    def for_pair(self, repository, environment):
        target, _ = self.get_or_create(repository=repository, environment=environment)
        return target


class Target(models.Model):
    """What runs for one repository in one environment. Keeps the dashboard to one cheap query."""

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.CASCADE, related_name="targets")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="targets")
    current_release = models.ForeignKey("pipelines.Release", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    last_deployment = models.ForeignKey("pipelines.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    auto_deploy_paused = models.BooleanField(default=False)
    paused_reason = models.TextField(blank=True)
    paused_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    paused_at = models.DateTimeField(null=True, blank=True)
    # The lease of the run that owns this target now. The next run starts only once the holder let go
    # or its lease expired, which is after the holder's runner stopped its step by itself (fencing).
    lease_holder = models.ForeignKey("pipelines.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    objects = TargetQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "environment"], name="one_target_per_pair")]
        # The dashboard's "paused" filter and count read only the few paused targets.
        indexes = [models.Index(fields=["repository"], condition=models.Q(auto_deploy_paused=True), name="target_paused")]

    def __str__(self):
        return f"{self.repository} → {self.environment}"

    def pause(self, *, by, reason):
        with transaction.atomic():
            Target.objects.filter(pk=self.pk).update(
                auto_deploy_paused=True, paused_reason=reason, paused_by=by, paused_at=timezone.now()
            )
            AuditEvent.objects.record(
                action="target.paused", actor=by, obj=self, repository=self.repository,
                environment=self.environment, details={"reason": reason},
            )
        self.refresh_from_db()

    def resume(self, *, by):
        with transaction.atomic():
            Target.objects.filter(pk=self.pk).update(auto_deploy_paused=False, paused_reason="", paused_by=None, paused_at=None)
            AuditEvent.objects.record(
                action="target.resumed", actor=by, obj=self, repository=self.repository, environment=self.environment
            )
            # What arrived while it was paused is promoted now, if it is the newest.
            FollowUp.objects.schedule(PROMOTE_REEVALUATE, repository=self.repository,
                                      payload={"environment": self.environment_id, "because": "automatic deployment was resumed"})
        self.refresh_from_db()
