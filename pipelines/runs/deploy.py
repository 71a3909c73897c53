"""The deploy kind: a release's `steps` for an environment, in a checkout of its commit, with the environment's
variables and secrets, holding its target's lease (Deployment.claim) so no two runs of a target overlap.

Before the first step it refuses, in words, what must not run: a preview that is not what was approved
(Preview.objects.refusal_for), a release blocked since it was let through, a stage whose required checks no
longer pass. After it, whatever the outcome, the next deployment queued for the target is woken."""

import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Subquery

from pipelines import git, hooks, masking
from pipelines.models import Check, Deployment, EnvironmentSecret, Preview, Release, Stage
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
    try:  # once per run, before any output
        secrets = context.read("reading its secrets", lambda: EnvironmentSecret.objects.values_for(deployment.environment))
    except SecretUnreadable as exc:
        return context.fail(str(exc))  # names the secret, never its value
    log.mask_also(secrets.values())
    # Fail closed: what is applied must be what was approved (pipelines/models/preview.py).
    refusal = context.read("reading its preview", lambda: Preview.objects.refusal_for(deployment))
    if refusal:
        return context.fail(f"Not applied: {refusal}")
    # The last check before the first step: a release blocked, or whose required checks stopped passing, since
    # this deployment was let through never runs.
    reason = context.read("reading its release's block", lambda: refusal_to_start(deployment))
    if reason:
        return context.cancel(reason)
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
        built = context.read("reading its preview's artifacts",
                             lambda: preview_kind.hand_to_deployment(deployment, environment, built, log))
        if account is not None:
            hand_over(workdir, account)
            if built is not None:
                hand_over(built, account)
        if not context.steps(spec.steps, workdir, environment, account, shared=(built,) if built else ()):
            return
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if built is not None:
            shutil.rmtree(built, ignore_errors=True)
    context.succeed()


def refusal_to_start(deployment):
    """Why the deployment must not start now, in words, or "": its release is blocked, or its stage requires
    passing checks and they no longer pass (CI reported a failure after the promotion)."""
    # One query on the path every deployment takes: the release's block, read afresh, and its stage's rule.
    stage = Stage.objects.filter(lifecycle_id=deployment.repository.lifecycle_id, environment_id=deployment.environment_id)
    blocked, reason, checks_required = Release.objects.filter(pk=deployment.release_id).annotate(
        checks_required=Subquery(stage.values("requires_passing_checks")[:1])
    ).values_list("blocked", "blocked_reason", "checks_required").get()
    if blocked:
        return f"Not run: {deployment.release.version} is blocked ({reason})."
    if checks_required:
        refusal = Check.objects.refusal_for(deployment.release)
        if refusal:
            return f"Not run: {deployment.environment} requires passing checks and {refusal}."
    return ""


def wake_next_in_line(deployment):
    """Queued deployments of the same target waited for this one; wake the oldest."""
    following = (
        Deployment.objects.for_target(deployment.repository_id, deployment.environment_id)
        .filter(status=Deployment.Status.QUEUED)
        .order_by("created_at", "id")
        .first()
    )
    if following is not None:
        with transaction.atomic():
            following.wake()


KIND = Kind(
    name="deployment", model=Deployment, queue=DEPLOY_QUEUE, execute=execute,
    related=("release__repository", "environment", "repository", "previous_release"),
    log_secrets=masking.secrets_for, may_start=may_start, after=wake_next_in_line,
)
