import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pipelines.models import Deployment, Release, Repository, Target
from tests.conftest import PIPELINE


def create_release(repository, version, **fields):
    sha = hashlib.sha1(f"{repository.name}/{version}".encode()).hexdigest()
    return Release.objects.create(repository=repository, version=version, commit_sha=sha, pipeline_text=PIPELINE, **fields)


def create_deployment(release, environment, status, **fields):
    return Deployment.objects.create(
        release=release, environment=environment, repository=release.repository, status=status,
        trigger=Deployment.Trigger.AUTO, **fields,
    )


def populate(names, environments):
    """One repository per name, each with three releases deployed to every environment and a Target per pair."""
    for name in names:
        repository = Repository.objects.create(name=name, url=f"/srv/git/{name}")
        releases = [create_release(repository, f"v1.{i}.0") for i in range(3)]
        for environment in environments:
            for release in releases:
                last = create_deployment(release, environment, Deployment.Status.SUCCEEDED, finished_at=timezone.now())
            Target.objects.create(repository=repository, environment=environment, current_release=releases[-1], last_deployment=last)


@pytest.fixture
def deployed(repository, staging, production):
    """shop runs v1.0.0 in staging, where v1.1.0 then failed; production never saw a deployment."""
    v100, v110 = create_release(repository, "v1.0.0"), create_release(repository, "v1.1.0")
    create_deployment(v100, staging, Deployment.Status.SUCCEEDED, finished_at=timezone.now() - timedelta(hours=2))
    failed = create_deployment(v110, staging, Deployment.Status.FAILED, finished_at=timezone.now() - timedelta(minutes=3))
    Target.objects.create(repository=repository, environment=staging, current_release=v100, last_deployment=failed)
    return failed


def test_healthz_answers_ok_without_login(client, db):
    response = client.get(reverse("health"))
    assert response.status_code == 200
    assert response.content == b"ok"


@pytest.mark.parametrize("method, name, args", [
    ("get", "dashboard", []),
    ("get", "repository_detail", ["shop"]),
    ("get", "release_detail", ["shop", "v1.0.0"]),
    ("get", "deployment_detail", [1]),
    ("get", "deployment_log", [1]),
    ("post", "release_deploy", [1]),
    ("post", "deployment_cancel", [1]),
    ("post", "deployment_retry", [1]),
    ("post", "target_pause", ["shop", "staging"]),
    ("post", "target_resume", ["shop", "staging"]),
])
def test_it_sends_anonymous_visitors_to_sign_in(client, db, method, name, args):
    url = reverse(name, args=args)
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={url}"


def test_login_page_renders_and_signs_in(client, charlie):
    assert b'name="password"' in client.get(reverse("login")).content
    response = client.post(reverse("login"), {"username": "charlie", "password": "password"})
    assert response.status_code == 302
    assert response.url == reverse("dashboard")


def test_it_shows_what_runs_where(client, charlie, deployed, repository):
    client.force_login(charlie)
    response = client.get(reverse("dashboard"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<th>staging</th>" in html
    assert "<th>production <span" in html  # with its "approval" tag
    assert reverse("repository_detail", args=["shop"]) in html
    # current version, then the last deployment: its status, its link, its release and its age
    assert "v1.0.0" in html
    assert 'class="badge status-failed"' in html
    assert reverse("deployment_detail", args=[deployed.pk]) in html
    assert "v1.1.0" in html
    assert "3 min ago" in html
    assert "not deployed" in html  # production has no Target yet


def test_it_marks_paused_targets_failing_and_disabled_repositories(client, charlie, deployed, repository, staging):
    Target.objects.filter(repository=repository, environment=staging).update(auto_deploy_paused=True, paused_reason="db migration")
    Repository.objects.filter(pk=repository.pk).update(enabled=False, last_error="git ls-remote failed: repository not found")
    client.force_login(charlie)
    html = client.get(reverse("dashboard")).content.decode()
    assert "auto-deploy paused" in html
    assert "db migration" in html
    assert "disabled" in html
    assert 'class="error-text small"' in html
    assert "git ls-remote failed: repository not found" in html


def test_staff_see_the_admin_link_and_others_do_not(client, alice, charlie, db):
    client.force_login(charlie)
    assert reverse("admin:index") not in client.get(reverse("dashboard")).content.decode()
    client.force_login(alice)
    assert reverse("admin:index") in client.get(reverse("dashboard")).content.decode()


def test_the_page_carries_csrf_for_htmx_and_signs_out_by_post(client, charlie, db):
    client.force_login(charlie)
    html = client.get(reverse("dashboard")).content.decode()
    assert """hx-headers='{"x-csrftoken": \"""" in html
    assert f'method="post" action="{reverse("logout")}"' in html
    assert "htmx-2.min.js" in html


def test_the_grid_polls_and_htmx_gets_only_the_grid(client, charlie, deployed):
    client.force_login(charlie)
    page = client.get(reverse("dashboard")).content.decode()
    assert 'id="grid" hx-get="/" hx-trigger="every 5s"' in page

    fragment = client.get(reverse("dashboard"), headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<div id="grid"')
    assert "<html" not in fragment
    assert "v1.0.0" in fragment


def test_it_makes_the_same_number_of_queries_for_one_or_twelve_repositories(client, charlie, environments, django_assert_max_num_queries):
    client.force_login(charlie)
    populate(["service-00"], environments)
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("dashboard"))

    assert len(one) <= 8  # today: session, user, environments, targets (with their releases), repositories
    populate([f"service-{n:02d}" for n in range(1, 12)], environments)
    with django_assert_max_num_queries(len(one)):
        response = client.get(reverse("dashboard"))
    assert response.content.decode().count("status-succeeded") == 12 * 2
    with django_assert_max_num_queries(len(one)):
        client.get(reverse("dashboard"), headers={"HX-Request": "true"})
