"""A stage may roll back on failure (issue 20): when a deployment fails there, the portal deploys again the release
that last succeeded on that target, as a rollback by nobody but the portal, audited; the failed release goes no
further and is not deployed there again automatically (the target is paused); a rollback that fails is not rolled
back. Where the stage holds for approval, the rollback needs none only if its policy pre-approves rollbacks, and
otherwise opens a change request at once. Real git, the real PortalWorker, PostgreSQL."""

import pytest
from django.core import mail

from approvals.models import ChangeRequest
from pipelines import promotion
from pipelines.models import AuditEvent, Deployment, Target
from pipelines.rollback import AUTOMATIC_ROLLBACK
from tests.conftest import set_policy, set_stage

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = "environments:\n  staging:\n    steps:\n      - run: ./deploy.sh\n  production:\n    steps:\n      - run: ./deploy.sh\n"


@pytest.fixture
def release_with(repository, origin, make_release):
    """release_with(version, script): a release whose deploy.sh is `script`, committed on the origin."""

    def make(version, script):
        origin.write(".gitops.yml", PIPELINE)
        origin.write("deploy.sh", f"#!/usr/bin/env bash\n{script}\n", executable=True)
        return make_release(repository, version, pipeline=PIPELINE, commit_sha=origin.commit(version))

    return make


def deployments_of(repository, environment):
    return list(Deployment.objects.for_target(repository, environment).order_by("id"))


def approve(deployment, approver):
    ChangeRequest.objects.get(deployment=deployment).approve(approver)


@pytest.fixture
def staging_rolls_back(staging, production):
    set_stage(staging, rollback_on_failure=True)
    set_stage(production, auto_deploy=False)  # what succeeds in staging stays there: only staging is watched
    return staging


def test_a_failed_deployment_in_staging_is_rolled_back_to_the_release_that_ran_there_before(
        repository, staging_rolls_back, release_with, run_workers, alice):
    staging = staging_rolls_back
    v1, v2 = release_with("v1", "echo v1 works"), release_with("v2", "echo v2 is broken; exit 3")
    promotion.promote(v1, staging, by=alice)
    run_workers()
    promotion.promote(v2, staging, by=alice)
    run_workers()
    run_workers()

    first, failed, rollback = deployments_of(repository, staging)
    assert (failed.release, failed.status) == (v2, "failed")
    assert (rollback.release, rollback.trigger, rollback.triggered_by, rollback.status) == (v1, "rollback", None, "succeeded")
    assert rollback.reason.startswith(f"{AUTOMATIC_ROLLBACK}: v2 (deployment #{failed.pk}) failed in staging")
    target = Target.objects.get(repository=repository, environment=staging)
    assert target.current_release == v1
    assert target.auto_deploy_paused, "nothing is deployed over the rollback until someone resumes"
    created = AuditEvent.objects.get(action="deployment.created", object_id=str(rollback.pk))
    assert created.actor is None and created.details["trigger"] == "rollback"

    promotion.reevaluate(repository)
    assert len(deployments_of(repository, staging)) == 3, "the failed release is not tried there again automatically"
    (told,) = [m for m in mail.outbox if "Rolled back" in m.subject]
    assert told.subject == "[GitOps Portal] Rolled back: shop in staging to v1" and told.to == ["alice@example.com"]
    assert f"v2 (deployment #{failed.pk}) failed in staging" in told.body


def test_a_rollback_that_fails_too_is_not_rolled_back_again(
        repository, staging_rolls_back, release_with, run_workers, alice, tmp_path):
    staging = staging_rolls_back
    once = tmp_path / "v1-ran-once"
    v1 = release_with("v1", f"test -e {once} && exit 4; touch {once}")  # succeeds once, fails when rolled back to
    v2 = release_with("v2", "exit 3")
    promotion.promote(v1, staging, by=alice)
    run_workers()
    promotion.promote(v2, staging, by=alice)
    run_workers()
    run_workers()

    statuses = [(d.release.version, d.trigger, d.status) for d in deployments_of(repository, staging)]
    assert statuses == [("v1", "manual", "succeeded"), ("v2", "manual", "failed"), ("v1", "rollback", "failed")]
    (page,) = [m for m in mail.outbox if "Rollback failed" in m.subject]
    assert page.subject == "[GitOps Portal] Rollback failed, act now: shop in staging"
    assert "a person must decide what runs there now" in page.body


def test_a_stage_that_does_not_roll_back_leaves_a_failure_where_it_is(
        repository, staging, production, release_with, run_workers, alice):
    set_stage(production, auto_deploy=False)
    v1, v2 = release_with("v1", "true"), release_with("v2", "exit 3")
    promotion.promote(v1, staging, by=alice)
    run_workers()
    promotion.promote(v2, staging, by=alice)
    run_workers()
    assert [d.status for d in deployments_of(repository, staging)] == ["succeeded", "failed"]


def test_the_first_deployment_of_a_target_that_fails_has_nothing_to_roll_back_to_and_says_so(
        repository, staging_rolls_back, release_with, run_workers, alice):
    failed = promotion.promote(release_with("v1", "exit 3"), staging_rolls_back, by=alice)
    run_workers()
    assert len(deployments_of(repository, staging_rolls_back)) == 1
    skipped = AuditEvent.objects.get(action="rollback.skipped", object_id=str(failed.pk))
    assert skipped.details["reason"] == "nothing succeeded on this target before"


@pytest.mark.parametrize("pre_approved", [True, False], ids=["pre-approved", "needs-approval"])
def test_in_production_a_rollback_needs_no_new_approval_only_where_the_policy_pre_approves_it(
        pre_approved, repository, production, release_with, run_workers, alice, bob):
    set_stage(production, rollback_on_failure=True)
    set_policy(production, pre_approved_rollback=pre_approved)
    v1, v2 = release_with("v1", "echo v1 works"), release_with("v2", "exit 3")
    for release in (v1, v2):
        held = promotion.promote(release, production, by=alice)
        run_workers()  # the change request opens
        approve(held, bob)
        run_workers()
        run_workers()

    _, failed, rollback = deployments_of(repository, production)
    assert (failed.release, failed.status) == (v2, "failed")
    assert (rollback.release, rollback.trigger) == (v1, "rollback")
    change_request = ChangeRequest.objects.get(deployment=rollback)
    if pre_approved:
        assert (change_request.status, rollback.status) == ("approved", "succeeded")
        assert change_request.status_reason.startswith("Pre-approved rollback")
        assert not change_request.decisions.exists(), "approved by the policy, not by a person"
    else:
        assert (change_request.status, rollback.status) == ("pending", "awaiting_approval")


def test_the_dashboard_says_the_stage_was_rolled_back_automatically_and_why(
        repository, staging_rolls_back, release_with, run_workers, alice, client):
    v1, v2 = release_with("v1", "true"), release_with("v2", "exit 3")
    promotion.promote(v1, staging_rolls_back, by=alice)
    run_workers()
    failed = promotion.promote(v2, staging_rolls_back, by=alice)
    run_workers()
    run_workers()

    client.force_login(alice)
    page = client.get("/").content.decode()
    assert "rolled back automatically" in page
    assert f"v2 (deployment #{failed.pk}) failed in staging" in page


def test_a_release_whose_verify_step_fails_in_staging_is_rolled_back_goes_no_further_and_the_dashboard_says_why(
        repository, staging, production, origin, make_release, run_workers, alice, client):
    set_stage(staging, rollback_on_failure=True)  # production takes what succeeds in staging, automatically
    versions = {}
    for version, smoke in (("v1", "true"), ("v2", "echo 'the health check answered 503'; exit 1")):
        text = (f"environments:\n  staging:\n    steps:\n      - run: echo deploying $GITOPS_VERSION\n"
                f"    verify:\n      - name: smoke\n        run: \"{smoke}\"\n"
                f"  production:\n    steps:\n      - run: echo deploying $GITOPS_VERSION\n")
        origin.write(".gitops.yml", text)
        versions[version] = make_release(repository, version, pipeline=text, commit_sha=origin.commit(version))
    promotion.promote(versions["v1"], staging, by=alice)
    run_workers()
    failed = promotion.promote(versions["v2"], staging, by=alice)
    run_workers()
    run_workers()

    failed.refresh_from_db()
    assert (failed.status, failed.error) == ("failed", "Verify step 'smoke' exited with status 1.")
    rollback = Deployment.objects.for_target(repository, staging).order_by("id").last()
    assert (rollback.release.version, rollback.trigger, rollback.status) == ("v1", "rollback", "succeeded")
    assert not Deployment.objects.filter(release=versions["v2"], environment=production).exists(), "v2 goes no further"
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert "rolled back automatically" in page and "Verify step &#x27;smoke&#x27; exited with status 1." in page
