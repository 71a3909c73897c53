"""External check results reported through the API count for a stage that requires passing checks like the
portal's own, are one result per (commit, name, reporter), show on the release page and the Branches tab, are never
reported back to the git host; releases carry their checks; /api/v1/insights gives the page's figures."""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from api.models import Scope
from pipelines import insights
from pipelines.models import AuditEvent, CheckRef, Deployment, ExternalCheck, FollowUp
from tests import test_insights
from tests.conftest import bearer, finished_check, set_stage

history = test_insights.history  # the insights tests' history with known answers
H = test_insights.H


def report(client, token, repository, sha, **body):
    return client.post(f"/api/v1/repositories/{repository.name}/commits/{sha}/checks",
                       {"name": "ci/tests", "state": "success", **body}, content_type="application/json",
                       **bearer(token))


def promote(client, token, release, environment):
    return client.post(f"/api/v1/releases/{release.pk}/promote", {"environment": environment},
                       content_type="application/json", **bearer(token))


@pytest.fixture
def strict_staging(staging):
    set_stage(staging, requires_passing_checks=True, auto_deploy=False)
    return staging


def test_an_external_failure_keeps_a_release_out_and_its_later_success_lets_it_in(
        client, repository, strict_staging, make_release, alice, make_token):
    release = make_release(repository, "v1.0.0")
    ci, deployer = make_token(alice, Scope.CHECKS_REPORT), make_token(alice, Scope.DEPLOY)

    failed = report(client, ci, repository, release.commit_sha, state="failure", description="3 tests failed",
                    url="https://ci.example/jobs/41")
    assert failed.status_code == 201, failed.content
    assert (failed.json()["source"], failed.json()["state"], failed.json()["passed"]) == ("external", "failure", False)
    refused = promote(client, deployer, release, "staging")
    assert refused.status_code == 409
    assert refused.json()["error"] == "refused"
    assert "staging requires passing checks" in refused.json()["detail"]
    assert "ci/tests (by alice) reported failure: 3 tests failed" in refused.json()["detail"]
    assert not Deployment.objects.exists()

    passed = report(client, ci, repository, release.commit_sha, state="success", url="https://ci.example/jobs/42")
    assert passed.status_code == 200  # the same (commit, name, reporter): an update, not a second result
    assert ExternalCheck.objects.get().target_url == "https://ci.example/jobs/42"
    promoted = promote(client, deployer, release, "staging")
    assert promoted.status_code == 201, promoted.content
    assert promoted.json()["status"] == "queued"
    events = list(AuditEvent.objects.filter(action="check.external_reported").order_by("seq"))
    assert [(e.details["state"], e.actor_name) for e in events] == [("failure", "alice"), ("success", "alice")]
    assert all(e.details["via"].startswith("token ") for e in events)  # a token's use, not a click
    assert events[1].details["previous_state"] == "failure"


def test_every_named_check_must_pass_the_portals_own_and_each_external_one(
        client, repository, strict_staging, make_release, alice, make_token):
    release = make_release(repository, "v1.0.0")
    ci, deployer = make_token(alice, Scope.CHECKS_REPORT), make_token(alice, Scope.DEPLOY)
    finished_check(repository, release.commit_sha, "failed")
    report(client, ci, repository, release.commit_sha, name="ci/tests", state="success")
    report(client, ci, repository, release.commit_sha, name="ci/lint", state="pending")

    pending = promote(client, deployer, release, "staging")
    assert pending.status_code == 409 and "ci/lint (by alice) is pending, not passed yet" in pending.json()["detail"]
    report(client, ci, repository, release.commit_sha, name="ci/lint", state="success")
    own_failed = promote(client, deployer, release, "staging")
    assert own_failed.status_code == 409 and "the checks of its commit" in own_failed.json()["detail"]
    assert "failed" in own_failed.json()["detail"] and "ci/" not in own_failed.json()["detail"]


def test_external_results_alone_count_where_the_portal_runs_no_checks(repository, strict_staging, make_release, alice):
    from pipelines.promotion import promote as promote_release

    release = make_release(repository, "v1.0.0")
    ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="gha/build", state="success", by=alice)
    assert promote_release(release, strict_staging, by=alice).status == Deployment.Status.QUEUED


def test_a_report_is_refused_without_the_scope_or_with_a_bad_body(client, repository, make_release, alice, make_token):
    release = make_release(repository, "v1.0.0")
    reader, ci = make_token(alice, Scope.READ), make_token(alice, Scope.CHECKS_REPORT)
    assert report(client, reader, repository, release.commit_sha).json()["error"] == "missing_scope"
    assert report(client, ci, repository, "abc123").status_code == 422  # a full sha only
    assert report(client, ci, repository, release.commit_sha, state="green").status_code == 422
    own = report(client, ci, repository, release.commit_sha, name="gitops/checks")
    assert own.status_code == 422 and "the portal's own" in own.json()["detail"]
    assert report(client, ci, repository, release.commit_sha, url="javascript:alert(1)").status_code == 422
    assert not ExternalCheck.objects.exists()


def test_an_external_result_is_not_reported_to_the_git_host(client, repository, git_host_api, make_release, alice,
                                                            make_token, settings):
    """It came from CI or the git host: sending it back as the portal's own status would be a lie (and a loop)."""
    settings.GITOPS_BASE_URL = "https://portal.example"
    repository.url, repository.api_url = "https://github.com/acme/shop.git", git_host_api.url
    repository.set_api_token("ghp_check_reporting_token_123")
    repository.save()
    assert repository.reports_commit_statuses
    release = make_release(repository, "v1.0.0")
    assert report(client, make_token(alice, Scope.CHECKS_REPORT), repository, release.commit_sha).status_code == 201
    assert not FollowUp.objects.filter(kind="check.report").exists()


def test_releases_and_commits_list_their_checks_of_both_sources(client, repository, make_release, alice, make_token):
    release = make_release(repository, "v1.0.0")
    own = finished_check(repository, release.commit_sha, "succeeded", ref_name="pull/7")
    ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="gha/build", state="failure",
                                 target_url="https://ci.example/1", description="red", by=alice)
    reader = make_token(alice, Scope.READ)

    detail = client.get(f"/api/v1/releases/{release.pk}", **bearer(reader)).json()
    assert [(c["name"], c["source"], c["state"], c["passed"], c["ref"]) for c in detail["checks"]] == [
        ("gitops/checks", "portal", "succeeded", True, "pull/7"), ("gha/build", "external", "failure", False, None)]
    assert detail["checks"][0]["url"].endswith(own.get_absolute_url())
    assert detail["checks"][1]["url"] == "https://ci.example/1" and detail["checks"][1]["finished_at"]
    assert "build" in detail  # with its build outputs (None: this release has no build)
    commit = client.get(f"/api/v1/repositories/{repository.name}/commits/{release.commit_sha}/checks", **bearer(reader))
    assert commit.status_code == 200 and commit.json()["checks"] == detail["checks"]


def test_the_release_page_and_the_branches_tab_show_external_results(repository, make_release, alice):
    release = make_release(repository, "v1.0.0")
    CheckRef.objects.record(repository, kind=CheckRef.Kind.BRANCH, name="feature/x", head_sha=release.commit_sha)
    ExternalCheck.objects.report(repository, commit_sha=release.commit_sha, name="gha/build", state="failure",
                                 target_url="https://ci.example/jobs/9", description="lint failed", by=alice)
    page = Client()
    page.force_login(alice)
    html = page.get(reverse("release_detail", args=[repository.name, release.version])).content.decode()
    assert "Reported by CI" in html and 'href="https://ci.example/jobs/9"' in html and "lint failed" in html
    assert "No checks ran for this commit" not in html
    branches = page.get(reverse("repository_detail", args=[repository.name])).content.decode()
    assert "gha/build" in branches and "status-external-failure" in branches


def test_insights_answers_the_pages_figures(client, history, alice, make_token):
    reader = make_token(alice, Scope.READ)
    with time_machine.travel(history + timedelta(days=30), tick=False):
        answer = client.get("/api/v1/insights?period=30d", **bearer(reader))
        narrowed = client.get("/api/v1/insights?environment=staging", **bearer(reader)).json()
        unknown = client.get("/api/v1/insights?repository=nope", **bearer(reader))
        page = insights.delivery(insights.scope_from({"period": "30d"}))
    assert answer.status_code == 200, answer.content
    figures = answer.json()
    assert (figures["deployments"], figures["failed"], figures["rolled_back"], figures["open_outages"]) == (5, 4, 1, 1)
    assert figures["change_failure_rate"] == pytest.approx(page.change_failure_rate) == pytest.approx(5 / 9)
    assert figures["deployments_per_day"] == pytest.approx(5 / 30)
    assert figures["lead_time_median_seconds"] == (6 * H).total_seconds()
    assert figures["lead_time_p90_seconds"] == (24 * H).total_seconds()
    assert figures["time_to_restore_median_seconds"] == (2 * H).total_seconds()
    assert [(b["deployments"], b["failed"], b["rolled_back"]) for b in figures["buckets"]] == [
        (b.deployments, b.failed, b.rolled_back) for b in page.buckets]
    assert (narrowed["environment"], narrowed["deployments"], narrowed["lead_time_median_seconds"]) == (
        "staging", 2, (12.5 * H).total_seconds())
    assert unknown.status_code == 422 and "No repository is named 'nope'" in unknown.json()["detail"]
