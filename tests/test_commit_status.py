"""Checks reported to the git host as commit statuses: GitHub's and GitLab's APIs, stood in for by a real local
HTTP server; failures retried and shown; reports of one (commit, context) never sent out of order; the API token
write-only, encrypted at rest, never on record."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from pipelines import commit_status, followups, masking
from pipelines.models import AuditEvent, FollowUp, Repository
from tests.conftest import free_port
from tests.test_admin import change_url, repository_form

pytestmark = pytest.mark.django_db

TOKEN = "ghp_test0nlyT0ken4commitStatuses9f3"
SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
CHECK_PAGE = "http://portal.example/repos/shop/checks/9fceb02/"


@pytest.fixture
def github_repository(repository, git_host_api):
    """`shop` on github.com, its API stood in for locally (as for a GitHub Enterprise server)."""
    repository.url, repository.api_url = "https://github.com/acme/shop.git", git_host_api.url
    repository.set_api_token(TOKEN)
    repository.save()
    return repository


def schedule(repository, state, context="gitops/checks", description="2 of 2 steps passed"):
    with transaction.atomic():
        follow_up = commit_status.schedule_report(repository, sha=SHA, state=state, context=context,
                                                  description=description, target_url=CHECK_PAGE)
    assert follow_up is not None
    return follow_up


def later(seconds):
    return timezone.now() + timedelta(seconds=seconds)


# --- what each host is sent -------------------------------------------------------------------------------


def test_it_reports_a_check_to_github_as_a_commit_status(github_repository, git_host_api):
    follow_up = schedule(github_repository, "success")

    assert followups.carry_out(follow_up.pk) is True

    [request] = git_host_api.requests
    assert (request["method"], request["path"]) == ("POST", f"/repos/acme/shop/statuses/{SHA}")
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Accept"] == "application/vnd.github+json"
    assert request["json"] == {"state": "success", "target_url": CHECK_PAGE, "description": "2 of 2 steps passed",
                               "context": "gitops/checks"}
    follow_up.refresh_from_db()
    assert follow_up.done_at is not None and follow_up.last_error == ""


def test_it_reports_a_check_to_gitlab_with_its_state_names(repository, git_host_api):
    repository.url, repository.api_url = "git@gitlab.example.com:platform/infra/shop.git", git_host_api.url + "/api/v4"
    repository.set_api_token(TOKEN)
    repository.save()
    assert repository.effective_git_host == "gitlab"
    follow_up = schedule(repository, "failure", description="plan failed")

    assert followups.carry_out(follow_up.pk) is True

    [request] = git_host_api.requests
    assert (request["method"], request["path"]) == ("POST", f"/api/v4/projects/platform%2Finfra%2Fshop/statuses/{SHA}")
    assert request["headers"]["Private-Token"] == TOKEN and "Authorization" not in request["headers"]
    assert request["json"] == {"state": "failed", "name": "gitops/checks", "target_url": CHECK_PAGE,
                               "description": "plan failed"}


def test_the_host_and_project_come_from_the_url_unless_set(db):
    github = Repository(name="a", url="ssh://git@github.com/acme/api.git")
    assert (github.effective_git_host, github.effective_api_url, github.effective_host_project) == (
        "github", "https://api.github.com", "acme/api")
    gitlab = Repository(name="b", url="https://gitlab.example.com/group/sub/app.git")
    assert (gitlab.effective_git_host, gitlab.effective_api_url, gitlab.effective_host_project) == (
        "gitlab", "https://gitlab.example.com/api/v4", "group/sub/app")
    enterprise = Repository(name="c", url="git@git.corp.example:team/app.git", git_host="github")
    assert (enterprise.effective_api_url, enterprise.effective_host_project) == (
        "https://git.corp.example/api/v3", "team/app")
    local = Repository(name="d", url="/srv/git/app.git", git_host="gitlab", api_url="https://gl.example/api/v4",
                       host_project="ops/app")
    assert (local.effective_git_host, local.effective_api_url, local.effective_host_project) == (
        "gitlab", "https://gl.example/api/v4", "ops/app")
    assert Repository(name="e", url="https://github.com/acme/api", git_host="none").effective_git_host == ""


def test_without_a_token_nothing_is_scheduled(repository, git_host_api):
    repository.url, repository.api_url = "https://github.com/acme/shop.git", git_host_api.url
    repository.save()

    with transaction.atomic():
        assert commit_status.schedule_report(repository, sha=SHA, state="pending", context="gitops/checks",
                                             description="", target_url=CHECK_PAGE) is None

    assert not FollowUp.objects.exists() and git_host_api.requests == []


def test_the_link_back_is_the_portals_absolute_url(settings):
    settings.GITOPS_BASE_URL = "https://gitops.example.com/"

    assert commit_status.portal_url("/repos/shop/") == "https://gitops.example.com/repos/shop/"


# --- failures: retried, shown, never silent -------------------------------------------------------------


def test_a_server_error_is_retried_with_back_off_until_the_host_takes_it(github_repository, git_host_api):
    git_host_api.answers = [(500, {"message": "Server Error"})]
    follow_up = schedule(github_repository, "pending")

    assert followups.carry_out(follow_up.pk) is False
    follow_up.refresh_from_db()
    assert "500 Server Error" in follow_up.last_error and follow_up.due_at > timezone.now()
    assert followups.carry_out(follow_up.pk) is False, "not again before its back-off has passed"
    assert len(git_host_api.requests) == 1

    assert followups.carry_out(follow_up.pk, later(6)) is True

    assert [r["json"]["state"] for r in git_host_api.requests] == ["pending", "pending"]
    follow_up.refresh_from_db()
    assert follow_up.done_at is not None and follow_up.attempts == 2


def test_refused_credentials_are_shown_on_the_repository_page_and_retried(github_repository, git_host_api,
                                                                          client, charlie, alice, caplog):
    caplog.set_level("DEBUG")
    git_host_api.answers = [(401, {"message": "Bad credentials"})] * 2
    follow_up = schedule(github_repository, "success")
    client.force_login(charlie)

    followups.carry_out(follow_up.pk)
    followups.carry_out(follow_up.pk, later(6))

    html = client.get(reverse("repository_detail", args=["shop"])).content.decode()
    assert "reported to GitHub <code>acme/shop</code>" in html
    assert ("Reporting to GitHub failed 2 times: 401 Bad credentials: GitHub refused the API token; set a valid one "
            "on the repository in the admin. — retrying") in html
    assert TOKEN not in html and "401 Bad credentials" in caplog.text and TOKEN not in caplog.text
    follow_up.refresh_from_db()
    assert follow_up.done_at is None and follow_up.claimed_until is None, "left to be retried"

    client.force_login(alice)
    admin_html = client.get(change_url(github_repository)).content.decode()
    assert "Reporting to GitHub failed 2 times: 401 Bad credentials" in admin_html and TOKEN not in admin_html

    assert followups.carry_out(follow_up.pk, later(30)) is True, "the next answer is a 201"
    assert "Reporting to GitHub failed" not in client.get(reverse("repository_detail", args=["shop"])).content.decode()


@pytest.mark.parametrize("status, message, advice", [
    (403, "Resource not accessible by personal access token", "it needs the repo:status scope"),
    (404, "Not Found", "knows no project acme/shop that this token can see"),
])
def test_a_refusal_says_what_to_fix(github_repository, git_host_api, status, message, advice):
    git_host_api.answers = [(status, {"message": message})]
    follow_up = schedule(github_repository, "success")

    followups.carry_out(follow_up.pk)

    follow_up.refresh_from_db()
    assert f"{status} {message}" in follow_up.last_error and advice in follow_up.last_error


def test_a_host_that_never_answers_times_out_and_is_retried(github_repository, silent_remote, settings):
    settings.GITOPS_GIT_HOST_TIMEOUT = 1
    url, accepted = silent_remote
    github_repository.api_url = url.rsplit("/", 1)[0]
    github_repository.save()
    follow_up = schedule(github_repository, "pending")

    assert followups.carry_out(follow_up.pk) is False

    follow_up.refresh_from_db()
    assert accepted, "the request reached the silent host"
    assert "GitHub did not answer within 1 s" in follow_up.last_error
    assert follow_up.claimed_until is None and follow_up.done_at is None, "not stuck: free to be retried"
    assert followups.carry_out(follow_up.pk, later(6)) is False
    follow_up.refresh_from_db()
    assert follow_up.attempts == 2


def test_a_host_that_refuses_connections_is_retried(github_repository):
    github_repository.api_url = f"http://127.0.0.1:{free_port()}"
    github_repository.save()
    follow_up = schedule(github_repository, "pending")

    assert followups.carry_out(follow_up.pk) is False

    follow_up.refresh_from_db()
    assert f"Could not reach GitHub at {github_repository.api_url}" in follow_up.last_error


def test_gitlab_refusing_a_state_the_commit_already_has_counts_as_reported(repository, git_host_api):
    # A report that went through, whose follow-up died before it could record so, is sent again.
    repository.url, repository.api_url = "https://gitlab.example.com/ops/shop.git", git_host_api.url
    repository.set_api_token(TOKEN)
    repository.save()
    git_host_api.answers = [(400, {"message": "Cannot transition status via :enqueue from :pending"})]
    follow_up = schedule(repository, "pending")

    assert followups.carry_out(follow_up.pk) is True


# --- order -------------------------------------------------------------------------------------------------


def test_a_retried_pending_is_not_sent_over_a_newer_success(github_repository, git_host_api):
    git_host_api.answers = [(502, {"message": "Bad Gateway"})]
    pending = schedule(github_repository, "pending")
    success = schedule(github_repository, "success")
    other_context = schedule(github_repository, "pending", context="gitops/lint")

    assert followups.carry_out(pending.pk) is False
    assert followups.carry_out(success.pk) is True
    assert followups.carry_out(pending.pk, later(6)) is True, "done: there is nothing left for it to say"
    assert followups.carry_out(other_context.pk) is True

    assert [(r["json"]["context"], r["json"]["state"]) for r in git_host_api.requests] == [
        ("gitops/checks", "pending"), ("gitops/checks", "success"), ("gitops/lint", "pending")]


# --- the token ---------------------------------------------------------------------------------------------


def test_the_token_is_write_only_in_the_admin_encrypted_removable_and_never_on_record(client, alice, repository):
    client.force_login(alice)

    response = client.post(change_url(repository), repository_form(repository, git_host="github",
                                                                    host_project="acme/shop", api_token=TOKEN))

    assert response.status_code == 302, response.content.decode()[:3000]
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_token_ciphertext FROM pipelines_repository WHERE id = %s", [repository.pk])
        [stored] = cursor.fetchone()
    assert stored and TOKEN not in stored
    repository.refresh_from_db()
    assert repository.api_token() == TOKEN and repository.reports_commit_statuses
    html = client.get(change_url(repository)).content.decode()
    assert 'type="password" name="api_token"' in html and "A token is set" in html
    assert TOKEN not in html and stored not in html

    client.post(change_url(repository), repository_form(repository, git_host="github", host_project="acme/shop"))
    repository.refresh_from_db()
    assert repository.api_token() == TOKEN, "left blank, the stored token stays"

    [first, *_] = events = list(AuditEvent.objects.filter(action="admin.change").order_by("seq"))
    assert first.details["values"]["api_token"] == "changed"
    assert first.details["values"]["git_host"] == ["", "github"]
    for event in events:
        assert TOKEN not in event.canonical_json() and stored not in event.canonical_json()
    assert "api_token" not in events[-1].details["values"], "a blank token is no change"

    response = client.post(change_url(repository), repository_form(repository, git_host="github",
                                                                    remove_api_token="on"))
    assert response.status_code == 302, response.content.decode()[:3000]
    repository.refresh_from_db()
    assert repository.api_token() == "" and not repository.reports_commit_statuses
    assert AuditEvent.objects.filter(action="admin.change").latest("seq").details["values"]["api_token"] == "removed"


def test_the_token_is_masked_like_the_repositorys_other_credentials(github_repository):
    assert TOKEN in masking.repository_secrets(github_repository)


def test_rotating_the_keys_re_encrypts_the_token_too(repository, settings):
    import io

    from django.core.management import call_command

    from tests.conftest import new_secrets_key

    old, new = new_secrets_key(), new_secrets_key()
    settings.GITOPS_SECRETS_KEYS = [old]
    repository.set_api_token(TOKEN)
    repository.save()

    settings.GITOPS_SECRETS_KEYS = [new, old]
    call_command("rotatesecrets", stdout=io.StringIO())
    settings.GITOPS_SECRETS_KEYS = [new]

    repository.refresh_from_db()
    assert repository.api_token() == TOKEN


def test_staff_who_may_only_view_repositories_get_no_token_field(client, django_user_model, github_repository):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("dora", "dora@example.com", "password", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_repository", content_type__app_label="pipelines"))
    client.force_login(viewer)

    response = client.get(change_url(github_repository))

    html = response.content.decode()
    assert response.status_code == 200 and "Checks are reported to GitHub (acme/shop)" in html
    assert 'name="api_token"' not in html and TOKEN not in html and github_repository.api_token_ciphertext not in html
