"""The process rule: no database connection crosses a fork.

A child of fork() shares its parent's sockets. Were it to use the parent's database connection, the two
processes would talk over one server session: a child that dies inside a transaction (rq's timeout kill, the
OOM killer, a cold stop) leaves that session idle in transaction, holding its locks, under the parent's feet.
So every child forgets the connections it inherited, without closing them (closing would end the parent's
session too), and opens its own on first use. Redis needs nothing here: redis-py's pool notices the new pid
and drops what it inherited in the same way.

Installed once per process by `PipelinesConfig.ready()`, so it holds for rq's work-horses, anything forked by
a web server and a test's own forks alike."""

import os
import threading

from django.db import connections

# The inherited connections, kept referenced so that no garbage collection in the child ever finalises them
# (psycopg's own finaliser checks the pid; SQLite's does not, and must not run on the parent's file handle).
_inherited = []
_installed = threading.Lock()
_done = False


def forget_inherited_database_connections():
    """In a fresh child: replace each open connection wrapper with a new, unconnected one."""
    for alias in connections.settings:
        wrapper = getattr(connections._connections, alias, None)
        if wrapper is None:
            continue
        if wrapper.connection is not None:
            _inherited.append(wrapper.connection)
        connections[alias] = connections.create_connection(alias)


def clean_database_connections():
    """Before and after each job that a worker runs in its own process: a connection is kept between jobs
    (that is the point of running them in process), unless the job left it inside a transaction or it is
    known broken. Such a one is closed and replaced.

    Asked of the client library, without a round trip (a `SELECT 1` before and after every run would cost
    two of a short run's few statements): a backend the server dropped meanwhile is found by the next query,
    which the run kernel retries on a fresh connection (pipelines/runs/blips.py)."""
    for alias in connections.settings:
        wrapper = getattr(connections._connections, alias, None)
        if wrapper is None or wrapper.connection is None:
            continue
        if wrapper.in_atomic_block or not wrapper.get_autocommit() or _left_unclean(wrapper.connection):
            try:
                wrapper.close()
            except Exception:  # closing a broken connection may fail; it is dropped all the same
                pass
            connections[alias] = connections.create_connection(alias)


def _left_unclean(raw):
    """Whether a driver connection is closed, broken or inside a transaction, as the driver knows it now."""
    info = getattr(raw, "info", None)  # psycopg
    if info is not None:
        from psycopg import pq

        return raw.closed or info.transaction_status != pq.TransactionStatus.IDLE
    return bool(getattr(raw, "in_transaction", False))  # sqlite3


def install():
    global _done
    with _installed:
        if not _done:
            os.register_at_fork(after_in_child=forget_inherited_database_connections)
            _done = True
