"""API tokens: stored hashed, shown once, scoped, expiring, revocable at once, rate limited, and audited as
their owner "via token <name>"."""

import re
import shlex
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

from api.models import ApiToken, Scope, ServiceAccount
from pipelines.models import AuditEvent
from tests.conftest import bearer, set_stage


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
    call_command("issuetoken", "ci", "pipeline", "--scope", "read", "--scope", "deploy", "--service", "--grant",
                 "--by", "alice")
    plaintext = capsys.readouterr().out.strip()
    token = ApiToken.objects.get(name="pipeline")
    assert ServiceAccount.objects.filter(user=token.user, created_by=alice).exists()
    assert not token.user.has_usable_password()
    assert token.scopes == ["deploy", "read"]
    assert client.get("/api/v1/status", **bearer(plaintext)).status_code == 200
    issued = AuditEvent.objects.get(action="api_token.issued")
    assert plaintext not in str(issued.details) and issued.actor == alice


def test_issuetoken_refuses_a_scope_its_holder_lacks_and_issues_nothing(charlie):
    with pytest.raises(CommandError) as refused:
        call_command("issuetoken", "charlie", "laptop", "--scope", "read", "--scope", "deploy")
    assert str(refused.value) == ("charlie may not hold the scope 'deploy': it needs the permission "
                                  "'pipelines.deploy' (given to deployers). Grant it in the admin, or pass --grant "
                                  "for a service account.")
    with pytest.raises(CommandError, match="--grant gives permissions to service accounts only"):
        call_command("issuetoken", "charlie", "laptop", "--scope", "deploy", "--grant")
    assert not ApiToken.objects.exists() and not charlie.user_permissions.exists()


def test_the_readmes_ci_recipe_makes_a_service_account_that_can_report_and_promote(client, capsys, repository,
                                                                                 staging, make_release):
    """One command: the service account, the permissions its scopes need, and the token (README, "Tokens")."""
    set_stage(staging, requires_passing_checks=True, auto_deploy=False)
    release = make_release(repository, "v1.0.0")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [recipe] = re.findall(r"`python manage.py (issuetoken ci pipeline [^`]*)`", readme)
    call_command(*shlex.split(recipe))
    plaintext = capsys.readouterr().out.strip()
    ci = ApiToken.objects.get(name="pipeline").user
    assert ci.has_perm("pipelines.deploy") and ci.has_perm("pipelines.report_checks")
    reported = client.post(f"/api/v1/repositories/shop/commits/{release.commit_sha}/checks",
                           {"name": "ci/tests", "state": "success"}, content_type="application/json", **bearer(plaintext))
    assert reported.status_code == 201, reported.content
    promoted = client.post(f"/api/v1/releases/{release.pk}/promote", {"environment": "staging"},
                           content_type="application/json", **bearer(plaintext))
    assert promoted.status_code == 201, promoted.content
    granted = AuditEvent.objects.get(action="user.permissions_granted")
    assert granted.details == {"user": "ci", "permissions": ["pipelines.deploy", "pipelines.report_checks"],
                               "why": "the scopes of the token 'pipeline'"}


def test_a_service_account_cannot_get_the_approve_scope_even_with_grant(django_user_model):
    with pytest.raises(CommandError) as refused:
        call_command("issuetoken", "robot", "approver", "--service", "--grant", "--scope", "approve")
    assert str(refused.value) == ("robot may not hold the scope 'approve': it is a service account, and a service "
                                  "account never decides on a change.")
    assert not ApiToken.objects.exists()
    assert not django_user_model.objects.filter(username="robot").exists()  # nothing half made


def test_the_approve_scope_needs_an_approver_group_of_some_stage(production, approvers, charlie, make_token):
    with pytest.raises(ValueError, match="charlie may not hold the scope 'approve': charlie is in no stage's approver"):
        make_token(charlie, Scope.APPROVE)
    charlie.groups.add(approvers)
    assert make_token(charlie, Scope.APPROVE).startswith("gpt_")


def test_a_deploy_token_loses_its_power_when_its_holder_loses_the_permission(client, repository, staging, bob,
                                                                              make_release, make_token):
    release = make_release(repository, "v1.0.0")
    plaintext = make_token(bob, Scope.DEPLOY, Scope.READ)
    bob.user_permissions.clear()
    refused = client.post(f"/api/v1/releases/{release.pk}/promote", {"environment": "staging"},
                          content_type="application/json", **bearer(plaintext))
    assert refused.status_code == 403
    assert refused.json() == {"error": "missing_permission", "detail": "bob does not have the permission 'pipelines.deploy'."}
    assert client.get("/api/v1/status", **bearer(plaintext)).status_code == 200  # reading needs no permission
