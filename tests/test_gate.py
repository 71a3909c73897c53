"""The pre-production gate: production only gets what succeeded in the stage before, unless overridden."""

import pytest
from django.contrib.auth.models import Permission

from approvals.gate_override import GateClosed, promote_through_gate
from pipelines.models import AuditEvent, Deployment

pytestmark = pytest.mark.django_db


def succeed_in(release, environment):
    deployment = Deployment.objects.create(
        release=release, environment=environment, repository=release.repository,
        status=Deployment.Status.QUEUED, trigger=Deployment.Trigger.AUTO,
    )
    deployment.claim(worker_name="w")
    deployment.succeed()
    return deployment


def test_it_refuses_to_promote_what_has_not_succeeded_in_the_stage_before(repository, staging, production, make_release, bob):
    release = make_release(repository, "v1.0.0")
    with pytest.raises(GateClosed, match="v1.0.0 has not succeeded in staging yet"):
        promote_through_gate(release, production, by=bob)
    assert not Deployment.objects.filter(environment=production).exists()


def test_a_failed_run_in_the_stage_before_keeps_the_gate_closed(repository, staging, production, make_release, bob):
    release = make_release(repository, "v1.0.0")
    failed = Deployment.objects.create(release=release, environment=staging, repository=repository,
                                       status=Deployment.Status.QUEUED, trigger=Deployment.Trigger.AUTO)
    failed.claim(worker_name="w")
    failed.fail("boom", exit_code=1)
    with pytest.raises(GateClosed):
        promote_through_gate(release, production, by=bob)


def test_it_promotes_after_success_in_the_stage_before_and_holds_for_approval(repository, staging, production, make_release, bob):
    release = make_release(repository, "v1.0.0")
    succeed_in(release, staging)
    deployment = promote_through_gate(release, production, by=bob)
    assert deployment.status == "awaiting_approval"
    assert deployment.triggered_by == bob


def test_the_gate_is_open_for_the_first_environment(repository, staging, make_release, bob):
    deployment = promote_through_gate(make_release(repository, "v1.0.0"), staging, by=bob)
    assert deployment.status == "queued"


def test_an_override_needs_the_permission(repository, staging, production, make_release, bob):
    release = make_release(repository, "v1.0.0")
    with pytest.raises(GateClosed, match="Only someone allowed to override the gate may skip it"):
        promote_through_gate(release, production, by=bob, override_reason="hotfix for incident 7")
    assert not AuditEvent.objects.filter(action="gate.overridden").exists()


def test_an_override_with_the_permission_and_a_reason_is_audited(repository, staging, production, make_release, bob):
    bob.user_permissions.add(Permission.objects.get(codename="override_gate"))
    bob = type(bob).objects.get(pk=bob.pk)  # permissions are cached per instance
    release = make_release(repository, "v1.0.0")
    deployment = promote_through_gate(release, production, by=bob, override_reason="hotfix for incident 7")
    assert deployment.status == "awaiting_approval"
    event = AuditEvent.objects.get(action="gate.overridden")
    assert event.actor == bob
    assert event.details["reason"] == "hotfix for incident 7"
    assert "has not succeeded in staging" in event.details["gate"]


def test_an_override_without_a_reason_is_refused(repository, staging, production, make_release, alice):
    with pytest.raises(GateClosed, match="has not succeeded in staging"):
        promote_through_gate(make_release(repository, "v1.0.0"), production, by=alice, override_reason="  ")


# --- every manual deployment passes the gate, environments without approval too --------------------

THREE_STAGES = """\
environments:
  staging:
    steps: [{run: ./deploy.sh}]
  qa:
    steps: [{run: ./deploy.sh}]
  production:
    steps: [{run: ./deploy.sh}]
"""


@pytest.fixture
def qa(environments):
    """An environment between staging and production that needs no approval."""
    from pipelines.models import Environment
    from tests.conftest import add_stage

    qa = Environment.objects.create(name="qa", position=15)
    add_stage("default", qa, position=15, auto_deploy=False)
    return qa


def fail_in(release, environment):
    deployment = Deployment.objects.create(
        release=release, environment=environment, repository=release.repository,
        status=Deployment.Status.QUEUED, trigger=Deployment.Trigger.AUTO,
    )
    deployment.claim(worker_name="w")
    deployment.fail("boom", exit_code=1)
    return deployment


def test_the_gate_names_the_failed_run_of_the_stage_before(repository, staging, qa, make_release):
    from pipelines.stage_gate import gate_reason

    release = make_release(repository, "v1.0.0", pipeline=THREE_STAGES)
    failed = fail_in(release, staging)
    assert gate_reason(release, qa) == (
        f"v1.0.0 failed in staging (deployment #{failed.pk}); it must succeed there before it goes to qa."
    )


def test_a_release_that_failed_after_an_earlier_success_must_pass_again(repository, staging, qa, make_release):
    from pipelines.stage_gate import gate_reason

    release = make_release(repository, "v1.0.0", pipeline=THREE_STAGES)
    succeed_in(release, staging)
    assert gate_reason(release, qa) is None
    fail_in(release, staging)
    assert "failed in staging" in gate_reason(release, qa)
    succeed_in(release, staging)
    assert gate_reason(release, qa) is None


def test_deploy_by_hand_to_an_environment_without_approval_passes_the_gate(client, repository, staging, qa, make_release, bob):
    """The hole: Deploy to qa of a release that failed staging used to go straight through."""
    from django.urls import reverse

    release = make_release(repository, "v1.0.0", pipeline=THREE_STAGES)
    fail_in(release, staging)
    client.force_login(bob)
    response = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "qa"}, follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert "v1.0.0 failed in staging" in text and "override the gate" in text
    assert not Deployment.objects.filter(environment=qa).exists()
    succeed_in(release, staging)
    response = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "qa"})
    assert Deployment.objects.get(environment=qa).status == "queued"


def test_a_retry_passes_the_gate_too(client, repository, staging, qa, make_release, bob):
    from django.urls import reverse

    release = make_release(repository, "v1.0.0", pipeline=THREE_STAGES)
    succeed_in(release, staging)
    failed_in_qa = fail_in(release, qa)
    fail_in(release, staging)  # staging broke since
    client.force_login(bob)
    response = client.post(reverse("deployment_retry", args=[failed_in_qa.pk]), follow=True)
    assert "v1.0.0 failed in staging" in response.content.decode()
    assert Deployment.objects.filter(environment=qa).count() == 1


def test_the_gate_to_an_environment_without_approval_is_overridden_through_promote_and_audited(
    client, repository, staging, qa, make_release, alice
):
    from django.urls import reverse

    release = make_release(repository, "v1.0.0", pipeline=THREE_STAGES)
    fail_in(release, staging)
    client.force_login(alice)
    actions = client.get(reverse("release_actions", args=[release.pk])).content.decode()
    assert "Override the gate: promote to qa" in actions
    response = client.post(reverse("release_promote", args=[release.pk]),
                           {"environment": "qa", "override_reason": "staging is down, qa is the test"})
    deployment = Deployment.objects.get(environment=qa)
    assert response.status_code == 302 and deployment.status == "queued"
    event = AuditEvent.objects.get(action="gate.overridden")
    assert event.details["reason"] == "staging is down, qa is the test"
    assert event.details["deployment"] == deployment.pk
    assert event.seq > AuditEvent.objects.get(action="deployment.created", object_id=str(deployment.pk)).seq


def test_a_second_click_on_deploy_is_answered_with_a_message(client, repository, staging, make_release, bob):
    from django.urls import reverse

    release = make_release(repository, "v1.0.0")
    client.force_login(bob)
    first = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "staging"})
    assert first.status_code == 302
    second = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "staging"}, follow=True)
    assert second.status_code == 200
    assert "nothing new was started" in second.content.decode()
    assert Deployment.objects.filter(environment=staging).count() == 1
