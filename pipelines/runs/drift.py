"""The drift kind: the `drift:` steps of an environment, in a checkout of the release that runs there, with the
environment's variables and secrets (masked) and GITOPS_DRIFT=1. Exit 0 of every step: in sync; exit 2 of one:
drifted (as `terraform plan -detailed-exitcode`), the check's log is the drift report; anything else: the check
failed. It changes nothing, so it holds no lease; but it is never started while a deployment of the same target
runs (it stays queued: the reconciler wakes it again), and one that a deployment started during is not believed:
it is cancelled, saying so, and run again on what runs there now."""

import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from pipelines import git, masking
from pipelines.models import Deployment, DriftCheck, EnvironmentSecret
from pipelines.queues import DRIFT_QUEUE
from pipelines.secrets import SecretUnreadable

from .kernel import record
from .registry import Kind
from .steps import hand_over, scrubbed_environment, step_account

DRIFTED = 2


def _running_deployment(check, since=None):
    """A deployment of the check's target that runs now, or (with `since`) started since then; None if none."""
    deployments = Deployment.objects.for_target(check.repository_id, check.environment_id)
    if since is None:
        return deployments.filter(status=Deployment.Status.RUNNING).first()
    return deployments.filter(started_at__gte=since).order_by("started_at").first()


def may_start(check):
    return _running_deployment(check) is None


def execute(context):
    check, log = context.run, context.log
    release, environment = check.release, check.environment
    spec = release.pipeline.environments[environment.name]
    try:  # once, before any output
        secrets = context.read("reading its secrets", lambda: EnvironmentSecret.objects.values_for(environment))
    except SecretUnreadable as exc:
        return context.fail(str(exc))  # names the secret, never its value
    log.mask_also(secrets.values())
    log.write(f"==> is {check.repository} {release.version} in {environment} still what git says? ({check.reason})\n")
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"drift-{check.pk}-", dir=settings.GITOPS_WORK_DIR))
    try:
        account = step_account()
        git.materialise(check.repository, release.commit_sha, workdir)
        if account is not None:
            hand_over(workdir, account)
        environment_variables = scrubbed_environment(workdir, account, variables={**spec.variables, **secrets}, gitops={
            "GITOPS_REPOSITORY": check.repository.name, "GITOPS_ENVIRONMENT": environment.name,
            "GITOPS_VERSION": release.version, "GITOPS_COMMIT": release.commit_sha,
            "GITOPS_DRIFT": "1", "GITOPS_DRIFT_CHECK_ID": str(check.pk),
        })
        answer = context.steps(spec.drift, workdir, environment_variables, account, settles=(DRIFTED,))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if answer is False:
        return  # failed or stopped, recorded
    cut_short_by = context.read("asking whether a deployment ran meanwhile",
                                lambda: _running_deployment(check, since=check.started_at))
    if cut_short_by is not None:
        return _run_again_after(context, cut_short_by)
    if answer is True:
        log.close()
        record(check, "result", lambda: check.transition(DriftCheck.Status.IN_SYNC, exit_code=0))
    else:
        log.write(f"==> drifted: {environment} is not what {release.version} says (exit status {DRIFTED})\n")
        log.close()
        record(check, "result", check.record_drifted)


def _run_again_after(context, deployment):
    """A deployment of the target started while the check ran: its answer may be of neither release."""
    check = context.run
    reason = f"Cut short by deployment #{deployment.pk}, which started while it ran: run again after it."
    context.cancel(reason)
    DriftCheck.objects.queue_for(check.repository, check.environment, reason=f"after deployment #{deployment.pk}")


KIND = Kind(name="driftcheck", model=DriftCheck, queue=DRIFT_QUEUE, execute=execute,
            related=("repository", "environment", "release"), log_secrets=masking.secrets_for, may_start=may_start,
            step_noun="Drift step")
