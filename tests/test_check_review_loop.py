"""The IaC review loop on the git host (issue 20, point 4): a check's commit status carries the one-line summary
the check wrote to $GITOPS_OUTPUTS, the full plan (its log) reaches the pull/merge request as one comment that
is updated rather than repeated, a commit that is both a branch head and a pull request's head is checked once,
and a check keeps its outputs and artifacts (for download) like a build, so one script serves both.

Real git repositories, real polls and signed webhooks, the real PortalWorker, and a real local HTTP server
standing in for GitHub's and GitLab's APIs (tests/conftest.py: git_host_api)."""

import hashlib
import hmac
import io
import json
import tarfile

import pytest
from django.test import Client
from django.urls import reverse

from pipelines.models import Build, Check, CheckRef, Release, Repository
from tests.conftest import git
from tests.test_checks import check_log, commit_on_branch, open_pull_request, poll

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ghp_reviewLoopT0ken0f3b"
PORTAL = "https://portal.example"
SECRET = "review-loop-webhook-secret"

# One script for the check and the build: it plans, says the plan in one line, and keeps the plan file.
PIPELINE = """\
checks:
  steps:
    - name: plan
      run: ./plan.sh
build:
  steps:
    - name: plan
      run: ./plan.sh
environments:
  staging:
    steps:
      - run: echo "applying $GITOPS_OUTPUT_SUMMARY"
"""

PLAN = """\
#!/usr/bin/env bash
set -eo pipefail
changes="$(cat changes)"
echo "Terraform will perform the following actions:"
echo '  # terraform_data.network will be updated in-place'
echo "Plan: 0 to add, $changes to change, 0 to destroy."
echo "summary=Plan: $changes to change" >> "$GITOPS_OUTPUTS"
echo "the saved plan of $changes" > "$GITOPS_ARTIFACTS/plan.txt"
"""

HOSTS = {
    "github": {
        "api": "", "project": "acme/infra", "ref": "pull/{n}",
        "status": "/repos/acme/infra/statuses/{sha}",
        "create": "/repos/acme/infra/issues/{n}/comments", "update": "/repos/acme/infra/issues/comments/{id}",
        "update_method": "PATCH",
    },
    "gitlab": {
        "api": "/api/v4", "project": "infra/network", "ref": "merge-requests/{n}",
        "status": "/api/v4/projects/infra%2Fnetwork/statuses/{sha}",
        "create": "/api/v4/projects/infra%2Fnetwork/merge_requests/{n}/notes",
        "update": "/api/v4/projects/infra%2Fnetwork/merge_requests/{n}/notes/{id}", "update_method": "PUT",
    },
}


def announce(repository, host, origin, number, sha, delivery):
    """Publish the request's head as the host does and deliver its signed webhook (from the repository itself)."""
    if host == "github":
        open_pull_request(origin, number, sha)
        body = json.dumps({"action": "synchronize", "number": number, "pull_request": {
            "number": number, "title": "Widen the subnet", "state": "open", "user": {"login": "erin"},
            "head": {"sha": sha, "repo": {"full_name": "acme/infra"}},
            "base": {"repo": {"full_name": "acme/infra"}}}}).encode()
        headers = {"X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
                   "X-GitHub-Delivery": delivery, "X-GitHub-Event": "pull_request"}
    else:
        git(origin.path, "update-ref", f"refs/merge-requests/{number}/head", sha)
        body = json.dumps({"object_kind": "merge_request", "user": {"username": "erin"}, "object_attributes": {
            "iid": number, "title": "Widen the subnet", "state": "opened", "last_commit": {"id": sha},
            "source_project_id": 12, "target_project_id": 12}}).encode()
        headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Event-UUID": delivery}
    response = Client(enforce_csrf_checks=True).post(reverse("webhook", args=[repository.name]), data=body,
                                                     content_type="application/json", headers=headers)
    assert response.status_code == 202


def sent(stand_in, method, path):
    return [request["json"] for request in stand_in.requests if (request["method"], request["path"]) == (method, path)]


def archive_members(response):
    data = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {member.name: tar.extractfile(member).read().decode() for member in tar if member.isfile()}


@pytest.mark.parametrize("host", ["github", "gitlab"])
def test_a_plan_reaches_the_pull_request_as_one_comment_updated_and_its_summary_as_the_status(
        host, make_git_repo, staging, git_host_api, run_workers, run_check_workers, run_follow_ups, alice, settings):
    settings.GITOPS_BASE_URL = PORTAL
    paths = HOSTS[host]
    origin = make_git_repo(name="infra", pipeline=PIPELINE, deploy_script=None)
    origin.write("plan.sh", PLAN, executable=True)
    origin.write("changes", "0\n")
    origin.commit("the network")
    repository = Repository.objects.create(name="infra", url=origin.url, release_from="commits", git_host=host,
                                           api_url=git_host_api.url + paths["api"], host_project=paths["project"],
                                           webhook_secret=SECRET)
    repository.set_api_token(TOKEN)
    repository.save()
    poll(repository)
    run_workers()  # main's release is built by the same script: its summary is a build output
    build = Build.objects.get(release=Release.objects.get(repository=repository))
    assert build.status == "succeeded" and build.outputs == {"summary": "Plan: 0 to change"}

    # The branch is pushed and its pull request opened: two refs, one head, one check.
    head = commit_on_branch(origin, "wider-subnet", "widen the subnet", {"changes": "1\n"})
    announce(repository, host, origin, 3, head, "first")
    poll(repository)
    ref_name = paths["ref"].format(n=3)
    assert {ref.name for ref in CheckRef.objects.filter(head_sha=head)} == {"wider-subnet", ref_name}
    check = Check.objects.get(commit_sha=head)
    assert check.status == "queued"

    run_check_workers()
    run_follow_ups()
    check.refresh_from_db()
    assert check.status == "succeeded", check_log(check)
    assert check.outputs == {"summary": "Plan: 1 to change"}
    status_path = paths["status"].format(sha=head)
    assert [body["description"] for body in sent(git_host_api, "POST", status_path)][-1] == "Plan: 1 to change"
    assert [body["state"] for body in sent(git_host_api, "POST", status_path)].count("success") == 1
    [comment] = sent(git_host_api, "POST", paths["create"].format(n=3))
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in comment["body"]
    assert "Plan: 1 to change" in comment["body"] and f"{PORTAL}{check.get_absolute_url()}" in comment["body"]
    comment_id = CheckRef.objects.get(name=ref_name).comment_id
    assert comment_id

    # The check's artifacts are kept with it, for download from its page.
    page = Client()
    page.force_login(alice)
    html = page.get(reverse("check_detail", args=[check.pk])).content.decode()
    assert reverse("check_artifacts", args=[check.pk]) in html and "Plan: 1 to change" in html
    download = page.get(reverse("check_artifacts", args=[check.pk]))
    assert download.status_code == 200 and download["X-Artifact-SHA256"] == check.artifact_sha256
    assert archive_members(download) == {"plan.txt": "the saved plan of 1\n"}

    # A new commit on the pull request: the same comment is updated, not a second one posted.
    newer = commit_on_branch(origin, "wider-subnet", "widen it more", {"changes": "2\n"})
    announce(repository, host, origin, 3, newer, "second")
    poll(repository)
    assert Check.objects.filter(commit_sha=newer).count() == 1
    run_check_workers()
    run_follow_ups()
    assert len(sent(git_host_api, "POST", paths["create"].format(n=3))) == 1, "one comment, never repeated"
    [updated] = sent(git_host_api, paths["update_method"], paths["update"].format(n=3, id=comment_id))
    assert "Plan: 0 to add, 2 to change, 0 to destroy." in updated["body"]
    assert [body["description"] for body in sent(git_host_api, "POST", paths["status"].format(sha=newer))][-1] == (
        "Plan: 2 to change")
    assert CheckRef.objects.get(name=ref_name).comment_id == comment_id
