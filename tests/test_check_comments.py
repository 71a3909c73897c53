"""A check's result on the git host, piece by piece: the summary cut to each host's limit, the one comment of a
pull request (posted anew when someone deleted it, its log cut to the host's limit keeping the plan's end), and
one check per commit whatever refs it heads. Against the stand-in GitHub and GitLab API (tests/conftest.py);
tests/test_check_review_loop.py runs the whole loop with real workers."""

import pytest

from pipelines import commit_status
from pipelines.models import Check, CheckRef

pytestmark = pytest.mark.django_db

TOKEN = "ghp_commentsT0ken5e1d"
SHA, NEWER = "a" * 40, "b" * 40


@pytest.fixture
def on_host(repository, git_host_api):
    """`shop` reporting to the stand-in API as GitHub (acme/shop) or GitLab (ops/shop)."""

    def make(host):
        repository.url = "https://github.com/acme/shop.git" if host == "github" else "https://gitlab.example.com/ops/shop.git"
        repository.api_url = git_host_api.url + ("" if host == "github" else "/api/v4")
        repository.set_api_token(TOKEN)
        repository.save()
        return repository

    return make


def pull_request(repository, number, sha):
    return CheckRef.objects.record(repository, kind=CheckRef.Kind.PULL_REQUEST, name=f"pull/{number}", number=number,
                                   head_sha=sha, is_open=True, from_fork=False)


def finished(repository, sha, ref_name, *, log="", outputs=None):
    """A check that went through the state machine to success, with a log, as a worker leaves it."""
    check = Check.objects.queue_for(repository, commit_sha=sha, ref_name=ref_name)
    check.claim(worker_name="test-worker")
    if log:
        check.append_log(log)
    return check.succeed(outputs=outputs or {})


def requests_to(stand_in, fragment):
    return [(request["method"], request["path"]) for request in stand_in.requests if fragment in request["path"]]


@pytest.mark.parametrize("host, limit", [("github", 140), ("gitlab", 255)])
def test_the_summary_is_cut_to_the_hosts_limit(on_host, git_host_api, run_follow_ups, host, limit):
    repository = on_host(host)

    finished(repository, SHA, "feature/x", outputs={"summary": "Plan: " + "x" * 400})
    run_follow_ups()

    description = [request["json"]["description"] for request in git_host_api.requests
                   if "/statuses/" in request["path"]][-1]
    assert len(description) == limit and description.startswith("Plan: xxx") and description.endswith("…")


def test_a_pull_request_opened_on_a_commit_already_checked_gets_its_comment_without_a_second_check(
        on_host, git_host_api, run_follow_ups):
    repository = on_host("github")
    check = finished(repository, SHA, "feature/x", log="Plan: 1 to add, 0 to change, 0 to destroy.\n")
    run_follow_ups()
    assert requests_to(git_host_api, "/comments") == [], "no pull request yet: nothing to comment on"

    pull_request(repository, 5, SHA)
    assert Check.objects.queue_for(repository, commit_sha=SHA, ref_name="pull/5") == check
    run_follow_ups()

    assert Check.objects.count() == 1
    assert requests_to(git_host_api, "/comments") == [("POST", "/repos/acme/shop/issues/5/comments")]
    body = git_host_api.requests[-1]["json"]["body"]
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in body and f"Check #{check.pk}" in body
    assert CheckRef.objects.get(name="pull/5").comment_id == str(len(git_host_api.requests))


@pytest.mark.parametrize("host, update, create", [
    ("github", ("PATCH", "/repos/acme/shop/issues/comments/77"), ("POST", "/repos/acme/shop/issues/5/comments")),
    ("gitlab", ("PUT", "/api/v4/projects/ops%2Fshop/merge_requests/5/notes/77"),
     ("POST", "/api/v4/projects/ops%2Fshop/merge_requests/5/notes")),
])
def test_a_comment_deleted_on_the_host_is_posted_anew(on_host, git_host_api, host, update, create):
    repository = on_host(host)
    git_host_api.answers = [(404, {"message": "404 Not found"}), (201, {"id": 91})]

    assert commit_status.comment(repository, number=5, body="Plan: 2 to change", comment_id="77") == "91"

    assert [(r["method"], r["path"]) for r in git_host_api.requests] == [update, create]
    assert git_host_api.requests[-1]["json"] == {"body": "Plan: 2 to change"}


def test_a_comment_refused_says_which_scope_the_token_needs(on_host, git_host_api):
    repository = on_host("github")
    git_host_api.answers = [(403, {"message": "Resource not accessible by personal access token"})]

    with pytest.raises(commit_status.ReportFailed, match="may not comment on pull/merge requests; it needs the repo"):
        commit_status.comment(repository, number=5, body="Plan")


def test_a_long_log_is_cut_from_its_start_to_the_hosts_limit_keeping_the_plans_end(on_host):
    repository = on_host("github")
    check = finished(repository, SHA, "feature/x",
                     log="".join(f"  # resource {n} will be created\n" for n in range(4000)) + "```\nPlan: 4000 to add.\n")

    body = commit_status.comment_body(check, limit=commit_status.COMMENT_LENGTH["github"])

    assert len(body) <= 65536 and "the start is on the check's page" in body
    assert body.endswith("Plan: 4000 to add.\n````\n"), "a fence longer than any in the log"


def test_a_forks_waiting_check_runs_once_its_commit_is_pushed_to_a_branch_here(repository):
    waiting = Check.objects.queue_for(repository, commit_sha=SHA, ref_name="pull/7", from_fork=True)
    assert waiting.status == "waiting"

    check = Check.objects.queue_for(repository, commit_sha=SHA, ref_name="feature/x")

    assert check == waiting and (check.status, check.from_fork) == ("queued", False)
    assert Check.objects.count() == 1


def test_a_newer_head_cancels_the_refs_queued_check_even_when_another_ref_checks_that_head(repository):
    older = Check.objects.queue_for(repository, commit_sha=SHA, ref_name="pull/5")
    newer = Check.objects.queue_for(repository, commit_sha=NEWER, ref_name="feature/x")

    assert Check.objects.queue_for(repository, commit_sha=NEWER, ref_name="pull/5") == newer

    older.refresh_from_db()
    assert older.status == "cancelled" and "A newer commit (bbbbbbbbbb) on pull/5" in older.error
    assert Check.objects.filter(commit_sha=NEWER).count() == 1
