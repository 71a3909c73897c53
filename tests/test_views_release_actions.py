"""The deployer's actions that go through change control: promote through the gate (and its audited
override), roll back, block and unblock, and deploy during a freeze."""

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from approvals.models import FreezeOverride, FreezeWindow
from pipelines.models import AuditEvent, Deployment, Release, Target
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


def succeeded(release, environment):
    deployment = create_deployment(release, environment, Deployment.Status.SUCCEEDED, finished_at=timezone.now())
    Target.objects.update_or_create(
        repository=release.repository, environment=environment, defaults={"current_release": release, "last_deployment": deployment}
    )
    return deployment


@pytest.fixture
def release(repository, environments):
    return create_release(repository, "v2.0.0")


@pytest.fixture
def dave(django_user_model):
    """A deployer who may also deploy during a freeze."""
    user = django_user_model.objects.create_user("dave", "dave@example.com", "password")
    user.user_permissions.add(
        Permission.objects.get(codename="deploy", content_type__app_label="pipelines"),
        Permission.objects.get(codename="deploy_during_freeze", content_type__app_label="approvals"),
    )
    return user


def actions(client, release):
    return client.get(reverse("release_actions", args=[release.pk])).content.decode()


def promote(client, release, environment="production", **data):
    return client.post(reverse("release_promote", args=[release.pk]), {"environment": environment, **data}, follow=True)


# --- who may ---------------------------------------------------------------------------------------


ROUTES = [
    ("get", "release_actions"), ("post", "release_promote"), ("post", "release_rollback"),
    ("post", "release_block"), ("post", "release_unblock"), ("get", "deployment_freeze"),
    ("post", "deployment_freeze_override"),
]


@pytest.mark.parametrize("method, name", ROUTES)
def test_every_action_requires_sign_in(client, db, method, name):
    url = reverse(name, args=[1])
    response = getattr(client, method)(url)
    assert response.status_code == 302 and response.url == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("name", ["release_actions", "release_promote", "release_rollback", "release_block", "release_unblock"])
def test_someone_without_the_deploy_permission_gets_403_and_nothing_changes(client, charlie, release, staging, name):
    Release.objects.filter(pk=release.pk).update(blocked=True, blocked_reason="bad build")
    succeeded(release, staging)
    events = AuditEvent.objects.count()
    client.force_login(charlie)
    method = client.get if name == "release_actions" else client.post
    data = {"environment": "staging", "reason": "x", "override_reason": "x"}
    assert method(reverse(name, args=[release.pk]), data).status_code == 403
    release.refresh_from_db()
    assert release.blocked and Deployment.objects.count() == 1 and AuditEvent.objects.count() == events


def test_actions_refuse_get(client, bob, release):
    client.force_login(bob)
    for name in ["release_promote", "release_rollback", "release_block", "release_unblock"]:
        assert client.get(reverse(name, args=[release.pk])).status_code == 405


def test_the_release_page_loads_the_actions_for_deployers_only(client, bob, charlie, release):
    client.force_login(bob)
    html = client.get(release.get_absolute_url()).content.decode()
    assert f'hx-get="{reverse("release_actions", args=[release.pk])}" hx-trigger="load"' in html
    assert "Deploy to staging" in html
    assert "Deploy to production" not in html  # production goes through the gate: "Promote to production"
    assert f'action="{reverse("release_block", args=[release.pk])}"' in html

    client.force_login(charlie)
    html = client.get(release.get_absolute_url()).content.decode()
    assert reverse("release_actions", args=[release.pk]) not in html
    assert reverse("release_block", args=[release.pk]) not in html


# --- promote through the gate ------------------------------------------------------------------------


def test_the_gate_is_closed_until_the_release_succeeded_in_the_environment_before(client, bob, release):
    client.force_login(bob)
    html = actions(client, release)
    assert "gate closed" in html and "v2.0.0 has not succeeded in staging yet" in html
    assert "Promote to production</button>" not in html
    assert "override_reason" not in html  # bob may not override


def test_a_promotion_through_a_closed_gate_is_refused_with_the_reason(client, bob, release):
    client.force_login(bob)
    response = promote(client, release)
    assert "v2.0.0 has not succeeded in staging yet; it must before it goes to production." in response.content.decode()
    assert not Deployment.objects.exists()


def test_once_it_succeeded_before_a_deployer_promotes_it_and_it_waits_for_approval(client, bob, release, staging, production):
    succeeded(release, staging)
    client.force_login(bob)
    html = actions(client, release)
    assert "Promote to production</button>" in html and "1 approval needed" in html

    response = promote(client, release)
    deployment = Deployment.objects.get(environment=production)
    assert response.redirect_chain[-1][0] == reverse("deployment_detail", args=[deployment.pk])
    assert f"v2.0.0 to production: deployment #{deployment.pk} is awaiting approval." in response.content.decode()
    assert deployment.status == Deployment.Status.AWAITING_APPROVAL
    assert deployment.trigger == Deployment.Trigger.MANUAL and deployment.triggered_by == bob
    assert not AuditEvent.objects.filter(action="gate.overridden").exists()

    # on its way: no second button, and a second click changes nothing
    html = actions(client, release)
    assert "Promote to production</button>" not in html and f"deployment #{deployment.pk}" in html
    assert reverse("deployment_change_request", args=[deployment.pk]) in html
    response = promote(client, release)
    assert "is already on its way to production" in response.content.decode()
    assert Deployment.objects.filter(environment=production).count() == 1


def test_someone_allowed_to_override_the_gate_gets_a_form_with_a_required_reason(client, alice, release):
    client.force_login(alice)
    html = actions(client, release)
    assert 'name="override_reason" required' in html
    assert "Override the gate: promote to production" in html


def test_overriding_the_gate_with_a_reason_promotes_and_is_audited(client, alice, release, production):
    client.force_login(alice)
    response = promote(client, release, override_reason="hotfix for the outage, staging is down")
    deployment = Deployment.objects.get()
    assert deployment.environment == production and deployment.status == Deployment.Status.AWAITING_APPROVAL
    assert deployment.reason == "hotfix for the outage, staging is down"
    assert "awaiting approval" in response.content.decode()
    event = AuditEvent.objects.get(action="gate.overridden")
    assert event.actor == alice and event.environment == production
    assert event.details["reason"] == "hotfix for the outage, staging is down"
    assert "has not succeeded in staging" in event.details["gate"]


def test_overriding_the_gate_needs_a_reason(client, alice, release):
    client.force_login(alice)
    response = promote(client, release, override_reason="   ")
    assert "has not succeeded in staging yet" in response.content.decode()
    assert not Deployment.objects.exists() and not AuditEvent.objects.filter(action="gate.overridden").exists()


def test_overriding_the_gate_needs_the_permission(client, bob, release):
    client.force_login(bob)
    response = promote(client, release, override_reason="I am sure")
    assert "Only someone allowed to override the gate may skip it." in response.content.decode()
    assert not Deployment.objects.exists() and not AuditEvent.objects.filter(action="gate.overridden").exists()


def test_a_failed_promotion_after_the_override_leaves_no_audit_event(client, alice, repository, production):
    only_staging = create_release(repository, "v3", pipeline_text="environments:\n  staging:\n    steps:\n      - run: ./deploy.sh\n")
    client.force_login(alice)
    response = promote(client, only_staging, override_reason="try it")
    assert "does not name the environment" in response.content.decode()
    assert not Deployment.objects.exists() and not AuditEvent.objects.filter(action="gate.overridden").exists()


# --- roll back ---------------------------------------------------------------------------------------


@pytest.fixture
def staging_moved_on(repository, release, staging):
    """v2.0.0 ran in staging, then v2.1.0 replaced it."""
    succeeded(release, staging)
    newer = create_release(repository, "v2.1.0")
    succeeded(newer, staging)
    return newer


def test_rollback_is_offered_where_the_release_succeeded_and_is_not_current(client, bob, release, staging_moved_on):
    client.force_login(bob)
    assert "Roll back staging to this release" in actions(client, release)
    assert "Roll back" not in actions(client, staging_moved_on)  # it runs there now
    never_ran = create_release(release.repository, "v0.1.0")
    assert "Roll back" not in actions(client, never_ran)


def test_a_rollback_deploys_the_release_again_and_pauses_automatic_deployment(client, bob, release, staging, staging_moved_on):
    client.force_login(bob)
    response = client.post(reverse("release_rollback", args=[release.pk]), {"environment": "staging", "reason": "v2.1.0 leaks memory"}, follow=True)
    deployment = Deployment.objects.filter(trigger=Deployment.Trigger.ROLLBACK).get()
    assert deployment.release == release and deployment.environment == staging
    assert deployment.status == Deployment.Status.QUEUED and deployment.triggered_by == bob
    assert deployment.reason == "v2.1.0 leaks memory"
    target = Target.objects.get(repository=release.repository, environment=staging)
    assert target.auto_deploy_paused and target.paused_by == bob
    assert AuditEvent.objects.filter(action="target.paused").exists()
    assert "Automatic deployment of shop to staging is paused" in response.content.decode()


def test_a_rollback_of_production_waits_for_approval(client, bob, release, staging, production):
    succeeded(release, staging)
    succeeded(release, production)
    succeeded(create_release(release.repository, "v2.1.0"), production)
    client.force_login(bob)
    client.post(reverse("release_rollback", args=[release.pk]), {"environment": "production"})
    deployment = Deployment.objects.get(trigger=Deployment.Trigger.ROLLBACK)
    assert deployment.environment == production and deployment.status == Deployment.Status.AWAITING_APPROVAL


def test_a_rollback_to_a_release_that_never_ran_there_is_refused(client, bob, release):
    client.force_login(bob)
    response = client.post(reverse("release_rollback", args=[release.pk]), {"environment": "staging"}, follow=True)
    assert "never succeeded in staging" in response.content.decode()
    assert not Deployment.objects.exists()
    assert not Target.objects.filter(auto_deploy_paused=True).exists()


# --- block and unblock -------------------------------------------------------------------------------


def test_a_deployer_blocks_a_release_with_a_reason_and_unblocks_it(client, bob, release, staging):
    succeeded(release, staging)
    client.force_login(bob)
    response = client.post(reverse("release_block", args=[release.pk]), {"reason": "corrupts the cache"}, follow=True)
    release.refresh_from_db()
    assert release.blocked and release.blocked_reason == "corrupts the cache"
    assert AuditEvent.objects.filter(action="release.blocked", actor=bob, details__reason="corrupts the cache").exists()
    html = response.content.decode()
    assert "Blocked from promotion." in html and "corrupts the cache" in html
    assert f'action="{reverse("release_unblock", args=[release.pk])}"' in html
    assert "unblock it first" in actions(client, release)

    response = promote(client, release)
    assert "is blocked (corrupts the cache); unblock it first." in response.content.decode()
    assert not Deployment.objects.filter(environment__name="production").exists()

    client.post(reverse("release_unblock", args=[release.pk]))
    release.refresh_from_db()
    assert not release.blocked and AuditEvent.objects.filter(action="release.unblocked", actor=bob).exists()


def test_blocking_needs_a_reason(client, bob, release):
    client.force_login(bob)
    html = client.get(release.get_absolute_url()).content.decode()
    assert 'name="reason" required' in html
    response = client.post(reverse("release_block", args=[release.pk]), {"reason": " "}, follow=True)
    assert "Give a reason for blocking the release; nothing was changed." in response.content.decode()
    release.refresh_from_db()
    assert not release.blocked and not AuditEvent.objects.exists()


def test_unblocking_a_release_that_is_not_blocked_changes_nothing(client, bob, release):
    client.force_login(bob)
    response = client.post(reverse("release_unblock", args=[release.pk]), follow=True)
    assert "is not blocked; nothing was changed." in response.content.decode()
    assert not AuditEvent.objects.exists()


# --- deploy during a freeze --------------------------------------------------------------------------


@pytest.fixture
def frozen_staging(staging):
    window = FreezeWindow.objects.create(
        name="Black Friday", reason="peak sales", starts_at=timezone.now() - timedelta(hours=1),
        ends_at=timezone.now() + timedelta(days=2),
    )
    window.environments.add(staging)
    return window


@pytest.fixture
def queued(release, staging):
    return create_deployment(release, staging, Deployment.Status.QUEUED, queued_at=timezone.now())


def freeze_panel(client, deployment):
    return client.get(reverse("deployment_freeze", args=[deployment.pk])).content.decode()


def test_a_queued_deployment_loads_its_freeze_panel(client, charlie, queued):
    client.force_login(charlie)
    html = client.get(reverse("deployment_detail", args=[queued.pk])).content.decode()
    assert f'hx-get="{reverse("deployment_freeze", args=[queued.pk])}" hx-trigger="load"' in html


def test_a_deployment_held_by_a_freeze_says_so_and_only_the_permitted_may_deploy_anyway(client, bob, dave, queued, frozen_staging):
    client.force_login(bob)
    html = freeze_panel(client, queued)
    assert "Held by a freeze" in html and "peak sales" in html
    assert "Deploy anyway" not in html

    client.force_login(dave)
    html = freeze_panel(client, queued)
    assert "Deploy anyway" in html and 'name="reason" required' in html


def test_without_a_freeze_there_is_no_panel(client, dave, queued):
    client.force_login(dave)
    assert freeze_panel(client, queued) == ""


def test_deploying_anyway_with_a_reason_lets_it_through_and_is_audited(client, dave, queued, frozen_staging):
    client.force_login(dave)
    url = reverse("deployment_freeze_override", args=[queued.pk])
    response = client.post(url, {"reason": "security fix, approved by the CISO"}, follow=True)
    assert f"Deployment #{queued.pk} will run despite the freeze." in response.content.decode()
    override = FreezeOverride.objects.get(deployment=queued)
    assert override.user == dave and override.reason == "security fix, approved by the CISO"
    assert AuditEvent.objects.filter(action="freeze.overridden", actor=dave).exists()
    assert freeze_panel(client, queued) == ""  # no longer held


def test_deploying_anyway_needs_a_reason(client, dave, queued, frozen_staging):
    client.force_login(dave)
    response = client.post(reverse("deployment_freeze_override", args=[queued.pk]), {"reason": ""}, follow=True)
    assert "Give a reason for deploying during the freeze; nothing was changed." in response.content.decode()
    assert not FreezeOverride.objects.exists()


def test_deploying_anyway_needs_the_permission(client, bob, queued, frozen_staging):
    client.force_login(bob)
    assert client.post(reverse("deployment_freeze_override", args=[queued.pk]), {"reason": "please"}).status_code == 403
    assert not FreezeOverride.objects.exists() and not AuditEvent.objects.filter(action="freeze.overridden").exists()
