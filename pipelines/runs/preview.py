"""The preview kind: the preview of a held deployment, its environment's `preview:` steps (`terraform plan -out …`, say),
against that environment with its variables and secrets, while approvers wait for what it shows.

What differs from a deployment:

- A preview step gets what a deploy step of its deployment gets (steps.step_environment: the file's
  variables, the environment's secrets, masked in the log; the build's outputs and artifacts), and
  GITOPS_PREVIEW=1 with GITOPS_PREVIEW_NUMBER. $GITOPS_ARTIFACTS/ starts with the build's artifacts; what
  is in it after the last step (the saved plan) is packed and stored with the preview.
- It does not take its target's lease. A preview must not change the target (it plans; the deploy steps
  apply), so it need not be fenced against a run there, and it must not hold up the target's queue while
  approvers read it. What a concurrent apply could do to it is covered by staleness instead: a deployment
  that ran a step on the target, whatever its outcome, queues the next preview of every deployment held
  there when it ends (Deployment.transition), and one shown stale is neither approved nor applied. A tool's
  own lock (Terraform's state lock) keeps its state consistent meanwhile; a preview that fails on that lock
  is re-run when that run ends.
- It runs during a freeze window: it changes nothing, and approvers may want to read it before the freeze ends.

`hand_to_deployment` gives the deploy steps the artifacts of the approved preview."""

import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from pipelines import artifacts, git, masking
from pipelines.models import Deployment, EnvironmentSecret, Preview, StaleStatus
from pipelines.queues import DEPLOY_QUEUE
from pipelines.secrets import SecretUnreadable

from . import build as build_kind
from .registry import Kind
from .steps import hand_over, step_account, step_environment


def may_start(preview):
    """A preview runs only while its deployment waits for approval; otherwise it is cancelled, saying why."""
    deployment = preview.deployment
    if deployment.status == Deployment.Status.AWAITING_APPROVAL:
        return True
    try:
        preview.transition(Preview.Status.CANCELLED, error=f"The deployment is no longer waiting for approval "
                                                           f"(it is {deployment.get_status_display().lower()}).")
    except StaleStatus:
        pass
    return False


def execute(context):
    preview, log = context.run, context.log
    deployment = preview.deployment
    spec = deployment.release.pipeline.environments[deployment.environment.name]
    try:  # once, before any output
        secrets = context.read("reading its secrets", lambda: EnvironmentSecret.objects.values_for(deployment.environment))
    except SecretUnreadable as exc:
        return context.fail(str(exc))  # names the secret, never its value
    log.mask_also(secrets.values())
    base = context.read("reading what runs there",
                        lambda: preview.base_release.version if preview.base_release_id else "nothing yet")
    log.write(f"==> preview #{preview.number} of {deployment.release.version} in {deployment.environment} "
              f"(running there now: {base})\n")
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    checkout = Path(tempfile.mkdtemp(prefix=f"preview-{preview.pk}-", dir=settings.GITOPS_WORK_DIR))
    folder = None
    try:
        account = step_account()
        git.materialise(deployment.repository, deployment.release.commit_sha, checkout)
        environment = step_environment(deployment, spec.variables, checkout, account, secrets=secrets)
        folder = (context.read("reading its build", lambda: build_kind.hand_to_deployment(deployment, environment))
                  or _fresh_folder(f"preview-{preview.pk}-artifacts-"))
        environment.update(GITOPS_ARTIFACTS=str(folder), GITOPS_PREVIEW="1", GITOPS_PREVIEW_NUMBER=str(preview.number))
        if account is not None:
            hand_over(checkout, account)
            hand_over(folder, account)
        if not context.steps(spec.preview, checkout, environment, account, shared=(folder,)):
            return
        try:
            stored = artifacts.pack_and_store(folder, prefix=f"previews/{preview.pk}")
        except artifacts.ArtifactError as exc:
            return context.fail(str(exc))
        log.write(f"==> artifacts: {stored.size} bytes, sha256 {stored.sha256}\n" if stored else "==> no artifacts\n")
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    context.succeed(lambda: preview.succeed(artifact=stored))


def _fresh_folder(prefix):
    return Path(tempfile.mkdtemp(prefix=prefix, dir=settings.GITOPS_WORK_DIR))


# --- what the deploy steps get from the preview ------------------------------------------------------------


def hand_to_deployment(deployment, preview, environment, folder, log):
    """Unpack the artifacts of the deployment's latest `preview` (None: it has none) into its $GITOPS_ARTIFACTS/
    (`folder`, which holds the build's, or None: a fresh one is made and set in `environment`), and say so in
    the `log`. Returns the folder (None when there was none and the preview left nothing). The runner asked
    Preview.objects.to_apply first: the latest preview is the one approved, it succeeded, and nothing
    changed the target since."""
    if preview is None or not preview.artifact_name:
        return folder
    made = folder is None
    if made:
        folder = _fresh_folder(f"deployment-{deployment.pk}-artifacts-")
    try:
        artifacts.unpack(preview.artifact_name, folder, sha256=preview.artifact_sha256)
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    environment["GITOPS_ARTIFACTS"] = str(folder)
    log.write(f"==> $GITOPS_ARTIFACTS/ holds what preview #{preview.number} left (sha256 {preview.artifact_sha256}), "
              f"as approved\n")
    return folder


KIND = Kind(
    name="preview", model=Preview, queue=DEPLOY_QUEUE, execute=execute,
    related=("deployment__release__repository", "deployment__environment", "deployment__repository",
             "deployment__previous_release"),
    log_secrets=lambda preview: masking.secrets_for(preview.deployment), may_start=may_start, step_noun="Preview step",
)
