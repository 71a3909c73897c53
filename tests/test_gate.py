"""The pre-production gate: production only gets what succeeded in the stage before, unless overridden."""

import pytest
from django.contrib.auth.models import Permission

from approvals.gate import GateClosed, promote_through_gate
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
