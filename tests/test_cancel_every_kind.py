"""Cancel works for every kind of run (deployment, build, preview, check) on every surface: the run's page, the
API, the `gitops` command line and rq's stop-job in the dashboard; each cancel is audited.

A run not started yet is cancelled and its step never runs: the real PortalWorker drains the queues after the
cancel and the step's marker file stays absent. A running run (claimed, as a worker claims it) is asked to
stop: `cancel_requested_at` is set and `<kind>.cancel_requested` audited. (That its runner stops the step within
2 s is the run kernel's own test.)

Real git repositories in tmp_path, PostgreSQL, Redis; the page through Django's test client with CSRF checks,
the command line as a subprocess against a live server."""

import html
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from django.test import Client
from django.urls import reverse

from api.models import Scope
from approvals.opening import open_change_request
from pipelines import promotion
from pipelines.models import AuditEvent, Build, Check
from pipelines.runs import registry
from tests.conftest import bearer, burst_portal_worker

pytestmark = pytest.mark.django_db(transaction=True)

KINDS = ("deployment", "build", "preview", "check")
# Each kind's steps touch a file named after it in the marker directory: a cancelled run leaves none.
PIPELINE = """\
build:
  steps:
    - name: build
      run: touch {marker}/build
checks:
  steps:
    - name: test
      run: touch {marker}/check
environments:
  staging:
    steps:
      - run: touch {marker}/deployment
  production:
    preview:
      - name: plan
        run: touch {marker}/preview
    steps:
      - run: touch {marker}/apply
"""


@pytest.fixture
def marker(tmp_path):
    directory = tmp_path / "marker"
    directory.mkdir()
    return directory


@pytest.fixture
def queued(repository, environments, origin, make_release, alice, marker):
    """make(kind): a run of that kind, queued through the state machine (a preview's deployment held for
    approval, with its change request open), on a commit of the origin whose steps mark that they ran."""
    staging, production = environments
    versions = (f"v1.0.{n}" for n in itertools.count())

    def make(kind):
        text = PIPELINE.format(marker=marker)
        if kind in ("deployment", "preview"):  # a release with a build section deploys only once built
            text = "environments:" + text.split("environments:")[1]
        origin.write(".gitops.yml", text)
        version = next(versions)
        release = make_release(repository, version, pipeline=text, commit_sha=origin.commit(kind))
        if kind == "deployment":
            return promotion.promote(release, staging, by=alice)
        if kind == "build":
            with transaction.atomic():
                return Build.objects.queue_for(release)
        if kind == "preview":
            deployment = promotion.promote(release, production, by=alice)
            open_change_request(deployment)
            return deployment.previews.get()
        return Check.objects.queue_for(repository, commit_sha=release.commit_sha, ref_name="feature/x")

    return make


@pytest.fixture
def running(queued):
    """make(kind): a run of that kind claimed by a worker, as a worker claims it (its step not started)."""

    def make(kind):
        run = queued(kind)
        run.claim(worker_name="test-worker")
        run.refresh_from_db()
        return run

    return make


def fresh(run):
    return type(run).objects.get(pk=run.pk)


def audited(run, action):
    return AuditEvent.objects.filter(action=f"{run._meta.model_name}.{action}", object_id=str(run.pk))


def drain():
    """Every queue a run's worker takes, drained once by the real PortalWorker."""
    burst_portal_worker(sorted({kind.queue for kind in registry.kinds()} | {"git"}))


# --- the surfaces ------------------------------------------------------------------------------------------


def named(run):
    """How the portal's messages name each kind of run (a preview by its number on its change request)."""
    kind = run._meta.model_name
    if kind == "build":
        return f"build #{run.pk} of shop {run.release.version}"
    if kind == "preview":
        return f"preview #{run.number} of deployment #{run.deployment_id}"
    if kind == "check":
        return f"check #{run.pk} of {run.commit_sha[:10]} on feature/x"
    return f"deployment #{run.pk}"


def page_of(run):
    """The page with the run's Cancel button (a preview's is on its change request)."""
    if run._meta.model_name == "preview":
        return reverse("change_request_detail", args=[run.deployment.change_request.pk])
    return shown_on(run)


def shown_on(run):
    """The pipelines page that shows the run (a build's release, a preview's deployment)."""
    kind = run._meta.model_name
    if kind == "build":
        return run.release.get_absolute_url()
    if kind == "preview":
        return run.deployment.get_absolute_url()
    return run.get_absolute_url() if hasattr(run, "get_absolute_url") else reverse("dashboard")


def cancel_form(content, run):
    """(action, {hidden field: value}, confirmation) of the run's Cancel form on a page; None without one."""
    action = f"/{run._meta.verbose_name_plural}/{run.pk}/cancel"
    form = re.search(rf'<form method="post" action="{action}"([^>]*)>(.*?)</form>', content, re.S)
    if form is None:
        return None
    confirmation = re.search(r'data-confirm="([^"]*)"', form.group(1))
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(2)))
    return action, fields, html.unescape(confirmation.group(1)) if confirmation else ""


def cancel_on_the_page(run, user):
    """Press Cancel on the run's page as `user` (CSRF checked); the message the page then shows."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    found = cancel_form(client.get(page_of(run)).content.decode(), run)
    assert found is not None, f"no Cancel button for {run} on {page_of(run)}"
    action, fields, _ = found
    response = client.post(action, fields, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0].split("#")[0] == page_of(run), "back to the page the button was on"
    return " ".join(html.unescape(m) for m in re.findall(r'<li class="message[^"]*">(.*?)</li>', response.content.decode()))


def cancel_through_the_api(run, user, make_token):
    """The run's status as the API answers the cancel; a running one's says when the cancel was asked for."""
    response = Client().post(f"/api/v1/{run._meta.verbose_name_plural}/{run.pk}/cancel",
                             **bearer(make_token(user, Scope.DEPLOY)))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == run.pk and body["is_finished"] == (body["status"] == "cancelled")
    assert (body["cancel_requested_at"] is not None) == (body["status"] == "running")
    return body["status"]


def gitops(live_server, token, *args):
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GITOPS_URL": live_server.url, "GITOPS_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "gitops_cli", *args], cwd=Path(settings.BASE_DIR), env=env, text=True,
                          capture_output=True, timeout=60)


def cancel_with_the_command_line(run, user, make_token, live_server):
    kind = run._meta.model_name
    done = gitops(live_server, make_token(user, Scope.DEPLOY), kind, "cancel", str(run.pk))
    assert done.returncode == 0, done.stderr
    return done.stdout


def stop_in_the_rq_dashboard(run, superuser):
    """rq's "stop job" on the run's job, as a superuser presses it in the dashboard."""
    from django_rq.settings import get_queues_list

    kind = registry.of(run)
    index = [q["name"] for q in get_queues_list()].index(kind.queue)
    client = Client()
    client.force_login(superuser)
    response = client.post(f"/admin/django_rq/dashboard/queues/{index}/{kind.job_id(run.pk)}/stop/", follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0].split("#")[0] == shown_on(run), "to the run's page, which shows it stopping"
    return html.unescape(response.content.decode())


# --- not started yet: cancelled, and its step never runs ---------------------------------------------------


def assert_cancelled_and_never_ran(run, marker, actor, reason):
    drain()
    after = fresh(run)
    assert after.status == "cancelled"
    assert after.error == reason
    event = audited(run, "cancelled").get()
    assert event.actor == actor and event.details["reason"] == reason
    assert not (marker / run._meta.model_name).exists(), "the cancelled run's step ran"
    assert not audited(run, "running").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_queued_run_cancelled_on_its_page_never_runs(kind, queued, bob, marker):
    run = queued(kind)
    said = cancel_on_the_page(run, bob)
    assert said == f"{named(run)[0].upper()}{named(run)[1:]} was cancelled.", said
    assert_cancelled_and_never_ran(run, marker, bob, "Cancelled by bob.")


@pytest.mark.parametrize("kind", KINDS)
def test_a_queued_run_cancelled_through_the_api_never_runs(kind, queued, bob, marker, make_token):
    run = queued(kind)
    assert cancel_through_the_api(run, bob, make_token) == "cancelled"
    assert_cancelled_and_never_ran(run, marker, bob, "Cancelled by bob through the API.")


@pytest.mark.parametrize("kind", KINDS)
def test_a_queued_run_cancelled_with_the_command_line_never_runs(kind, queued, bob, marker, make_token, live_server):
    run = queued(kind)
    said = cancel_with_the_command_line(run, bob, make_token, live_server)
    assert f"{kind.capitalize()} #{run.pk} is cancelled." in said
    assert_cancelled_and_never_ran(run, marker, bob, "Cancelled by bob through the API.")


@pytest.mark.parametrize("kind", KINDS)
def test_stopping_a_queued_runs_job_in_the_rq_dashboard_cancels_the_run(kind, queued, alice, marker):
    run = queued(kind)
    said = stop_in_the_rq_dashboard(run, alice)
    assert f"was not killed: {named(run)} was cancelled. Recorded in the audit log." in said
    assert_cancelled_and_never_ran(run, marker, alice, "Stopped from the rq dashboard by alice.")


# --- running: its runner is asked to stop ------------------------------------------------------------------


def assert_asked_to_stop(run, actor, reason):
    after = fresh(run)
    assert after.status == "running" and after.cancel_requested_at is not None
    event = audited(run, "cancel_requested").get()
    assert event.actor == actor and event.details["reason"] == reason
    assert not audited(run, "cancelled").exists(), "recorded by the runner once its step is gone, not before"


@pytest.mark.parametrize("kind", KINDS)
def test_a_running_run_cancelled_on_its_page_is_asked_to_stop(kind, running, bob):
    run = running(kind)
    said = cancel_on_the_page(run, bob)
    assert said == f"Asked the runner to stop {named(run)}: its step is stopped within seconds.", said
    assert_asked_to_stop(run, bob, "Cancelled by bob.")
    # The page then says a cancel was asked for, instead of offering the button again.
    client = Client()
    client.force_login(bob)
    content = client.get(page_of(run)).content.decode()
    assert "cancel requested" in content and cancel_form(content, run) is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_running_run_cancelled_through_the_api_is_asked_to_stop(kind, running, bob, make_token):
    run = running(kind)
    assert cancel_through_the_api(run, bob, make_token) == "running"
    assert_asked_to_stop(run, bob, "Cancelled by bob through the API.")


@pytest.mark.parametrize("kind", KINDS)
def test_a_running_run_cancelled_with_the_command_line_is_asked_to_stop(kind, running, bob, make_token, live_server):
    run = running(kind)
    said = cancel_with_the_command_line(run, bob, make_token, live_server)
    assert f"Asked the runner to stop {kind} #{run.pk}" in said
    assert_asked_to_stop(run, bob, "Cancelled by bob through the API.")


@pytest.mark.parametrize("kind", KINDS)
def test_stopping_a_running_runs_job_in_the_rq_dashboard_asks_its_runner_to_stop(kind, running, alice):
    run = running(kind)
    said = stop_in_the_rq_dashboard(run, alice)
    assert f"was not killed: asked the runner to stop {named(run)}: its step is stopped within seconds." in said
    assert_asked_to_stop(run, alice, "Stopped from the rq dashboard by alice.")


@pytest.mark.parametrize("kind", KINDS)
def test_a_queued_run_left_alone_runs_its_step(kind, queued, marker):
    """The control of the tests above: the same run, not cancelled, marks that it ran."""
    run = queued(kind)
    drain()
    assert fresh(run).status == "succeeded", fresh(run).error
    assert (marker / kind).exists()


def test_a_kind_only_tests_know_is_cancelled_on_the_page_the_api_and_the_dashboard_with_no_code_of_its_own(
    alice, bob, make_token, marker
):
    """The probe kind (tests/probe_kind: one model, one kind, one migration) gets its cancel URL, its API endpoint
    with its permission rule, and rq's stop-job mapping from the registry alone. (The command line, which imports
    nothing of the server, names its kinds itself.)"""
    from tests.probe_kind.models import Probe

    def queue_probe():
        with transaction.atomic():
            probe = Probe.objects.create(status="queued", script=f"touch {marker}/probe")
            probe.wake()
        return probe

    on_the_page, through_the_api, in_the_dashboard = queue_probe(), queue_probe(), queue_probe()
    client = Client()
    client.force_login(bob)
    response = client.post(f"/probes/{on_the_page.pk}/cancel", follow=True)
    assert response.redirect_chain[-1][0] == reverse("dashboard"), "a kind without a page of its own yet"
    assert f"Probe #{on_the_page.pk} was cancelled." in response.content.decode()
    assert cancel_through_the_api(through_the_api, bob, make_token) == "cancelled"
    said = stop_in_the_rq_dashboard(in_the_dashboard, alice)
    assert f"probe #{in_the_dashboard.pk} was cancelled. Recorded in the audit log." in said

    drain()
    for probe, actor in ((on_the_page, bob), (through_the_api, bob), (in_the_dashboard, alice)):
        assert fresh(probe).status == "cancelled"
        assert audited(probe, "cancelled").get().actor == actor
    assert not (marker / "probe").exists()
