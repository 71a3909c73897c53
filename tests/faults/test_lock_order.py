"""One lock order for every audited transaction (target, deployment rows, then the audit chain).

Forced here on PostgreSQL: a run finishes (succeed) while a promotion to the same target already holds
the target's row. With the two orders that the portal once had (succeed: audit, then target; promote:
target, then audit) this deadlocked, and PostgreSQL killed one of them: a run whose steps all passed was
marked failed, or the promotion was lost."""

import threading

import pytest
from django.db import connection, transaction

from pipelines import promotion
from pipelines.models import Deployment, FollowUp, Target
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_on_a_lock():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_a_run_that_finishes_while_its_target_is_being_promoted_to_completes_and_so_does_the_promotion(
    repository, staging, production, make_release
):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises every writer: there are no row locks to order")
    running = promotion.promote(make_release(repository, "v1.0.0"), staging, by=None)
    running.claim(worker_name="test-worker")
    newer = make_release(repository, "v1.1.0")
    target = Target.objects.get(repository=repository, environment=staging)
    target_locked, go_on = threading.Event(), threading.Event()
    outcome, errors = {}, []

    def promoter():
        try:
            with transaction.atomic():
                Target.objects.select_for_update().get(pk=target.pk)  # as promote() does first
                target_locked.set()
                go_on.wait(timeout=30)
                outcome["promoted"] = promotion.promote(newer, staging, by=None)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    def finisher():
        try:
            target_locked.wait(timeout=30)
            Deployment.objects.select_related("release", "environment", "repository").get(pk=running.pk).succeed()
            outcome["succeeded"] = True
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=promoter), threading.Thread(target=finisher)]
    for thread in threads:
        thread.start()
    # The finisher is blocked on the promoter's lock now: let the promoter take its other locks.
    wait_for(waiting_on_a_lock, "the finishing run to wait for the target's lock", timeout=30)
    go_on.set()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == [], "a deadlock (or another error) cost one of them"
    assert Deployment.objects.get(pk=running.pk).status == "succeeded"
    assert Target.objects.get(pk=target.pk).current_release_id == running.release_id
    assert Deployment.objects.get(pk=outcome["promoted"].pk).status == "queued"
    assert FollowUp.objects.filter(kind="promote.after_success", deployment=running).exists()
