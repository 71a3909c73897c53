"""The deployment page, its live status and log, and the cancel and retry buttons."""

import hashlib
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from pipelines.models import AuditEvent, Deployment, Release
from tests.conftest import PIPELINE


def create_release(repository, version):
    sha = hashlib.sha1(f"{repository.name}/{version}".encode()).hexdigest()
    return Release.objects.create(repository=repository, version=version, commit_sha=sha, pipeline_text=PIPELINE)


def create_deployment(release, environment, status, **fields):
    return Deployment.objects.create(
        release=release, environment=environment, repository=release.repository, status=status,
        trigger=Deployment.Trigger.AUTO, **fields,
    )


@pytest.fixture
def release(repository):
    return create_release(repository, "v1.2.0")


@pytest.fixture
def running(release, staging):
    deployment = create_deployment(release, staging, Deployment.Status.RUNNING, started_at=timezone.now() - timedelta(seconds=75))
    deployment.append_log("cloning\n")
    deployment.append_log("deploying v1.2.0 to staging\n")
    return deployment


def log_url(deployment, after, step=0):
    """The poll of the log after chunk `after`, the reader's open step section being `step` (as escaped in HTML)."""
    return reverse("deployment_log", args=[deployment.pk]) + f"?after={after}&amp;step={step}"


def lines_of(html):
    """The text of each log line shown, in order."""
    import re

    return re.findall(r'<span class="text">([^<]*)</span>', html)


# --- the page --------------------------------------------------------------------------------------


def test_it_shows_the_deployment_and_its_log(client, charlie, running):
    client.force_login(charlie)
    response = client.get(reverse("deployment_detail", args=[running.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "v1.2.0 → staging" in html
    assert "Automatic, started by the portal" in html
    assert "1 min 15 s so far" in html
    assert lines_of(html) == ["cloning", "deploying v1.2.0 to staging"]


def test_a_running_deployment_polls_its_status_and_its_log(client, charlie, running):
    client.force_login(charlie)
    html = client.get(reverse("deployment_detail", args=[running.pk])).content.decode()
    assert f'hx-get="{reverse("deployment_detail", args=[running.pk])}" hx-trigger="every 2s"' in html
    assert f'id="log-poller" hx-get="{log_url(running, 2)}" hx-trigger="every 1s" hx-target="#log" hx-swap="beforeend"' in html


def test_a_finished_deployment_does_not_poll(client, charlie, running):
    running.fail("step deploy exited with 3", exit_code=3)
    client.force_login(charlie)
    html = client.get(reverse("deployment_detail", args=[running.pk])).content.decode()
    assert "hx-trigger" not in html.split("<main", 1)[1]  # (the navigation's approvals badge polls on every page)
    assert "status-failed" in html
    assert "<dt>Error</dt>" in html
    assert "step deploy exited with 3" in html
    assert "<code>3</code>" in html


def test_htmx_gets_only_the_status(client, charlie, running):
    client.force_login(charlie)
    fragment = client.get(reverse("deployment_detail", args=[running.pk]), headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<section id="status"')
    assert "status-running" in fragment
    assert "<html" not in fragment and 'id="log"' not in fragment

    running.succeed()
    fragment = client.get(reverse("deployment_detail", args=[running.pk]), headers={"HX-Request": "true"}).content.decode()
    assert "status-succeeded" in fragment
    assert "hx-trigger" not in fragment


# --- the log endpoint ------------------------------------------------------------------------------


def test_the_log_endpoint_returns_only_the_new_text_and_the_next_poller(client, charlie, running):
    client.force_login(charlie)
    running.append_log("step 2 done\n")
    response = client.get(log_url(running, 2).replace("&amp;", "&"), headers={"HX-Request": "true"})
    body = response.content.decode()
    assert response.status_code == 200
    assert lines_of(body) == ["step 2 done"]  # only what is new, appended to the open step's section
    assert body.startswith('<div hx-swap-oob="beforeend:#step-0-lines">')
    assert f'hx-get="{log_url(running, 3)}"' in body
    assert 'hx-swap-oob="true"' in body


def test_with_nothing_new_the_poller_keeps_its_place(client, charlie, running):
    client.force_login(charlie)
    body = client.get(log_url(running, 2).replace("&amp;", "&")).content.decode()
    assert body.startswith('<div id="log-poller"')
    assert f'hx-get="{log_url(running, 2)}"' in body


def test_the_log_is_escaped(client, charlie, running):
    running.append_log("<script>alert(1)</script>\n")
    client.force_login(charlie)
    body = client.get(log_url(running, 2).replace("&amp;", "&")).content.decode()
    assert "<script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_a_finished_deployment_answers_286_with_its_last_text(client, charlie, running):
    running.append_log("all done\n")
    running.succeed()
    client.force_login(charlie)
    response = client.get(log_url(running, 2).replace("&amp;", "&"))
    body = response.content.decode()
    assert response.status_code == 286
    assert lines_of(body) == ["all done"]
    assert "hx-trigger" not in body  # the poller is replaced by an inert one


def test_the_log_endpoint_refuses_a_bad_offset(client, charlie, running):
    client.force_login(charlie)
    assert client.get(reverse("deployment_log", args=[running.pk]) + "?after=x").status_code == 400


# --- cancel ----------------------------------------------------------------------------------------


def test_someone_without_the_deploy_permission_cannot_cancel(client, charlie, release, staging):
    queued = create_deployment(release, staging, Deployment.Status.QUEUED)
    client.force_login(charlie)
    assert "Cancel" not in client.get(reverse("deployment_detail", args=[queued.pk])).content.decode()
    assert client.post(reverse("deployment_cancel", args=[queued.pk])).status_code == 403
    queued.refresh_from_db()
    assert queued.status == Deployment.Status.QUEUED


def test_a_deployer_cancels_a_queued_deployment_and_a_second_click_changes_nothing(client, bob, release, staging):
    queued = create_deployment(release, staging, Deployment.Status.QUEUED)
    client.force_login(bob)
    response = client.post(reverse("deployment_cancel", args=[queued.pk]), follow=True)
    assert f"Deployment #{queued.pk} was cancelled." in response.content.decode()
    queued.refresh_from_db()
    assert queued.status == Deployment.Status.CANCELLED
    events = AuditEvent.objects.count()

    response = client.post(reverse("deployment_cancel", args=[queued.pk]), follow=True)
    assert f"Deployment #{queued.pk} has finished (cancelled); there is nothing to cancel." in response.content.decode()
    queued.refresh_from_db()
    assert queued.status == Deployment.Status.CANCELLED
    assert AuditEvent.objects.count() == events


def test_cancelling_a_running_deployment_asks_the_runner_once(client, bob, running):
    client.force_login(bob)
    response = client.post(reverse("deployment_cancel", args=[running.pk]), follow=True)
    assert "Asked the runner to stop" in response.content.decode()
    running.refresh_from_db()
    assert running.status == Deployment.Status.RUNNING and running.cancel_requested_at is not None
    requested_at, events = running.cancel_requested_at, AuditEvent.objects.count()

    response = client.post(reverse("deployment_cancel", args=[running.pk]), follow=True)
    assert "already requested" in response.content.decode()
    running.refresh_from_db()
    assert running.cancel_requested_at == requested_at
    assert AuditEvent.objects.count() == events


def test_cancel_refuses_get(client, bob, running):
    client.force_login(bob)
    assert client.get(reverse("deployment_cancel", args=[running.pk])).status_code == 405


# --- retry -----------------------------------------------------------------------------------------


def test_a_deployer_retries_a_failed_deployment_once(client, bob, release, staging):
    failed = create_deployment(release, staging, Deployment.Status.FAILED, error="exit 1")
    client.force_login(bob)
    assert "Retry" in client.get(reverse("deployment_detail", args=[failed.pk])).content.decode()

    response = client.post(reverse("deployment_retry", args=[failed.pk]))
    retry = Deployment.objects.exclude(pk=failed.pk).get()
    assert response.status_code == 302 and response.url == reverse("deployment_detail", args=[retry.pk])
    assert retry.release == release and retry.environment == staging
    assert retry.trigger == Deployment.Trigger.RETRY and retry.triggered_by == bob
    assert retry.status == Deployment.Status.QUEUED

    response = client.post(reverse("deployment_retry", args=[failed.pk]), follow=True)
    assert "nothing was retried" in response.content.decode()
    assert Deployment.objects.count() == 2


def test_a_succeeded_deployment_cannot_be_retried(client, bob, release, staging):
    done = create_deployment(release, staging, Deployment.Status.SUCCEEDED)
    client.force_login(bob)
    response = client.post(reverse("deployment_retry", args=[done.pk]), follow=True)
    assert "only a failed or cancelled one can be retried" in response.content.decode()
    assert Deployment.objects.count() == 1


def test_someone_without_the_deploy_permission_cannot_retry(client, charlie, release, staging):
    failed = create_deployment(release, staging, Deployment.Status.FAILED)
    client.force_login(charlie)
    assert "Retry" not in client.get(reverse("deployment_detail", args=[failed.pk])).content.decode()
    assert client.post(reverse("deployment_retry", args=[failed.pk])).status_code == 403
    assert Deployment.objects.count() == 1


def test_a_superseded_deployment_says_so_and_links_the_newer_one_not_as_an_error(client, charlie, repository, staging, make_release):
    from pipelines import promotion

    older = promotion.on_release_recorded(make_release(repository, "v1.0.0"))
    newer = promotion.on_release_recorded(make_release(repository, "v1.1.0"))
    client.force_login(charlie)

    html = client.get(reverse("deployment_detail", args=[older.pk])).content.decode()

    assert "superseded by a newer release" in html
    assert f'<dt>Superseded by</dt><dd><a href="{reverse("deployment_detail", args=[newer.pk])}">deployment #{newer.pk}</a></dd>' in html
    assert f"<dt>Why it was cancelled</dt><dd class=\"reason\">Superseded by v1.1.0 (deployment #{newer.pk}).</dd>" in html
    assert "error-box" not in html
