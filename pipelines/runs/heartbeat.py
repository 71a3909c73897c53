"""The lease of a run, renewed by a heartbeat on the database's clock, and the watch that fences the run
when the lease cannot be renewed."""

import logging
import os
import signal
import threading
import time

from django.conf import settings
from django.db import connection

from .blips import reset_connection

logger = logging.getLogger(__name__)


class Heartbeat:
    """Beats for the whole run (a slow fetch included), renewing the run's lease of its target, so the
    reconciler never takes a live run for a lost one. Sets `stop` when someone asked for a cancel
    or the row is no longer running.

    Two threads. The beat thread survives failures: it drops its connection and tries again at the next
    beat. The watch thread touches no database, so it cannot hang with it: when no beat has renewed the
    lease for half of GITOPS_WORKER_LOST_AFTER, it sets `lost` and `stop` and kills the step's process
    group itself; the lease expires only after that, and only then may the next run of the target start."""

    def __init__(self, run):
        self.run = run  # a claimed FencedRun
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.silent_for = 0.0
        self.step_pgid = None
        self.renewed_at = time.monotonic()  # claim() took the lease just now
        self._finished = threading.Event()
        self._threads = [
            threading.Thread(target=self._beat, name=f"heartbeat-{run.pk}", daemon=True),
            threading.Thread(target=self._watch, name=f"lease-watch-{run.pk}", daemon=True),
        ]

    def _beat(self):
        try:
            while not self._finished.wait(settings.GITOPS_HEARTBEAT_SECONDS) and not self.lost.is_set():
                try:
                    if self.run.beat():
                        self.stop.set()
                    else:
                        self.renewed_at = time.monotonic()
                except Exception as exc:
                    logger.warning("heartbeat of %s failed (%s); retrying at the next beat",
                                   self.run, exc)
                    reset_connection()
        finally:
            try:
                connection.close()  # this thread's own connection
            except Exception:
                pass

    def _watch(self):
        limit = settings.GITOPS_WORKER_LOST_AFTER / 2
        while not self._finished.wait(min(0.25, limit / 10)):
            silent = time.monotonic() - self.renewed_at
            if silent >= limit:
                self.silent_for = silent
                self.lost.set()
                self.stop.set()
                logger.error("%s could not renew its lease for %.0f s; stopping its step",
                             self.run, silent)
                self.kill_step()
                return

    def kill_step(self):
        pgid = self.step_pgid
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def lost_reason(self):
        return f"Lost its lease: the database did not answer for {self.silent_for:.0f} s, so the run stopped its step."

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self._finished.set()
        for thread in self._threads:
            thread.join()


