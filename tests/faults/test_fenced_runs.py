"""Fenced runs: a target never runs two deployments at once, whatever dies or stalls.

Each test drives a real `manage.py rqworker deploy` process (it runs deployments in its own process and
starts the steps) and kills or starves it for real: SIGKILL of the worker, a cold shutdown, beats stuck behind a lock the
database really holds, backends terminated with pg_terminate_backend. Steps write markers with
timestamps (bash's `$EPOCHREALTIME`) when they start and when they exit, so "no overlap" is read from the steps'
own clocks, not from the portal's records."""

import contextlib
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from django.db import connection
from django.utils import timezone

from pipelines import promotion, reconciler
from pipelines.models import Deployment
from pipelines.runs import kernel, registry
from tests.conftest import child_env, database_url, kill_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent.parent
LOST_AFTER = 10  # GITOPS_WORKER_LOST_AFTER of the worker and of this test's reconciler
HEARTBEAT = 1


@pytest.fixture
def fast_leases(settings):
    settings.GITOPS_WORKER_LOST_AFTER = LOST_AFTER
    settings.GITOPS_HEARTBEAT_SECONDS = HEARTBEAT


@pytest.fixture
def markers(tmp_path):
    # Outside the worker's data directory: steps do not see that one.
    directory = tmp_path / "markers"
    directory.mkdir()
    return directory


class Workers:
    """Real `manage.py rqworker deploy` processes of this test, killed at the end whatever happened."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.processes = []

    def start(self, *, wrapper=(), **extra_env):
        """`wrapper`: a command the worker runs under, such as faketime's."""
        env = child_env(self.data_dir, **{"GITOPS_WORKER_LOST_AFTER": LOST_AFTER, "GITOPS_HEARTBEAT_SECONDS": HEARTBEAT,
                                          **extra_env})
        log = open(self.data_dir.parent / f"worker-{len(self.processes)}.log", "w")
        process = subprocess.Popen([*wrapper, sys.executable, "manage.py", "rqworker", "deploy"], cwd=BASE_DIR,
                                   env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def output(self, number):
        return (self.data_dir.parent / f"worker-{number}.log").read_text()

    def stop_all(self):
        for process in self.processes:
            kill_tree(process.pid)
            process.wait()


@pytest.fixture
def workers(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pool = Workers(data_dir)
    yield pool
    pool.stop_all()


def release_with(origin, make_release, repository, version, run):
    pipeline = f"environments:\n  staging:\n    steps:\n      - name: deploy\n        run: {run}\n"
    origin.write(".gitops.yml", pipeline)
    return make_release(repository, version, pipeline=pipeline, commit_sha=origin.commit(version))


def marked(markers, name, body):
    """A step command that writes `start <time>` first and `exit <time>` however it ends but SIGKILL."""
    path = markers / name
    # bash's own clock ($EPOCHREALTIME), not `date`: a `date` child killed with the step's group left
    # "exit " with no time. One builtin write per line: a line is whole or absent, even under SIGKILL.
    start, end = f'echo "start $EPOCHREALTIME" >> {path}', f'echo "exit $EPOCHREALTIME" >> {path}'
    return f"{start}; trap '{end}; exit 143' TERM; trap '{end}' EXIT; {body}"


def read_markers(path):
    times = {}
    if path.exists():
        for line in path.read_text().splitlines():
            kind, _, value = line.partition(" ")
            times.setdefault(kind, float(value))
    return times


def sleepers(duration):
    """Live processes running `sleep <duration>` (a unique duration per test names its step)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["cmdline"] == ["sleep", duration] and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def status(deployment):
    return Deployment.objects.get(pk=deployment.pk).status


def assert_no_overlap(first_markers, second_markers, first_gone_at):
    first, second = read_markers(first_markers), read_markers(second_markers)
    assert "start" in first and "start" in second, (first, second)
    assert second["start"] > first_gone_at, "the next run started before the old step was gone"
    if "exit" in first:
        assert second["start"] > first["exit"], "the next run started before the old step exited"


def path_without_bubblewrap(directory):
    """A PATH with every command of this machine but bwrap: a machine where bubblewrap is missing."""
    directory.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            link = directory / name
            if name != "bwrap" and not link.exists() and os.access(os.path.join(entry, name), os.X_OK):
                link.symlink_to(os.path.join(entry, name))
    return str(directory)


@pytest.mark.parametrize("bubblewrap", [True, False], ids=["bubblewrap", "no-bubblewrap"])
def test_a_killed_worker_takes_its_step_along_and_the_next_run_starts_only_after(
        repository, staging, origin, make_release, markers, workers, fast_leases, tmp_path, bubblewrap):
    # A background child and `wait`: the step's grandchild must go too.
    slow = release_with(origin, make_release, repository, "v1", marked(markers, "v1", "sleep 70.1 & wait"))
    fast = release_with(origin, make_release, repository, "v2", marked(markers, "v2", "echo fast"))
    first = promotion.promote(slow, staging, by=None)
    no_bubblewrap = {} if bubblewrap else {"PATH": path_without_bubblewrap(tmp_path / "bin")}
    worker = workers.start(**no_bubblewrap)
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the slow step to start", timeout=60)
    following = promotion.promote(fast, staging, by=None)  # queued behind the running one
    assert reconciler.reconcile()["deployments_lost"] == 0, "a live run is left alone"

    # The worker runs the deployment itself (no work-horse), so SIGKILL of the worker is SIGKILL of the run.
    assert Deployment.objects.get(pk=first.pk).runner_pid == worker.pid
    step_namespace = os.readlink(f"/proc/{wait_for(lambda: sleepers('70.1'), 'the sleep')[0].pid}/ns/pid")
    assert (step_namespace != os.readlink("/proc/self/ns/pid")) == bubblewrap, "a private PID namespace where bwrap works"
    worker.kill()
    worker.wait()
    killed_at = time.time()
    wait_for(lambda: not sleepers("70.1"), "the step and its sleep to die with the worker", timeout=10)
    gone_at = time.time()
    assert gone_at - killed_at < 10

    # Fenced for certain (the runner and the step's group are gone on this host): failed early, well
    # before the lease runs out, with the true reason.
    wait_for(lambda: reconciler.reconcile()["deployments_lost"] == 1, "the reconciler to fail the run", timeout=30, interval=0.5)
    first.refresh_from_db()
    assert first.status == "failed"
    assert first.error == f"Worker lost: the worker process {worker.pid} on {first.runner_host} died (killed or crashed)."

    workers.start(**no_bubblewrap)  # the killed worker is gone for good; a new one takes the queue
    wait_for(lambda: status(following) == "succeeded", "the next deployment to run", timeout=60)
    assert_no_overlap(markers / "v1", markers / "v2", gone_at)
    warnings = workers.output(1).count("bubblewrap (bwrap) is not installed")
    assert warnings == (0 if bubblewrap else 1), "the fallback is said once per worker, not once per run"


def test_a_worker_killed_past_its_lease_is_failed_once_the_lease_expires(
        repository, staging, origin, make_release, markers, workers, fast_leases):
    """Seen from another host (or once the pid is taken by someone else), only the lease tells: the run is
    failed once it expired, not before."""
    slow = release_with(origin, make_release, repository, "v1", marked(markers, "v1", "sleep 70.2"))
    fast = release_with(origin, make_release, repository, "v2", marked(markers, "v2", "echo fast"))
    first = promotion.promote(slow, staging, by=None)
    worker = workers.start()
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the slow step to start", timeout=60)

    worker.kill()
    worker.wait()
    killed_at = time.time()
    wait_for(lambda: not sleepers("70.2"), "the step and its sleep to die with the worker", timeout=10)
    gone_at = time.time()
    assert gone_at - killed_at < 10
    Deployment.objects.filter(pk=first.pk).update(runner_host="another-host")

    following = promotion.promote(fast, staging, by=None)
    assert reconciler.reconcile()["deployments_lost"] == 0, "another host's run is left alone while its lease holds"
    later = timezone.now() + timedelta(seconds=LOST_AFTER + 1)  # past the lease
    assert reconciler.reconcile(now=later)["deployments_lost"] == 1
    first.refresh_from_db()
    assert first.error.startswith("Worker lost:"), first.error

    workers.start()
    wait_for(lambda: status(following) == "succeeded", "the next deployment to run", timeout=60)
    assert_no_overlap(markers / "v1", markers / "v2", gone_at)


def test_a_worker_shut_down_cold_during_a_step_stops_it_and_says_so(
        repository, staging, origin, make_release, markers, workers, fast_leases):
    """SIGTERM asks the worker to stop after the job; a second one stops it at once (rq's cold shutdown),
    in the middle of the run that the worker carries out itself."""
    slow = release_with(origin, make_release, repository, "v1", marked(markers, "v1", "sleep 70.3"))
    fast = release_with(origin, make_release, repository, "v2", marked(markers, "v2", "echo fast"))
    first = promotion.promote(slow, staging, by=None)
    worker = workers.start()
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the slow step to start", timeout=60)
    following = promotion.promote(fast, staging, by=None)

    worker.terminate()
    first_signal_at = time.monotonic()
    # rq ignores a second signal that comes within a second of the first (Worker.request_force_stop).
    wait_for(lambda: time.monotonic() - first_signal_at > 1.2, "rq's one-second window to pass", interval=0.1)
    assert worker.poll() is None, "a warm shutdown waits for the run"
    worker.terminate()
    assert worker.wait(timeout=30) is not None
    wait_for(lambda: not sleepers("70.3"), "the step to be stopped", timeout=10)
    gone_at = time.time()

    first.refresh_from_db()
    assert first.status == "failed"
    assert first.error == "The worker running this deployment was shut down during the run; its step was stopped."

    workers.start()
    wait_for(lambda: status(following) == "succeeded", "the next deployment to run", timeout=60)
    assert_no_overlap(markers / "v1", markers / "v2", gone_at)


def _conninfo(dbname=None):
    from urllib.parse import urlsplit

    url = urlsplit(database_url())
    return (f"host={url.hostname} port={url.port or 5432} dbname={dbname or url.path.lstrip('/')} "
            f"user={url.username or ''}" + (f" password={url.password}" if url.password else ""))


def _backend_pid():
    """This test's own connection, which the outage spares so that the test can watch."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@contextlib.contextmanager
def beats_held_up(target):
    """Another session holds what every beat must write: the Target row on PostgreSQL, SQLite's write
    lock on SQLite (readers go on: WAL). Writers wait for it; nothing the worker writes gets through."""
    if "sqlite" in database_url():
        import sqlite3

        blocker = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    import psycopg

    with psycopg.connect(_conninfo()) as blocker:
        blocker.execute("SELECT id FROM pipelines_target WHERE id = %s FOR UPDATE", [target.pk])
        try:
            yield
        finally:
            blocker.rollback()


def test_a_run_whose_beats_cannot_get_through_stops_itself_before_the_next_one_starts(
        repository, staging, origin, make_release, markers, workers, fast_leases):
    """The database holds up the worker's beats (a lock held by another session): they renew nothing.
    The run must kill its own step within half of the lease, record the true reason once the database
    answers, and the next run of the target must start only after that."""
    from pipelines.models import Target

    slow = release_with(origin, make_release, repository, "v1", marked(markers, "v1", "sleep 70.3"))
    fast = release_with(origin, make_release, repository, "v2", marked(markers, "v2", "echo fast"))
    first = promotion.promote(slow, staging, by=None)
    workers.start()
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the slow step to start", timeout=60)
    workers.start()  # a second worker, free to take the next deployment the moment it may
    following = promotion.promote(fast, staging, by=None)
    target = Target.objects.get(repository=repository, environment=staging)
    assert target.lease_holder_id == first.pk

    with beats_held_up(target):
        blocked_at = time.time()
        wait_for(lambda: not sleepers("70.3"), "the run to kill its own step", timeout=LOST_AFTER / 2 + 5)
        gone_at = time.time()
        assert gone_at - blocked_at <= LOST_AFTER / 2 + HEARTBEAT + 2
        assert status(first) == "running", "nothing could be recorded while the database did not answer"
        # Past the lease: the next run may now take the target, and must not have started before.
        wait_for(lambda: time.time() > blocked_at + LOST_AFTER + 1, "the lease to expire", timeout=LOST_AFTER + 5)
        assert not read_markers(markers / "v2"), "the next run started while the target was held"

    reconciler.reconcile()  # on PostgreSQL queued behind the run's own record, which waited for the lock first
    wait_for(lambda: status(first) == "failed", "the run to be recorded as failed", timeout=30)
    first.refresh_from_db()
    reasons = ("Lost its lease: the database did not answer for",)
    if "sqlite" in database_url():  # no queue for SQLite's lock: the reconciler may write first, as truly
        reasons += ("Worker lost: no heartbeat from",)
    assert first.error.startswith(reasons), first.error
    # Its log says why in its own words: on SQLite the end of the log, held up with the beats, may land
    # just after the reconciler's record.
    wait_for(lambda: "==> Lost its lease" in first.log_since(0)[0], "the run's reason in its log", timeout=LOST_AFTER)
    wait_for(lambda: status(following) == "succeeded", "the next deployment to run", timeout=60)
    assert_no_overlap(markers / "v1", markers / "v2", gone_at)


@pytest.mark.skipif("sqlite" in database_url(), reason="pg_terminate_backend is PostgreSQL's")
def test_terminated_database_connections_during_a_step_do_not_fail_the_run(
        repository, staging, origin, make_release, markers, workers, fast_leases):
    run = marked(markers, "v1", "for i in $(seq 1 40); do echo line-$i; sleep 0.1; done")
    deployment = promotion.promote(release_with(origin, make_release, repository, "v1", run), staging, by=None)
    workers.start()
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the step to start", timeout=60)

    terminated = 0
    for _ in range(6):  # the worker's connections, again and again while the step prints
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            terminated += cursor.fetchone()[0]
        time.sleep(0.5)
    assert terminated >= 2, "the worker's connections were there to terminate"

    wait_for(lambda: status(deployment) in ("succeeded", "failed"), "the run to finish", timeout=60)
    deployment.refresh_from_db()
    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", (deployment.error, log)
    lines = [line for line in log.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 41)], "the log is complete, in order, nothing twice"


@pytest.mark.skipif("sqlite" in database_url(), reason="refusing connections to one database is PostgreSQL's")
def test_a_database_that_refuses_connections_for_a_while_does_not_fail_the_run(
        repository, staging, origin, make_release, markers, workers, fast_leases):
    """As during a PostgreSQL restart: the worker's connections are dropped and new ones refused for 6 s
    (well within half of its lease, 20 s here): beats, log appends and the outcome wait it out."""
    run = marked(markers, "v1", "for i in $(seq 1 50); do echo line-$i; sleep 0.2; done")
    deployment = promotion.promote(release_with(origin, make_release, repository, "v1", run), staging, by=None)
    workers.start(GITOPS_WORKER_LOST_AFTER=20)
    wait_for(lambda: read_markers(markers / "v1").get("start"), "the step to start", timeout=60)

    import psycopg

    name = connection.settings_dict["NAME"]
    # From another database: PostgreSQL does not let a session close the database it is connected to.
    with psycopg.connect(_conninfo(dbname="postgres"), autocommit=True) as admin:
        try:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            terminated = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE datname = %s AND pid <> %s", [name, _backend_pid()]).fetchone()[0]
            assert terminated >= 1, "the worker's connections were there to drop"
            time.sleep(6)  # the length of the outage, not a wait for work
            assert status(deployment) == "running"
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    wait_for(lambda: status(deployment) in ("succeeded", "failed"), "the run to finish", timeout=60)
    deployment.refresh_from_db()
    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", (deployment.error, log)
    lines = [line for line in log.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 51)], "the log is complete, in order, nothing twice"
    assert "could not store the log" in workers.output(0), "the outage did reach the worker"


def test_a_cancel_before_the_first_step_means_it_never_starts(
        repository, staging, origin, make_release, markers, alice, monkeypatch, settings):
    """The cancel arrives while the release is checked out (before any step): no step may start."""
    from pipelines import git

    settings.GITOPS_HEARTBEAT_SECONDS = 60  # only the check before each step can catch it in time
    release = release_with(origin, make_release, repository, "v1", marked(markers, "v1", "echo ran"))
    deployment = promotion.promote(release, staging, by=None)
    materialise = git.materialise

    def cancelled_while_checking_out(repository, sha, destination):
        Deployment.objects.get(pk=deployment.pk).cancel(by=alice, reason="wrong release")
        materialise(repository, sha, destination)

    monkeypatch.setattr(git, "materialise", cancelled_while_checking_out)
    done = threading.Thread(target=_run_and_close, args=(deployment.pk,))
    done.start()
    done.join(timeout=60)

    deployment.refresh_from_db()
    assert deployment.status == "cancelled"
    assert deployment.error == "Cancelled before step 'deploy'."
    assert not (markers / "v1").exists(), "the step never started"


def _run_and_close(deployment_id):
    try:
        kernel.run("deployment", deployment_id)
    finally:
        connection.close()


def test_the_reconciler_fails_a_run_early_only_when_nothing_of_it_can_still_run(repository, staging, make_release):
    """On the runner's own host, past the time a killed work-horse's step needs to die but well within
    the lease: a live runner, or a dead runner whose step's process group lives on, is left alone."""
    from pipelines.models import Target

    deployment = promotion.promote(make_release(repository, "v1"), staging, by=None)
    deployment.claim(worker_name="here")  # this process is its runner
    quiet_since = timezone.now() - timedelta(seconds=20)  # older than a beat + the kill grace; lease 60 s
    Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=quiet_since)
    assert reconciler.fail_lost_runs(registry.get("deployment"), timezone.now()) == 0, "its runner is alive"

    dead = subprocess.Popen(["true"])
    dead.wait()
    step = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        Deployment.objects.filter(pk=deployment.pk).update(runner_pid=dead.pid, step_pgid=step.pid)
        assert reconciler.fail_lost_runs(registry.get("deployment"), timezone.now()) == 0, "its runner died but its step still runs"
    finally:
        step.kill()
        step.wait()

    assert reconciler.fail_lost_runs(registry.get("deployment"), timezone.now()) == 1, "runner and step are gone: fenced for certain"
    deployment.refresh_from_db()
    assert deployment.error == f"Worker lost: the worker process {dead.pid} on {deployment.runner_host} died (killed or crashed)."
    assert Target.objects.get(repository=repository, environment=staging).lease_holder is None


def test_the_supervisor_holds_the_step_timeout_on_its_own(tmp_path):
    """No runner watching (its work-horse gone): the supervisor alone ends the step and its children."""
    from pipelines import sandbox

    started = time.monotonic()
    step = subprocess.run(sandbox.wrap(["bash", "-c", "sleep 60.4 & wait"], workdir=tmp_path, timeout=1),
                          cwd=tmp_path, start_new_session=True, timeout=30)
    assert step.returncode == 124, "timeout's own status: the step timed out"
    assert time.monotonic() - started < 1 + sandbox.KILL_AFTER_SECONDS + 2
    wait_for(lambda: not sleepers("60.4"), "the step's child to be gone", timeout=sandbox.KILL_AFTER_SECONDS + 2)
