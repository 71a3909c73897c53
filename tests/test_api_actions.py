"""The API's actions take the page's path: the same gate, refusals, approval policy; lists page by cursor."""

from approvals.models import ChangeRequest
from api.models import Scope, ServiceAccount
from pipelines import promotion
from pipelines.models import Deployment
from tests.conftest import bearer, set_policy


def post(client, path, token, body=None):
    return client.post(path, body or {}, content_type="application/json", **bearer(token))


def test_promote_refuses_what_the_gate_refuses_and_says_why(client, repository, staging, production, bob, make_token,
                                                              make_release):
    release = make_release(repository, "v1.0.0")
    token = make_token(bob, Scope.DEPLOY)
    refused = post(client, f"/api/v1/releases/{release.pk}/promote", token, {"environment": "production"})
    assert refused.status_code == 409
    assert refused.json() == {"error": "refused",
                              "detail": "v1.0.0 has not succeeded in staging yet; it must before it goes to production."}
    assert not Deployment.objects.exists()


def test_promote_refuses_a_second_promotion_on_its_way(client, repository, staging, bob, make_token, make_release):
    release = make_release(repository, "v1.0.0")
    token = make_token(bob, Scope.DEPLOY)
    first = post(client, f"/api/v1/releases/{release.pk}/promote", token, {"environment": "staging"})
    assert first.status_code == 201 and first.json()["status"] == "queued"
    second = post(client, f"/api/v1/releases/{release.pk}/promote", token, {"environment": "staging"})
    assert second.status_code == 409 and "already on its way" in second.json()["detail"]
    assert (second.json()["error"], second.json()["deployment"]) == ("already_on_its_way", first.json()["id"])


def test_block_and_unblock_through_the_api(client, repository, staging, bob, make_token, make_release):
    release = make_release(repository, "v1.0.0")
    token = make_token(bob, Scope.DEPLOY)
    assert post(client, f"/api/v1/releases/{release.pk}/block", token, {"reason": "broken"}).json()["blocked"] is True
    refused = post(client, f"/api/v1/releases/{release.pk}/promote", token, {"environment": "staging"})
    assert refused.status_code == 409 and "blocked" in refused.json()["detail"]
    assert post(client, f"/api/v1/releases/{release.pk}/unblock", token).json()["blocked"] is False


def test_approving_through_the_api_is_off_until_the_stage_allows_it(client, make_held_change, bob, make_token, production):
    change_request, _ = make_held_change()
    token = make_token(bob, Scope.APPROVE, Scope.READ)
    held = client.get(f"/api/v1/deployments/{change_request.deployment_id}", **bearer(token)).json()
    assert (held["status"], held["change_request_id"]) == ("awaiting_approval", change_request.pk)
    refused = post(client, f"/api/v1/change-requests/{change_request.pk}/approve", token, {"comment": "ok"})
    assert refused.status_code == 403 and refused.json()["error"] == "api_approval_disabled"
    set_policy(production, allow_api_approval=True)
    approved = post(client, f"/api/v1/change-requests/{change_request.pk}/approve", token, {"comment": "ok"})
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "approved"
    assert Deployment.objects.get(pk=change_request.deployment_id).status == Deployment.Status.QUEUED


def test_the_approval_policy_applies_unchanged_through_the_api(client, make_held_change, alice, bob, approvers,
                                                               make_token, production):
    change_request, _ = make_held_change()  # requested by alice
    set_policy(production, allow_api_approval=True)
    alice.groups.add(approvers)
    own = post(client, f"/api/v1/change-requests/{change_request.pk}/approve", make_token(alice, Scope.APPROVE))
    assert own.status_code == 403
    assert own.json() == {"error": "refused", "detail": "You requested this change, so someone else has to approve it. "
                                                        "Nothing was changed."}
    bobs = make_token(bob, Scope.APPROVE)
    ServiceAccount.objects.create(user=bob)  # made one after the token was issued: refused on the request
    robot = post(client, f"/api/v1/change-requests/{change_request.pk}/approve", bobs)
    assert robot.status_code == 403 and robot.json()["error"] == "service_account"
    assert ChangeRequest.objects.get(pk=change_request.pk).status == ChangeRequest.Status.PENDING


def test_lists_page_by_cursor_without_repeats(client, repository, alice, make_token, make_release):
    for n in range(7):
        make_release(repository, f"v1.0.{n}")
    token = make_token(alice, Scope.READ)
    seen, cursor = [], None
    while True:
        page = client.get(f"/api/v1/repositories/{repository.name}/releases", {"limit": 3, **({"cursor": cursor} if cursor else {})},
                          **bearer(token)).json()
        seen += [item["version"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"v1.0.{n}" for n in reversed(range(7))]
    bad = client.get(f"/api/v1/repositories/{repository.name}/releases", {"cursor": "nonsense"}, **bearer(token))
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_cursor"


def test_releases_are_listed_newest_version_first_like_the_pages_and_paged_without_repeats(
        client, repository, alice, make_token, make_release):
    for version in ["v1.10.0", "nightly-x", "v2.0.0rc1", "v1.9.0", "v1.2", "v2.0.0", "v1.2.0", "latest",
                    "v1.10.0.post1"]:
        make_release(repository, version)
    token = make_token(alice, Scope.READ)
    url = f"/api/v1/repositories/{repository.name}/releases"
    seen, cursor = [], None
    while True:
        page = client.get(url, {"limit": 2, **({"cursor": cursor} if cursor else {})}, **bearer(token)).json()
        seen += [item["version"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
        if len(seen) == 4:
            make_release(repository, "v1.5.0")  # recorded while paging: lands where it belongs, listed once
    assert seen == ["v2.0.0", "v2.0.0rc1", "v1.10.0.post1", "v1.10.0", "v1.9.0", "v1.5.0",
                    "v1.2.0", "v1.2",  # the same version: the later detected first
                    "latest", "nightly-x"]  # no version: after every version, the later detected first


def test_the_log_comes_by_offset(client, repository, staging, alice, make_token, make_release):
    deployment = promotion.promote(make_release(repository, "v1.0.0"), staging, by=alice)
    deployment.append_log("one\n")
    deployment.append_log("two\n")
    token = make_token(alice, Scope.READ)
    first = client.get(f"/api/v1/deployments/{deployment.pk}/log", **bearer(token)).json()
    assert first["text"] == "one\ntwo\n" and first["is_finished"] is False
    deployment.append_log("three\n")
    later = client.get(f"/api/v1/deployments/{deployment.pk}/log", {"after": first["last_seq"]}, **bearer(token)).json()
    assert later["text"] == "three\n"
    detail = client.get(f"/api/v1/deployments/{deployment.pk}", **bearer(token)).json()
    assert detail["steps"] == [{"name": "deploy", "run": "./deploy.sh", "timeout": 1800}]


def test_status_says_what_runs_where_in_lifecycle_order(client, repository, staging, production, alice, make_token,
                                                        make_release):
    deployment = promotion.promote(make_release(repository, "v1.0.0"), staging, by=alice)
    token = make_token(alice, Scope.READ)
    [row] = client.get("/api/v1/status", **bearer(token)).json()
    assert row["name"] == "shop" and row["lifecycle"] == "default"
    assert [t["environment"] for t in row["targets"]] == ["staging", "production"]
    staged, held = row["targets"]
    assert staged["last_deployment"]["id"] == deployment.pk and staged["last_deployment"]["status"] == "queued"
    assert staged["current_version"] is None and held["last_deployment"] is None and held["requires_approval"] is True
    missing = client.get("/api/v1/status", {"repository": "nope"}, **bearer(token))
    assert missing.status_code == 404 and missing.json() == {"error": "not_found", "detail": "No repository 'nope'."}


def test_a_repository_url_is_shown_without_its_credentials(client, db, environments, alice, make_token):
    from pipelines.models import Repository

    Repository.objects.create(name="private", url="https://deploy:s3cret-token@git.example.com/org/private.git")
    body = client.get("/api/v1/repositories/private", **bearer(make_token(alice, Scope.READ))).json()
    assert "s3cret-token" not in body["url"] and "git.example.com/org/private.git" in body["url"]


def test_rejecting_through_the_api_needs_a_comment_and_stops_the_deployment(client, make_held_change, bob, make_token,
                                                                            production):
    change_request, _ = make_held_change()
    set_policy(production, allow_api_approval=True)
    token = make_token(bob, Scope.APPROVE)
    silent = post(client, f"/api/v1/change-requests/{change_request.pk}/reject", token)
    assert silent.status_code == 403
    assert silent.json()["detail"] == "Say why you reject the change: a comment is required. Nothing was changed."
    rejected = post(client, f"/api/v1/change-requests/{change_request.pk}/reject", token, {"comment": "not on a Friday"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert rejected.json()["decisions"][0]["comment"] == "not on a Friday"
    assert Deployment.objects.get(pk=change_request.deployment_id).status == Deployment.Status.REJECTED
