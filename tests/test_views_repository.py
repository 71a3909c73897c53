"""The repository page (settings, targets, releases, pause/resume) and the release page (details, deploy)."""

import hashlib

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pipelines.models import AuditEvent, Deployment, Release, Repository, Target
from tests.conftest import PIPELINE


def create_release(repository, version, **fields):
    fields.setdefault("pipeline_text", PIPELINE)
    sha = hashlib.sha1(f"{repository.name}/{version}".encode()).hexdigest()
    return Release.objects.create(repository=repository, version=version, commit_sha=sha, **fields)


def create_deployment(release, environment, status, **fields):
    return Deployment.objects.create(
        release=release, environment=environment, repository=release.repository, status=status,
        trigger=Deployment.Trigger.AUTO, **fields,
    )


@pytest.fixture
def release(repository):
    return create_release(
        repository, "v2.3.0", message="Add the checkout flow\n\nLonger body that is not shown in lists.",
        author_name="Dana Developer", author_email="dana@example.com",
    )


# --- repository page ---------------------------------------------------------------------------------


def test_it_shows_the_repository_settings(client, charlie, repository, environments):
    Repository.objects.filter(pk=repository.pk).update(
        tag_pattern="release-*", last_polled_at=timezone.now(), last_error="fatal: could not read from remote"
    )
    client.force_login(charlie)
    html = client.get(reverse("repository_detail", args=["shop"])).content.decode()
    assert repository.url in html
    assert "<code>main</code>" in html
    assert "Tags matching the pattern" in html and "release-*" in html
    assert "just now" in html
    assert 'class="error-box">fatal: could not read from remote' in html


def test_it_answers_404_for_an_unknown_repository(client, charlie, db):
    client.force_login(charlie)
    assert client.get(reverse("repository_detail", args=["nope"])).status_code == 404


def test_it_lists_releases_with_their_flags_and_latest_deployment_per_environment(client, charlie, repository, release, staging, production):
    broken = create_release(repository, "v2.4.0", error="line 3: steps must be a list")
    create_release(repository, "v2.5.0", blocked=True, blocked_reason="bad build", tag_moved_to="f" * 40)
    create_deployment(release, staging, Deployment.Status.FAILED)
    latest = create_deployment(release, staging, Deployment.Status.SUCCEEDED)
    held = create_deployment(release, production, Deployment.Status.AWAITING_APPROVAL)
    client.force_login(charlie)
    html = client.get(reverse("repository_detail", args=["shop"])).content.decode()

    assert reverse("release_detail", args=["shop", "v2.3.0"]) in html
    assert release.short_sha in html and release.commit_sha not in html
    assert "Dana Developer" in html
    assert "Add the checkout flow" in html and "Longer body" not in html
    assert "invalid" in html and broken.error in html
    assert "blocked" in html and "tag moved" in html
    # only the latest deployment of each (release, environment) is shown
    assert reverse("deployment_detail", args=[latest.pk]) in html
    assert reverse("deployment_detail", args=[held.pk]) in html
    assert "status-failed" not in html


def test_it_shows_the_latest_fifty_releases(client, charlie, repository, environments):
    for n in range(55):
        create_release(repository, f"r{n:03d}")
    client.force_login(charlie)
    html = client.get(reverse("repository_detail", args=["shop"])).content.decode()
    assert "r054" in html and "r005" in html
    assert "r004" not in html and "r000" not in html


def test_it_makes_the_same_number_of_queries_for_one_or_many_releases(client, bob, repository, environments, django_assert_max_num_queries):
    def add_releases(versions):
        for version in versions:
            release = create_release(repository, version)
            for environment in environments:
                create_deployment(release, environment, Deployment.Status.FAILED)
                last = create_deployment(release, environment, Deployment.Status.SUCCEEDED)
                Target.objects.update_or_create(
                    repository=repository, environment=environment,
                    defaults={"current_release": release, "last_deployment": last},
                )

    client.force_login(bob)  # a deployer: the page also checks the permission
    add_releases(["v1"])
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("repository_detail", args=["shop"]))
    assert len(one) <= 14  # 12, the count of releases the pager shows, and one for the Branches section

    add_releases([f"v{n}" for n in range(2, 13)])
    with django_assert_max_num_queries(len(one)):
        response = client.get(reverse("repository_detail", args=["shop"]))
    # 12 releases × 2 environments in the release table, plus the 2 targets' last deployments
    assert response.content.decode().count("status-succeeded") == 12 * 2 + 2


# --- pause and resume --------------------------------------------------------------------------------


def test_deployers_see_pause_and_others_do_not(client, bob, charlie, repository, environments):
    client.force_login(charlie)
    assert "Pause auto-deploy" not in client.get(reverse("repository_detail", args=["shop"])).content.decode()
    client.force_login(bob)
    assert "Pause auto-deploy" in client.get(reverse("repository_detail", args=["shop"])).content.decode()


def test_a_deployer_pauses_and_resumes_automatic_deployment(client, bob, repository, staging):
    client.force_login(bob)
    response = client.post(reverse("target_pause", args=["shop", "staging"]), {"reason": "database migration"})
    assert response.status_code == 302 and response.url == reverse("repository_detail", args=["shop"])
    target = Target.objects.get(repository=repository, environment=staging)
    assert target.auto_deploy_paused and target.paused_reason == "database migration" and target.paused_by == bob
    assert AuditEvent.objects.filter(action="target.paused", actor=bob).exists()

    html = client.get(reverse("repository_detail", args=["shop"])).content.decode()
    assert "paused" in html and "database migration" in html and ">Resume<" in html

    client.post(reverse("target_resume", args=["shop", "staging"]))
    target.refresh_from_db()
    assert not target.auto_deploy_paused and target.paused_by is None


def test_pausing_needs_a_reason(client, bob, repository, staging):
    client.force_login(bob)
    response = client.post(reverse("target_pause", args=["shop", "staging"]), {"reason": "  "}, follow=True)
    assert "Give a reason" in response.content.decode()
    assert not Target.objects.filter(repository=repository, auto_deploy_paused=True).exists()


def test_someone_without_the_deploy_permission_cannot_pause_or_resume(client, charlie, repository, staging):
    target = Target.objects.create(repository=repository, environment=staging, auto_deploy_paused=True, paused_reason="freeze")
    client.force_login(charlie)
    assert client.post(reverse("target_resume", args=["shop", "staging"])).status_code == 403
    assert client.post(reverse("target_pause", args=["shop", "staging"]), {"reason": "x"}).status_code == 403
    target.refresh_from_db()
    assert target.auto_deploy_paused and target.paused_reason == "freeze"


def test_pause_and_resume_refuse_get(client, bob, repository, staging):
    client.force_login(bob)
    assert client.get(reverse("target_pause", args=["shop", "staging"])).status_code == 405


# --- release page ------------------------------------------------------------------------------------


def test_the_release_page_shows_the_commit_the_file_and_the_deployments(client, charlie, release, staging):
    deployment = create_deployment(release, staging, Deployment.Status.RUNNING)
    client.force_login(charlie)
    response = client.get(reverse("release_detail", args=["shop", "v2.3.0"]))
    html = response.content.decode()
    assert response.status_code == 200
    assert release.commit_sha in html
    assert "Dana Developer &lt;dana@example.com&gt;" in html
    assert "Longer body that is not shown in lists." in html
    assert "run: ./deploy.sh" in html
    assert reverse("deployment_detail", args=[deployment.pk]) in html
    assert "status-running" in html
    assert "Deploy to" not in html  # charlie may not deploy


def test_the_release_page_shows_an_invalid_file_and_a_moved_tag(client, charlie, repository, environments):
    create_release(repository, "v9", pipeline_text="environments: [", error="line 1: the file is not valid YAML", tag_moved_to="a" * 40)
    client.force_login(charlie)
    html = client.get(reverse("release_detail", args=["shop", "v9"])).content.decode()
    assert "can never deploy" in html and "line 1: the file is not valid YAML" in html
    assert "The tag moved" in html and "a" * 40 in html


def test_a_version_with_a_slash_has_its_page(client, charlie, repository, environments):
    create_release(repository, "release/2024.1")
    client.force_login(charlie)
    url = reverse("release_detail", args=["shop", "release/2024.1"])
    assert client.get(url).status_code == 200


def test_deployers_get_a_button_per_environment_of_the_file(client, bob, release, environments):
    client.force_login(bob)
    html = client.get(reverse("release_detail", args=["shop", "v2.3.0"])).content.decode()
    assert "Deploy to staging" in html and "Deploy to production" not in html
    # Approval-requiring environments get approvals' gated Promote, loaded from its own view.
    assert f'hx-get="/approvals/releases/{release.pk}/actions"' in html


def test_a_deployer_deploys_a_release(client, bob, release, staging, production):
    client.force_login(bob)
    response = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "staging"})
    deployment = Deployment.objects.get(release=release, environment=staging)
    assert response.status_code == 302 and response.url == reverse("deployment_detail", args=[deployment.pk])
    assert deployment.status == Deployment.Status.QUEUED
    assert deployment.trigger == Deployment.Trigger.MANUAL and deployment.triggered_by == bob



def test_deploying_straight_to_an_approval_environment_is_refused(client, bob, release, production):
    client.force_login(bob)
    response = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "production"}, follow=True)
    assert "production requires approval: use Promote" in response.content.decode()
    assert not Deployment.objects.filter(environment=production).exists()


def test_deploying_an_invalid_release_shows_why_and_changes_nothing(client, bob, repository, environments):
    broken = create_release(repository, "v3", error="line 2: steps must be a list")
    client.force_login(bob)
    response = client.post(reverse("release_deploy", args=[broken.pk]), {"environment": "staging"}, follow=True)
    assert "line 2: steps must be a list" in response.content.decode()
    assert not Deployment.objects.exists()


def test_deploying_to_an_environment_the_file_does_not_name_is_refused(client, bob, repository, environments):
    only_production = create_release(repository, "v4", pipeline_text="environments:\n  production:\n    steps:\n      - run: ./deploy.sh\n")
    client.force_login(bob)
    response = client.post(reverse("release_deploy", args=[only_production.pk]), {"environment": "staging"}, follow=True)
    assert "does not name the environment" in response.content.decode()
    assert not Deployment.objects.exists()


def test_someone_without_the_deploy_permission_cannot_deploy(client, charlie, release, staging):
    client.force_login(charlie)
    assert client.post(reverse("release_deploy", args=[release.pk]), {"environment": "staging"}).status_code == 403
    assert not Deployment.objects.exists()


# --- poll now ------------------------------------------------------------------------------------------


def test_a_deployer_polls_from_the_repository_page_and_others_see_no_button(client, bob, charlie, repository):
    page_url = reverse("repository_detail", args=[repository.name])
    poll_url = reverse("repository_poll", args=[repository.name])
    client.force_login(charlie)
    assert poll_url not in client.get(page_url).content.decode()
    assert client.post(poll_url).status_code == 403

    client.force_login(bob)
    assert f'action="{poll_url}"' in client.get(page_url).content.decode()
    response = client.post(poll_url, follow=True)
    assert "Polling shop now" in response.content.decode()
    repository.refresh_from_db()
    assert repository.poll_requested_at is not None
    assert AuditEvent.objects.filter(action="repository.poll_requested", actor=bob).count() == 1


def test_an_archived_repository_says_so_and_is_not_polled_from_its_page(client, bob, alice, repository):
    repository.archive(by=alice)
    client.force_login(bob)
    html = client.get(reverse("repository_detail", args=[repository.name])).content.decode()
    assert "archived" in html and reverse("repository_poll", args=[repository.name]) not in html
    response = client.post(reverse("repository_poll", args=[repository.name]), follow=True)
    assert "is archived; it is not polled" in response.content.decode()
    assert Repository.objects.get(pk=repository.pk).poll_requested_at is None
