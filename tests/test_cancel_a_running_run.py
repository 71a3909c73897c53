"""A running run of every kind is stopped within 2 s of the portal's cancel: a real `manage.py rqworker` (the
PortalWorker) runs a step that would sleep for five minutes, the cancel is asked for as the page, the API and
the command line ask it (FencedRun.cancel), and the worker, woken through rq's stop-job command, kills the step
and records the cancellation. The queued and not-yet-running cases of every surface are in
tests/test_cancel_every_kind.py; the same for a kind known to tests only in tests/test_a_new_kind_of_run.py."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import test_cancel_every_kind
from tests.conftest import child_env, kill_tree, wait_for
from tests.test_cancel_every_kind import KINDS, audited, fresh, marker, queued  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent
# Each kind's step says it started (a file named after the kind), then sleeps far longer than any test waits.
LONG_STEPS = re.sub(r"(run: touch \{marker\}/\w+)", r"\1; exec sleep 300", test_cancel_every_kind.PIPELINE)


@pytest.fixture
def worker(tmp_path):
    """A real worker of every queue a run is on, as production starts it."""
    process = subprocess.Popen([sys.executable, "manage.py", "rqworker", "deploy", "checks"], cwd=BASE_DIR,
                               env=child_env(tmp_path / "data"), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield process
    kill_tree(process.pid)
    process.wait()


@pytest.mark.parametrize("kind", KINDS)
def test_the_portals_cancel_stops_a_running_run_of_every_kind_within_two_seconds(
        kind, queued, marker, worker, alice, monkeypatch):
    monkeypatch.setattr(test_cancel_every_kind, "PIPELINE", LONG_STEPS)
    run = queued(kind)
    wait_for(lambda: (marker / kind).exists(), f"the {kind}'s step to start in the worker")
    assert fresh(run).status == "running"

    asked = time.monotonic()
    fresh(run).cancel(by=alice, reason="not this one")
    wait_for(lambda: fresh(run).status == "cancelled", f"the {kind} to be cancelled", timeout=2.0)
    print(f"{kind} cancelled {time.monotonic() - asked:.2f} s after the request")

    stopped = fresh(run)
    assert stopped.error.startswith("Cancelled during step"), stopped.error
    assert audited(run, "cancel_requested").get().actor == alice
    assert audited(run, "cancelled").count() == 1
    assert worker.poll() is None, "the worker goes on: only the run stopped"
