"""Riding out a database blip (a restart, a failover, a terminated backend) at any phase of a run.

A run holds its lease for GITOPS_WORKER_LOST_AFTER; its runner stops the step itself after half of that
without a renewal (heartbeat.py). So each phase may retry a database error for up to that half: longer,
and the run would be fenced anyway."""

import logging
import time

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.utils import InterfaceError, OperationalError

logger = logging.getLogger(__name__)

# What a database blip looks like from here: the connection dropped or the server refused it.
DATABASE_BLIP = (OperationalError, InterfaceError)


class DatabaseAway(RuntimeError):
    """The database did not answer for the whole time a phase may wait."""


def reset_connection():
    """After a database error: drop this thread's connection so the next query opens a fresh one."""
    close_old_connections()
    try:
        if not connection.in_atomic_block:
            connection.close()
    except Exception:
        pass


def patience():
    return settings.GITOPS_WORKER_LOST_AFTER / 2


def retry(what, action, *, subject=""):
    """`action()`, retried through database errors for up to half of GITOPS_WORKER_LOST_AFTER; DatabaseAway
    after that. For reads and for writes that are safe to repeat (a compare-and-swap, a numbered log chunk).
    Never inside a transaction: a blip ends it, and only the outermost caller may start it again."""
    deadline = time.monotonic() + patience()
    delay = 0.1
    while True:
        try:
            return action()
        except DATABASE_BLIP as exc:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise DatabaseAway(f"The database did not answer while {what}: {exc}") from exc
            logger.warning("%s%s failed (%s); retrying", what, f" of {subject}" if subject else "", exc)
            reset_connection()
            time.sleep(delay)  # backing off from a database that is away, not waiting for work
            delay = min(delay * 2, 2.0)
