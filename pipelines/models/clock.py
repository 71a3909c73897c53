"""One clock for leases and heartbeats: the database's.

Workers and the reconciler run on different hosts whose clocks drift apart; a heartbeat written on one
host's clock and compared on another's makes a live run look lost (a slow worker) or holds a lease minutes
too long (a fast one). So the heartbeats and lease ends are written with the database's clock inside the
UPDATE (`Now()`, STATEMENT_TIMESTAMP() on PostgreSQL), and compared with it."""

from datetime import timedelta

from django.db import connection
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, Value
from django.db.models.functions import Now
from django.db.models.sql import Query


def now_plus(seconds):
    """The database's now plus `seconds`, as an expression for an UPDATE or a filter."""
    return ExpressionWrapper(Now() + Value(timedelta(seconds=seconds), output_field=DurationField()),
                             output_field=DateTimeField())


def database_now():
    """The database's now, as an aware datetime: one query."""
    query = Query(None)
    query.add_annotation(Now(), "now")
    # results_iter applies the backend's converters (SQLite answers with text).
    return next(query.get_compiler(connection=connection).results_iter())[0]


def set_written(instance, fields):
    """Copy onto `instance` the `fields` an UPDATE just wrote; values the database computed (its clock) are
    left deferred: Django reads them, in one query, when first used (a run's claim never uses them)."""
    for name, value in fields.items():
        if hasattr(value, "resolve_expression"):
            instance.__dict__.pop(instance._meta.get_field(name).attname, None)
        else:
            setattr(instance, name, value)
