"""No database connection crosses a fork: a job that rq forks after a run the worker carried out itself opens
its own PostgreSQL session, so a work-horse that dies inside a transaction takes only its own session along.

Before the fix the horse inherited the worker's kept connection: one session for two processes. A horse
SIGKILLed while it held the audit lock left that session idle in transaction, the worker's later writes
never committed, and every audited write in the portal waited on the lock.

The worker here is the real `PortalWorker` (`manage.py rqworker deploy git`) on PostgreSQL and Redis; the
horse really dies by SIGKILL in the middle of an audited write."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import django_rq
import pytest
from django.db import connection, transaction

from pipelines import promotion
from pipelines.models import AuditEvent, Deployment
from tests.conftest import child_env, kill_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def die_inside_an_audited_write(marker):
    """The job of a work-horse that dies mid-transaction (as rq's timeout kill or the OOM killer would):
    it holds the audit lock, then SIGKILLs itself. `marker` receives its database session's pid first."""
    with transaction.atomic():
        AuditEvent.objects.record(action="test.dying_job", details={"about": "to die"})
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            Path(marker).write_text(str(cursor.fetchone()[0]))
        os.kill(os.getpid(), signal.SIGKILL)


def session_pids_of(pid):
    """The PostgreSQL backends whose client is the process `pid` (from the socket's peer), by application name
    we cannot tell, so by the client port of each of the process's TCP connections."""
    import psutil

    ports = {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.raddr and c.raddr.port == 5432}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL")
        return {backend for backend, port in cursor.fetchall() if port in ports}


def test_a_work_horse_that_dies_inside_a_transaction_leaves_the_worker_and_the_audit_log_working(
        repository, staging, origin, make_release, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the shared session is a PostgreSQL fault: SQLite has no server session to share")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "manage.py", "rqworker", "deploy", "git"], cwd=BASE_DIR,
                              env=child_env(data_dir), start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        first = promotion.promote(make_release(repository, "v1.0.0", commit_sha=origin.head()), staging, by=None)
        wait_for(lambda: Deployment.objects.get(pk=first.pk).status == "succeeded", "the first deployment", timeout=60)
        kept = wait_for(lambda: session_pids_of(worker.pid), "the worker's kept database session")

        marker = tmp_path / "horse-session"
        job = django_rq.get_queue("git").enqueue(die_inside_an_audited_write, str(marker))
        wait_for(lambda: job.get_status(refresh=True) == "failed", "rq to see its work-horse die", timeout=60)
        horse_session = int(marker.read_text())
        assert horse_session not in kept, "the work-horse ran its transaction on the worker's own session"

        # An audited write from this process gets the audit lock at once: the dead horse's session is gone.
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '5s'")
            AuditEvent.objects.record(action="test.after_the_death", details={})

        origin.write("CHANGELOG", "second\n")
        second = promotion.promote(make_release(repository, "v1.0.1", commit_sha=origin.commit("second")), staging,
                                   by=None)
        wait_for(lambda: Deployment.objects.get(pk=second.pk).status == "succeeded", "the next deployment", timeout=60)
        assert not AuditEvent.objects.filter(action="test.dying_job").exists(), "the dead horse's write committed"
        assert worker.poll() is None, "the worker died with its work-horse"
    finally:
        kill_tree(worker.pid)
        worker.wait()
        log.close()
    assert "can't change 'autocommit'" not in (tmp_path / "worker.log").read_text()
