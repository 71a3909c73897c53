"""An automatic promotion is promised in the transaction that records success. The runner carries it out at
once; if the runner dies first (or the attempt fails), the reconciler carries it out later."""

from datetime import timedelta

import django_rq
import pytest
import time_machine
from django.conf import settings
from django.utils import timezone
from rq import SimpleWorker

from approvals.models import ChangeRequest
from pipelines import promotion, reconciler
from pipelines.models import Deployment, FollowUp
from tests.conftest import PIPELINE

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_promotion_whose_runner_died_before_carrying_it_out_is_repaired_by_the_reconciler(
    repository, origin, staging, production, make_release, run_workers
):
    release = make_release(repository, "v1.0.0", commit_sha=origin.head(), pipeline=PIPELINE)
    deployment = promotion.promote(release, staging, by=None, trigger=Deployment.Trigger.AUTO)
    django_rq.get_connection("deploy").flushdb()
    # What a runner does, up to the moment its work-horse is killed: the success is committed, and with it
    # the promise of the promotion; the runner's own attempt at it never happens.
    deployment.claim(worker_name="killed-before-it-promoted")
    deployment.succeed()

    run_workers()
    assert not Deployment.objects.filter(environment=production).exists(), "nothing in the queue does it"
    assert FollowUp.objects.pending().filter(kind="promote.after_success").count() == 1

    assert reconciler.reconcile()["follow_ups"] == 0, "not before the runner's lease could have run out"
    with time_machine.travel(timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)):
        report = reconciler.reconcile()
        run_workers()

    assert report["follow_ups"] == 1
    held = Deployment.objects.get(environment=production)
    assert (held.release, held.status, held.trigger) == (release, "awaiting_approval", "auto")
    assert ChangeRequest.objects.get(deployment=held).status == "pending", "and its change request opened"
    assert not FollowUp.objects.pending().exclude(kind__startswith="mail.").exists()


def test_the_runner_promotes_at_once_without_a_job_of_its_own(
    repository, origin, staging, production, make_release, run_workers
):
    release = make_release(repository, "v1.0.0", commit_sha=origin.head(), pipeline=PIPELINE)
    promotion.promote(release, staging, by=None, trigger=Deployment.Trigger.AUTO)
    queue = django_rq.get_queue("deploy")
    SimpleWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")  # deploy jobs only

    assert Deployment.objects.get(environment=production).status == "awaiting_approval"
    assert FollowUp.objects.get(kind="promote.after_success").done_at is not None


def test_a_promotion_carried_out_twice_deploys_once(repository, origin, staging, production, make_release, run_workers):
    release = make_release(repository, "v1.0.0", commit_sha=origin.head(), pipeline=PIPELINE)
    promotion.promote(release, staging, by=None, trigger=Deployment.Trigger.AUTO)
    run_workers()
    follow_up = FollowUp.objects.get(kind="promote.after_success")
    assert follow_up.done_at is not None

    # As if the first attempt had promoted but died before marking itself done.
    FollowUp.objects.filter(pk=follow_up.pk).update(done_at=None, claimed_until=None)
    with time_machine.travel(timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)):
        reconciler.reconcile()
        run_workers()

    assert Deployment.objects.filter(release=release, environment=production).count() == 1
