"""One clock: a worker whose clock is minutes off neither loses its live run nor overlaps the next.

Heartbeats and lease ends are written and compared on the database's clock. The fault tests run a real
worker under Debian's faketime (libfaketime shifts its clock, and nothing else's: not PostgreSQL's, not the
steps', which get a clean environment); the others move this process's clock with time_machine, which the
database does not see either."""

import os
import signal
import time
from datetime import timedelta

import psutil
import pytest

from pipelines import promotion, reconciler
from pipelines.models import Check, Deployment, Target
from pipelines.models.clock import database_now
from tests.conftest import database_url, wait_for
from tests.faults.test_fenced_runs import (  # noqa: F401  (fixtures)
    HEARTBEAT, LOST_AFTER, assert_no_overlap, fast_leases, marked, markers, read_markers, release_with, sleepers,
    status, workers,
)

pytestmark = pytest.mark.django_db(transaction=True)

SKEW = 120  # seconds: well past LOST_AFTER, so a worker's clock alone would decide
CLOSE = 5  # seconds: a stored time this near the database's now was written on its clock
# SQLite has no clock of its own: it runs inside each process and reads that process's clock, faked or not
# (it is one host's database, where every process shares one clock).
needs_a_database_server = pytest.mark.skipif("sqlite" in database_url(), reason="SQLite's now is each process's clock")


def faketime(offset):
    return ("faketime", "-f", f"{offset:+d}s")


@pytest.fixture
def skewed(workers, tmp_path):
    """start(offset): a worker whose wall clock is `offset` seconds off. Its monotonic clock is left alone, as
    on a real host whose clock is off; libfaketime 0.9.10 then makes clock_nanosleep(TIMER_ABSTIME), which
    Python's time.sleep uses, fail with EINVAL, so the worker sleeps on an Event instead (a timed wait that
    works: with the monotonic clock faked as well, it is those that hang)."""
    site = tmp_path / "faketime-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import threading, time\n_wait = threading.Event().wait\ntime.sleep = lambda seconds: _wait(seconds)\n")

    def start(offset):
        return workers.start(wrapper=faketime(offset), FAKETIME_DONT_FAKE_MONOTONIC=1, PYTHONPATH=site)

    return start


def assert_on_the_database_clock(moment, expected_offset=0):
    off = (moment - database_now()).total_seconds() - expected_offset
    assert abs(off) < CLOSE, f"{moment} is {off:+.0f} s off the database's clock"


def assert_leased_on_the_database_clock(deployment):
    deployment.refresh_from_db()
    assert_on_the_database_clock(deployment.heartbeat_at)
    target = Target.objects.get(repository=deployment.repository, environment=deployment.environment)
    assert target.lease_holder_id == deployment.pk
    assert_on_the_database_clock(target.lease_expires_at, LOST_AFTER)


def test_faketime_shifts_the_clock_of_a_python_child():
    import subprocess
    import sys

    shifted = subprocess.run([*faketime(-SKEW), sys.executable, "-c", "import time; print(time.time())"],
                             env={**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"},
                             capture_output=True, text=True, check=True)
    assert float(shifted.stdout) < time.time() - SKEW + CLOSE


@needs_a_database_server
def test_a_worker_whose_clock_is_slow_keeps_its_live_run(
        repository, staging, origin, make_release, markers, skewed, fast_leases):
    # Longer than a lease: the worker renews it on the database's clock, beat after beat.
    step = marked(markers, "v1", f"sleep {LOST_AFTER + 2}.7")
    deployment = promotion.promote(release_with(origin, make_release, repository, "v1", step), staging, by=None)
    skewed(-SKEW)
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the step to start", timeout=60)
    assert_leased_on_the_database_clock(deployment)

    def left_alone_until_done():
        assert reconciler.reconcile()["deployments_lost"] == 0, Deployment.objects.get(pk=deployment.pk).error
        return status(deployment) != "running"

    wait_for(left_alone_until_done, "the run to finish", timeout=LOST_AFTER + 30, interval=0.5)
    deployment.refresh_from_db()
    assert deployment.status == "succeeded", deployment.error
    assert "exit" in read_markers(markers / "v1"), "the step ran to its end"


@needs_a_database_server
def test_a_killed_worker_whose_clock_is_fast_holds_its_target_no_longer_than_its_lease(
        repository, staging, origin, make_release, markers, workers, skewed, fast_leases):
    slow = release_with(origin, make_release, repository, "v1", marked(markers, "v1", "sleep 70.5"))
    fast = release_with(origin, make_release, repository, "v2", marked(markers, "v2", "echo fast"))
    first = promotion.promote(slow, staging, by=None)
    skewed(+SKEW)
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the slow step to start", timeout=60)
    assert_leased_on_the_database_clock(first)
    workers.start()  # on the true clock, free to take the next deployment the moment it may
    following = promotion.promote(fast, staging, by=None)

    # The runner is faketime's child; seen from another host only the lease tells.
    runner_pid = Deployment.objects.get(pk=first.pk).runner_pid
    assert psutil.Process(runner_pid).name().startswith("python")
    Deployment.objects.filter(pk=first.pk).update(runner_host="another-host")
    os.kill(runner_pid, signal.SIGKILL)
    killed_at = time.time()
    assert reconciler.reconcile()["deployments_lost"] == 0, "the lease still holds"
    wait_for(lambda: not sleepers("70.5"), "the step to die with the worker", timeout=10)
    gone_at = time.time()

    wait_for(lambda: reconciler.reconcile()["deployments_lost"] == 1, "the reconciler to fail the lost run",
             timeout=LOST_AFTER + 10, interval=0.5)
    assert time.time() - killed_at <= LOST_AFTER + HEARTBEAT + 3, "failed once the lease ran out, not minutes later"
    first.refresh_from_db()
    assert first.error.startswith("Worker lost: no heartbeat from"), first.error

    wait_for(lambda: status(following) == "succeeded", "the next deployment to run", timeout=60)
    assert_no_overlap(markers / "v1", markers / "v2", gone_at)
    # Its last beat came at most a beat before the kill: the lease ran until LOST_AFTER after that.
    next_started = read_markers(markers / "v2")["start"]
    assert next_started > killed_at + LOST_AFTER - HEARTBEAT - 1, "the next run took a live lease"


@pytest.mark.parametrize("skew", [-SKEW, SKEW], ids=["slow", "fast"])
def test_claims_and_beats_are_stamped_on_the_database_clock(
        repository, staging, make_release, time_machine, fast_leases, skew):
    deployment = promotion.promote(make_release(repository, "v1"), staging, by=None)
    check = Check.objects.queue_for(repository, commit_sha="a" * 40, ref_name="feature/x")
    time_machine.move_to(database_now() + timedelta(seconds=skew))

    deployment.claim(worker_name="skewed")
    check.claim(worker_name="skewed")
    assert_on_the_database_clock(deployment.heartbeat_at)
    assert_on_the_database_clock(check.heartbeat_at)
    assert not deployment.beat() and not check.beat()
    assert_on_the_database_clock(Check.objects.get(pk=check.pk).heartbeat_at)
    assert_leased_on_the_database_clock(deployment)
