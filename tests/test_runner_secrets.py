"""Environment secrets in the runner: given to that environment's deploy steps only, masked in the stored
log, and a secret no key opens fails the deployment with its name (never its value)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import promotion
from pipelines.models import Deployment, Environment
from pipelines.runs import kernel, steps
from tests.conftest import add_stage, child_env, kill_tree, new_secrets_key, wait_for

BASE_DIR = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)

VALUE = "staging-db-password-5c71d2"
PRODUCTION_VALUE = "production-db-password-9a04bb"


def promote_step(repository, environment, origin, make_release, run, *, variables=""):
    """Promote a release whose step in `environment` runs `run` (a shell script); the queued deployment."""
    script = "".join(f"          {line}\n" for line in run.splitlines())
    pipeline = (f"environments:\n  {environment.name}:\n{variables}    steps:\n"
                f"      - name: deploy\n        run: |\n{script}")
    origin.write(".gitops.yml", pipeline)
    release = make_release(repository, f"v-{environment.name}", pipeline=pipeline, commit_sha=origin.commit("step"))
    return promotion.promote(release, environment, by=None)


def deploy(repository, environment, origin, make_release, run, *, variables=""):
    """Run that deployment in this process; the deployment as it ended."""
    deployment = promote_step(repository, environment, origin, make_release, run, variables=variables)
    kernel.run("deployment", deployment.pk)
    deployment.refresh_from_db()
    return deployment


def test_a_secret_printed_by_a_step_is_masked_in_the_stored_log_and_the_step_received_it(
        repository, staging, origin, make_release, make_secret):
    make_secret(staging, "DB_PASSWORD", VALUE)

    deployment = deploy(repository, staging, origin, make_release,
                        'printf %s "$DB_PASSWORD" | sha256sum\necho "password=$DB_PASSWORD"')

    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    assert hashlib.sha256(VALUE.encode()).hexdigest() in log, "the step had the real value"
    assert "password=***" in log
    stored = "".join(deployment.log_chunks.values_list("text", flat=True))
    assert VALUE not in stored


def test_a_real_worker_gives_the_secret_to_the_step_and_stores_it_masked(
        repository, staging, origin, make_release, make_secret, tmp_path):
    """As in production: `manage.py rqworker deploy` in a process of its own, with the key from its own settings."""
    make_secret(staging, "DB_PASSWORD", VALUE)
    worker = subprocess.Popen([sys.executable, "manage.py", "rqworker", "deploy"], cwd=BASE_DIR,
                              env=child_env(tmp_path / "worker-data"), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deployment = promote_step(repository, staging, origin, make_release,
                                  'printf %s "$DB_PASSWORD" | sha256sum\necho "password=$DB_PASSWORD"')
        wait_for(lambda: Deployment.objects.get(pk=deployment.pk).is_finished, "the worker to run the step", timeout=60)
    finally:
        kill_tree(worker.pid)
        worker.wait()

    deployment.refresh_from_db()
    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    assert hashlib.sha256(VALUE.encode()).hexdigest() in log and "password=***" in log
    assert VALUE not in log


def test_a_multi_line_secret_printed_line_by_line_is_masked(repository, staging, origin, make_release, make_secret):
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END KEY-----"
    make_secret(staging, "DEPLOY_KEY", key)

    deployment = deploy(repository, staging, origin, make_release, 'printf "%s\\n" "$DEPLOY_KEY" | sed "s/^/> /"')

    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in log and "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj" not in log
    assert "> ***" in log


def test_a_step_gets_only_its_own_environments_secrets(repository, staging, production, origin, make_release,
                                                     make_secret):
    make_secret(staging, "API_TOKEN", "staging-api-token-6611")
    make_secret(production, "DB_PASSWORD", PRODUCTION_VALUE)

    deployment = deploy(repository, staging, origin, make_release,
                        'echo "db=${DB_PASSWORD:-none}"\nprintf %s "$API_TOKEN" | sha256sum')

    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    assert "db=none" in log.splitlines()
    assert hashlib.sha256(b"staging-api-token-6611").hexdigest() in log


def test_a_secret_replaces_a_file_variable_of_the_same_name_and_the_log_says_so(
        repository, staging, origin, make_release, make_secret):
    make_secret(staging, "DB_PASSWORD", VALUE)

    deployment = deploy(repository, staging, origin, make_release, 'printf %s "$DB_PASSWORD" | sha256sum',
                        variables="    variables: {DB_PASSWORD: from-the-file-1234}\n")

    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    assert hashlib.sha256(VALUE.encode()).hexdigest() in log
    assert "replace the pipeline file's variables DB_PASSWORD" in log


def test_steps_outside_a_deployment_such_as_a_build_get_no_secret(staging, make_secret, tmp_path,
                                                                 django_assert_num_queries):
    """A build or checks step has no deployment environment: it calls the same assembly as deploy steps,
    without secrets, and that looks nothing up that could add some."""
    make_secret(staging, "DB_PASSWORD", VALUE)

    with django_assert_num_queries(0):
        environment = steps.scrubbed_environment(tmp_path, variables={"REGION": "eu-west-1"},
                                                  gitops={"GITOPS_COMMIT": "a" * 40})

    assert "DB_PASSWORD" not in environment and VALUE not in environment.values()
    assert environment["REGION"] == "eu-west-1" and environment["GITOPS_COMMIT"] == "a" * 40


def test_a_secret_no_key_opens_fails_the_deployment_naming_it_and_nothing_else_breaks(
        repository, staging, origin, make_release, make_secret, settings, tmp_path):
    settings.GITOPS_SECRETS_KEYS = [new_secrets_key()]
    make_secret(staging, "DB_PASSWORD", VALUE)
    settings.GITOPS_SECRETS_KEYS = [new_secrets_key()]  # the key it was encrypted with is gone
    ran = tmp_path / "ran"

    deployment = deploy(repository, staging, origin, make_release, f"touch {ran}")

    assert deployment.status == "failed"
    assert "DB_PASSWORD of environment staging" in deployment.error
    assert "GITOPS_SECRETS_KEYS" in deployment.error
    assert deployment.error in deployment.log_since(0)[0]
    assert not ran.exists(), "no step runs without its secrets"

    qa = Environment.objects.create(name="qa", position=15)  # no secrets: deploys as before
    add_stage("default", qa, position=15)
    other = deploy(repository, qa, origin, make_release, "echo fine")
    assert other.status == "succeeded", other.log_since(0)[0]
