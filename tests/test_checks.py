"""Checks: the `checks:` steps run for new commits on branches and for pull/merge requests, on their own
queue, with the checks' own secrets only, and never deploy.

Real git repositories (a feature branch, a pull request published as `refs/pull/<n>/head` the way GitHub
does), `pollrepos`, real rq workers draining each queue, real steps."""

import hashlib
import hmac
import json

import django_rq
import pytest
from django.test import Client
from django.urls import reverse

from pipelines import tracking
from pipelines.models import Check, CheckLogChunk, CheckRef, Deployment, DeploymentLogChunk, Release, Repository
from tests.conftest import git

pytestmark = pytest.mark.django_db(transaction=True)

ENVIRONMENT_SECRET = "staging-db-password-e41f07"
CHECK_SECRET = "registry-token-9c2d7be1"

MAIN_PIPELINE = """\
checks:
  steps:
    - name: test
      run: ./check.sh
environments:
  production:
    steps:
      - run: ./deploy.sh
"""

# What a branch adds: a staging environment whose step would leave a marker if it ever ran.
BRANCH_STAGING = """\
  staging:
    variables: {{REGION: eu-west-1}}
    steps:
      - run: touch {marker}
"""

# `${DB_PASSWORD+set}` tells unset from set-but-empty; `env` would show an environment secret in the log if a
# check ever got one (the check's log does not know it as a secret, so would not mask it).
CHECK = """\
#!/usr/bin/env bash
set -eo pipefail
echo "checking $GITOPS_REF at $GITOPS_COMMIT"
if [ -n "${DB_PASSWORD+set}" ]; then echo "DB_PASSWORD is set"; else echo "DB_PASSWORD is unset"; fi
echo "registry token: ${REGISTRY_TOKEN:-none}"
env | sort
if [ -f must-fail ]; then echo "the tests failed"; exit 3; fi
"""


def poll(repository):
    """One poll now, due or not (as `pollrepos` does for a due repository)."""
    tracking.poll_repository(Repository.objects.get(pk=repository.pk))


def checks_queue_length():
    return django_rq.get_queue("checks").count


def check_log(check):
    return "".join(CheckLogChunk.objects.filter(check_run=check).order_by("seq").values_list("text", flat=True))


@pytest.fixture
def checked_origin(origin):
    origin.write(".gitops.yml", MAIN_PIPELINE)
    origin.write("check.sh", CHECK, executable=True)
    origin.commit("add checks")
    return origin


def commit_on_branch(repo, branch, message, files=None, *, keep_branch=True):
    """A commit on `branch` (made from main, or continued), then back on main. Returns its sha."""
    existing = git(repo.path, "branch", "--list", branch)
    git(repo.path, "checkout", "-q", *([branch] if existing else ["-b", branch]))
    for path, text in (files or {}).items():
        repo.write(path, text, executable=path.endswith(".sh"))
    sha = repo.commit(message)
    git(repo.path, "checkout", "-q", "main")
    if not keep_branch:
        git(repo.path, "branch", "-q", "-D", branch)
    return sha


def open_pull_request(repo, number, sha):
    """What GitHub publishes for a pull request, even one from a fork: its head under refs/pull/<n>/head."""
    git(repo.path, "update-ref", f"refs/pull/{number}/head", sha)


def test_it_checks_a_branch_and_a_pull_request_on_the_checks_queue_and_deploys_nothing(
        checked_origin, repository, staging, run_workers, run_check_workers, tmp_path):
    marker = tmp_path / "deployed-from-a-branch"
    feature = commit_on_branch(checked_origin, "feature/x", "feature adds staging",
                               {".gitops.yml": MAIN_PIPELINE + BRANCH_STAGING.format(marker=marker)})
    pull = commit_on_branch(checked_origin, "fork-work", "from a fork", {"README": "hi\n"}, keep_branch=False)
    open_pull_request(checked_origin, 7, pull)

    poll(repository)

    refs = {ref.name: ref for ref in CheckRef.objects.filter(repository=repository)}
    assert set(refs) == {"feature/x", "pull/7"}  # main is the release branch: its commits are no check's
    assert refs["pull/7"].kind == "pull_request" and refs["pull/7"].number == 7 and refs["pull/7"].head_sha == pull
    checks = {check.ref_name: check for check in Check.objects.all()}
    # Polling cannot tell a fork's pull request: it waits for a deployer (tests/test_checks_from_forks.py).
    assert {name: (c.commit_sha, c.status) for name, c in checks.items()} == {
        "feature/x": (feature, "queued"), "pull/7": (pull, "waiting")}
    assert checks_queue_length() == 1

    run_workers()  # the git and deploy queues: no check runs there
    assert set(Check.objects.values_list("status", flat=True)) == {"queued", "waiting"}

    checks["pull/7"].allow_to_run(by="a deployer")
    run_check_workers()
    for check in Check.objects.all():
        assert check.status == "succeeded", (check.ref_name, check.error, check_log(check))
        assert check.steps == ["test"] and check.duration is not None
        assert f"checking {check.ref_name} at {check.commit_sha}" in check_log(check)
    # The branch's file names staging: ignored for a branch. Nothing was released or deployed, no step of it ran,
    # and its variables reached no check (the check prints its whole environment).
    assert not marker.exists()
    assert "REGION=" not in check_log(checks["feature/x"])
    assert not Deployment.objects.exists() and not Release.objects.exists()


def test_a_check_never_receives_an_environment_secret_but_gets_its_own_masked(
        checked_origin, repository, staging, make_secret, make_check_secret, run_check_workers):
    make_secret(staging, "DB_PASSWORD", ENVIRONMENT_SECRET)
    make_check_secret(repository, "REGISTRY_TOKEN", CHECK_SECRET)
    commit_on_branch(checked_origin, "feature/x", "work")

    poll(repository)
    run_check_workers()

    check = Check.objects.get()
    log = check_log(check)
    assert check.status == "succeeded", log
    assert "DB_PASSWORD is unset" in log
    assert "registry token: ***" in log  # it had the value: masked where it printed it
    assert CHECK_SECRET not in log and ENVIRONMENT_SECRET not in log
    assert not DeploymentLogChunk.objects.exists()


def test_a_newer_commit_cancels_the_check_still_queued_for_an_older_one(checked_origin, repository, run_check_workers):
    older = commit_on_branch(checked_origin, "feature/x", "first try")
    poll(repository)
    newer = commit_on_branch(checked_origin, "feature/x", "second try")
    poll(repository)

    assert Check.objects.get(commit_sha=older).status == "cancelled"
    assert "newer commit" in Check.objects.get(commit_sha=older).error
    run_check_workers()
    assert Check.objects.get(commit_sha=newer).status == "succeeded"
    assert Check.objects.get(commit_sha=older).started_at is None  # never ran
    assert CheckRef.objects.get(name="feature/x").head_sha == newer


def test_a_failing_check_step_fails_the_check_with_its_log(checked_origin, repository, run_check_workers):
    commit_on_branch(checked_origin, "feature/broken", "break it", {"must-fail": "yes\n"})
    poll(repository)
    run_check_workers()

    check = Check.objects.get()
    assert check.status == "failed" and check.exit_code == 3
    assert check.error == "Check step 'test' exited with status 3."
    assert "the tests failed" in check_log(check)


# --- pull request webhooks ---------------------------------------------------------------------------

SECRET = "correct horse battery staple"


def deliver_pull_request(client, repository, *, number, title, login, sha, state="open", delivery="gh-pr-1"):
    """A pull request from the repository itself (its head and base repository are the same)."""
    body = json.dumps({"action": "opened" if state == "open" else "closed", "number": number, "pull_request": {
        "number": number, "title": title, "state": state, "user": {"login": login},
        "head": {"sha": sha, "repo": {"full_name": "acme/shop"}}, "base": {"repo": {"full_name": "acme/shop"}}}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return client.post(reverse("webhook", args=[repository.name]), data=body, content_type="application/json",
                       headers={"X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery,
                                "X-GitHub-Event": "pull_request"})


def test_a_pull_request_webhook_records_its_title_and_author_and_queues_its_check(
        checked_origin, repository, run_check_workers, alice):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET)
    pull = commit_on_branch(checked_origin, "erin/image", "build the image", keep_branch=False)
    open_pull_request(checked_origin, 9, pull)
    closed = commit_on_branch(checked_origin, "old", "abandoned", keep_branch=False)
    open_pull_request(checked_origin, 3, closed)
    commit_on_branch(checked_origin, "feature/x", "a branch")

    hook = Client(enforce_csrf_checks=True)
    assert deliver_pull_request(hook, repository, number=9, title="Build the image", login="erin", sha=pull).status_code == 202
    assert deliver_pull_request(hook, repository, number=3, title="Abandoned idea", login="frank", sha=closed,
                                state="closed", delivery="gh-pr-2").status_code == 202

    ref = CheckRef.objects.get(name="pull/9")
    assert (ref.kind, ref.number, ref.title, ref.author, ref.head_sha, ref.is_open) == (
        "pull_request", 9, "Build the image", "erin", pull, True)
    assert CheckRef.objects.get(name="pull/3").is_open is False
    check = Check.objects.get()  # a closed pull request queues nothing
    assert (check.ref_name, check.commit_sha, check.status) == ("pull/9", pull, "queued")
    assert checks_queue_length() == 1

    run_check_workers()  # no poll yet: the worker fetches the commit itself
    check.refresh_from_db()
    assert check.status == "succeeded", check_log(check)

    poll(repository)  # finds the branch; keeps what the webhooks said about the pull requests
    assert CheckRef.objects.get(name="pull/9").title == "Build the image"
    assert CheckRef.objects.get(name="pull/3").is_open is False

    page = Client()
    page.force_login(alice)
    html = page.get(reverse("repository_detail", args=[repository.name])).content.decode()
    assert "Build the image" in html and "erin" in html
    # Open pull requests first, then branches, then closed ones.
    assert html.index("Build the image") < html.index("feature/x") < html.index("Abandoned idea")
    assert reverse("check_detail", args=[check.pk]) in html

    detail = page.get(reverse("check_detail", args=[check.pk])).content.decode()
    assert "Build the image" in detail and "checking pull/9" in detail


# --- a check's result carries over to the release of the same commit -----------------------------------

IMAGE_PIPELINE = """\
checks:
  steps:
    - name: build image
      run: ./build-image.sh
    - name: test image
      run: tar -tzf image.tar.gz | grep -q '^rootfs/etc/os-release$'
environments:
  staging:
    steps:
      - run: ./deploy.sh
"""

BUILD_IMAGE = """\
#!/usr/bin/env bash
set -eo pipefail
mkdir -p rootfs/etc
echo 'ID=portal-image' > rootfs/etc/os-release
tar -czf image.tar.gz rootfs
echo "image: $(sha256sum image.tar.gz | cut -d' ' -f1)"
"""


def test_a_pull_requests_image_check_shows_on_mains_release_after_the_merge(
        make_git_repo, staging, run_check_workers, alice):
    origin = make_git_repo(pipeline=IMAGE_PIPELINE)
    repository = Repository.objects.create(name="image", url=origin.url, release_from="commits")
    poll(repository)  # the first release: main as it is
    pull = commit_on_branch(origin, "image-work", "build a tarball image", {"build-image.sh": BUILD_IMAGE},
                            keep_branch=False)
    open_pull_request(origin, 12, pull)
    poll(repository)
    Check.objects.get(ref_name="pull/12").allow_to_run(by=alice)  # found by polling: it waits for a deployer
    run_check_workers()
    check = Check.objects.get(ref_name="pull/12")
    assert check.status == "succeeded", check_log(check)
    assert check.steps == ["build image", "test image"] and "image: " in check_log(check)

    git(origin.path, "merge", "-q", "--ff-only", pull)
    poll(repository)

    release = Release.objects.get(repository=repository, commit_sha=pull)
    assert Check.objects.refusal_for(release) == ""  # passed, without running again for main
    assert Check.objects.filter(commit_sha=pull).count() == 1
    page = Client()
    page.force_login(alice)
    html = page.get(reverse("release_detail", args=[repository.name, release.version])).content.decode()
    checks_section = html[html.index('id="checks"'):]
    assert "pull/12" in checks_section and "status-succeeded" in checks_section
    assert reverse("check_detail", args=[check.pk]) in checks_section


def test_a_gitlab_merge_request_event_queues_the_check_of_its_head(checked_origin, repository, run_check_workers):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET)
    head = commit_on_branch(checked_origin, "mr-work", "merge request work", keep_branch=False)
    git(checked_origin.path, "update-ref", "refs/merge-requests/5/head", head)  # as GitLab publishes it
    body = json.dumps({"object_kind": "merge_request", "user": {"username": "gina"}, "object_attributes": {
        "iid": 5, "title": "Tune the image", "state": "opened", "last_commit": {"id": head},
        "source_project_id": 7, "target_project_id": 7}}).encode()  # from the project itself

    response = Client(enforce_csrf_checks=True).post(
        reverse("webhook", args=[repository.name]), data=body, content_type="application/json",
        headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Event-UUID": "mr-1"})

    assert response.status_code == 202
    ref = CheckRef.objects.get(name="merge-requests/5")
    assert (ref.number, ref.title, ref.author, ref.is_open) == (5, "Tune the image", "gina", True)
    run_check_workers()
    check = Check.objects.get(ref_name="merge-requests/5")
    assert (check.commit_sha, check.status) == (head, "succeeded"), check_log(check)


def test_the_reconciler_wakes_a_queued_check_whose_job_was_lost(checked_origin, repository):
    from pipelines import reconciler

    commit_on_branch(checked_origin, "feature/x", "work")
    poll(repository)
    django_rq.get_queue("checks").empty()  # Redis lost the job

    assert reconciler.reconcile()["checks_requeued"] == 1
    assert django_rq.get_queue("checks").job_ids == [Check.objects.get().job_id]


def test_a_first_poll_checks_only_the_newest_pull_requests(checked_origin, repository, monkeypatch):
    monkeypatch.setattr(tracking, "MAX_NEW_CHECKS", 2)
    heads = {number: commit_on_branch(checked_origin, f"fork-{number}", f"work {number}", keep_branch=False)
             for number in (1, 2, 3)}
    for number, head in heads.items():
        open_pull_request(checked_origin, number, head)

    poll(repository)

    assert CheckRef.objects.filter(repository=repository).count() == 3  # all listed on the Branches tab
    assert sorted(Check.objects.values_list("ref_name", flat=True)) == ["pull/2", "pull/3"]


def test_a_commit_that_heads_several_refs_is_checked_once(checked_origin, repository, alice):
    head = commit_on_branch(checked_origin, "feature/y", "work")
    for number in (4, 5):
        open_pull_request(checked_origin, number, head)

    poll(repository)

    check = Check.objects.get()  # the branch came first: its check serves the pull requests too
    assert (check.ref_name, check.commit_sha, check.status) == ("feature/y", head, "queued")
    page = Client()
    page.force_login(alice)
    branches = page.get(reverse("repository_detail", args=[repository.name])).content.decode()
    assert branches.count(reverse("check_detail", args=[check.pk])) == 3, "one check on each of its three rows"


# --- the checks section, and what the reporter relies on ---------------------------------------------------


def test_the_checks_section_is_parsed_like_a_build_section_and_its_errors_name_the_line():
    from pipelines.pipeline_file import PipelineFileError, parse_pipeline

    spec = parse_pipeline(MAIN_PIPELINE)
    assert [step.name for step in spec.checks.steps] == ["test"] and spec.checks.variables == {}
    with pytest.raises(PipelineFileError, match=r"line 2: unknown key 'preview' in the 'checks' section"):
        parse_pipeline("checks:\n  preview: [{run: x}]\n  steps: [{run: x}]\nenvironments:\n  production: {steps: [{run: x}]}\n")


def test_every_change_of_a_checks_status_reaches_the_git_host_as_a_commit_status(repository, git_host_api, settings):
    """queued and running → pending, succeeded → success, each with a link to the check's page, in order;
    a repository that reports nothing schedules nothing."""
    from pipelines import followups
    from pipelines.models import FollowUp

    unreported = Check.objects.queue_for(repository, commit_sha="b" * 40, ref_name="feature/y")
    assert unreported is not None and not FollowUp.objects.filter(kind="check.report").exists()

    settings.GITOPS_BASE_URL = "https://portal.example"
    repository.url, repository.api_url = "https://github.com/acme/shop.git", git_host_api.url
    repository.set_api_token("ghp_check_reporting_token_123")
    repository.save()
    check = Check.objects.queue_for(repository, commit_sha="a" * 40, ref_name="feature/x")
    check.claim(worker_name="test-worker")
    check.succeed()
    for report in FollowUp.objects.filter(kind="check.report").order_by("id"):
        assert followups.carry_out(report.pk, before_due=True)
    sent = [(request["path"], request["json"]["state"], request["json"]["context"]) for request in git_host_api.requests]
    assert sent == [(f"/repos/acme/shop/statuses/{'a' * 40}", state, "gitops/checks")
                    for state in ("pending", "pending", "success")]
    assert git_host_api.requests[-1]["json"]["target_url"] == f"https://portal.example{check.get_absolute_url()}"
