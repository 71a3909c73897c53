"""An automatic promotion is promised in the transaction that records success: losing the queue's job
(Redis flushed, a worker killed between commit and enqueue) delays it, and the reconciler repairs it."""

import django_rq
import pytest
from rq import SimpleWorker

from approvals.models import ChangeRequest
from pipelines import promotion, reconciler
from pipelines.models import Deployment, FollowUp
from tests.conftest import PIPELINE

pytestmark = pytest.mark.django_db(transaction=True)


def run_deploy_queue_only():
    queue = django_rq.get_queue("deploy")
    SimpleWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")


def test_a_lost_automatic_promotion_is_repaired_by_the_reconciler(
    repository, origin, staging, production, make_release, run_workers
):
    release = make_release(repository, "v1.0.0", commit_sha=origin.head(), pipeline=PIPELINE)
    promotion.promote(release, staging, by=None, trigger=Deployment.Trigger.AUTO)
    run_deploy_queue_only()
    assert Deployment.objects.get(environment=staging).status == "succeeded"
    django_rq.get_connection("git").flushdb()  # the promotion's job is gone with Redis's memory

    run_workers()
    assert not Deployment.objects.filter(environment=production).exists(), "nothing left in the queue does it"
    assert FollowUp.objects.pending().filter(kind="promote.after_success").count() == 1

    report = reconciler.reconcile()
    run_workers()

    assert report["follow_ups"] == 1
    held = Deployment.objects.get(environment=production)
    assert (held.release, held.status, held.trigger) == (release, "awaiting_approval", "auto")
    assert ChangeRequest.objects.get(deployment=held).status == "pending", "and its change request opened"
    assert not FollowUp.objects.pending().exclude(kind__startswith="mail.").exists()


def test_a_promotion_carried_out_twice_deploys_once(repository, origin, staging, production, make_release, run_workers):
    release = make_release(repository, "v1.0.0", commit_sha=origin.head(), pipeline=PIPELINE)
    promotion.promote(release, staging, by=None, trigger=Deployment.Trigger.AUTO)
    run_workers()
    follow_up = FollowUp.objects.get(kind="promote.after_success")
    assert follow_up.done_at is not None

    # As if the first attempt had promoted but died before marking itself done.
    FollowUp.objects.filter(pk=follow_up.pk).update(done_at=None, claimed_until=None)
    reconciler.reconcile()
    run_workers()

    assert Deployment.objects.filter(release=release, environment=production).count() == 1
