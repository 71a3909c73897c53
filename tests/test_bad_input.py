"""Bad bytes are bad input: text PostgreSQL cannot hold is refused at the edge with a 400 that names the field,
a tag the file system cannot hold is skipped with its reason, and an oversized pipeline file makes its release
invalid. None of them is a 500 or a stuck repository."""

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest
from django.urls import reverse

from api.models import ApiToken, Scope
from pipelines import tracking
from pipelines.models import CheckRef, Deployment, Release, Repository
from tests.conftest import PIPELINE, bearer, git

NUL = "\x00"


@pytest.fixture
def deployed(repository, staging, make_release, alice):
    """v1.0.0 and v1.1.0 of `repository`, v1.1.0 deployed to staging: something to roll back."""
    from pipelines import promotion

    old = make_release(repository, "v1.0.0")
    new = make_release(repository, "v1.1.0")
    promotion.promote(new, staging, by=alice)
    return old, new


# --- the API ---------------------------------------------------------------------------------------------


def test_an_api_filter_with_a_nul_answers_400_json_naming_the_field(client, alice, make_token):
    token = make_token(alice, "read")

    response = client.get("/api/v1/deployments?status=a%00b", **bearer(token))

    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "invalid_characters"
    assert body["field"] == "status"
    assert "'status'" in body["detail"] and "NUL" in body["detail"]


def test_an_api_json_body_with_a_nul_answers_400_naming_the_field_and_changes_nothing(client, alice, make_token,
                                                                                      repository, staging, make_release):
    release = make_release(repository, "v1.0.0")
    token = make_token(alice, "deploy")

    response = client.post(f"/api/v1/releases/{release.pk}/promote",
                           data={"environment": "staging", "override_reason": f"urgent{NUL}"},
                           content_type="application/json", **bearer(token))

    assert response.status_code == 400
    assert response.json()["field"] == "override_reason"
    assert not Deployment.objects.exists()  # without the NUL, this promotion deploys to staging


def test_a_lone_surrogate_in_a_json_body_is_refused_like_a_nul(client, alice, make_token, deployed):
    old, _ = deployed
    token = make_token(alice, "deploy")
    body = '{"environment": "staging", "reason": "half a pair \\ud800"}'  # valid JSON, text no database can hold

    response = client.post(f"/api/v1/releases/{old.pk}/rollback", data=body, content_type="application/json",
                           **bearer(token))

    assert response.status_code == 400
    assert response.json()["field"] == "reason"
    assert "U+D800" in response.json()["detail"]


def test_a_nul_in_an_api_path_answers_400_naming_the_path(client, alice, make_token, repository):
    token = make_token(alice, "read")

    response = client.get("/api/v1/repositories/sh%00op", **bearer(token))

    assert response.status_code == 400
    assert response.json()["field"] == "path"


def test_a_nul_in_a_json_key_is_named_with_it_escaped(client, alice, make_token, deployed):
    old, _ = deployed
    token = make_token(alice, "deploy")

    response = client.post(f"/api/v1/releases/{old.pk}/rollback", data={"environment": "staging", f"x{NUL}": "1"},
                           content_type="application/json", **bearer(token))

    assert response.status_code == 400
    assert response.json()["field"] == "x\\u0000"
    assert NUL not in response.content.decode()


def test_an_api_time_with_an_offset_postgresql_refuses_is_compared_in_utc(client, alice, make_token, repository):
    # Python reads offsets up to ±23:59, PostgreSQL only up to ±15:59: the fuzz found this 500.
    token = make_token(alice, "read")

    response = client.get("/api/v1/audit-events", {"since": "2000-01-01T03:22:51+20:55"}, **bearer(token))

    assert response.status_code == 200


def test_an_api_time_that_leaves_the_calendar_in_utc_answers_422(client, alice, make_token):
    token = make_token(alice, "read")

    response = client.get("/api/v1/audit-events", {"since": "0001-01-01T00:00:00+05:00"}, **bearer(token))

    assert response.status_code == 422
    assert response.json()["error"] == "invalid" and "since" in response.json()["detail"]


# --- pages -----------------------------------------------------------------------------------------------


def test_a_page_filter_with_a_nul_answers_400_naming_it(client, charlie):
    client.force_login(charlie)

    response = client.get(reverse("audit_log") + "?actor=al%00ice")

    assert response.status_code == 400
    html = response.content.decode()
    assert "<h1>Bad input</h1>" in html and "actor" in html
    assert 'aria-label="Main"' in html  # the page keeps the navigation, like the other error pages


def test_a_nul_in_a_page_path_answers_400_not_500(client, charlie, repository):
    client.force_login(charlie)

    response = client.get(f"/repos/{repository.name}/releases/v1%00/")

    assert response.status_code == 400
    assert "path" in response.content.decode()


def test_a_form_post_with_a_nul_answers_400_and_changes_nothing(client, alice):
    client.force_login(alice)

    response = client.post(reverse("api_tokens"), {"name": f"lap{NUL}top", "scopes": ["read"], "days": "30"})

    assert response.status_code == 400
    assert "name" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_a_header_with_a_nul_answers_400(client, alice, make_token):
    token = make_token(alice, "read")

    response = client.get("/api/v1/deployments", headers={"X-Request-Note": f"a{NUL}b"}, **bearer(token))

    assert response.status_code == 400
    assert response.json()["field"] == "header X-Request-Note"


def test_invalid_utf8_in_a_query_string_is_read_as_replacement_characters_not_an_error(client, charlie):
    client.force_login(charlie)

    response = client.get(reverse("audit_log") + "?actor=%ff%fe")

    assert response.status_code == 200


# --- webhooks: the signature is over the raw body, which the edge reads without consuming ---------------------

SECRET = "correct horse battery staple"


def _signed(body):
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
            "X-GitHub-Delivery": "d-1", "X-GitHub-Event": "pull_request"}


@pytest.fixture
def hooked(repository):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET)
    return repository


def _pull_request(title):
    return json.dumps({"number": 7, "pull_request": {"number": 7, "state": "open", "title": title,
                                                     "user": {"login": "dana"}, "head": {"sha": "a" * 40}}}).encode()


def test_a_signed_webhook_with_a_legitimate_body_still_works(client, hooked):
    body = _pull_request("Add caching")

    response = client.post(reverse("webhook", args=[hooked.name]), data=body, content_type="application/json",
                           headers=_signed(body))

    assert response.status_code == 202
    assert CheckRef.objects.get(repository=hooked).title == "Add caching"


def test_a_signed_form_encoded_webhook_is_still_verified_over_its_raw_body(client, hooked):
    # GitHub's other content type: the edge parses the form, and the view still reads the very bytes signed.
    body = urlencode({"payload": json.dumps({"ref": "refs/tags/v1.0.0"})}).encode()
    headers = {**_signed(body), "X-GitHub-Event": "push"}

    response = client.post(reverse("webhook", args=[hooked.name]), data=body,
                           content_type="application/x-www-form-urlencoded", headers=headers)

    assert response.status_code == 202


def test_a_webhook_body_with_a_nul_is_refused_with_400_not_500(client, hooked):
    body = _pull_request(f"Add{NUL}caching")

    response = client.post(reverse("webhook", args=[hooked.name]), data=body, content_type="application/json",
                           headers=_signed(body))

    assert response.status_code == 400
    assert not CheckRef.objects.exists()


# --- what git brings ------------------------------------------------------------------------------------------


def _add_tag_the_file_system_cannot_hold(origin, name):
    """A tag git cannot write as a file (a name part over 255 bytes) can still exist in packed-refs, as on a
    server with another ref storage; written there directly, the way `git pack-refs` would."""
    git(origin.path, "pack-refs", "--all")
    with open(origin.path / ".git" / "packed-refs", "a") as packed:
        packed.write(f"{origin.head()} refs/tags/{name}\n")
    git(origin.path, "pack-refs", "--all")  # sorted again


def test_a_tag_the_file_system_cannot_hold_is_skipped_with_its_reason_and_later_tags_are_still_recorded(repository,
                                                                                                        origin):
    origin.tag("v1.0.0")
    long_tag = "v2-" + "é" * 150  # 153 characters, 303 bytes: short enough for a version, too long for a file name
    _add_tag_the_file_system_cannot_hold(origin, long_tag)
    assert long_tag in git(origin.path, "tag", "--list")

    recorded = tracking.poll_repository(repository)

    repository.refresh_from_db()
    assert repository.last_error == ""
    assert [release.version for release in recorded] == ["v1.0.0"]
    (skipped,) = repository.skipped_tags
    assert skipped["tag"].startswith("v2-éé")
    assert "255 bytes" in skipped["reason"]
    # Later polls keep working: a new tag is recorded, the long one is still reported.
    origin.commit("next")
    origin.tag("v1.1.0")
    assert [release.version for release in tracking.poll_repository(repository)] == ["v1.1.0"]
    repository.refresh_from_db()
    assert repository.last_error == ""
    assert [entry["tag"] for entry in repository.skipped_tags] == [skipped["tag"]]


def test_a_pipeline_file_over_the_cap_makes_its_release_invalid_saying_so(repository, origin, environments, settings):
    settings.GITOPS_PIPELINE_FILE_MAX_BYTES = 4096
    padding = "# " + "x" * 100 + "\n"
    origin.write(".gitops.yml", PIPELINE + padding * 50)  # about 5 KiB of valid YAML
    origin.commit("a long comment")
    origin.tag("v1.0.0")
    origin.write(".gitops.yml", PIPELINE)
    origin.commit("short again")
    origin.tag("v1.0.1")

    big, small = tracking.poll_repository(repository)

    size = len((PIPELINE + padding * 50).encode())
    assert big.version == "v1.0.0" and not big.is_valid
    assert big.error == (f".gitops.yml is {size:,} bytes, more than the 4,096 bytes a pipeline file may have "
                         "(GITOPS_PIPELINE_FILE_MAX_BYTES)")
    assert Release.objects.get(pk=big.pk).pipeline_text == ""  # not stored whole, nor at all
    assert small.is_valid and small.pipeline_text == PIPELINE
