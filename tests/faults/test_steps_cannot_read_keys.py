"""No step reaches the portal's keys, its database or its Redis password, in the default mode too (no step
account) and where bubblewrap is missing: Landlock seals the step instead, and where no seal works a step
does not start unless the admin allowed unsealed steps, which every page then says.

The sealed runs are carried out by a real `manage.py rqworker deploy` whose PATH has every command of this
machine but bwrap (a machine without bubblewrap), running as the worker's own user (here root, whom file
modes do not stop). The step tries what someone who can push a tag would try."""

import os
import sqlite3

import pytest
from django.db import connection
from django.urls import reverse

from pipelines import promotion
from pipelines.models import Build, Deployment
from tests.conftest import wait_for
from tests.faults.test_fenced_runs import Workers, path_without_bubblewrap

pytestmark = pytest.mark.django_db(transaction=True)

KEY_FILES = {
    "secret_key": "django-secret-key-3c9e1f0a",
    "secrets_keys": "fernet-keys-of-every-environment-77b2d4",
    "redis/password": "embedded-redis-password-5e8a61",
}
DATABASE_ROW = "production-secret-row-a41c90"


@pytest.fixture
def keyed_workers(tmp_path):
    """Workers whose data directory holds what `make run` keeps there: the secret key, the Fernet keys of
    the environments' secrets, the embedded Redis's password (0600 in a 0700 folder) and a SQLite database."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o711)
    (data_dir / "redis").mkdir(mode=0o700)
    for name, text in KEY_FILES.items():
        (data_dir / name).write_text(text)
        (data_dir / name).chmod(0o600)
    database = sqlite3.connect(data_dir / "portal.sqlite3")
    database.execute("create table secrets (value text)")
    database.execute("insert into secrets values (?)", (DATABASE_ROW,))
    database.commit()
    database.close()
    pool = Workers(data_dir)
    yield pool
    pool.stop_all()


def the_databases_file():
    """The test database's own file where it is SQLite (the worker's DATABASE_URL names it), else None."""
    name = connection.settings_dict["NAME"]
    return name if connection.vendor == "sqlite" else None


def read_attempts(data_dir):
    secrets = (*KEY_FILES.values(), DATABASE_ROW)
    targets = [data_dir / name for name in KEY_FILES] + [data_dir / "portal.sqlite3"]
    if the_databases_file():
        targets.append(the_databases_file())
    return [f"cat {target} 2>&1 || echo refused-{os.path.basename(target)}" for target in targets] + [
        f"ls {data_dir} 2>&1 || echo refused-listing",
        # Bracketed, so that the script (echoed in the log) does not hold the text it looks for.
        f"grep -r -l {' '.join(f"-e '{text[:-1]}[{text[-1]}]'" for text in secrets)} {data_dir} 2>&1 || true",
    ]


def pipeline(build_lines, deploy_lines):
    def block(lines, indent):
        return "".join(f"{' ' * indent}{line}\n" for line in lines)

    return ("build:\n  steps:\n    - name: probe\n      run: |\n" + block(build_lines, 8)
            + "environments:\n  staging:\n    steps:\n      - name: probe\n        run: |\n" + block(deploy_lines, 10))


def assert_denied_and_unleaked(log, data_dir):
    for name in KEY_FILES:
        assert f"cat: {data_dir / name}: Permission denied" in log, log
    assert f"cat: {data_dir / 'portal.sqlite3'}: Permission denied" in log, log
    if the_databases_file():
        assert f"cat: {the_databases_file()}: Permission denied" in log, log
    assert f"ls: cannot open directory '{data_dir}': Permission denied" in log, log
    for text in (*KEY_FILES.values(), DATABASE_ROW):
        assert text not in log


def test_a_build_step_and_a_deploy_step_without_bubblewrap_cannot_read_the_keys_or_the_database(
        repository, staging, origin, make_release, keyed_workers, tmp_path):
    data_dir = keyed_workers.data_dir
    text = pipeline(
        [*read_attempts(data_dir), 'echo "image=sealed-1" >> "$GITOPS_OUTPUTS"',
         'echo built-here > "$GITOPS_ARTIFACTS/a.txt"', "echo in-checkout > own-file && cat own-file"],
        [*read_attempts(data_dir), 'cat "$GITOPS_ARTIFACTS/a.txt"', 'echo deployed > "$GITOPS_ARTIFACTS/b.txt"',
         "echo in-checkout > own-file && cat own-file", 'echo "image is $GITOPS_OUTPUT_IMAGE"'],
    )
    origin.write(".gitops.yml", text)
    release = make_release(repository, "v1", pipeline=text, commit_sha=origin.commit("probe"))
    build = Build.objects.queue_for(release)
    worker = keyed_workers.start(PATH=path_without_bubblewrap(tmp_path / "bin"))

    wait_for(lambda: Build.objects.get(pk=build.pk).is_finished, "the build to run", timeout=60)
    build.refresh_from_db()
    build_log = build.log_since(0)[0]
    assert build.status == "succeeded", build_log
    assert_denied_and_unleaked(build_log, data_dir)
    assert "in-checkout" in build_log.splitlines()
    assert build.outputs == {"image": "sealed-1"} and build.artifact_size > 0, "its outputs and artifacts were kept"

    # The build's success promotes the release to staging, the first stage, which deploys automatically.
    deployments = Deployment.objects.filter(release=release, environment=staging)
    wait_for(lambda: deployments.exists() and deployments.get().is_finished, "the deployment to run", timeout=60)
    deployment = deployments.get()
    deploy_log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", deploy_log
    assert_denied_and_unleaked(deploy_log, data_dir)
    lines = deploy_log.splitlines()
    assert "built-here" in lines and "in-checkout" in lines and "image is sealed-1" in lines
    output = keyed_workers.output(0)
    assert "bubblewrap (bwrap) is not installed" in output
    assert "sealed by Landlock" in output, "the worker says which seal is in force"
    assert worker.poll() is None


def test_with_no_seal_a_step_is_refused_unless_unsealed_steps_are_allowed(
        repository, staging, origin, make_release, run_workers, tmp_path, settings):
    """GITOPS_STEP_SANDBOX=none is the admin's switch for "no sandbox"; it is also what a machine with neither
    bubblewrap nor Landlock comes to."""
    marker = tmp_path / "the-step-ran"
    text = f"environments:\n  staging:\n    steps:\n      - name: deploy\n        run: touch {marker}\n"
    origin.write(".gitops.yml", text)
    settings.GITOPS_STEP_SANDBOX = "none"

    refused = promotion.promote(make_release(repository, "v1", pipeline=text, commit_sha=origin.commit("v1")), staging, by=None)
    run_workers()
    refused.refresh_from_db()
    assert refused.status == "failed"
    assert refused.error.startswith("Steps are not run unsealed: GITOPS_STEP_SANDBOX=none turns the step sandbox off")
    assert "GITOPS_ALLOW_UNSEALED_STEPS=1" in refused.error
    assert refused.error in refused.log_since(0)[0]
    assert not marker.exists(), "the step never started"

    settings.GITOPS_ALLOW_UNSEALED_STEPS = True
    allowed = promotion.promote(make_release(repository, "v2", pipeline=text, commit_sha=origin.commit("v2")), staging, by=None)
    run_workers()
    allowed.refresh_from_db()
    assert allowed.status == "succeeded"
    assert marker.exists()
    assert "==> UNSEALED: no sandbox works here and GITOPS_ALLOW_UNSEALED_STEPS=1" in allowed.log_since(0)[0]


@pytest.mark.parametrize("page", ["dashboard", "login", "admin:index"])
def test_every_page_says_so_while_unsealed_steps_are_allowed(client, admin_user, settings, page):
    if page != "login":
        client.force_login(admin_user)
    url = reverse(page)
    assert "Steps may run unsealed" not in client.get(url).content.decode()
    settings.GITOPS_ALLOW_UNSEALED_STEPS = True
    response = client.get(url)
    assert response.status_code == 200
    assert "Steps may run unsealed" in response.content.decode()


def test_check_deploy_warns_while_unsealed_steps_are_allowed(settings):
    from django.core import checks

    def warnings():
        return [message.id for message in checks.run_checks(include_deployment_checks=True, tags=["security"])]

    assert "pipelines.W001" not in warnings()
    settings.GITOPS_ALLOW_UNSEALED_STEPS = True
    assert "pipelines.W001" in warnings()
