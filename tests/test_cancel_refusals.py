"""What cancel refuses, the same way for every kind of run: a run that has finished or is already being
stopped (`409 refused` in the API with one clear message, exit 3 on the command line, the reason on the page),
someone who may not deploy (403, and no button), and a `next` that leads off the portal.

Runs made through the state machine (tests/test_cancel_every_kind.py's fixtures), PostgreSQL, Redis."""

import html
import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from api.models import Scope
from pipelines.models import AuditEvent
from tests.conftest import bearer
from tests.test_cancel_every_kind import (KINDS, cancel_form, fresh, gitops, marker, named, page_of,  # noqa: F401
                                          queued, running, shown_on)

pytestmark = pytest.mark.django_db(transaction=True)


def api_cancel(run, token):
    return api_post(f"/{run._meta.verbose_name_plural}/{run.pk}/cancel", token)


def api_post(path, token):
    return Client().post(f"/api/v1{path}", **bearer(token))


def capitalised(words):
    return words[0].upper() + words[1:]


@pytest.mark.parametrize("kind", KINDS)
def test_cancelling_a_finished_run_is_refused_with_one_clear_409(kind, queued, bob, make_token):
    run = queued(kind)
    token = make_token(bob, Scope.DEPLOY)
    assert api_cancel(run, token).status_code == 200
    events = AuditEvent.objects.count()

    again = api_cancel(run, token)

    assert again.status_code == 409
    assert again.json() == {"error": "refused",
                            "detail": f"{capitalised(named(run))} has finished (cancelled); there is nothing to cancel."}
    assert fresh(run).status == "cancelled"
    assert AuditEvent.objects.count() == events


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_cancel_of_a_running_run_is_refused(kind, running, bob, make_token):
    run = running(kind)
    token = make_token(bob, Scope.DEPLOY)
    assert api_cancel(run, token).status_code == 200
    requested_at, events = fresh(run).cancel_requested_at, AuditEvent.objects.count()

    again = api_cancel(run, token)

    assert again.status_code == 409 and again.json()["error"] == "refused"
    assert "a cancel was already requested" in again.json()["detail"]
    assert fresh(run).cancel_requested_at == requested_at
    assert AuditEvent.objects.count() == events


@pytest.mark.parametrize("kind", KINDS)
def test_the_command_line_exits_3_with_the_reason_when_the_run_has_finished(kind, queued, bob, make_token, live_server):
    run = queued(kind)
    token = make_token(bob, Scope.DEPLOY)
    assert gitops(live_server, token, kind, "cancel", str(run.pk)).returncode == 0

    again = gitops(live_server, token, kind, "cancel", str(run.pk))

    assert again.returncode == 3
    assert again.stderr.strip() == (f"gitops: {capitalised(named(run))} has finished (cancelled); there is nothing to "
                                    f"cancel. (refused)")


def test_the_command_line_says_when_there_is_no_such_run(bob, make_token, live_server):
    missing = gitops(live_server, make_token(bob, Scope.DEPLOY), "build", "cancel", "999999")
    assert missing.returncode == 2
    assert "No build #999999." in missing.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_the_page_says_why_when_the_run_finished_in_the_meantime(kind, queued, bob):
    run = queued(kind)
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    action, fields, _ = cancel_form(client.get(page_of(run)).content.decode(), run)
    run.cancel(by=None, reason="Someone else was quicker.")  # between showing the button and pressing it

    response = client.post(action, fields, follow=True)

    content = html.unescape(response.content.decode())
    assert f"{capitalised(named(run))} has finished (cancelled); there is nothing to cancel." in content
    assert cancel_form(response.content.decode(), run) is None, "a finished run offers no Cancel"


@pytest.mark.parametrize("kind", KINDS)
def test_someone_who_may_not_deploy_sees_no_cancel_and_is_refused(kind, queued, charlie):
    run = queued(kind)
    client = Client()
    client.force_login(charlie)
    assert cancel_form(client.get(page_of(run)).content.decode(), run) is None
    assert client.post(f"/{run._meta.verbose_name_plural}/{run.pk}/cancel").status_code == 403
    assert fresh(run).status == run.status


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_refuses_a_read_token_and_an_owner_who_lost_the_deploy_permission(kind, queued, charlie, make_token):
    run = queued(kind)
    read_only = api_cancel(run, make_token(charlie, Scope.READ))
    assert read_only.status_code == 403 and read_only.json()["error"] == "missing_scope"

    deploy = Permission.objects.get(codename="deploy", content_type__app_label="pipelines")
    charlie.user_permissions.add(deploy)
    token = make_token(charlie, Scope.READ, Scope.DEPLOY)
    charlie.user_permissions.remove(deploy)
    lost = api_cancel(run, token)
    assert lost.status_code == 403
    assert lost.json() == {"error": "missing_permission",
                           "detail": "charlie does not have the permission 'pipelines.deploy'."}
    assert fresh(run).status == run.status


@pytest.mark.parametrize("kind", KINDS)
def test_the_confirmation_says_what_cancel_does_to_a_waiting_and_a_running_run(kind, queued, bob):
    run = queued(kind)
    client = Client()
    client.force_login(bob)
    *_, waiting = cancel_form(client.get(page_of(run)).content.decode(), run)
    assert waiting.startswith("Cancel ") and "It will not run." in waiting, waiting

    run.claim(worker_name="test-worker")
    *_, running_now = cancel_form(client.get(page_of(run)).content.decode(), run)
    assert "Its running step is stopped (its processes are killed)" in running_now, running_now


@pytest.mark.parametrize("kind", ["build", "preview", "check"])
def test_cancel_goes_back_to_the_portals_own_page_only(kind, queued, bob):
    run = queued(kind)
    client = Client()
    client.force_login(bob)
    response = client.post(f"/{run._meta.verbose_name_plural}/{run.pk}/cancel", {"next": "https://evil.example/"})
    assert response.status_code == 302
    assert response["Location"].split("#")[0] == shown_on(run)


def test_a_missing_run_is_not_found(bob, client, make_token):
    client.force_login(bob)
    assert client.post("/builds/999999/cancel").status_code == 404
    missing = api_post("/checks/999999/cancel", make_token(bob, Scope.DEPLOY))
    assert missing.status_code == 404 and missing.json() == {"error": "not_found", "detail": "No check #999999."}


def test_the_cancel_endpoints_are_in_the_api_schema(client):
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for kind in KINDS:
        plural = f"{kind}s"
        assert "post" in paths[f"/api/v1/{plural}/{{pk}}/cancel"], plural
    summaries = [re.sub(r"\s+", " ", paths[f"/api/v1/{k}s/{{pk}}/cancel"]["post"].get("summary", "")) for k in KINDS[1:]]
    assert all(summary.startswith("Cancel a ") for summary in summaries), summaries
