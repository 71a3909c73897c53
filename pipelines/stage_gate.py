"""The pre-production gate: a release reaches a stage by hand only after it succeeded in the stage before
(of its repository's lifecycle, among those its pipeline file names).

Every manual deployment passes it (Deploy, Retry, and approvals' Promote); automatic promotion needs no
gate, since it follows a success. Skipping it takes the `approvals.override_gate` permission and a written
reason, which approvals audits (approvals/gate_override.py): pipelines only says why the gate is closed."""

from django.db.models import F

from pipelines.models import Deployment
from pipelines.promotion import PromotionError

FINISHED = (Deployment.Status.SUCCEEDED, Deployment.Status.FAILED)


class GateClosed(PromotionError):
    pass


def environment_before(release, environment):
    """The environment of the stage just before `environment` on the release's road, or None."""
    stages = release.stages()
    here = next((n for n, stage in enumerate(stages) if stage.environment_id == environment.pk), None)
    return stages[here - 1].environment if here else None


def gate_reason(release, environment):
    """Why the gate is closed for this release and environment, in words; None when it is open.

    Open when the release's latest run that succeeded or failed in the environment before succeeded: a
    release that failed there after an earlier success (a redeploy that broke) must pass again."""
    before = environment_before(release, environment)
    if before is None:
        return None
    latest = (
        Deployment.objects.filter(release=release, environment=before, status__in=FINISHED)
        .order_by(F("finished_at").desc(nulls_last=True), "-id")
        .only("id", "status")
        .first()
    )
    if latest is None:
        return f"{release.version} has not succeeded in {before} yet; it must before it goes to {environment}."
    if latest.status == Deployment.Status.FAILED:
        return (
            f"{release.version} failed in {before} (deployment #{latest.pk}); "
            f"it must succeed there before it goes to {environment}."
        )
    return None


def check(release, environment):
    """Raise GateClosed, saying why and how to skip it, unless the gate is open."""
    reason = gate_reason(release, environment)
    if reason:
        raise GateClosed(f"{reason} Someone allowed to override the gate may skip it with a written reason.")
