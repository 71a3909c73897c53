"""The check kind: the `checks:` steps of the pipeline file as it is at the checked commit, in a checkout of it.

What differs from a build:

- The file is read here, at the commit, on the checks queue: a branch or pull request may change it, and
  whatever it says under `environments:` is ignored. A check deploys nothing and is never promoted.
- A check step gets PATH, HOME, LANG, the checks section's own `variables`, the repository's check secrets
  (RepositorySecret, masked in the log) and GITOPS_REPOSITORY, GITOPS_COMMIT, GITOPS_REF, GITOPS_CHECK_ID;
  never an environment's variables or secrets (it runs code anyone with a branch could write).
- A fork's pull request (Check.from_fork) gets no check secrets either, and runs only sealed: where no
  sandbox works it fails, even where unsealed steps are allowed (pipelines/sandbox.py).
- Its commit may have come by webhook before any poll fetched it: the mirror is brought up to date first.
- A commit whose file has no `checks:` section has nothing to check: the check is cancelled, saying so.
- Like a build's, its steps get $GITOPS_OUTPUTS (a file for `key=value` lines) and $GITOPS_ARTIFACTS/ (a
  folder), both outside the checkout, so one script serves a check and a build; after the last step the
  outputs are kept with the check (`summary=…` is its commit status's description) and the artifacts packed
  and stored (pipelines/artifacts.py) for download from its page."""

import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from pipelines import git, masking, sandbox
from pipelines.models import Check, RepositorySecret
from pipelines.pipeline_file import PipelineFileError, parse_pipeline
from pipelines.queues import CHECKS_QUEUE
from pipelines.secrets import SecretUnreadable

from . import blips
from .build import keep_what_was_left
from .kernel import record
from .registry import Kind
from .steps import hand_over, scrubbed_environment, step_account


def log_secrets(check):
    """What is masked in a check's log before its own secrets are read: the portal's secrets and the
    repository's credentials."""
    repository = check.repository
    return masking.portal_secrets() | masking.url_secrets(repository.url) | {repository.webhook_secret or ""}


def check_environment(check, variables, workdir, account, *, secrets, outputs, artifacts_dir):
    return {
        **scrubbed_environment(workdir, account, variables=variables, gitops={}),
        **secrets,
        "GITOPS_REPOSITORY": check.repository.name,
        "GITOPS_COMMIT": check.commit_sha,
        "GITOPS_REF": check.ref_name,
        "GITOPS_CHECK_ID": str(check.pk),
        "GITOPS_OUTPUTS": str(outputs),
        "GITOPS_ARTIFACTS": str(artifacts_dir),
    }


def execute(context):
    check, log = context.run, context.log
    repository = check.repository
    if not git.has_commit(repository, check.commit_sha):
        git.sync_mirror(repository)  # a webhook named a commit no poll has fetched yet
    text = git.read_file(repository, check.commit_sha, repository.pipeline_path)
    if text is None:
        return _nothing_to_check(context, f"{repository.pipeline_path} not found at commit {check.commit_sha[:10]}")
    try:
        spec = parse_pipeline(text)  # its environments do not matter here: a check deploys nowhere
    except PipelineFileError as exc:
        return context.fail(f"{repository.pipeline_path} {exc}")
    if spec.checks is None:
        return _nothing_to_check(context, f"{repository.pipeline_path} has no 'checks' section at commit "
                                             f"{check.commit_sha[:10]}")
    account = step_account()
    if check.from_fork:
        if sandbox.seal_for(account) is None:
            return context.fail("The checks of a pull request from a fork run only sealed, and no sandbox seals "
                                     "steps on this worker (its log says why).")
        log.write("==> a pull request from a fork: no check secrets, sealed\n")
        secrets = {}
    else:
        try:
            secrets = context.read("reading its secrets", lambda: RepositorySecret.objects.values_for(repository))
        except SecretUnreadable as exc:
            return context.fail(str(exc))
    log.mask_also(secrets.values())
    log.mask_also(masking.declared_secrets(spec.checks.variables))
    names = [step.name for step in spec.checks.steps]
    blips.retry("recording its steps", lambda: Check.objects.filter(pk=check.pk).update(steps=names), subject=check)
    log.write(f"==> checks of {check.commit_sha[:10]} on {check.ref_name}\n")
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"check-{check.pk}-", dir=settings.GITOPS_WORK_DIR))
    checkout, artifacts_dir, outputs_file = run_dir / "checkout", run_dir / "artifacts", run_dir / "outputs"
    try:
        checkout.mkdir()
        artifacts_dir.mkdir()
        outputs_file.touch()
        git.materialise(repository, check.commit_sha, checkout)
        if account is not None:
            hand_over(run_dir, account)
        environment = check_environment(check, spec.checks.variables, checkout, account, secrets=secrets,
                                        outputs=outputs_file, artifacts_dir=artifacts_dir)
        if not context.steps(spec.checks.steps, checkout, environment, account, shared=(run_dir,)):
            return
        left = keep_what_was_left(context, outputs_file, artifacts_dir, prefix=f"checks/{check.pk}")
        if left is None:
            return
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    outputs, stored = left
    log.write("==> all checks passed\n")
    context.succeed(lambda: check.succeed(outputs=outputs, artifact=stored))


def _nothing_to_check(context, reason):
    context.log.write(f"==> {reason}: nothing to check\n")
    context.log.close()
    record(context.run, "cancellation", lambda: context.run.transition(Check.Status.CANCELLED, error=f"{reason}."))


KIND = Kind(name="check", model=Check, queue=CHECKS_QUEUE, execute=execute, related=("repository",),
            log_secrets=log_secrets, step_noun="Check step")
