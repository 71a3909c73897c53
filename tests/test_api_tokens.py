"""API tokens: stored hashed, shown once, scoped, expiring, revocable at once, rate limited, and audited as
their owner "via token <name>"."""

from datetime import timedelta

import time_machine
from django.core.management import call_command
from django.utils import timezone

from api.models import ApiToken, Scope, ServiceAccount
from pipelines.models import AuditEvent
from tests.conftest import bearer


def test_it_stores_only_a_hash_and_the_hash_is_not_a_token(client, alice, make_token):
    plaintext = make_token(alice, Scope.READ, name="laptop")
    token = ApiToken.objects.get(name="laptop")
    assert plaintext not in (token.token_hash, token.prefix) and token.token_hash != plaintext
    assert client.get("/api/v1/environments", **bearer(plaintext)).status_code == 200
    leaked = client.get("/api/v1/environments", **bearer(token.token_hash))
    assert leaked.status_code == 401
    assert leaked.json() == {"error": "unauthenticated", "detail": "This token is not known."}


def test_revoking_takes_effect_on_the_next_request(client, alice, make_token):
    plaintext = make_token(alice, Scope.READ, name="laptop")
    assert client.get("/api/v1/status", **bearer(plaintext)).status_code == 200
    assert ApiToken.objects.get(name="laptop").revoke(by=alice) is True
    refused = client.get("/api/v1/status", **bearer(plaintext))
    assert refused.status_code == 401
    assert refused.json()["detail"] == "The token 'laptop' was revoked."
    assert AuditEvent.objects.filter(action="api_token.revoked", actor=alice).exists()


def test_it_refuses_a_token_once_it_expired(client, alice, make_token):
    plaintext = make_token(alice, Scope.READ, name="short", days=1)
    assert client.get("/api/v1/status", **bearer(plaintext)).status_code == 200
    with time_machine.travel(timezone.now() + timedelta(days=1, seconds=1)):
        refused = client.get("/api/v1/status", **bearer(plaintext))
    assert refused.status_code == 401
    assert "expired" in refused.json()["detail"]


def test_it_records_the_last_use(client, alice, make_token):
    plaintext = make_token(alice, Scope.READ, name="laptop")
    assert ApiToken.objects.get(name="laptop").last_used_at is None
    client.get("/api/v1/status", **bearer(plaintext))
    assert ApiToken.objects.get(name="laptop").last_used_at is not None


def test_a_change_through_a_token_is_audited_as_its_owner_via_the_token(client, repository, staging, bob, make_token,
                                                                          make_release):
    release = make_release(repository, "v1.0.0")
    plaintext = make_token(bob, Scope.DEPLOY, Scope.READ, name="ci-deploy")
    response = client.post(f"/api/v1/releases/{release.pk}/promote", {"environment": "staging"},
                           content_type="application/json", **bearer(plaintext))
    assert response.status_code == 201, response.content
    event = AuditEvent.objects.get(action="deployment.created")
    assert (event.actor, event.actor_name, event.details["via"]) == (bob, "bob", "token ci-deploy")
    # The next event outside the API is a click again.
    release.block(by=bob, reason="bad build")
    assert "via" not in AuditEvent.objects.get(action="release.blocked").details
    assert AuditEvent.objects.verify().intact


def test_it_answers_429_with_retry_after_past_the_rate_limit(client, alice, make_token, settings):
    settings.GITOPS_API_RATE_LIMIT = 3
    plaintext = make_token(alice, Scope.READ)
    other = make_token(alice, Scope.READ)
    statuses = [client.get("/api/v1/environments", **bearer(plaintext)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/api/v1/environments", **bearer(plaintext))
    assert limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 61
    assert client.get("/api/v1/environments", **bearer(other)).status_code == 200  # per token


def test_issuetoken_prints_the_token_once_and_makes_a_service_account(client, alice, capsys):
    call_command("issuetoken", "ci", "pipeline", "--scope", "read", "--scope", "deploy", "--service", "--by", "alice")
    plaintext = capsys.readouterr().out.strip()
    token = ApiToken.objects.get(name="pipeline")
    assert ServiceAccount.objects.filter(user=token.user, created_by=alice).exists()
    assert not token.user.has_usable_password()
    assert token.scopes == ["deploy", "read"]
    assert client.get("/api/v1/status", **bearer(plaintext)).status_code == 200
    issued = AuditEvent.objects.get(action="api_token.issued")
    assert plaintext not in str(issued.details) and issued.actor == alice
