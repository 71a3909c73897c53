"""Policy holes, tried as a crowd would: 50 approvers clicking at once, 20 double-clicks on Deploy, and an
environment that requires approval with nobody allowed to give it.

Each click is a real thread with its own database connection: on PostgreSQL the row locks are what is under
test; on SQLite the immediate transactions serialise the writers, and the outcome must be the same."""

import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse

from approvals.models import ChangeRequest, Decision
from pipelines.models import AuditEvent, Deployment, Environment

CLICKS = 50
DEPLOY_CLICKS = 20
REQUIRED = 3


def all_at_once(work, arguments):
    """Run `work(argument)` in one thread per argument, released together by a barrier; return the outcomes
    (the return value, or the exception's text)."""
    barrier = threading.Barrier(len(arguments))
    outcomes = [None] * len(arguments)

    def run(index, argument):
        try:
            barrier.wait(timeout=60)
            outcomes[index] = work(argument)
        except Exception as exc:  # noqa: BLE001 - every outcome is asserted on below
            outcomes[index] = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n, argument)) for n, argument in enumerate(arguments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a click never got an answer"
    return outcomes


@pytest.fixture
def held(make_held_change):
    """A held production deployment (needing REQUIRED approvals) whose step appends a line each time it runs."""
    return make_held_change(required_approvals=REQUIRED)


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_approvals_release_the_deployment_once(held, django_user_model, approvers, run_workers):
    change, runs = held
    # 25 approvers, each clicking twice (two tabs): 50 clicks at the same instant.
    users = []
    for n in range(CLICKS // 2):
        user = django_user_model.objects.create_user(f"approver{n}", f"approver{n}@example.com", "password")
        user.groups.add(approvers)
        users.append(user)

    def click(user):
        request = ChangeRequest.objects.get(pk=change.pk)
        request.approve(user, "ship it")
        return "approved"

    outcomes = all_at_once(click, users * 2)

    assert outcomes.count("approved") == REQUIRED, outcomes
    refusals = {outcome for outcome in outcomes if outcome != "approved"}
    assert refusals <= {
        "DecisionRefused: This change request is already approved.",
        "DecisionRefused: You have already decided on this change request.",
    }, refusals
    decisions = list(Decision.objects.filter(change_request=change).values_list("user_id", flat=True))
    assert len(decisions) == REQUIRED and len(set(decisions)) == REQUIRED, "one decision per person at most"
    change.refresh_from_db()
    assert change.status == "approved"
    deployment = Deployment.objects.get(pk=change.deployment_id)
    assert deployment.status == "queued"
    released = AuditEvent.objects.filter(action="deployment.queued", object_id=str(deployment.pk))
    assert released.count() == 1, "the deployment was released exactly once"
    assert AuditEvent.objects.filter(action="change_request.approved", object_id=str(change.pk)).count() == 1
    run_workers()
    assert Deployment.objects.get(pk=deployment.pk).status == "succeeded"
    assert runs.read_text() == "ran\n", "the production step ran exactly once"


@pytest.mark.django_db(transaction=True)
def test_twenty_double_clicks_on_deploy_make_one_deployment(repository, staging, make_release, bob):
    release = make_release(repository, "v1.0.0")

    def click(_):
        client = Client()
        client.force_login(bob)
        response = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "staging"})
        return response.status_code

    outcomes = all_at_once(click, range(DEPLOY_CLICKS))

    assert outcomes == [302] * DEPLOY_CLICKS, "every click is answered with a redirect, none with an error"
    deployments = Deployment.objects.filter(release=release, environment=staging)
    assert deployments.count() == 1
    assert deployments.get().status == "queued"
    assert AuditEvent.objects.filter(action="deployment.created").count() == 1


# --- an environment that requires approval needs someone who may give it --------------------------------


@pytest.mark.django_db
def test_the_database_refuses_approval_without_an_approver_group(environments):
    from approvals.models import StagePolicy
    from tests.conftest import add_stage

    _, production = environments
    prod_eu = add_stage("default", Environment.objects.create(name="prod-eu", position=30), requires_approval=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        StagePolicy.objects.create(stage=prod_eu, required_approvals=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        StagePolicy.objects.filter(stage__environment=production).update(approver_group=None)


@pytest.mark.django_db
def test_the_admin_form_says_an_approver_group_is_needed(client, alice, environments):
    from approvals.models import StagePolicy
    from tests.conftest import add_stage

    stage = add_stage("default", Environment.objects.create(name="prod-eu", position=30), requires_approval=True)
    client.force_login(alice)
    form = {"stage": stage.pk, "required_approvals": 1, "approver_group": "", "block_commit_authors": "on",
            "approval_timeout": ""}
    response = client.post(reverse("admin:approvals_stagepolicy_add"), form)
    assert response.status_code == 200, "the form is shown again, with the error"
    assert "This field is required." in response.content.decode()
    assert not StagePolicy.objects.filter(stage=stage).exists()


@pytest.mark.django_db
def test_a_stage_that_holds_deployments_without_a_policy_is_reported(environments):
    from approvals.system_checks import stages_without_an_approval_policy
    from tests.conftest import add_stage

    assert stages_without_an_approval_policy() == []
    add_stage("default", Environment.objects.create(name="prod-eu", position=30), requires_approval=True)
    [warning] = stages_without_an_approval_policy()
    assert warning.id == "approvals.W001"
    assert "default / prod-eu requires approval but has no approval policy" in warning.msg
