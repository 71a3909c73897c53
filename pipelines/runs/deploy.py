"""The deploy kind: a release's `steps` for an environment, in a checkout of its commit, with the environment's
variables and secrets, holding its target's lease (Deployment.claim) so no two runs of a target overlap; then
its `verify:` steps, if any: the deployment succeeds only once they pass.

Before the first step it refuses, in words, what must not run: a preview that is not what was approved
(Preview.objects.to_apply), a release blocked since it was let through, a stage whose required checks no
longer pass. When it stops running, whatever the outcome, the next deployment queued for the target is woken
(Deployment.transition)."""

import shutil
import tempfile
from pathlib import Path
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, Subquery

from pipelines import git, hooks, masking
from pipelines.models import Check, Deployment, EnvironmentSecret, FollowUp, Preview, Release, Stage
from pipelines.models.followup import PROMOTE_AFTER_SUCCESS
from pipelines.queues import DEPLOY_QUEUE
from pipelines.secrets import SecretUnreadable

from . import build as build_kind
from . import preview as preview_kind
from .registry import Kind
from .steps import hand_over, step_account, step_environment


def may_start(deployment):
    """Held (a freeze window): it stays queued, and the reconciler wakes it when free."""
    return not hooks.hold_reason(deployment)


def execute(context):
    deployment, log = context.run, context.log
    spec = deployment.release.pipeline.environments[deployment.environment.name]
    # Fail closed: what is applied must be what was approved (pipelines/models/preview.py). Only an environment
    # with preview steps has previews.
    preview = None
    if spec.preview:
        preview, refusal = context.read("reading its preview", lambda: Preview.objects.to_apply(deployment))
        if refusal:
            return context.fail(f"Not applied: {refusal}")
    # The last check before the first step: a release blocked, or whose required checks stopped passing, since
    # this deployment was let through never runs.
    check = context.read("reading its release's block", lambda: start_check(deployment))
    if check.refusal:
        return context.cancel(check.refusal)
    try:  # once per run, before any output
        secrets = context.read("reading its secrets",
                               lambda: EnvironmentSecret.objects.values_for(deployment.environment)) if check.has_secrets else {}
    except SecretUnreadable as exc:
        return context.fail(str(exc))  # names the secret, never its value
    log.mask_also(secrets.values())
    replaced = sorted(set(secrets) & set(spec.variables))
    if replaced:  # said in the log, so a file variable that seems ignored is explained
        log.write(f"==> the environment's secrets replace the pipeline file's variables {', '.join(replaced)}\n")
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"deployment-{deployment.pk}-", dir=settings.GITOPS_WORK_DIR))
    built = None
    try:
        account = step_account()
        git.materialise(deployment.repository, deployment.release.commit_sha, workdir)
        environment = step_environment(deployment, spec.variables, workdir, account, secrets=secrets)
        # What the release's build left: its outputs as GITOPS_OUTPUT_*, its artifacts unpacked afresh.
        built = context.read("reading its build", lambda: build_kind.hand_to_deployment(deployment, environment))
        # What its approved preview left (a saved plan), on top: what was approved is what is applied.
        built = preview_kind.hand_to_deployment(deployment, preview, environment, built, log)
        if account is not None:
            hand_over(workdir, account)
            if built is not None:
                hand_over(built, account)
        shared, total = (built,) if built else (), len(spec.steps) + len(spec.verify)
        if not context.steps(spec.steps, workdir, environment, account, shared=shared, total=total):
            return
        if spec.verify and not verify(context, spec, workdir, environment, account, shared, total):
            return
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if built is not None:
            shutil.rmtree(built, ignore_errors=True)
    context.succeed(lambda: succeed(deployment, check))


def succeed(deployment, check):
    """Record the success. Where the stage has a soak time, the promotion to the next stage waits that long: its
    follow-up is due then (the reconciler carries it out, and pipelines/promotion.py checks again that the
    release is still verified there), so none is returned to carry out at once."""
    if not (check.promotes_next and check.soak):
        return deployment.succeed(follows=check.promotes_next)
    with transaction.atomic():
        deployment.succeed(follows=False)
        FollowUp.objects.schedule(PROMOTE_AFTER_SUCCESS, deployment=deployment, enqueue=False,
                                  delay=check.soak.total_seconds())
    return None


def verify(context, spec, workdir, environment, account, shared, total):
    """The environment's verify steps, after its steps succeeded: the same checkout, variables, secrets and
    build, plus GITOPS_VERIFY=1; numbered after the steps in the log, so the page shows them as their own
    section. True when all passed; a failure names its step as a verify step."""
    names = ", ".join(step.name for step in spec.verify)
    context.log.write(f"==> Verifying: {names} (GITOPS_VERIFY=1)\n")
    return context.steps(spec.verify, workdir, {**environment, "GITOPS_VERIFY": "1"}, account, shared=shared,
                         noun="Verify step", first=len(spec.steps) + 1, total=total)


class StartCheck(NamedTuple):
    refusal: str  # why the deployment must not start now, in words, or ""
    has_secrets: bool  # whether its environment has secrets to read
    promotes_next: bool  # whether the next stage of its road deploys automatically after a success
    soak: timedelta | None = None  # how long a success must stay verified before that (its stage's soak time)


def start_check(deployment):
    """What the run must know before its first step, in one query on the path every deployment takes: the
    release's block, read afresh; its stage's rule on required checks (they may have stopped passing since the
    promotion: CI reported a failure); whether the environment has secrets; and whether a success would go on
    to an automatic next stage (Deployment.next_stage, asked here rather than after the steps)."""
    lifecycle, names = deployment.repository.lifecycle_id, deployment.release.pipeline.names()
    stage = Stage.objects.filter(lifecycle_id=lifecycle, environment_id=deployment.environment_id)
    following = Stage.objects.filter(lifecycle_id=lifecycle, environment__name__in=names,
                                     position__gt=Subquery(stage.values("position")[:1])).order_by("position")
    blocked, reason, checks_required, has_secrets, next_auto, soak = Release.objects.filter(
        pk=deployment.release_id).annotate(
        checks_required=Subquery(stage.values("requires_passing_checks")[:1]),
        has_secrets=Exists(EnvironmentSecret.objects.filter(environment_id=deployment.environment_id)),
        next_auto=Subquery(following.values("auto_deploy")[:1]),
        soak=Subquery(stage.values("soak_time")[:1]),
    ).values_list("blocked", "blocked_reason", "checks_required", "has_secrets", "next_auto", "soak").get()
    promotes_next = bool(next_auto) and deployment.trigger != Deployment.Trigger.ROLLBACK \
        and deployment.environment.name in names
    if blocked:
        return StartCheck(f"Not run: {deployment.release.version} is blocked ({reason}).", has_secrets, promotes_next)
    if checks_required:
        refusal = Check.objects.refusal_for(deployment.release)
        if refusal:
            return StartCheck(f"Not run: {deployment.environment} requires passing checks and {refusal}.",
                              has_secrets, promotes_next)
    return StartCheck("", has_secrets, promotes_next, soak)


KIND = Kind(
    name="deployment", model=Deployment, queue=DEPLOY_QUEUE, execute=execute,
    related=("release__repository", "environment", "repository", "previous_release"),
    log_secrets=masking.secrets_for, may_start=may_start,
)
