"""Moving releases through the stages of their repository's lifecycle: what deploys where next, and who
is superseded.

Lock order, the same in every audited transaction: the Target row, then the Deployment rows, then the
audit chain (AuditEvent.record takes PostgreSQL's audit lock and holds it to the end of the transaction).
A transaction that locked a row after recording an event could wait on one that waits for the audit lock."""

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from pipelines import followups
from pipelines.models import AuditEvent, Build, Check, Deployment, FollowUp, Preview, Stage, Target
from pipelines.models.followup import CLAIM_SECONDS, PROMOTE_AFTER_SUCCESS

# The soak's end and the follow-up's due time are read from the same clock microseconds apart: within this, due.
SOAK_SLACK = timedelta(seconds=1)


class PromotionError(Exception):
    """A promotion that cannot happen; the message says why in words."""


def stage_for(release, environment):
    """The stage through which the release's repository deploys to `environment`; PromotionError if none."""
    stage = Stage.objects.for_target(release.repository, environment)
    if stage is None:
        raise PromotionError(f"{release.repository} follows the lifecycle {release.repository.lifecycle}, which does "
                             f"not deploy to {environment}.")
    return stage


def promote(release, environment, *, by, reason="", trigger=Deployment.Trigger.MANUAL):
    """Create the deployment of `release` to `environment` and return it.

    It waits in `awaiting_approval` where the repository's lifecycle holds deployments to that environment
    for approval (with its preview queued, when the pipeline file has `preview:` steps there), otherwise it
    is queued
    and a worker is woken on commit. Older deployments still waiting for the same target are
    cancelled as superseded."""
    if release.error or release.pipeline is None:
        raise PromotionError(f"{release} cannot be deployed: {release.error or 'its pipeline file does not parse'}")
    if environment.name not in release.pipeline.environments:
        raise PromotionError(f"The pipeline file of {release} does not name the environment {environment.name!r}.")
    if release.blocked:
        raise PromotionError(f"{release} is blocked ({release.blocked_reason}); unblock it first.")
    refusal = build_refusal(release)
    if refusal:
        raise PromotionError(f"{release} cannot be deployed: {refusal}.")
    stage = stage_for(release, environment)
    refusal = checks_refusal(release, stage)
    if refusal:
        raise PromotionError(f"{release} cannot be deployed to {environment}: {refusal}.")
    held = stage.requires_approval
    with transaction.atomic():
        target = Target.objects.for_pair(release.repository, environment)
        # Lock the target so that two promotions of one target never both survive supersession.
        target = Target.objects.select_for_update().get(pk=target.pk)
        status = Deployment.Status.AWAITING_APPROVAL if held else Deployment.Status.QUEUED
        # Lock what this promotion may supersede before the first audit event (see the lock order above).
        waiting = list(
            Deployment.objects.for_target(release.repository, environment).active().select_for_update()
            .select_related("release", "environment", "repository")
        )
        duplicate = next((d for d in waiting if d.release_id == release.pk), None)
        if duplicate is not None:
            # A double click, or two people at once: the release is already on its way to this target.
            raise PromotionError(f"{release.version} is already {duplicate.get_status_display().lower()} for "
                                 f"{environment} (deployment #{duplicate.pk}); nothing new was started.")
        if trigger == Deployment.Trigger.ROLLBACK:
            # Otherwise the next release would deploy straight over the rollback. An automatic one says why.
            paused_because = (f"{reason} Resume to deploy new releases automatically."
                              if reason.startswith(Deployment.AUTOMATIC_ROLLBACK) else
                              f"Rollback to {release.version} (deployment requested by "
                              f"{by.get_username() if by else 'the portal'}); resume to deploy new releases automatically.")
            target.pause(by=by, reason=paused_because)
        deployment = Deployment.objects.create(
            release=release,
            environment=environment,
            repository=release.repository,
            previous_release=target.current_release,
            status=status,
            trigger=trigger,
            triggered_by=by,
            reason=reason,
        )
        if not held:
            Deployment.objects.filter(pk=deployment.pk).update(queued_at=deployment.created_at)
        AuditEvent.objects.record(
            action="deployment.created",
            actor=by,
            obj=deployment,
            repository=release.repository,
            environment=environment,
            details={"release": release.version, "commit": release.commit_sha, "trigger": trigger,
                     "status": deployment.status, "reason": reason},
        )
        # Only what waits in the same way: a new candidate awaiting approval must not cancel an older
        # deployment that was already approved and is queued.
        for older in waiting:
            if older.status == status:
                older.supersede(by=by, newer=deployment)
        Target.objects.filter(pk=target.pk).update(last_deployment=deployment)
        if held:
            # The upper layer (approvals) opens the change request from this follow-up, with git work
            # that must not run inside this transaction or a web request.
            FollowUp.objects.schedule(followups.DEPLOYMENT_HELD, deployment=deployment)
            if release.pipeline.environments[environment.name].preview:
                # What the approvers will look at: it runs while they wait (see pipelines/runs/preview.py).
                Preview.objects.queue_for(deployment, by=by, reason=f"{release.version} is held for approval in {environment}.")
        else:
            deployment.wake()
    return deployment


def checks_refusal(release, stage):
    """Why the checks of the release's commit keep it out of `stage`, in words, or "" (the stage does not
    require passing checks, or they passed: on any branch or pull request with that same commit)."""
    if not stage.requires_passing_checks:
        return ""
    refusal = Check.objects.refusal_for(release)
    return f"{stage.environment} requires passing checks and {refusal}" if refusal else ""


def build_refusal(release):
    """Why the release's build keeps it from deploying, in words, or "" (it has no build, or it succeeded)."""
    if release.pipeline is None or release.pipeline.build is None:
        return ""
    build = Build.objects.filter(release=release).first()
    if build is None:
        return "its pipeline file has a build section and it has not been built (only the newest release of a poll is built)"
    return build.refusal()


def rollback(release, environment, *, by, reason=""):
    """Deploy again a release that succeeded in this environment before, under the same policy."""
    ran_there = Deployment.objects.filter(release=release, environment=environment, status=Deployment.Status.SUCCEEDED)
    if not ran_there.exists():
        raise PromotionError(f"{release.version} never succeeded in {environment}; a rollback goes to a release that ran there.")
    return promote(release, environment, by=by, reason=reason, trigger=Deployment.Trigger.ROLLBACK)


def retry(deployment, *, by):
    """Run a failed or cancelled deployment again, unless something newer already went to its target."""
    if deployment.status not in (Deployment.Status.FAILED, Deployment.Status.CANCELLED):
        status = deployment.get_status_display().lower()
        raise PromotionError(f"Deployment #{deployment.pk} is {status}; only a failed or cancelled one can be retried.")
    newer = Deployment.objects.for_target(deployment.repository, deployment.environment).filter(pk__gt=deployment.pk).first()
    if newer is not None:
        raise PromotionError(f"Deployment #{newer.pk} of this target came after #{deployment.pk}; nothing was retried.")
    # A retried rollback is still a rollback: it must not move the old release on to the next environment.
    trigger = Deployment.Trigger.ROLLBACK if deployment.trigger == Deployment.Trigger.ROLLBACK else Deployment.Trigger.RETRY
    return promote(deployment.release, deployment.environment, by=by, trigger=trigger)


def _promote_automatically(release, stage, since=None):
    """Promote `release` to the environment of `stage` if the stage deploys automatically, takes that
    version (Stage.version_refusal) and is not paused there; a skip is recorded with its reason.

    `since` makes it idempotent for follow-ups, which may run twice: a deployment of this release to
    this environment created at or after `since` is the one a previous attempt made."""
    environment = stage.environment
    if not stage.auto_deploy or release.blocked or release.error:
        return None
    if since is not None:
        earlier = Deployment.objects.filter(release=release, environment=environment, created_at__gte=since).first()
        if earlier is not None:
            return earlier
    refusal = stage.version_refusal(release)
    if refusal:
        # Only automatic promotion obeys the rule: a person may still deploy the release by hand (warned).
        _skipped(release, environment, refusal)
        return None
    target = Target.objects.for_pair(release.repository, environment)
    if target.auto_deploy_paused:
        _skipped(release, environment, f"automatic deployment is paused: {target.paused_reason}")
        return None
    try:
        return promote(release, environment, by=None, trigger=Deployment.Trigger.AUTO)
    except PromotionError as exc:
        # Already on its way there (a person was quicker): nothing to do, and nothing to retry.
        _skipped(release, environment, str(exc))
        return None


def _skipped(release, environment, reason):
    """Record that the automatic promotion of `release` to `environment` did not happen, and why."""
    AuditEvent.objects.record(
        action="promotion.skipped", obj=release, repository=release.repository, environment=environment,
        details={"release": release.version, "reason": reason},
    )


def on_release_recorded(release, since=None):
    """A new release deploys to the first stage of its lifecycle that its pipeline file names."""
    stages = release.stages()
    return _promote_automatically(release, stages[0], since) if stages else None


def on_deployment_succeeded(deployment, since=None):
    """Success moves the release on to the next stage its file names; a rollback stays put."""
    stage = deployment.next_stage()
    return _promote_automatically(deployment.release, stage, since) if stage else None


def after_success(follow_up):
    """The PROMOTE_AFTER_SUCCESS follow-up of a deployment. Where its stage has a soak time, the release moves
    on only once it has stayed verified there that long (pipelines/runs/deploy.py schedules the follow-up due
    then): an attempt before that (carried out at once, or the soak time raised since) schedules it again for
    the soak's end; a release no longer running there, or whose target failed a deployment since, goes no
    further (recorded as a skipped promotion)."""
    deployment = follow_up.deployment
    stage = deployment.next_stage()
    if stage is None:
        return None
    here = Stage.objects.for_target(deployment.repository, deployment.environment)
    soak = here.soak_time if here is not None else timedelta(0)
    if soak:
        refusal = _no_longer_verified(deployment)
        if refusal:
            _skipped(deployment.release, stage.environment, refusal)
            return None
        since = follow_up.payload.get("verified_since")
        verified_since = datetime.fromisoformat(since) if since else follow_up.created_at
        # When this attempt was claimed (FollowUp.claim): the clock it was carried out by, a test's included.
        now = follow_up.claimed_until - timedelta(seconds=CLAIM_SECONDS)
        if now + SOAK_SLACK < verified_since + soak:
            FollowUp.objects.schedule(
                PROMOTE_AFTER_SUCCESS, deployment=deployment, enqueue=False,
                delay=(verified_since + soak - timezone.now()).total_seconds(),
                payload={"verified_since": verified_since.isoformat()})
            return None
    return _promote_automatically(deployment.release, stage, follow_up.created_at)


def _no_longer_verified(deployment):
    """Why the release of `deployment` no longer counts as verified on its target, in words, or ""."""
    target = Target.objects.filter(repository=deployment.repository, environment=deployment.environment).first()
    if target is None or target.current_release_id != deployment.release_id:
        return f"{deployment.environment} no longer runs {deployment.release.version}"
    failed = Deployment.objects.for_target(deployment.repository, deployment.environment).filter(
        pk__gt=deployment.pk, status=Deployment.Status.FAILED).first()
    if failed is not None:
        return f"deployment #{failed.pk} to {deployment.environment} failed during the soak time"
    return ""


# How many of a repository's newest releases the re-evaluation looks at per stage: the candidate is the newest
# one a stage may take, and anything further down is older than what such a stage already took.
REEVALUATE_DEPTH = 50


def reevaluate(repository, *, environment_ids=None, since=None):
    """Make the automatic promotion decision again for the stages of `repository` (those of
    `environment_ids` only, when given): each stage that deploys automatically takes the newest release it may
    take now — valid, unblocked, named by its file, arrived there along its road (the first stage of that road,
    or a success in the stage before) — if that release is newer than what the target runs and has not been
    tried there (one that failed or was rejected there is left to a person; one cancelled, by a block say, was
    never tried). Never goes back to an older release. Returns the deployments it created.

    Called through the PROMOTE_REEVALUATE follow-up (resume, unblock, a passing check, a lifecycle edit);
    `since` makes a repeated attempt return what the first one created (see _promote_automatically)."""
    from pipelines.models import Release

    created = []
    releases = list(Release.objects.filter(repository=repository, error="", blocked=False)
                    .order_by("-version_key", "-id")[:REEVALUATE_DEPTH])
    for stage in Stage.objects.of(repository):
        if not stage.auto_deploy or (environment_ids is not None and stage.environment_id not in environment_ids):
            continue
        candidate = _newest_arrived(releases, stage)
        if candidate is None or not _newer_than_current(candidate, repository, stage.environment):
            continue
        # Cancelled ones do not count: a block, a supersession or an expiry stopped them, not their outcome.
        tried = Deployment.objects.filter(release=candidate, environment=stage.environment).exclude(
            status=Deployment.Status.CANCELLED)
        if since is not None:
            tried = tried.filter(created_at__lt=since)  # what an earlier attempt of this follow-up created is ours
        if tried.exists():
            continue
        deployment = _promote_automatically(candidate, stage, since)
        if deployment is not None:
            created.append(deployment)
    return created


def _newest_arrived(releases, stage):
    """The newest of `releases` (newest first) that has reached `stage` on its road, or None."""
    for release in releases:
        if stage.version_refusal(release):
            continue  # the stage's version rule: an older release it takes may still be the one
        road = release.stages()
        here = next((n for n, s in enumerate(road) if s.pk == stage.pk), None)
        if here is None:
            continue
        if here == 0:
            return release
        before = road[here - 1]
        succeeded = Deployment.objects.filter(release=release, environment=before.environment,
                                              status=Deployment.Status.SUCCEEDED)
        if before.soak_time:  # arrived only once it stayed verified there for the soak time
            succeeded = succeeded.filter(finished_at__lte=timezone.now() - before.soak_time)
        if succeeded.exclude(trigger=Deployment.Trigger.ROLLBACK).exists():
            return release
    return None


def _newer_than_current(release, repository, environment):
    target = Target.objects.filter(repository=repository, environment=environment).select_related("current_release").first()
    current = target.current_release if target is not None else None
    return current is None or (release.version_key, release.pk) > (current.version_key, current.pk)

