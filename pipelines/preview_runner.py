"""Run the preview of a held deployment: its environment's `preview:` steps (`terraform plan -out …`, say),
against that environment with its variables and secrets, while approvers wait for what it shows.

The machinery is the build's (pipelines/build_runner.py: run_claimed, run_steps; the runner's sandbox,
LogWriter and Heartbeat). What differs:

- A preview step gets what a deploy step of its deployment gets (runner.step_environment: the file's
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

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from django.conf import settings

from pipelines import artifacts, build_runner, git, masking, runner
from pipelines.models import Deployment, EnvironmentSecret, Preview, StaleStatus
from pipelines.models.deployment import this_host
from pipelines.secrets import SecretUnreadable

logger = logging.getLogger(__name__)


def run_preview(preview_id):
    preview = (Preview.objects.select_related("deployment__release__repository", "deployment__environment",
                                              "deployment__repository", "deployment__previous_release")
               .filter(pk=preview_id).first())
    if preview is None or preview.status != Preview.Status.QUEUED:
        return  # a duplicate wake-up: it ran, runs, or was replaced
    deployment = preview.deployment
    if deployment.status != Deployment.Status.AWAITING_APPROVAL:
        try:
            preview.transition(Preview.Status.CANCELLED, error=f"The deployment is no longer waiting for approval "
                                                               f"(it is {deployment.get_status_display().lower()}).")
        except StaleStatus:
            pass
        return
    runner.seal_work_horse()
    try:
        preview.claim(worker_name=f"{socket.gethostname()}:{os.getpid()}", runner_host=this_host(), runner_pid=os.getpid())
    except StaleStatus:
        return  # another worker claimed it first
    build_runner.run_claimed(preview, runner.LogWriter(preview, secrets=masking.secrets_for(deployment)), _execute)


def _execute(preview, heartbeat, log):
    deployment = preview.deployment
    spec = deployment.release.pipeline.environments[deployment.environment.name]
    try:
        secrets = EnvironmentSecret.objects.values_for(deployment.environment)  # once, before any output
    except SecretUnreadable as exc:
        reason = str(exc)  # names the secret, never its value
        log.write(f"==> {reason}\n")
        log.close()
        runner._record(preview, "failure", lambda: preview.fail(reason))
        return
    log.mask_also(secrets.values())
    base = preview.base_release.version if preview.base_release_id else "nothing yet"
    log.write(f"==> preview #{preview.number} of {deployment.release.version} in {deployment.environment} "
              f"(running there now: {base})\n")
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    checkout = Path(tempfile.mkdtemp(prefix=f"preview-{preview.pk}-", dir=settings.GITOPS_WORK_DIR))
    folder = None
    try:
        account = runner.step_account()
        git.materialise(deployment.repository, deployment.release.commit_sha, checkout)
        environment = runner.step_environment(deployment, spec.variables, checkout, account, secrets=secrets)
        folder = build_runner.hand_to_deployment(deployment, environment) or _fresh_folder(f"preview-{preview.pk}-artifacts-")
        environment.update(GITOPS_ARTIFACTS=str(folder), GITOPS_PREVIEW="1", GITOPS_PREVIEW_NUMBER=str(preview.number))
        if account is not None:
            runner._hand_over(checkout, account)
            runner._hand_over(folder, account)
        if not build_runner.run_steps(preview, spec.preview, checkout, environment, heartbeat, log, account,
                                      shared=(folder,), noun="Preview step"):
            return
        try:
            stored = artifacts.pack_and_store(folder, prefix=f"previews/{preview.pk}")
        except artifacts.ArtifactError as exc:
            error = str(exc)
            log.write(f"==> {error}\n")
            log.close()
            runner._record(preview, "failure", lambda: preview.fail(error))
            return
        log.write(f"==> artifacts: {stored.size} bytes, sha256 {stored.sha256}\n" if stored else "==> no artifacts\n")
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    log.close()
    runner._record(preview, "success", lambda: preview.succeed(artifact=stored))


def _fresh_folder(prefix):
    return Path(tempfile.mkdtemp(prefix=prefix, dir=settings.GITOPS_WORK_DIR))


# --- what the deploy steps get from the preview ------------------------------------------------------------


def hand_to_deployment(deployment, environment, folder, log):
    """Unpack the artifacts of the deployment's latest preview into its $GITOPS_ARTIFACTS/ (`folder`, which
    holds the build's, or None: a fresh one is made and set in `environment`), and say so in the `log`.
    Returns the folder (None when there was none and the preview left nothing). The runner checked
    Preview.objects.refusal_for first: the latest preview is the one approved, it succeeded, and nothing
    changed the target since."""
    preview = Preview.objects.latest_for(deployment)
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
