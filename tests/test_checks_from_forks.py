"""Pull requests from forks: their checks get none of the repository's check secrets, run only sealed, and wait
until someone who may deploy presses "Run checks"; a pull request from the repository itself still runs at
once with its secrets. Only the git host can tell a fork (the webhook's payload): a pull request that polling
alone found is treated as one.

Real git repositories (pull requests published as `refs/pull/<n>/head`), signed webhooks, real rq workers
draining the checks queue in this process (bubblewrap or Landlock seals their steps), real steps."""

import hashlib
import hmac
import json

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from pipelines.models import AuditEvent, Check, CheckRef, Repository
from tests.test_checks import (CHECK_SECRET, SECRET, check_log, checked_origin, checks_queue_length,  # noqa: F401
                               commit_on_branch, open_pull_request, poll)

pytestmark = pytest.mark.django_db(transaction=True)

# The pipeline's check step (tests/test_checks.py, CHECK) prints "registry token: <value or none>"; this one
# also tries the portal's data directory.
CANARY = "portal-canary-6f1e20"


@pytest.fixture
def hooked(repository, make_check_secret):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET)
    make_check_secret(repository, "REGISTRY_TOKEN", CHECK_SECRET)
    canary = settings.GITOPS_DATA_DIR / "canary"
    canary.write_text(CANARY)
    canary.chmod(0o600)
    yield repository
    canary.unlink()


def github_pull_request(repository, *, number, sha, head_repo, base_repo="acme/shop", delivery):
    pull = {"number": number, "title": "Speed up the build", "state": "open", "user": {"login": "mallory"},
            "head": {"sha": sha, "repo": {"full_name": head_repo} if head_repo else None},
            "base": {"repo": {"full_name": base_repo}}}
    body = json.dumps({"action": "opened", "number": number, "pull_request": pull}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return Client(enforce_csrf_checks=True).post(
        reverse("webhook", args=[repository.name]), data=body, content_type="application/json",
        headers={"X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery, "X-GitHub-Event": "pull_request"})


def gitlab_merge_request(repository, *, number, sha, source, target, delivery):
    body = json.dumps({"object_kind": "merge_request", "user": {"username": "mallory"}, "object_attributes": {
        "iid": number, "title": "Speed up the build", "state": "opened", "last_commit": {"id": sha},
        "source_project_id": source, "target_project_id": target}}).encode()
    return Client(enforce_csrf_checks=True).post(
        reverse("webhook", args=[repository.name]), data=body, content_type="application/json",
        headers={"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Event-UUID": delivery})


def fork_pull_request(origin, number):
    """A commit that only the pull request holds (a fork's branch is not in the repository), whose check script
    also tries to read the portal's data directory."""
    probe = f"cat {settings.GITOPS_DATA_DIR}/canary 2>&1 || echo data-dir-refused\n"
    sha = commit_on_branch(origin, f"fork-{number}", "a contribution",
                           {"check.sh": origin.path.joinpath("check.sh").read_text() + probe}, keep_branch=False)
    open_pull_request(origin, number, sha)
    return sha


def run_checks(client, check):
    return client.post(reverse("check_run", args=[check.pk]))


def test_a_forks_pull_request_waits_for_a_deployer_then_runs_sealed_without_the_check_secrets(
        checked_origin, hooked, run_check_workers, alice, charlie):
    sha = fork_pull_request(checked_origin, 21)
    assert github_pull_request(hooked, number=21, sha=sha, head_repo="mallory/shop", delivery="pr-21").status_code == 202

    check = Check.objects.get(ref_name="pull/21")
    assert (check.status, check.from_fork) == ("waiting", True)
    assert CheckRef.objects.get(name="pull/21").from_fork is True
    assert checks_queue_length() == 0
    run_check_workers()
    assert Check.objects.get(pk=check.pk).status == "waiting", "nothing runs it before a deployer says so"

    outsider = Client()
    outsider.force_login(charlie)
    page = outsider.get(check.get_absolute_url()).content.decode()
    assert "Only people who may deploy may run them." in page and 'action="%s"' % reverse("check_run", args=[check.pk]) not in page
    assert run_checks(outsider, check).status_code == 403
    assert Check.objects.get(pk=check.pk).status == "waiting"

    deployer = Client()
    deployer.force_login(alice)
    assert "Run checks" in deployer.get(check.get_absolute_url()).content.decode()
    assert run_checks(deployer, check).status_code == 302
    check.refresh_from_db()
    assert check.status == "queued"
    allowed = AuditEvent.objects.get(action="check.queued", object_id=str(check.pk))
    assert allowed.actor == alice and allowed.details["from"] == "waiting"
    assert run_checks(deployer, check).status_code == 302  # a second press starts nothing more
    assert AuditEvent.objects.filter(action="check.queued", object_id=str(check.pk)).count() == 1

    run_check_workers()
    check.refresh_from_db()
    log = check_log(check)
    assert check.status == "succeeded", log
    assert "==> a pull request from a fork: no check secrets, sealed" in log
    assert "registry token: none" in log and CHECK_SECRET not in log
    assert "data-dir-refused" in log and CANARY not in log


def test_a_same_repository_pull_requests_check_runs_at_once_with_its_secrets(checked_origin, hooked, run_check_workers):
    sha = commit_on_branch(checked_origin, "acme-work", "a colleague's work")
    open_pull_request(checked_origin, 22, sha)
    assert github_pull_request(hooked, number=22, sha=sha, head_repo="acme/shop", delivery="pr-22").status_code == 202

    check = Check.objects.get(ref_name="pull/22")
    assert (check.status, check.from_fork) == ("queued", False)
    run_check_workers()
    check.refresh_from_db()
    log = check_log(check)
    assert check.status == "succeeded", log
    assert "registry token: ***" in log and "from a fork" not in log


def test_a_pull_request_found_by_polling_waits_until_a_webhook_says_it_is_from_this_repository(
        checked_origin, hooked, run_check_workers):
    sha = fork_pull_request(checked_origin, 23)
    poll(hooked)  # refs/pull/23/head: polling cannot tell a fork
    check = Check.objects.get(ref_name="pull/23")
    assert (check.status, check.from_fork) == ("waiting", True)
    assert CheckRef.objects.get(name="pull/23").from_fork is None
    assert "no webhook has said where it comes from" in _page_of(check)

    assert github_pull_request(hooked, number=23, sha=sha, head_repo="acme/shop", delivery="pr-23").status_code == 202
    check.refresh_from_db()
    assert (check.status, check.from_fork) == ("queued", False)
    run_check_workers()
    assert "registry token: ***" in check_log(Check.objects.get(pk=check.pk))


def test_a_pull_request_whose_payload_names_no_head_repository_counts_as_a_fork(checked_origin, hooked):
    sha = fork_pull_request(checked_origin, 24)
    assert github_pull_request(hooked, number=24, sha=sha, head_repo=None, delivery="pr-24").status_code == 202
    assert Check.objects.get(ref_name="pull/24").status == "waiting"


def test_a_gitlab_merge_request_from_another_project_waits(checked_origin, hooked):
    sha = commit_on_branch(checked_origin, "mr-fork", "a contribution", keep_branch=False)
    assert gitlab_merge_request(hooked, number=6, sha=sha, source=41, target=7, delivery="mr-6").status_code == 202
    assert Check.objects.get(ref_name="merge-requests/6").status == "waiting"
    # The same commit opened from the project itself: it is this project's own code, and it is checked once.
    assert gitlab_merge_request(hooked, number=7, sha=sha, source=7, target=7, delivery="mr-7").status_code == 202
    check = Check.objects.get()
    assert (check.ref_name, check.status, check.from_fork) == ("merge-requests/6", "queued", False)


def test_a_newer_commit_of_a_forks_pull_request_replaces_the_waiting_check(checked_origin, hooked):
    first = fork_pull_request(checked_origin, 25)
    github_pull_request(hooked, number=25, sha=first, head_repo="mallory/shop", delivery="pr-25a")
    second = commit_on_branch(checked_origin, "fork-25b", "another try", keep_branch=False)
    github_pull_request(hooked, number=25, sha=second, head_repo="mallory/shop", delivery="pr-25b")
    assert Check.objects.get(commit_sha=first).status == "cancelled"
    assert Check.objects.get(commit_sha=second).status == "waiting"


def test_a_forks_check_does_not_run_unsealed_even_where_unsealed_steps_are_allowed(
        checked_origin, hooked, run_check_workers, alice, settings):
    settings.GITOPS_STEP_SANDBOX = "none"
    settings.GITOPS_ALLOW_UNSEALED_STEPS = True
    sha = fork_pull_request(checked_origin, 26)
    github_pull_request(hooked, number=26, sha=sha, head_repo="mallory/shop", delivery="pr-26")
    check = Check.objects.get(ref_name="pull/26")
    check.allow_to_run(by=alice)

    run_check_workers()
    check.refresh_from_db()
    assert check.status == "failed"
    assert check.error.startswith("The checks of a pull request from a fork run only sealed")
    assert "data-dir-refused" not in check_log(check) and CANARY not in check_log(check)


def test_fork_checks_run_without_waiting_when_the_admin_turns_the_wait_off(checked_origin, hooked, run_check_workers, settings):
    settings.GITOPS_FORK_CHECKS_WAIT = False
    sha = fork_pull_request(checked_origin, 27)
    github_pull_request(hooked, number=27, sha=sha, head_repo="mallory/shop", delivery="pr-27")
    run_check_workers()
    check = Check.objects.get(ref_name="pull/27")
    assert (check.status, check.from_fork) == ("succeeded", True), check_log(check)
    assert "registry token: none" in check_log(check)


def _page_of(check):
    from django.contrib.auth import get_user_model

    client = Client()
    client.force_login(get_user_model().objects.get_or_create(username="reader")[0])
    return client.get(check.get_absolute_url()).content.decode()
