"""Run a release's build: its `build:` steps, once, in a checkout of the release commit; keep what they leave.

The step machinery is the runner's (pipelines/runner.py): run_step in its sandbox and process group, the
LogWriter, the Heartbeat that stops the step when the run cannot renew its lease (here: the build row's
heartbeat). What differs is the environment, and what happens after the steps:

- Build steps get no environment's variables and no secrets: PATH, HOME, LANG, the build section's own
  `variables`, GITOPS_REPOSITORY, GITOPS_VERSION, GITOPS_COMMIT, GITOPS_BUILD_ID, and two places outside
  the checkout, $GITOPS_OUTPUTS (a file for `key=value` lines) and $GITOPS_ARTIFACTS/ (a folder).
- After the last step the outputs are read and the artifacts packed and stored (pipelines/artifacts.py);
  a bad output line or artifacts over the size limit fail the build with the reason.
- The success records the release's automatic promotion as a follow-up (Build.succeed), carried out here
  at once, as a deployment's runner does; the reconciler re-drives it if this process dies first."""

import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from django.conf import settings

from pipelines import artifacts, followups, git, masking, runner, sandbox
from pipelines.models import Build, StaleStatus
from pipelines.models.deployment import this_host

logger = logging.getLogger(__name__)


def run_build(build_id):
    build = Build.objects.select_related("release__repository").filter(pk=build_id).first()
    if build is None or build.status != Build.Status.QUEUED:
        return  # a duplicate wake-up: the build ran, runs, or was given up
    runner.seal_work_horse()
    try:
        build.claim(worker_name=f"{socket.gethostname()}:{os.getpid()}", runner_host=this_host(), runner_pid=os.getpid())
    except StaleStatus:
        return  # another worker claimed it first
    run_claimed(build, runner.LogWriter(build, secrets=secrets_for(build)), _execute)


def run_claimed(run, log, execute):
    """Run `execute(run, heartbeat, log)` for a claimed build or preview under its heartbeat, and record a
    failure when the worker stops or the portal itself fails during it (`execute` records the rest)."""
    noun = run._meta.verbose_name
    try:
        with runner.Heartbeat(run) as heartbeat:
            execute(run, heartbeat, log)
    except (SystemExit, KeyboardInterrupt):
        logger.warning("%s %s: the worker stopped during the run", noun, run.pk)
        try:
            log.close()
            run.fail(f"The worker running this {noun} was shut down during the run; its step was stopped.")
        except Exception:
            logger.exception("could not record that %s %s was stopped", noun, run.pk)
        raise
    except sandbox.StepsUnsealed as exc:  # not a crash: said in the log already, and the reason is the error
        log.close()
        runner._record(run, "failure", lambda: run.fail(str(exc)))
    except Exception as exc:
        logger.exception("%s %s crashed in the portal", noun, run.pk)
        try:
            log.close()
        except Exception:
            logger.exception("could not store the end of the log of %s %s", noun, run.pk)
        error = f"The portal could not run this {noun}: {exc}"
        runner._record(run, "failure", lambda: run.fail(error))


def secrets_for(build):
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


def _execute(build, heartbeat, log):
    spec = build.release.pipeline.build
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    # The checkout and, beside it, where the steps leave outputs and artifacts: all of it bound into the sandbox.
    run_dir = Path(tempfile.mkdtemp(prefix=f"build-{build.pk}-", dir=settings.GITOPS_WORK_DIR))
    checkout, artifacts_dir, outputs_file = run_dir / "checkout", run_dir / "artifacts", run_dir / "outputs"
    try:
        checkout.mkdir()
        artifacts_dir.mkdir()
        outputs_file.touch()
        account = runner.step_account()
        git.materialise(build.release.repository, build.release.commit_sha, checkout)
        if account is not None:
            runner._hand_over(run_dir, account)
        environment = build_environment(build, spec.variables, checkout, account, outputs_file, artifacts_dir)
        if not run_steps(build, spec.steps, checkout, environment, heartbeat, log, account, shared=(run_dir,)):
            return
        try:
            outputs = artifacts.read_outputs(outputs_file)
            stored = artifacts.pack_and_store(artifacts_dir, prefix=f"builds/{build.pk}")
        except artifacts.ArtifactError as exc:
            error = str(exc)
            log.write(f"==> {error}\n")
            log.close()
            runner._record(build, "failure", lambda: build.fail(error))
            return
        log.write(_summary(outputs, stored))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    log.close()
    recorded = {}
    if runner._record(build, "success", lambda: recorded.update(follow_up=build.succeed(outputs=outputs, artifact=stored))) \
            and recorded["follow_up"]:
        try:
            followups.carry_out(recorded["follow_up"].pk, before_due=True)
        except Exception:
            logger.exception("the promotion after build %s failed; the reconciler retries it", build.pk)


def _summary(outputs, stored):
    lines = [f"==> output {key}={value}\n" for key, value in outputs.items()]
    if stored is not None:
        lines.append(f"==> artifacts: {stored.size} bytes, sha256 {stored.sha256}\n")
    return "".join(lines) or "==> no outputs, no artifacts\n"


def run_steps(run, steps, workdir, environment, heartbeat, log, account, shared, noun="Build step"):
    """Run the steps of a build or preview in order; record how the first one that did not succeed ended.
    True when all succeeded."""
    for number, step in enumerate(steps, start=1):
        if heartbeat.stop.is_set():
            _stopped(run, heartbeat, log)
            return False
        log.step_started(number, len(steps), step)
        started = time.monotonic()
        outcome = runner.run_step(run, step, workdir, environment, heartbeat, log, account, shared=shared)
        log.step_ended(number, len(steps), outcome, time.monotonic() - started)
        if outcome.cancelled or outcome.lost:
            _stopped(run, heartbeat, log)
            return False
        if outcome.timed_out or outcome.exit_code != 0:
            if outcome.timed_out:
                log.write(f"==> timed out after {step.timeout}s; the step's processes were killed\n")
                error = f"{noun} '{step.name}' timed out after {step.timeout} s."
            else:
                error = f"{noun} '{step.name}' exited with status {outcome.exit_code}."
            log.close()
            runner._record(run, "failure", lambda: run.fail(error, exit_code=outcome.exit_code))
            return False
    return True


def _stopped(run, heartbeat, log):
    """The run lost its lease, or the reconciler gave it up (then there is nothing left to record)."""
    noun = run._meta.verbose_name
    reason = heartbeat.lost_reason() if heartbeat.lost.is_set() else f"The {noun} was no longer running; its step was stopped."
    log.write(f"==> {reason}\n")
    log.close()
    runner._record(run, "lost lease", lambda: run.fail(reason))


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
