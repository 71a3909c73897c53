"""The API fuzzed with Schemathesis against its own OpenAPI schema: whatever a caller sends, no answer is a 5xx.

Every operation is called in this process through the portal's real WSGI application (all middleware), with a
token that has every scope, over a small world (a repository, a release, a deployment) that the ids may hit."""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from api.api import api
from api.models import Scope
from pipelines import promotion

# About 26 operations x this many cases stays well under a minute on 2 cores (positive and negative cases alike).
MAX_EXAMPLES = 30


@pytest.fixture
def portal_app():
    """The WSGI application as gunicorn serves it, in this test's database transaction: like Django's test client,
    requests here must not close the connection that holds the transaction (close_old_connections)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_headers(settings, alice, approvers, make_token, repository, staging, make_release):
    """A token with every scope, unthrottled, and something for the generated ids and names to find."""
    settings.GITOPS_API_RATE_LIMIT = 0
    alice.groups.add(approvers)  # production's approvers: the `approve` scope needs a group to approve for
    release = make_release(repository, "v1.0.0")
    promotion.promote(release, staging, by=alice)
    return {"Authorization": f"Bearer {make_token(alice, *Scope.values)}"}


# The schema the API publishes at /api/v1/openapi.json (tests/test_api_schema.py), built when the tests are
# collected so that each operation is a test of its own (`from_fixture` does not work with pytest 9).
schema = schemathesis.openapi.from_dict(api.get_openapi_schema())


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_operation_answers_a_server_error(case, fuzz_headers, portal_app):
    case.call_and_validate(headers=fuzz_headers, checks=[not_a_server_error], app=portal_app)
