"""The release page's road: one StageStep per stage of the repository's lifecycle that this release takes
(where it stands there, since when, the deployment), and which direct deployments make sense.

Built from rows the view loads once (the release's deployments, the repository's targets), so the page
makes the same number of queries however many stages and deployments there are.

Why a release was not promoted automatically is derived from the rules, not stored: each stage's version
rule (Stage.version_refusal), and the order a poll promotes by (a newer version recorded before it)."""

from dataclasses import dataclass

from pipelines.models import Deployment, Repository
from pipelines.versions import NEWEST_FIRST, late_tag_refusal


@dataclass
class StageStep:
    stage: object  # a Stage
    deployment: Deployment | None  # this release's latest deployment there
    current_release: object  # the Release running there now, or None
    runs_here: bool  # this release is what runs there now
    version_refusal: str = ""  # why the stage does not take this release automatically, or ""

    @property
    def environment(self):
        return self.stage.environment

    @property
    def state(self):
        """A word for the stepper: the latest deployment's status; "running here" once it is what runs there."""
        if self.deployment is not None and not self.deployment.is_finished:
            return self.deployment.status
        if self.runs_here:
            return "succeeded"
        return self.deployment.status if self.deployment is not None else "not_yet"

    @property
    def label(self):
        if self.deployment is not None and not self.deployment.is_finished:
            return self.deployment.get_status_display()
        if self.runs_here:
            return "Runs here"
        if self.deployment is not None:
            return self.deployment.get_status_display()
        return "Not yet"

    @property
    def when(self):
        if self.deployment is None:
            return None
        return self.deployment.finished_at or self.deployment.started_at or self.deployment.created_at

    @property
    def deploy_refusal(self):
        """Why deploying this release here again makes no sense now, in words; None when it does."""
        if self.deployment is not None and not self.deployment.is_finished:
            return f"deployment #{self.deployment.pk} is {self.deployment.get_status_display().lower()}"
        if self.runs_here:
            return "runs there now"
        return None

    @property
    def replaces(self):
        """What a deployment here replaces, in words, for the confirmation of a Deploy or a Rollback."""
        if self.current_release is None:
            return f"nothing runs in {self.environment.name} yet"
        return f"it replaces {self.current_release.version}, which runs in {self.environment.name} now"


def stage_steps(release, stages, deployments, targets):
    """StageSteps of `release` along `stages`; `deployments`: its deployments, newest first per environment;
    `targets`: the repository's Targets with their current releases."""
    latest = {}
    for deployment in deployments:
        latest.setdefault(deployment.environment_id, deployment)
    by_environment = {target.environment_id: target for target in targets}
    steps = []
    for stage in stages:
        target = by_environment.get(stage.environment_id)
        current = target.current_release if target is not None else None
        steps.append(StageStep(stage=stage, deployment=latest.get(stage.environment_id), current_release=current,
                               runs_here=current is not None and current.pk == release.pk,
                               version_refusal=stage.version_refusal(release)))
    return steps


def not_promoted_when_recorded(release):
    """Why no poll promoted `release` when it was recorded, in words, or "": a newer version was recorded
    before it (what pipelines/tracking.py checks, and records in the audit log). Not in commits mode, where
    the branch head is what is promoted."""
    if release.repository.release_from != Repository.ReleaseFrom.TAGS:
        return ""
    newer = (release.repository.releases.filter(version_key__gt=release.version_key, pk__lt=release.pk)
             .order_by(*NEWEST_FIRST).only("version").first())
    return late_tag_refusal(newer) if newer is not None else ""
