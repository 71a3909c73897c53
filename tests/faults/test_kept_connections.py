"""A database connection is kept from one request to the next (opening a PostgreSQL backend per request cost
more than a page's queries), and one the server dropped in between is replaced before a request uses it:
the backend is terminated for real, between two requests served by Django's own WSGI handler (the test
client would keep the connection whatever the settings say)."""

import time

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse


def get(handler, path):
    """The status line of GET `path` through the WSGI handler, with the request's start and end signals that
    close or keep the connection as a server's would."""
    started = {}
    response = handler(RequestFactory().get(path).environ, lambda status, headers, *rest: started.setdefault("status", status))
    b"".join(response)
    response.close()  # request_finished: where a connection past its age or broken is closed
    return started["status"]


def terminate(pid):
    """pg_terminate_backend(pid) from a connection of its own; returns once that backend is gone."""
    other = connection.get_new_connection(connection.get_connection_params())
    try:
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
                if cursor.fetchone()[0] == 0:
                    return
                time.sleep(0.05)
        raise AssertionError(f"backend {pid} still there 10 s after pg_terminate_backend")
    finally:
        other.close()


def test_a_kept_connection_whose_backend_was_terminated_is_replaced_before_the_next_request(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    handler, health = WSGIHandler(), reverse("health")
    assert get(handler, health) == "200 OK"
    kept = connection.connection
    pid = kept.info.backend_pid
    assert get(handler, health) == "200 OK"
    assert connection.connection is kept, "the connection was closed at the end of the request"

    terminate(pid)

    # Without the check before reuse, this request would run on the dead connection: "503 database unavailable".
    assert get(handler, health) == "200 OK"
    assert connection.connection.info.backend_pid != pid
