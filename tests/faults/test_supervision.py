"""Supervision: a crash in a run is no portal outage.

A real `manage.py runportal` (web server, worker, scheduler) on a free port, against the test database and
Redis. Its worker is killed for real in the middle of a long step (SIGSEGV as a crash, SIGKILL as the OOM
killer would): the web server must go on answering, the worker must come back, the run must say how its
worker died, and the next deployment of the target must start only after the old step is gone."""

import os
import resource
import signal
import threading
import time
import urllib.request

import psutil
import pytest

from pipelines import promotion
from pipelines.models import Deployment
from tests.conftest import child_env, wait_for
from tests.faults.test_fenced_runs import assert_no_overlap, marked, read_markers, release_with, sleepers, status
from tests.test_runportal import get, start_portal  # noqa: F401 (start_portal: a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

LOST_AFTER = 10
HEARTBEAT = 1


@pytest.fixture(autouse=True)
def no_core_dumps():
    """A worker killed with SIGSEGV must not leave a core file in the project (where the machine dumps them)."""
    limits = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, limits[1]))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, limits)


@pytest.fixture
def markers(tmp_path):
    directory = tmp_path / "markers"  # outside the portal's data directory: steps do not see that one
    directory.mkdir()
    return directory


@pytest.fixture
def portal(tmp_path, start_portal):
    """Start `runportal --workers 1` against the test's database and Redis, with short leases."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    def start(**extra_env):
        env = child_env(data_dir, GITOPS_WORKER_LOST_AFTER=LOST_AFTER, GITOPS_HEARTBEAT_SECONDS=HEARTBEAT,
                        GITOPS_SCHEDULER_TICK=1, **extra_env)
        return start_portal(env, data_dir, "--workers", "1")

    return start


class WebWatch:
    """Asks the web server for /healthz all along, in a thread, and keeps every answer's status."""

    def __init__(self, url):
        self.url, self.statuses, self._stop = url + "healthz", [], threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        opener = urllib.request.build_opener()
        while not self._stop.wait(0.2):  # poll interval
            self.statuses.append(get(opener, self.url)[0])

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.statuses


def workers_of(portal):
    """The rq worker processes runportal started itself (not their work-horses)."""
    found = []
    for process, command in list(portal.seen.values()):
        try:
            if "rqworker" in command and process.is_running() and process.ppid() == portal.process.pid:
                found.append(process)
        except psutil.NoSuchProcess:
            continue  # gone meanwhile
    return found


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
def test_a_worker_that_dies_mid_step_is_restarted_its_run_says_why_and_the_web_keeps_answering(
        repository, staging, origin, make_release, markers, portal, sig):
    slow = release_with(origin, make_release, repository, "v1", marked(markers, "v1", "sleep 71.5 & wait"))
    fast = release_with(origin, make_release, repository, "v2", marked(markers, "v2", "echo fast"))
    first = promotion.promote(slow, staging, by=None)
    running = portal()
    running.wait_for("the web server", lambda: get(urllib.request.build_opener(), running.url + "healthz")[0] == 200)
    running.wait_for("the slow step to start", lambda: read_markers(markers / "v1").get("start"))
    following = promotion.promote(fast, staging, by=None)  # queued behind the running one
    worker_pid = Deployment.objects.get(pk=first.pk).runner_pid
    assert worker_pid in [process.pid for process in running.wait_for("the worker", lambda: workers_of(running))]

    web = WebWatch(running.url)
    os.kill(worker_pid, sig)
    wait_for(lambda: not sleepers("71.5"), "the step to die with its worker", timeout=15)
    gone_at = time.time()

    running.wait_for("the run to be failed", lambda: status(first) == "failed")
    first.refresh_from_db()
    assert first.error == (f"Worker lost: the worker process {worker_pid} on {first.runner_host} died: "
                           f"signal {sig.value} ({sig.name})."), running.output()
    running.wait_for("the next deployment to run on the restarted worker", lambda: status(following) == "succeeded")
    assert_no_overlap(markers / "v1", markers / "v2", gone_at)
    new_worker = Deployment.objects.get(pk=following.pk).runner_pid
    assert new_worker != worker_pid and psutil.Process(new_worker).ppid() == running.process.pid

    statuses = web.stop()
    assert len(statuses) >= 5 and set(statuses) == {200}, f"the web server stopped answering: {statuses}"
    output = running.output()
    assert f"The worker-1 process (pid {worker_pid}) died with signal {sig.value} ({sig.name}); restarting it" in output
    assert f"Restarted worker-1 (pid {new_worker})" in output

    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=60) == 0, running.output()


def test_a_worker_that_crash_loops_stops_the_portal_and_says_which_and_how(tmp_path, portal):
    # A worker that crashes as it starts: every Python process of the portal loads this sitecustomize,
    # and only the worker's command line makes it crash.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "if 'rqworker' in sys.argv:\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    running = portal(PYTHONPATH=str(site))
    try:
        returncode = running.process.wait(timeout=90)
    except Exception:
        pytest.fail(f"runportal did not stop a crash-looping worker:\n{running.output()}")

    output = running.output()
    assert returncode == 1, output
    assert "The worker-1 process crash-looped: it died 6 times within 60 s, the last time (pid " in output
    assert "with signal 11 (SIGSEGV). The portal was stopped." in output
    assert output.count("Restarted worker-1 (pid ") == 5, "restarted with backoff until the crash loop was clear"
    assert running.leftovers() == []
