"""The API's permission matrix, generated from the URL configuration: every endpoint × method × caller.

A new endpoint without a rule in api/permissions.py fails here (and is refused to everyone in the meantime);
a rule left behind for an endpoint that is gone fails too."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from api.models import ApiToken, Scope
from api.permissions import RULES
from pipelines import promotion
from pipelines.models import Build, Check
from tests.conftest import bearer
from tests.probe_kind.models import Probe

API_PREFIX = "api/v1/"
# Codes that mean "the caller was refused": an allowed caller must never get one of these.
REFUSALS = {"unauthenticated", "missing_scope", "missing_permission", "no_rule"}


def api_routes():
    """(route, url name, methods) of every URL under /api/v1/, from Django's resolver."""

    def walk(patterns, prefix):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern), pattern

    routes = []
    for route, pattern in walk(get_resolver().url_patterns, ""):
        if not route.startswith(API_PREFIX):
            continue
        cells = getattr(pattern.callback, "__closure__", None) or ()  # the schema's views are partials
        path_view = next((cell.cell_contents for cell in cells
                          if hasattr(cell.cell_contents, "operations")), None)
        if path_view is None:  # the schema and its docs page: plain GET views
            methods = ["GET"]
        else:
            methods = sorted({method for operation in path_view.operations for method in operation.methods})
        routes.append((route, pattern.name, methods))
    return routes


def test_it_has_a_rule_for_every_endpoint_and_no_rule_without_one():
    endpoints = {(name, method) for _, name, methods in api_routes() for method in methods}
    assert len(endpoints) > 20
    assert sorted(endpoints - set(RULES)) == [], "endpoints without a rule in api/permissions.py"
    assert sorted(set(RULES) - endpoints) == [], "rules for endpoints that do not exist"


@pytest.fixture
def objects(repository, staging, production, make_release, make_held_change, alice):
    change_request, _ = make_held_change()
    release = make_release(repository, "v1.0.0")
    deployment = promotion.promote(release, staging, by=alice)
    with transaction.atomic():
        build = Build.objects.queue_for(make_release(repository, "v1.1.0"))
    check = Check.objects.queue_for(repository, commit_sha=release.commit_sha, ref_name="main")
    return {"name": repository.name, "sha": release.commit_sha, "environment": staging.name, "releases/": release.pk, "deployments/": deployment.pk,
            "change-requests/": change_request.pk, "builds/": build.pk, "checks/": check.pk,
            "previews/": 999999,  # none held here: a missing one answers 404, which refuses no caller
            "drift-checks/": 999999,  # likewise
            "probes/": Probe.objects.create(status="queued", script="true").pk}  # tests/probe_kind


def fill(route, objects):
    """The route with sample values for its parameters (a repository name, the id of a release…)."""
    path = route
    while "<" in path:
        start, end = path.index("<"), path.index(">")
        converter, _, parameter = path[start + 1:end].rpartition(":")
        if parameter in ("name", "sha", "environment"):
            value = objects[parameter]
        else:
            owner = next((key for key in objects if key.endswith("/") and path[len(API_PREFIX):start].startswith(key)), None)
            assert owner is not None, f"no sample object for {route}: add one to the `objects` fixture"
            value = objects[owner]
        path = path[:start] + str(value) + path[end + 1:]
    return "/" + path


@pytest.fixture
def callers(alice, production, approvers, make_token):
    """Every kind of caller, each a token of alice (who may do everything, and approve production) unless it has
    none."""
    alice.groups.add(approvers)
    expired = make_token(alice, *Scope.values, name="expired")
    ApiToken.objects.filter(name="expired").update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = make_token(alice, *Scope.values, name="revoked")
    ApiToken.objects.get(name="revoked").revoke(by=alice)
    return {
        "anonymous": (None, None),
        "no scope": (make_token(alice, name="no-scope"), None),
        "read": (make_token(alice, Scope.READ), Scope.READ),
        "deploy": (make_token(alice, Scope.DEPLOY), Scope.DEPLOY),
        "approve": (make_token(alice, Scope.APPROVE), Scope.APPROVE),
        "checks:report": (make_token(alice, Scope.CHECKS_REPORT), Scope.CHECKS_REPORT),
        "expired": (expired, "expired"),
        "revoked": (revoked, "revoked"),
    }


def expected(rule, caller, scope):
    """(status, error code) the rule gives this caller; (None, None) when it lets them through."""
    if rule.scope is None:
        return None, None
    if caller in ("anonymous", "expired", "revoked"):
        return 401, "unauthenticated"
    if scope != rule.scope:
        return 403, "missing_scope"
    return None, None


def test_every_endpoint_answers_every_caller_as_its_rule_says(client, objects, callers):
    seen = 0
    for route, name, methods in api_routes():
        path = fill(route, objects)
        for method in methods:
            rule = RULES[name, method]
            for caller, (token, scope) in callers.items():
                response = client.generic(method, path, data="{}", content_type="application/json", **bearer(token))
                status, code = expected(rule, caller, scope)
                where = f"{method} {path} as {caller}: {response.status_code} {response.content[:200]!r}"
                if status is None:
                    assert response.status_code < 500, where
                    if method == "GET" and name != "api-root":  # ninja's root answers 404 by design
                        assert response.status_code == 200, where
                    body = response.json() if response["Content-Type"].startswith("application/json") else {}
                    assert not (isinstance(body, dict) and body.get("error") in REFUSALS), where
                else:
                    assert response.status_code == status, where
                    assert response.json()["error"] == code, where
                    assert set(response.json()) == {"error", "detail"}, where
                seen += 1
    assert seen >= 8 * 25


def test_a_deploy_token_does_not_outlast_its_owners_deploy_permission(client, objects, charlie, make_token):
    deploy = Permission.objects.get(codename="deploy", content_type__app_label="pipelines")
    charlie.user_permissions.add(deploy)
    token = make_token(charlie, Scope.READ, Scope.DEPLOY)
    charlie.user_permissions.remove(deploy)
    read = client.get(f"/api/v1/deployments/{objects['deployments/']}", **bearer(token))
    assert read.status_code == 200
    cancel = client.post(f"/api/v1/deployments/{objects['deployments/']}/cancel", **bearer(token))
    assert cancel.status_code == 403
    assert cancel.json() == {"error": "missing_permission", "detail": "charlie does not have the permission 'pipelines.deploy'."}


def test_an_endpoint_without_a_rule_is_refused_to_everyone(rf, alice, production, approvers, make_token):
    """Fail closed: the check refuses what the table does not name, before it looks at the token."""
    from django.urls import ResolverMatch

    from api.auth import TokenAuth
    from api.errors import ApiError

    alice.groups.add(approvers)
    request = rf.get("/api/v1/new-thing", HTTP_AUTHORIZATION=f"Bearer {make_token(alice, *Scope.values)}")
    request.resolver_match = ResolverMatch(lambda r: None, (), {}, url_name="api_new_thing")
    with pytest.raises(ApiError) as refused:
        TokenAuth()(request)
    assert (refused.value.status, refused.value.code) == (403, "no_rule")
