"""Who may report a check: only holders of `pipelines.report_checks` (CI service accounts), and each result is
its reporter's own. A report replaces only the same reporter's earlier result of that name; another reporter's
result stays, and a stage that requires passing checks needs every reporter's result of a name to pass."""

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from api.models import ApiToken, Scope
from pipelines.models import AuditEvent, Deployment, ExternalCheck
from tests.conftest import bearer, set_stage
from tests.conftest import ci_reporter as reporter
from tests.test_api_checks import promote, report


@pytest.fixture
def ci(django_user_model):
    return reporter(django_user_model, "ci")


@pytest.fixture
def strict_staging(staging):
    set_stage(staging, requires_passing_checks=True, auto_deploy=False)
    return staging


def test_a_plain_users_token_cannot_get_the_checks_report_scope(charlie, make_token):
    with pytest.raises(ValueError) as refused:
        make_token(charlie, Scope.CHECKS_REPORT, Scope.READ, name="sneaky")
    assert str(refused.value) == ("charlie may not hold the scope 'checks:report': it needs the permission "
                                  "'pipelines.report_checks' (given to CI service accounts).")
    assert not ApiToken.objects.exists()
    assert not AuditEvent.objects.filter(action="api_token.issued").exists()


def test_the_model_refuses_a_report_from_someone_without_the_permission(repository, make_release, charlie):
    release = make_release(repository, "v1.0.0")
    with pytest.raises(PermissionDenied, match="charlie does not have the permission 'pipelines.report_checks'"):
        ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="ci/tests", state="success",
                                     by=charlie)
    assert not ExternalCheck.objects.exists()


def test_a_token_whose_holder_loses_report_checks_is_refused_at_once(client, repository, make_release, ci, make_token):
    release = make_release(repository, "v1.0.0")
    token = make_token(ci, Scope.CHECKS_REPORT)
    assert report(client, token, repository, release.commit_sha, state="pending").status_code == 201
    ci.user_permissions.clear()  # the admin takes it away; the token itself is unchanged

    refused = report(client, token, repository, release.commit_sha, state="success")
    assert refused.status_code == 403
    assert refused.json() == {"error": "missing_permission",
                              "detail": "ci does not have the permission 'pipelines.report_checks'."}
    assert ExternalCheck.objects.get().state == "pending"


def test_another_reporters_success_does_not_replace_cis_failure_and_the_stage_stays_refused(
        client, repository, strict_staging, make_release, ci, bob, django_user_model, make_token):
    release = make_release(repository, "v1.0.0")
    other = reporter(django_user_model, "other-ci")
    failed = report(client, make_token(ci, Scope.CHECKS_REPORT), repository, release.commit_sha, state="failure",
                    description="3 tests failed")
    assert failed.status_code == 201
    green = report(client, make_token(other, Scope.CHECKS_REPORT), repository, release.commit_sha, state="success")
    assert green.status_code == 201, green.content  # a result of its own, not an update of ci's
    assert green.json()["reported_by"] == "other-ci"
    assert sorted(ExternalCheck.objects.values_list("reported_by__username", "state")) == [
        ("ci", "failure"), ("other-ci", "success")]

    refused = promote(client, make_token(bob, Scope.DEPLOY), release, "staging")
    assert refused.status_code == 409, refused.content
    assert "ci/tests (by ci) reported failure: 3 tests failed" in refused.json()["detail"]
    assert not Deployment.objects.exists()
    event = AuditEvent.objects.filter(action="check.external_reported").order_by("-seq").first()
    assert (event.actor_name, event.details["reporter"], event.details["other_reporters"]) == (
        "other-ci", "other-ci", ["ci"])
    assert "previous_state" not in event.details


def test_the_same_reporter_replaces_its_own_result(client, repository, strict_staging, make_release, ci, bob,
                                                   make_token):
    release = make_release(repository, "v1.0.0")
    token = make_token(ci, Scope.CHECKS_REPORT)
    assert report(client, token, repository, release.commit_sha, state="failure").status_code == 201
    replaced = report(client, token, repository, release.commit_sha, state="success")
    assert replaced.status_code == 200
    assert list(ExternalCheck.objects.values_list("reported_by__username", "state")) == [("ci", "success")]
    assert promote(client, make_token(bob, Scope.DEPLOY), release, "staging").status_code == 201
    events = AuditEvent.objects.filter(action="check.external_reported").order_by("seq")
    assert [(e.details["reporter"], e.details["state"], e.details.get("previous_state")) for e in events] == [
        ("ci", "failure", None), ("ci", "success", "failure")]


def test_every_reporters_result_of_a_name_must_pass(client, repository, strict_staging, make_release, ci, bob,
                                                    django_user_model, make_token):
    release = make_release(repository, "v1.0.0")
    gha = reporter(django_user_model, "github-actions")
    ci_token, gha_token = make_token(ci, Scope.CHECKS_REPORT), make_token(gha, Scope.CHECKS_REPORT)
    deployer = make_token(bob, Scope.DEPLOY)
    report(client, ci_token, repository, release.commit_sha, state="success")
    report(client, gha_token, repository, release.commit_sha, state="pending")
    waiting = promote(client, deployer, release, "staging")
    assert waiting.status_code == 409
    assert "ci/tests (by github-actions) is pending, not passed yet" in waiting.json()["detail"]
    assert "(by ci)" not in waiting.json()["detail"]  # ci's passed

    report(client, gha_token, repository, release.commit_sha, state="success")
    assert promote(client, deployer, release, "staging").status_code == 201


def test_the_pages_say_who_reported_each_result(repository, make_release, ci, alice, django_user_model):
    from pipelines.models import CheckRef

    release = make_release(repository, "v1.0.0")
    CheckRef.objects.record(repository, kind=CheckRef.Kind.BRANCH, name="feature/x", head_sha=release.commit_sha)
    gha = reporter(django_user_model, "github-actions")
    for by, state in ((ci, "failure"), (gha, "success")):
        ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="ci/tests", state=state, by=by)
    page = Client()
    page.force_login(alice)
    html = page.get(reverse("release_detail", args=[repository.name, release.version])).content.decode()
    assert '<td class="reporter">ci</td>' in html and '<td class="reporter">github-actions</td>' in html
    branches = page.get(reverse("repository_detail", args=[repository.name])).content.decode()
    assert "ci/tests <span class=\"reporter\">by ci</span>" in branches
    assert "ci/tests <span class=\"reporter\">by github-actions</span>" in branches
