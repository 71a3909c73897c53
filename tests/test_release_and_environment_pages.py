"""The release page offers only the actions that make sense, each risky one behind a confirmation that says
what will happen, and shows the release's stages; each environment has a page of what runs there and its
history, with a rollback from a row that goes through the same policy as any promotion."""

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pipelines import promotion
from pipelines.models import Deployment, Target


@pytest.fixture
def bob_client(bob):
    client = Client()
    client.force_login(bob)
    return client


def deployed(release, environment, *, by):
    """Run `release` in `environment` through the state machine (approved by `by` where the stage holds)."""
    deployment = promotion.promote(release, environment, by=by)
    if deployment.status == Deployment.Status.AWAITING_APPROVAL:
        deployment.release_hold(by=by)
    deployment.claim(worker_name="test")
    deployment.succeed()
    return deployment


def release_page(client, release):
    return client.get(reverse("release_detail", args=[release.repository.name, release.version])).content.decode()


def release_actions(client, release):
    return client.get(reverse("release_actions", args=[release.pk])).content.decode()


def test_it_offers_no_deploy_to_staging_while_staging_deploys_that_release(
        repository, staging, make_release, bob, bob_client):
    release = make_release(repository, "v1")
    assert 'Deploy to staging</button>' in release_page(bob_client, release)
    deployment = promotion.promote(release, staging, by=bob)

    html = release_page(bob_client, release)
    assert 'Deploy to staging</button>' not in html
    assert f"Deploy to staging: deployment #{deployment.pk} is queued" in html


def test_it_offers_no_deploy_to_where_the_release_runs_now(repository, staging, make_release, bob, bob_client):
    release = make_release(repository, "v1")
    deployed(release, staging, by=bob)
    html = release_page(bob_client, release)
    assert 'Deploy to staging</button>' not in html and "Deploy to staging: runs there now" in html


def test_the_deploy_confirmation_says_what_it_replaces(repository, staging, make_release, bob, bob_client):
    deployed(make_release(repository, "v1"), staging, by=bob)
    html = release_page(bob_client, make_release(repository, "v2"))
    assert ('data-confirm="Deploy v2 to staging? Its steps run there now; it replaces v1, which runs in staging now."'
            in html)


def test_it_offers_no_promote_for_the_version_already_running_there(
        repository, staging, production, make_release, bob, bob_client):
    release = make_release(repository, "v1")
    deployed(release, staging, by=bob)
    assert "Promote to production</button>" in release_actions(bob_client, release)
    deployed(release, production, by=bob)

    html = release_actions(bob_client, release)
    assert "Promote to production</button>" not in html
    assert "v1 runs in production now: nothing to promote." in html


def test_promote_and_rollback_ask_for_a_confirmation_that_says_what_happens(
        repository, staging, production, make_release, bob, bob_client):
    old, new = make_release(repository, "v1"), make_release(repository, "v2")
    deployed(old, staging, by=bob)
    deployed(new, staging, by=bob)
    deployed(old, production, by=bob)

    html = release_actions(bob_client, new)
    assert ('data-confirm="Promote v2 to production? This opens a change request; once approved, its steps run in '
            'production and replace v1."') in html
    html = release_actions(bob_client, old)
    assert re.search(r'data-confirm="Roll staging back to v1\? Its steps run there again, and automatic deployment '
                     r'there is paused until someone resumes it\."', html)


def test_it_offers_no_block_on_a_release_that_can_never_deploy(repository, staging, make_release, bob_client):
    broken = make_release(repository, "v1", error="line 3: steps must be a list")
    fine = make_release(repository, "v2")
    assert "Block</button>" not in release_page(bob_client, broken)
    html = release_page(bob_client, fine)
    assert "Block</button>" in html and 'data-confirm="Block v2? It is never promoted again' in html


def test_cancel_asks_for_a_confirmation(repository, staging, make_release, bob, bob_client):
    deployment = promotion.promote(make_release(repository, "v1"), staging, by=bob)
    html = bob_client.get(reverse("deployment_detail", args=[deployment.pk])).content.decode()
    assert 'data-confirm="Cancel deployment #%d of v1 to staging? It will not run."' % deployment.pk in html


def test_the_stepper_shows_each_stage_with_its_state_and_a_place_for_who_approved(
        repository, staging, production, make_release, bob, bob_client):
    release = make_release(repository, "v1")
    deployed(release, staging, by=bob)
    held = promotion.promote(release, production, by=bob)

    html = release_page(bob_client, release)
    staging_step = html[html.index('id="stage-staging"'):html.index('id="stage-production"')]
    production_step = html[html.index('id="stage-production"'):html.index("</ol>")]
    assert '<li class="state-succeeded" id="stage-staging">' in html
    assert '<li class="state-awaiting_approval" id="stage-production">' in html
    assert "Runs here" in staging_step and "by bob" in staging_step
    assert "Awaiting approval" in production_step
    assert f'id="approvals-{held.pk}"' in production_step
    assert reverse("release_approvals", args=[release.pk]) in html


def test_the_approvals_answer_names_who_approved(make_held_change, bob, bob_client):
    change_request, _ = make_held_change(required_approvals=1)
    change_request.approve(bob)
    held = change_request.deployment

    html = bob_client.get(reverse("release_approvals", args=[held.release_id])).content.decode()
    assert re.search(rf'<span id="approvals-{held.pk}" class="small approvers" hx-swap-oob="true">approved by bob ',
                     html)


def test_the_environment_page_shows_what_runs_there_and_its_history(repository, staging, make_release, bob, bob_client):
    first = deployed(make_release(repository, "v1"), staging, by=bob)
    second = deployed(make_release(repository, "v2"), staging, by=bob)

    html = bob_client.get(reverse("environment_detail", args=["staging"])).content.decode()
    current = html[html.index('id="current-shop"'):html.index("</tr>", html.index('id="current-shop"'))]
    assert ">v2</a>" in current and second.release.short_sha in current
    assert f"#{second.pk}" in current and "bob" in current
    history = html[html.index("<h2>History</h2>"):]
    assert history.index(f'id="deployment-{second.pk}"') < history.index(f'id="deployment-{first.pk}"'), "newest first"

    def row_of(deployment):
        start = history.index(f'id="deployment-{deployment.pk}"')
        return history[start:history.index("</tr>", start)]

    assert "Roll back to v1</button>" in row_of(first)
    assert "Roll back" not in row_of(second), "no rollback to what runs there now"


def test_a_rollback_from_a_row_goes_through_the_state_machine(repository, staging, make_release, bob, bob_client):
    first = deployed(make_release(repository, "v1"), staging, by=bob)
    deployed(make_release(repository, "v2"), staging, by=bob)

    response = bob_client.post(reverse("deployment_rollback", args=[first.pk]))
    rollback = Deployment.objects.latest("id")
    assert response.status_code == 302 and response["Location"] == rollback.get_absolute_url()
    assert (rollback.release, rollback.environment, rollback.trigger, rollback.status) == (
        first.release, staging, Deployment.Trigger.ROLLBACK, Deployment.Status.QUEUED)
    assert Target.objects.get(repository=repository, environment=staging).auto_deploy_paused


def test_a_rollback_to_production_waits_for_approval(repository, staging, production, make_release, bob, bob_client):
    release = make_release(repository, "v1")
    deployed(release, staging, by=bob)
    first = deployed(release, production, by=bob)
    deployed(make_release(repository, "v2"), production, by=bob)

    bob_client.post(reverse("deployment_rollback", args=[first.pk]))
    rollback = Deployment.objects.latest("id")
    assert (rollback.trigger, rollback.status) == (Deployment.Trigger.ROLLBACK, Deployment.Status.AWAITING_APPROVAL)


def test_a_rollback_to_a_release_that_never_succeeded_there_is_refused(
        repository, staging, make_release, bob, bob_client):
    failed = promotion.promote(make_release(repository, "v1"), staging, by=bob)
    failed.claim(worker_name="test")
    failed.fail("broken")
    count = Deployment.objects.count()
    response = bob_client.post(reverse("deployment_rollback", args=[failed.pk]), follow=True)
    assert Deployment.objects.count() == count
    assert "never succeeded in staging" in response.content.decode()


def test_charlie_may_look_but_not_roll_back(repository, staging, make_release, bob, charlie):
    first = deployed(make_release(repository, "v1"), staging, by=bob)
    deployed(make_release(repository, "v2"), staging, by=bob)
    client = Client()
    client.force_login(charlie)
    assert "Roll back" not in client.get(reverse("environment_detail", args=["staging"])).content.decode()
    assert client.post(reverse("deployment_rollback", args=[first.pk])).status_code == 403


def queries_of(client, url):
    client.get(url)
    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    return len(captured.captured_queries)


def test_the_pages_make_as_many_queries_for_many_deployments_as_for_few(
        repository, staging, make_release, bob, bob_client, django_user_model):
    from pipelines.models import Repository

    release = make_release(repository, "v0")
    deployed(release, staging, by=bob)
    few = {url: queries_of(bob_client, url) for url in (
        reverse("environment_detail", args=["staging"]), reverse("release_detail", args=["shop", "v0"]))}

    other = Repository.objects.create(name="blog", url=repository.url)
    for number in range(1, 6):
        deployed(make_release(repository, f"v{number}"), staging, by=bob)
        deployed(make_release(other, f"v{number}"), staging, by=bob)
    for number in range(3):
        promotion.promote(release, staging, by=bob).cancel(by=bob)
    many = {url: queries_of(bob_client, url) for url in few}
    assert many == few
