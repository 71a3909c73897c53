"""Checks end to end, reported to the git host: what a pull/merge request's author sees on GitHub or GitLab.

1. Machine images on "GitHub": a pull request's commit builds and tests a tarball image as its check, and the
   check's states reach the (stood-in) GitHub API as commit statuses: pending, then success; a pull request
   with a broken image fails its check and GitHub hears `failure`. After the merge, `main`'s release shows the
   check that passed (without running it again) and its build publishes the image.
2. Infrastructure on "GitLab": a merge request's `terraform plan` runs as its check (Terraform's built-in
   `terraform_data` where a `terraform` binary is on the machine, and always a stand-in script of the same shape),
   GitLab hears its states, the Branches tab shows the merge request with its check, the check's page shows
   the plan, and staging is untouched.

Real git repositories (pull/merge requests published as `refs/pull/<n>/head`, `refs/merge-requests/<n>/head`
as the hosts do), real polls and signed webhooks, real rq workers, real steps, a real local HTTP server for
the host's API (tests/conftest.py: git_host_api)."""

import hashlib
import json
import shutil

import pytest
from django.test import Client
from django.urls import reverse

from pipelines.models import Build, Check, CheckRef, Deployment, Release, Repository, Target
from tests.conftest import git
from tests.test_checks import check_log, commit_on_branch, open_pull_request, poll

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ghp_e2eChecksReportingT0ken7d1c"
PORTAL = "https://portal.example"

# --- 1. machine images on GitHub ----------------------------------------------------------------------------

# The same two scripts build and test the image in a check (no artifact store: the checkout) and in the
# release's build (into $GITOPS_ARTIFACTS, its name and checksum as outputs for the publish stage).
IMAGE_PIPELINE = """\
checks:
  steps:
    - name: build image
      run: ./build-image.sh
    - name: test image
      run: ./test-image.sh
build:
  steps:
    - name: build image
      run: ./build-image.sh
    - name: test image
      run: ./test-image.sh
environments:
  staging:
    steps:
      - name: publish
        run: ./publish.sh
"""

BUILD_IMAGE = """\
#!/usr/bin/env bash
set -eo pipefail
out="${GITOPS_ARTIFACTS:-$PWD}"
mkdir -p rootfs/etc
cp os-release rootfs/etc/os-release
image="images-${GITOPS_VERSION:-check}.tar.gz"
tar -C rootfs --sort=name --mtime=@0 --owner=0 --group=0 -czf "$out/$image" .
sum="$(sha256sum "$out/$image" | cut -d' ' -f1)"
if [ -n "$GITOPS_OUTPUTS" ]; then printf 'image=%s\\nsha256=%s\\n' "$image" "$sum" >> "$GITOPS_OUTPUTS"; fi
echo "built $image sha256 $sum"
"""

TEST_IMAGE = """\
#!/usr/bin/env bash
set -eo pipefail
image="$(ls "${GITOPS_ARTIFACTS:-$PWD}"/images-*.tar.gz)"
tar -xzOf "$image" ./etc/os-release | grep -q '^ID=acme-os$' || { echo "image test failed: not acme-os"; exit 1; }
echo "image test passed"
"""

PUBLISH = """\
#!/usr/bin/env bash
set -eo pipefail
image="$GITOPS_ARTIFACTS/$GITOPS_OUTPUT_IMAGE"
test "$(sha256sum "$image" | cut -d' ' -f1)" = "$GITOPS_OUTPUT_SHA256" || { echo "not the image that was built"; exit 1; }
cp "$image" "{registry}/$GITOPS_OUTPUT_IMAGE"
echo "published $GITOPS_OUTPUT_IMAGE"
"""


def statuses_sent(stand_in, path):
    """(state, context or name) of each status the stand-in API was sent for `path`, in order."""
    return [(request["json"]["state"], request["json"].get("context") or request["json"].get("name"))
            for request in stand_in.requests if request["method"] == "POST" and request["path"] == path]


def test_a_pull_requests_image_check_reaches_github_and_after_the_merge_main_publishes_that_image(
        make_git_repo, staging, git_host_api, run_workers, run_check_workers, run_follow_ups, alice, tmp_path,
        settings):
    settings.GITOPS_BASE_URL = PORTAL
    registry = tmp_path / "registry"
    registry.mkdir()
    origin = make_git_repo(name="images", pipeline=IMAGE_PIPELINE, deploy_script=None)
    origin.write("os-release", "ID=acme-os\nVERSION_ID=1\n")
    origin.write("build-image.sh", BUILD_IMAGE, executable=True)
    origin.write("test-image.sh", TEST_IMAGE, executable=True)
    origin.write("publish.sh", PUBLISH.replace("{registry}", str(registry)), executable=True)
    origin.commit("the image pipeline")
    # Fetched from a local path; reported to "GitHub" at the stand-in's address, as for a GitHub Enterprise.
    repository = Repository.objects.create(name="images", url=origin.url, release_from="commits", git_host="github",
                                           api_url=git_host_api.url, host_project="acme/images")
    repository.set_api_token(TOKEN)
    repository.save()
    assert repository.reports_commit_statuses
    poll(repository)  # main as it is: its first release, built and published
    run_workers()
    first = Release.objects.get(repository=repository)
    assert Build.objects.get(release=first).status == "succeeded", Build.objects.get(release=first).log_since(0)[0]
    assert git_host_api.requests == [], "a release's build is no check: nothing reported"

    # --- a pull request that bumps the image: its check passes, and GitHub hears pending then success ---
    good = commit_on_branch(origin, "bump-image", "image version 2", {"os-release": "ID=acme-os\nVERSION_ID=2\n"},
                            keep_branch=False)
    open_pull_request(origin, 7, good)
    poll(repository)
    check = Check.objects.get(ref_name="pull/7")
    # Found by polling, which cannot tell a fork: it waits for a deployer, and GitHub hears so.
    assert (check.commit_sha, check.status) == (good, "waiting")
    run_follow_ups()
    good_path = f"/repos/acme/images/statuses/{good}"
    assert statuses_sent(git_host_api, good_path) == [("pending", "gitops/checks")], "waiting: pending at once"
    deployer = Client()
    deployer.force_login(alice)
    deployer.post(reverse("check_run", args=[check.pk]))

    run_check_workers()
    check.refresh_from_db()
    assert check.status == "succeeded", check_log(check)
    assert check.steps == ["build image", "test image"]
    assert "built images-check.tar.gz" in check_log(check) and "image test passed" in check_log(check)
    run_follow_ups()
    assert statuses_sent(git_host_api, good_path) == [
        ("pending", "gitops/checks"), ("pending", "gitops/checks"), ("pending", "gitops/checks"),
        ("success", "gitops/checks")]
    last = [request for request in git_host_api.requests if request["path"] == good_path][-1]
    assert last["json"]["target_url"] == f"{PORTAL}{reverse('check_detail', args=[check.pk])}"
    assert last["json"]["description"] == "Passed"
    assert last["headers"]["Authorization"] == f"Bearer {TOKEN}"

    # --- another pull request breaks the image: its check fails, and GitHub hears failure ---------------
    broken = commit_on_branch(origin, "other-os", "switch the image to another OS", {"os-release": "ID=other-os\n"},
                              keep_branch=False)
    open_pull_request(origin, 8, broken)
    poll(repository)
    deployer.post(reverse("check_run", args=[Check.objects.get(ref_name="pull/8").pk]))
    run_check_workers()
    run_follow_ups()
    failed = Check.objects.get(ref_name="pull/8")
    assert failed.status == "failed" and failed.error == "Check step 'test image' exited with status 1."
    assert "image test failed: not acme-os" in check_log(failed)
    broken_path = f"/repos/acme/images/statuses/{broken}"
    assert statuses_sent(git_host_api, broken_path) == [
        ("pending", "gitops/checks"), ("pending", "gitops/checks"), ("pending", "gitops/checks"),
        ("failure", "gitops/checks")]
    assert [r for r in git_host_api.requests if r["path"] == broken_path][-1]["json"]["description"] == failed.error

    # --- the good pull request is merged (fast-forward): main's release has its check, and is published ---
    git(origin.path, "merge", "-q", "--ff-only", good)
    poll(repository)
    release = Release.objects.get(repository=repository, commit_sha=good)
    assert Check.objects.filter(commit_sha=good).count() == 1, "the check passed for this commit: not run again"
    assert Check.objects.refusal_for(release) == ""
    page = Client()
    page.force_login(alice)
    html = page.get(reverse("release_detail", args=[repository.name, release.version])).content.decode()
    checks_section = html[html.index('id="checks"'):]
    assert "pull/7" in checks_section and "status-succeeded" in checks_section
    assert reverse("check_detail", args=[check.pk]) in checks_section

    run_workers()  # the build, then the publish stage its success promotes the release to
    build = Build.objects.get(release=release)
    assert build.status == "succeeded", build.log_since(0)[0]
    published_by = Deployment.objects.get(release=release, environment=staging)
    assert published_by.status == "succeeded", published_by.log_since(0)[0]
    image = f"images-{release.version}.tar.gz"
    assert build.outputs["image"] == image
    assert hashlib.sha256((registry / image).read_bytes()).hexdigest() == build.outputs["sha256"]
    assert not Release.objects.filter(commit_sha=broken).exists()
    assert not Check.objects.filter(commit_sha=good).exclude(pk=check.pk).exists()
    run_follow_ups()
    assert statuses_sent(git_host_api, good_path)[-1] == ("success", "gitops/checks"), "nothing after the merge"


# --- 2. infrastructure on GitLab ----------------------------------------------------------------------------

TERRAFORM = shutil.which("terraform")

INFRA_PIPELINE = """\
checks:
  variables: {{STATE_DIR: "{state}"}}
  steps:
    - name: plan
      run: ./tf.sh plan
environments:
  staging:
    variables: {{STATE_DIR: "{state}"}}
    steps:
      - name: apply
        run: ./tf.sh apply-now
"""

MAIN_TF = """\
terraform {
  backend "local" {}
}

variable "release" {
  type = string
}

resource "terraform_data" "network" {
  input = var.release
}
"""

# A check plans against staging's state (outside the checkout, as a remote state would be) and changes nothing.
TF_TERRAFORM = """\
#!/usr/bin/env bash
set -eo pipefail
export TF_IN_AUTOMATION=1
env="${GITOPS_ENVIRONMENT:-staging}"
terraform init -input=false -no-color -backend-config="path=$STATE_DIR/$env.tfstate" >/dev/null
case "$1" in
  plan)
    terraform plan -input=false -no-color -var "release=${GITOPS_VERSION:-$GITOPS_COMMIT}" ;;
  apply-now)
    terraform apply -input=false -no-color -auto-approve -var "release=$GITOPS_VERSION" ;;
esac
"""

TF_STAND_IN = """\
#!/usr/bin/env bash
set -eo pipefail
state="$STATE_DIR/${GITOPS_ENVIRONMENT:-staging}.tfstate"
current="$(cat "$state" 2>/dev/null || echo none)"
case "$1" in
  plan)
    echo "Plan: release $current -> ${GITOPS_VERSION:-$GITOPS_COMMIT}" ;;
  apply-now)
    echo "$GITOPS_VERSION" > "$state"
    echo "Apply complete! release $GITOPS_VERSION" ;;
esac
"""

WEBHOOK_SECRET = "gitlab-webhook-secret-51c0"


@pytest.mark.parametrize("tool", [
    pytest.param("terraform", marks=pytest.mark.skipif(TERRAFORM is None, reason="no terraform binary on this machine")),
    "stand-in",
])
def test_a_merge_requests_plan_runs_as_its_check_reaches_gitlab_and_is_on_the_branches_tab_and_staging_is_untouched(
        tool, make_git_repo, staging, git_host_api, run_check_workers, run_follow_ups, alice, tmp_path, settings):
    print(f"infrastructure tool: {tool}" + (f" ({TERRAFORM})" if tool == "terraform" else " (bash stand-in script)"))
    settings.GITOPS_BASE_URL = PORTAL
    state_dir = tmp_path / "infrastructure-state"
    state_dir.mkdir()
    origin = make_git_repo(name="network", pipeline=INFRA_PIPELINE.format(state=state_dir), deploy_script=None)
    origin.write("main.tf", MAIN_TF)
    origin.write("tf.sh", TF_TERRAFORM if tool == "terraform" else TF_STAND_IN, executable=True)
    origin.commit("the network")
    repository = Repository.objects.create(name="network", url=origin.url, git_host="gitlab",
                                           api_url=f"{git_host_api.url}/api/v4", host_project="infra/network",
                                           webhook_secret=WEBHOOK_SECRET)
    repository.set_api_token(TOKEN)
    repository.save()
    poll(repository)

    # A merge request, as GitLab publishes it and announces it.
    head = commit_on_branch(origin, "wider-subnet", "widen the subnet", {"main.tf": MAIN_TF + "# /22\n"},
                            keep_branch=False)
    git(origin.path, "update-ref", "refs/merge-requests/3/head", head)
    body = json.dumps({"object_kind": "merge_request", "user": {"username": "gina"}, "object_attributes": {
        "iid": 3, "title": "Widen the staging subnet", "state": "opened", "last_commit": {"id": head},
        "source_project_id": 12, "target_project_id": 12}}).encode()  # from the project itself
    response = Client(enforce_csrf_checks=True).post(
        reverse("webhook", args=[repository.name]), data=body, content_type="application/json",
        headers={"X-Gitlab-Token": WEBHOOK_SECRET, "X-Gitlab-Event": "Merge Request Hook",
                 "X-Gitlab-Event-UUID": "mr-3"})
    assert response.status_code == 202
    poll(repository)  # finds refs/merge-requests/3/head too: still one check, the webhook's title kept
    check = Check.objects.get()
    assert (check.ref_name, check.commit_sha, check.status) == ("merge-requests/3", head, "queued")

    run_check_workers()
    run_follow_ups()

    check.refresh_from_db()
    log = check_log(check)
    assert check.status == "succeeded", log
    assert check.steps == ["plan"]
    if tool == "terraform":
        assert "Plan: 1 to add, 0 to change, 0 to destroy." in log, log
    else:
        assert f"Plan: release none -> {head}" in log, log
    status_path = f"/api/v4/projects/infra%2Fnetwork/statuses/{head}"
    assert statuses_sent(git_host_api, status_path) == [
        ("pending", "gitops/checks"), ("pending", "gitops/checks"), ("success", "gitops/checks")]
    last = [request for request in git_host_api.requests if request["path"] == status_path][-1]
    assert last["headers"]["Private-Token"] == TOKEN
    assert last["json"]["target_url"] == f"{PORTAL}{reverse('check_detail', args=[check.pk])}"
    # The plan reaches the merge request as its one note (tests/test_check_review_loop.py: updated, not repeated).
    notes_path = "/api/v4/projects/infra%2Fnetwork/merge_requests/3/notes"
    assert {request["path"] for request in git_host_api.requests} == {status_path, notes_path}
    [note] = [request["json"]["body"] for request in git_host_api.requests if request["path"] == notes_path]
    assert ("Plan: 1 to add" in note) if tool == "terraform" else (f"Plan: release none -> {head}" in note)

    page = Client()
    page.force_login(alice)
    html = page.get(reverse("repository_detail", args=[repository.name])).content.decode()
    branches = html[html.index('id="branches"'):]
    assert "#3</span> Widen the staging subnet" in branches and "gina" in branches
    assert reverse("check_detail", args=[check.pk]) in branches and "status-succeeded" in branches
    detail = page.get(reverse("check_detail", args=[check.pk])).content.decode()
    assert "Widen the staging subnet" in detail
    assert ("Plan: 1 to add" in detail) if tool == "terraform" else (f"Plan: release none -&gt; {head}" in detail)

    # Staging is untouched: nothing was released or deployed, nothing applied.
    assert not Release.objects.exists() and not Deployment.objects.exists()
    assert not Target.objects.filter(repository=repository, environment=staging, current_release__isnull=False).exists()
    assert not (state_dir / "staging.tfstate").exists()
    assert CheckRef.objects.get(name="merge-requests/3").title == "Widen the staging subnet"
