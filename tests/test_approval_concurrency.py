"""Exactly once: approvers clicking at the same instant release the deployment once, and it runs once."""

import threading

import pytest
from django.db import connection

from approvals.models import ChangeRequest, Decision, DecisionRefused
from pipelines.models import AuditEvent, Deployment

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8


@pytest.fixture
def held_production_deployment(make_held_change):
    """A real release whose production step appends a line to a file each time it runs."""
    return make_held_change(required_approvals=1)


@pytest.fixture
def approvers_in_group(django_user_model, approvers):
    users = []
    for n in range(THREADS):
        user = django_user_model.objects.create_user(f"approver{n}", f"approver{n}@example.com", "password")
        user.groups.add(approvers)
        users.append(user)
    return users


def approve_all_at_once(change_request_id, users):
    """Each thread loads the request on its own connection and clicks Approve at the same instant."""
    barrier = threading.Barrier(len(users))
    outcomes = []

    def click(user):
        try:
            change = ChangeRequest.objects.select_related("environment").get(pk=change_request_id)
            barrier.wait(timeout=30)
            change.approve(user, "ship it")
            outcomes.append("approved")
        except DecisionRefused as exc:
            outcomes.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=click, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_many_approvers_at_the_same_instant_release_the_deployment_once(
    held_production_deployment, approvers_in_group, run_workers
):
    change, runs = held_production_deployment

    outcomes = approve_all_at_once(change.pk, approvers_in_group)

    assert len(outcomes) == THREADS, "every click got a clear answer, none crashed"
    assert outcomes.count("approved") == 1, outcomes
    assert set(outcomes) - {"approved"} == {"This change request is already approved."}
    assert Decision.objects.filter(change_request=change).count() == 1
    assert AuditEvent.objects.filter(action="deployment.queued").count() == 1
    run_workers()
    assert Deployment.objects.get(pk=change.deployment_id).status == "succeeded"
    assert runs.read_text() == "ran\n", "the production step ran exactly once"


def test_one_person_double_clicking_from_many_tabs_decides_once(held_production_deployment, bob, run_workers):
    change, runs = held_production_deployment

    outcomes = approve_all_at_once(change.pk, [bob] * THREADS)

    assert len(outcomes) == THREADS, "every click got a clear answer, none crashed"
    assert outcomes.count("approved") == 1, outcomes
    assert Decision.objects.filter(change_request=change, user=bob).count() == 1
    run_workers()
    assert runs.read_text() == "ran\n"

