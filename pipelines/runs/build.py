"""The build kind: a release's `build:` steps, once, in a checkout of the release commit; what they leave is kept.

- Build steps get no environment's variables and no secrets: PATH, HOME, LANG, the build section's own
  `variables`, GITOPS_REPOSITORY, GITOPS_VERSION, GITOPS_COMMIT, GITOPS_BUILD_ID, and two places outside
  the checkout, $GITOPS_OUTPUTS (a file for `key=value` lines) and $GITOPS_ARTIFACTS/ (a folder).
- After the last step the outputs are read and the artifacts packed and stored (pipelines/artifacts.py);
  a bad output line or artifacts over the limits fail the build with the reason.
- The success records the release's automatic promotion as a follow-up (Build.succeed), carried out at once
  by the kernel; the reconciler re-drives it if this process dies first.

`hand_to_deployment` gives a deployment (and a preview) what the build left."""

import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from pipelines import artifacts, git, masking
from pipelines.models import Build
from pipelines.queues import DEPLOY_QUEUE

from .registry import Kind
from .steps import hand_over, step_account


def log_secrets(build):
    """What is masked in a build's log: the portal's secrets, the repository's credentials, and values of the
    build section's variables whose names say they are secret. No environment's secrets reach a build."""
    repository = build.release.repository
    spec = build.release.pipeline.build if build.release.pipeline else None
    return (masking.portal_secrets() | masking.repository_secrets(repository)
            | masking.declared_secrets(spec.variables if spec else {}))


def build_environment(build, variables, workdir, account, outputs, artifacts_dir):
    """Only what a build step needs; nothing environment-specific, nothing of the portal's own environment."""
    release = build.release
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": account.pw_dir if account else os.environ.get("HOME", str(workdir)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        **variables,
        "GITOPS_REPOSITORY": release.repository.name,
        "GITOPS_VERSION": release.version,
        "GITOPS_COMMIT": release.commit_sha,
        "GITOPS_BUILD_ID": str(build.pk),
        "GITOPS_OUTPUTS": str(outputs),
        "GITOPS_ARTIFACTS": str(artifacts_dir),
    }


def execute(context):
    build = context.run
    spec = build.release.pipeline.build
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    # The checkout and, beside it, where the steps leave outputs and artifacts: all of it bound into the sandbox.
    run_dir = Path(tempfile.mkdtemp(prefix=f"build-{build.pk}-", dir=settings.GITOPS_WORK_DIR))
    checkout, artifacts_dir, outputs_file = run_dir / "checkout", run_dir / "artifacts", run_dir / "outputs"
    try:
        checkout.mkdir()
        artifacts_dir.mkdir()
        outputs_file.touch()
        account = step_account()
        git.materialise(build.release.repository, build.release.commit_sha, checkout)
        if account is not None:
            hand_over(run_dir, account)
        environment = build_environment(build, spec.variables, checkout, account, outputs_file, artifacts_dir)
        if not context.steps(spec.steps, checkout, environment, account, shared=(run_dir,)):
            return
        left = keep_what_was_left(context, outputs_file, artifacts_dir, prefix=f"builds/{build.pk}")
        if left is None:
            return
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    outputs, stored = left
    context.succeed(lambda: build.succeed(outputs=outputs, artifact=stored))


def keep_what_was_left(context, outputs_file, artifacts_dir, *, prefix):
    """Read the outputs and store the artifacts a run's steps left (a build's, a check's), and say so in its log:
    (outputs, the StoredArtifact or None), or None once the run failed because they cannot be kept."""
    try:
        outputs = artifacts.read_outputs(outputs_file)
        stored = artifacts.pack_and_store(artifacts_dir, prefix=prefix)
    except artifacts.ArtifactError as exc:
        context.fail(str(exc))
        return None
    context.log.write(_summary(outputs, stored))
    return outputs, stored


def _summary(outputs, stored):
    lines = [f"==> output {key}={value}\n" for key, value in outputs.items()]
    if stored is not None:
        lines.append(f"==> artifacts: {stored.size} bytes, sha256 {stored.sha256}\n")
    return "".join(lines) or "==> no outputs, no artifacts\n"


# --- what deployments get from the build ----------------------------------------------------------------


def hand_to_deployment(deployment, environment):
    """Give a deployment what its release's build left: GITOPS_OUTPUT_<KEY> for each output and
    GITOPS_ARTIFACTS, a fresh folder with the artifacts unpacked (added to `environment`). Returns that
    folder, for the runner to bind into the sandbox and remove afterwards; None for a release without a build."""
    release = deployment.release
    if release.pipeline is None or release.pipeline.build is None:
        return None
    build = Build.objects.filter(release=release).first()
    if build is None or not build.succeeded:
        refusal = build.refusal() if build is not None else "it has not been built"
        raise RuntimeError(f"{release} cannot be deployed: {refusal}.")
    folder = Path(tempfile.mkdtemp(prefix=f"deployment-{deployment.pk}-artifacts-", dir=settings.GITOPS_WORK_DIR))
    try:
        if build.artifact_name:
            artifacts.unpack(build.artifact_name, folder, sha256=build.artifact_sha256)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    environment.update(artifacts.output_variables(build.outputs))
    environment["GITOPS_ARTIFACTS"] = str(folder)
    return folder


KIND = Kind(name="build", model=Build, queue=DEPLOY_QUEUE, execute=execute, related=("release__repository",),
            log_secrets=log_secrets, step_noun="Build step")
