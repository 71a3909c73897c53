"""A step's daemon dies with its run: a process that left the step's process group and session (`setsid` and
a fork) is still the run's, on a machine without bubblewrap (whose PID namespace would take it along anyway).

Caught in the run's cgroup v2 where this machine gives one (here, /sys/fs/cgroup/unified as root), else as an
orphan of the runner, its child subreaper. The daemon writes a line every 0.2 s; "gone" is read from its
file, which stops growing."""

import os
import signal
import time
import urllib.request

import psutil
import pytest

from pipelines import promotion, sandbox
from pipelines.models import Deployment
from pipelines.runs import kernel, process
from tests.conftest import wait_for
from tests.faults.test_fenced_runs import path_without_bubblewrap, release_with, status
from tests.faults.test_supervision import markers, portal  # noqa: F401 (fixtures)
from tests.test_runportal import get, start_portal  # noqa: F401 (start_portal: a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

QUIET_SECONDS = 0.6  # three of the daemon's periods without a line: it is dead


def daemon_step(ticks, then="true"):
    """A step that leaves a daemon (its own session, so neither its process group nor its session is the
    step's) writing to `ticks`, then runs `then`."""
    return f"setsid bash -c 'while true; do echo tick >> {ticks}; sleep 0.2; done' & sleep 0.5; {then}"


def stops_writing(path, within):
    """Whether `path` stops growing within `within` seconds (and stays so for QUIET_SECONDS)."""
    deadline = time.monotonic() + within + QUIET_SECONDS
    size, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = path.stat().st_size if path.exists() else 0
        if now_size != size:
            size, quiet_since = now_size, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return True
        time.sleep(0.05)  # poll interval
    return False


def daemons_writing(ticks):
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(ticks) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture
def without_bubblewrap(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_without_bubblewrap(tmp_path / "bin"))
    monkeypatch.setattr(sandbox, "_probed", {})  # probed again, on this PATH
    assert sandbox.bubblewrap_for() is None


@pytest.fixture
def catching(request, monkeypatch):
    if request.param == "cgroup" and sandbox.cgroup_base() is None:
        pytest.skip("this machine gives the portal no cgroup v2 to write")
    if request.param == "subreaper":  # a machine that delegates no cgroup
        monkeypatch.setattr(sandbox, "_cgroup_probed", [None])
    yield request.param
    if request.param == "subreaper":
        # The run made this (pytest) process a child subreaper. Left so, every process orphaned later in the
        # session (the steps of a worker another test kills) would become an unreaped zombie of pytest's, and
        # look alive to whoever waits for a step's process group to be gone.
        process._prctl(process.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        reap_zombie_children()


def reap_zombie_children():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.mark.parametrize("catching", ["cgroup", "subreaper"], indirect=True)
def test_a_daemon_a_step_leaves_dies_when_its_run_ends(
        repository, staging, origin, make_release, markers, without_bubblewrap, catching):
    ticks = markers / "ticks"
    release = release_with(origin, make_release, repository, "v1", daemon_step(ticks))
    deployment = promotion.promote(release, staging, by=None)
    try:
        kernel.run("deployment", deployment.pk)  # in this process: the runner is this test's
        ended_at = time.monotonic()
        assert status(deployment) == "succeeded", Deployment.objects.get(pk=deployment.pk).error
        assert ticks.exists(), "the daemon ran"
        assert stops_writing(ticks, within=2), "the daemon kept writing after its run ended"
        assert time.monotonic() - ended_at < 2 + QUIET_SECONDS + 0.5
        assert daemons_writing(ticks) == []
    finally:
        for process in daemons_writing(ticks):
            process.kill()


def test_a_daemon_a_step_leaves_dies_with_its_killed_worker_under_runportal(
        repository, staging, origin, make_release, markers, portal, tmp_path):
    ticks = markers / "ticks"
    release = release_with(origin, make_release, repository, "v1", daemon_step(ticks, then="sleep 72.5"))
    deployment = promotion.promote(release, staging, by=None)
    running = portal(PATH=path_without_bubblewrap(tmp_path / "bin"))
    try:
        running.wait_for("the web server", lambda: get(urllib.request.build_opener(), running.url + "healthz")[0] == 200)
        running.wait_for("the daemon to write", lambda: ticks.exists() and ticks.stat().st_size > 0)
        worker_pid = Deployment.objects.get(pk=deployment.pk).runner_pid
        os.kill(worker_pid, signal.SIGKILL)
        assert stops_writing(ticks, within=2), "the daemon kept writing after its worker was killed"
        assert daemons_writing(ticks) == []
        running.wait_for("the run to be failed", lambda: status(deployment) == "failed")
    finally:
        for process in daemons_writing(ticks):
            process.kill()
