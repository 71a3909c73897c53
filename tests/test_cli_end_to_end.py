"""A CI-like script drives the portal through `gitops` (python -m gitops_cli) with a service account's token,
against a live server with a real rq worker: staging requires passing checks, so the script reports its own
with `gitops check report` (refused before it), then staging succeeds (exit 0, the log streamed), a failing
step gives the failure exit code, and production waits until a different person approves with `gitops approve`."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from api.models import Scope
from approvals.models import ChangeRequest
from pipelines.models import Deployment, Repository
from tests.conftest import child_env, kill_tree, set_policy, set_stage, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
BASE_DIR = Path(__file__).resolve().parent.parent
DEPLOY_SCRIPT = '#!/usr/bin/env bash\necho "deploying $GITOPS_VERSION to $GITOPS_ENVIRONMENT"\n'


def gitops(live_server, token, *args, **popen):
    command = [sys.executable, "-m", "gitops_cli", *args]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GITOPS_URL": live_server.url, "GITOPS_TOKEN": token}
    if popen:
        return subprocess.Popen(command, cwd=BASE_DIR, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=BASE_DIR, env=env, text=True, capture_output=True, timeout=180)


@pytest.fixture
def worker(tmp_path):
    process = subprocess.Popen([sys.executable, "manage.py", "rqworker", "git", "deploy"], cwd=BASE_DIR,
                               env=child_env(tmp_path / "worker-data"), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield process
    kill_tree(process.pid)
    process.wait()


def issue(username, *scopes, service=False, grant=False):
    name = f"{username}-{'-'.join(scope.replace(':', '-') for scope in scopes)}"
    arguments = ["issuetoken", username, name, *[f"--scope={scope}" for scope in scopes]]
    options = [*(["--service"] if service else []), *(["--grant"] if grant else [])]
    call_command(*arguments, *options, stdout=(out := _Capture()))
    return out.text.strip()


class _Capture:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_ci_promotes_with_gitops_wait_and_production_waits_for_a_person(live_server, worker, origin, environments,
                                                                         bob):
    staging, production = environments
    # The CI script promotes, not the poll or a success before; and only what passed its CI checks.
    set_stage(staging, auto_deploy=False, requires_passing_checks=True)
    set_stage(production, auto_deploy=False)
    set_policy(production, allow_api_approval=True)
    Repository.objects.create(name="shop", url=origin.url)
    origin.write("deploy.sh", DEPLOY_SCRIPT, executable=True)
    first_sha = origin.commit("release 1.0.0")
    origin.tag("v1.0.0")
    call_command("pollrepos")

    # The README's recipe: the service account, the permissions its scopes need, and its token in one command.
    ci = issue("ci", Scope.READ, Scope.DEPLOY, Scope.CHECKS_REPORT, service=True, grant=True)

    unchecked = gitops(live_server, ci, "promote", "shop", "v1.0.0", "staging", "--wait")
    assert unchecked.returncode == 3, unchecked.stderr
    assert "staging requires passing checks" in unchecked.stderr and "have not run" in unchecked.stderr
    reported = gitops(live_server, ci, "check", "report", "shop", first_sha, "ci/tests", "--state", "success",
                      "--url", "https://ci.example/jobs/1", "--description", "42 tests passed", "--json")
    assert reported.returncode == 0, reported.stderr
    assert {key: json.loads(reported.stdout)[key] for key in ("name", "source", "state", "url")} == {
        "name": "ci/tests", "source": "external", "state": "success", "url": "https://ci.example/jobs/1"}

    staged = gitops(live_server, ci, "promote", "shop", "v1.0.0", "staging", "--wait", "--timeout", "120")
    assert staged.returncode == 0, staged.stderr
    assert "deploying v1.0.0 to staging" in staged.stdout  # the streamed log
    assert "succeeded" in staged.stderr
    assert Deployment.objects.get(release__version="v1.0.0", environment=staging).status == "succeeded"

    origin.write("deploy.sh", "#!/usr/bin/env bash\necho 'migration failed: table locked'\nexit 1\n", executable=True)
    second_sha = origin.commit("release 1.1.0")
    origin.tag("v1.1.0")
    call_command("pollrepos", "--repository", "shop")
    second_report = gitops(live_server, ci, "check", "report", "shop", second_sha, "ci/tests", "--state", "success")
    assert second_report.returncode == 0 and "ci/tests is success" in second_report.stdout, second_report.stderr
    broken = gitops(live_server, ci, "promote", "shop", "v1.1.0", "staging", "--wait", "--timeout", "120")
    assert broken.returncode == 5, broken.stderr
    assert "migration failed: table locked" in broken.stdout
    failed = Deployment.objects.get(release__version="v1.1.0", environment=staging)
    followed = gitops(live_server, ci, "logs", str(failed.pk), "--follow")
    assert followed.returncode == 5 and "migration failed: table locked" in followed.stdout
    listed = gitops(live_server, ci, "releases", "shop", "--json")
    assert [r["version"] for r in json.loads(listed.stdout)] == ["v1.1.0", "v1.0.0"], listed.stderr
    table = gitops(live_server, ci, "releases", "shop")
    assert table.stdout.splitlines()[0].split() == ["VERSION", "COMMIT", "STATE", "STAGES", "MESSAGE"]
    status = gitops(live_server, ci, "status", "shop", "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert [(t["environment"], t["current_version"]) for t in row["targets"]] == [("staging", "v1.0.0"), ("production", None)]

    refused = gitops(live_server, ci, "promote", "shop", "v1.1.0", "production", "--wait")
    assert refused.returncode == 3, refused.stderr
    assert "failed in staging" in refused.stderr

    waiting = gitops(live_server, ci, "promote", "shop", "v1.0.0", "production", "--wait", "--timeout", "120", popen=True)
    second = waiting
    said = []
    reader = threading.Thread(target=lambda: said.extend(iter(waiting.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        change_request = wait_for(lambda: ChangeRequest.objects.filter(status="pending").first(),
                                  "the change request to open", timeout=60)
        wait_for(lambda: any(f"Change request #{change_request.pk} is open" in line for line in said),
                 "gitops to name the change request", timeout=60)
        # A second CI job asking for the same thing follows the deployment already on its way.
        second = gitops(live_server, ci, "promote", "shop", "v1.0.0", "production", "--wait", "--timeout", "120",
                        popen=True)
        with pytest.raises(CommandError, match="a service account never decides on a change"):
            issue("ci", Scope.APPROVE)  # a token never exceeds its holder: not even issued
        approved = gitops(live_server, issue("bob", Scope.APPROVE), "approve", str(change_request.pk), "-m", "ship it")
        assert approved.returncode == 0, approved.stderr
        assert "is approved" in approved.stdout
        out = waiting.stdout.read()
        waiting.wait(timeout=120)
        reader.join(timeout=10)
        err = "".join(said)
        second_out, second_err = second.communicate(timeout=120)
    finally:
        for process in (waiting, second):
            if process.poll() is None:
                process.kill()
    assert second.returncode == 0, second_err
    assert "already on its way to production" in second_err and "Following it." in second_err
    assert "deploying v1.0.0 to production" in second_out
    assert waiting.returncode == 0, err
    assert "Waiting for approval" in err and f"Change request #{change_request.pk} is open" in err
    assert "deploying v1.0.0 to production" in out


def test_every_command_has_help():
    for command in ([], ["status"], ["releases"], ["promote"], ["logs"], ["approve"], ["reject"], ["check"],
                    ["check", "report"], ["check-drift"]):
        result = subprocess.run([sys.executable, "-m", "gitops_cli", *command, "--help"], cwd=BASE_DIR,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "Usage: gitops" in result.stdout, (command, result.stderr)


def test_gitops_releases_lists_newest_version_first_like_the_pages(live_server, repository, make_release):
    for version in ["v1.10.0", "v2.0.0rc1", "nightly-x", "v1.9.0", "v2.0.0", "v1.10.0.post1"]:
        make_release(repository, version)
    reader = issue("reader", Scope.READ, service=True)

    listed = gitops(live_server, reader, "releases", "shop", "--json")
    table = gitops(live_server, reader, "releases", "shop", "--limit", "3")

    expected = ["v2.0.0", "v2.0.0rc1", "v1.10.0.post1", "v1.10.0", "v1.9.0", "nightly-x"]
    assert [r["version"] for r in json.loads(listed.stdout)] == expected, listed.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == expected[:3], table.stderr


def test_gitops_check_drift_queues_a_check_and_gitops_status_shows_the_answer(
        live_server, repository, staging, origin, make_release, tmp_path):
    from pipelines import promotion
    from pipelines.models import Deployment
    from tests.conftest import burst_portal_worker

    reality = tmp_path / "reality"
    text = (f"environments:\n  staging:\n    steps:\n      - run: echo $GITOPS_VERSION > {reality}\n"
            f"    drift:\n      - run: 'test \"$(cat {reality})\" = \"$GITOPS_VERSION\" || exit 2'\n")
    origin.write(".gitops.yml", text)
    promotion.promote(make_release(repository, "v1", pipeline=text, commit_sha=origin.commit("v1")), staging, by=None)
    burst_portal_worker(("git", "deploy", "drift"))
    assert Deployment.objects.get().status == "succeeded"
    reality.write_text("changed by hand\n")
    deployer = issue("ci-deploy", Scope.READ, Scope.DEPLOY, service=True, grant=True)

    asked = gitops(live_server, deployer, "check-drift", "shop", "staging")
    assert asked.returncode == 0 and "is queued" in asked.stdout, asked.stderr
    burst_portal_worker(("drift",))
    shown = gitops(live_server, deployer, "status", "shop")
    assert "drifted" in next(line for line in shown.stdout.splitlines() if "staging" in line), shown.stdout

