"""Audit writers in many processes at once still make one chain: every event has its own seq, none is missing,
each links to the one before it, and the signed head is the last one.

The writers start on an empty log, so they also race for the very first event (the genesis marker and the
first head row), then keep recording single events and batches (record_many) in their own transactions."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from pipelines.models import AuditEvent, AuditHead
from pipelines.models.audit import GENESIS_ACTION
from tests.conftest import child_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)  # the writers are other processes: they see commits only

WRITERS = 4
ROUNDS = 15
BASE_DIR = Path(__file__).resolve().parent.parent

# Each writer says it is ready, waits for the common start (a file the test creates once all are ready), then
# alternates one event and a batch of three.
WRITER = """
import sys, time
from pathlib import Path
import django
django.setup()
from pipelines.models import AuditEvent
name, gate, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(gate.parent / f"ready-{name}").touch()
deadline = time.monotonic() + 60
while not gate.exists():
    if time.monotonic() > deadline:
        sys.exit("the start gate never opened")
    time.sleep(0.005)
for n in range(rounds):
    AuditEvent.objects.record(action="test.single", details={"writer": name, "n": n})
    batch = [dict(action="test.batch", details={"writer": name, "n": n, "i": i}) for i in range(3)]
    AuditEvent.objects.record_many(batch)
"""


def test_writers_in_many_processes_make_one_gap_free_chain(data_dir, tmp_path):
    gate = tmp_path / "go"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, f"w{n}", str(gate), str(ROUNDS)], cwd=BASE_DIR,
                         env=child_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in range(WRITERS)
    ]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == WRITERS, "every writer to be ready", timeout=60)
        gate.touch()
        for writer in writers:
            output, _ = writer.communicate(timeout=120)
            assert writer.returncode == 0, output
    finally:
        for writer in writers:
            writer.kill()

    events = list(AuditEvent.objects.order_by("seq").values_list("seq", "action", "details"))
    expected = 1 + WRITERS * ROUNDS * 4  # the genesis marker, then each round's single event and batch of three
    assert [seq for seq, _, _ in events] == list(range(1, expected + 1))
    assert events[0][1] == GENESIS_ACTION and [a for _, a, _ in events].count(GENESIS_ACTION) == 1
    # A batch is contiguous: nobody's event lands inside another writer's record_many.
    batches = [(seq, d["writer"], d["n"], d["i"]) for seq, action, d in events if action == "test.batch"]
    for seq, writer, n, i in batches:
        if i == 0:
            assert [b[1:] for b in batches if seq <= b[0] < seq + 3] == [(writer, n, 0), (writer, n, 1), (writer, n, 2)]
    if connection.vendor == "postgresql":
        # The writers really were at it together: the order of events is not one writer after another. (On
        # SQLite it may be: a writer that just committed takes the database again before the others' busy
        # handlers wake up.)
        order = [d["writer"] for _, action, d in events if action == "test.single"]
        assert sum(a != b for a, b in zip(order, order[1:])) > WRITERS - 1, "the writers never overlapped"
    report = AuditEvent.objects.verify()
    assert report.intact and report.events == expected, report.message
    head = AuditHead.objects.get()
    assert (head.seq, head.hash) == (expected, AuditEvent.objects.get(seq=expected).hash)
