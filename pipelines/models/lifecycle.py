"""Lifecycles: the road a repository's releases take, as an ordered list of stages.

An Environment is a real place (freeze windows belong to it) and is shared; a Stage puts one environment
into one lifecycle with that lifecycle's rules, so a small team's automatic production and a regulated
service's two-approver production coexist. `pipelines` knows only whether a stage holds its deployments
for approval; who may approve, and how many, is the upper layer's part of the stage (approvals.StagePolicy).
Which versions a stage takes is about promotion, so it is the stage's own (pipelines/versions.py reads them)."""

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import models

from pipelines import versions

DEFAULT_LIFECYCLE = "default"


class Lifecycle(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


def default_lifecycle_id():
    """The lifecycle a repository follows unless told otherwise: `default`, made on first use."""
    return Lifecycle.objects.get_or_create(name=DEFAULT_LIFECYCLE)[0].pk


class StageQuerySet(models.QuerySet):
    def of(self, repository):
        """The stages of the lifecycle this repository follows, in order, with their environments."""
        return self.filter(lifecycle_id=repository.lifecycle_id).select_related("environment").order_by("position")

    def for_target(self, repository, environment):
        """The stage through which `repository` deploys to `environment`, or None (not on its road)."""
        return self.filter(lifecycle_id=repository.lifecycle_id, environment=environment).first()


class Stage(models.Model):
    lifecycle = models.ForeignKey(Lifecycle, on_delete=models.CASCADE, related_name="stages")
    environment = models.ForeignKey("pipelines.Environment", on_delete=models.PROTECT, related_name="stages")
    position = models.PositiveIntegerField(help_text="Order of promotion within the lifecycle: lower comes first.")
    auto_deploy = models.BooleanField(
        default=True, help_text="Deploy here automatically once the stage before succeeded.")
    requires_approval = models.BooleanField(
        default=False, help_text="Deployments here wait for approval (the approval policy says by whom).")
    requires_passing_checks = models.BooleanField(
        default=False, help_text="Only releases whose commit passed its checks (the `checks:` steps) are promoted here.")
    # True by default, and for the stages an upgrade finds: a new rule must not stop what deployed before.
    take_prereleases = models.BooleanField(
        default=True, help_text="Promote pre-releases (2.0.0rc1, 2.0.0b1, 2.0.0.dev3) here automatically. "
                                "A person may still deploy one by hand.")
    drift_interval = models.DurationField(
        "drift interval", null=True, blank=True,
        help_text="Check this often that what runs here is what git says (the environment's `drift:` steps), e.g. "
                  "0:05:00. Empty: only after each deployment and on demand.")
    correct_drift = models.BooleanField(
        "correct drift", default=False,
        help_text="When a drift check finds this target drifted, deploy again the release that runs here (a drift "
                  "correction: where the stage holds for approval, it waits for one like any deployment).")
    rollback_on_failure = models.BooleanField(
        "roll back on failure", default=False,
        help_text="When a deployment fails here, deploy again the release that last succeeded here (a rollback: "
                  "where the stage holds for approval, its policy says whether it needs one). A rollback that "
                  "fails is not rolled back.")
    version_constraint = models.CharField(
        max_length=200, blank=True,
        help_text="Promote here automatically only versions that meet this PEP 440 constraint, e.g. >=2,<3 "
                  "(a tag that is no version never does). Empty: every version.")

    # Measured from the deployment's success (its verify steps passed): pipelines/promotion.py.
    soak_time = models.DurationField(
        default=timedelta(0), blank=True,
        help_text="How long a release must stay verified here before the next stage takes it automatically, "
                  "e.g. 1:00:00 for an hour (empty or 0: at once). A person may still deploy it there sooner.")

    objects = StageQuerySet.as_manager()

    class Meta:
        ordering = ["lifecycle", "position"]
        constraints = [
            models.UniqueConstraint(fields=["lifecycle", "environment"], name="one_stage_per_environment"),
            models.UniqueConstraint(fields=["lifecycle", "position"], name="one_stage_per_position"),
        ]

    def __str__(self):
        return f"{self.lifecycle} / {self.environment}"

    def clean(self):
        self.version_constraint = self.version_constraint.strip()
        error = versions.constraint_error(self.version_constraint)
        if error:
            raise ValidationError({"version_constraint": error})
        self.soak_time = self.soak_time or timedelta(0)  # left empty in the admin: none
        if self.soak_time < timedelta(0):
            raise ValidationError({"soak_time": "A soak time cannot be negative."})

    @property
    def version_rule(self):
        """Which versions the stage takes, for its heading ("no pre-releases · >=2,<3"); "" when all."""
        parts = [] if self.take_prereleases else ["no pre-releases"]
        if self.version_constraint:
            parts.append(self.version_constraint)
        return " · ".join(parts)

    def version_refusal(self, release):
        """Why this stage does not take `release` automatically ("not taken by production: pre-release"), or ""."""
        reason = versions.rule_refusal(release, take_prereleases=self.take_prereleases,
                                       constraint=self.version_constraint)
        return f"not taken by {self.environment}: {reason}" if reason else ""
