"""`manage.py verifyaudit`: exit 0 when the chain holds, 1 naming the first altered or missing event.

These run the command as `manage.py` does (argv, exit code, stdout and stderr). That closes the database
connections afterwards, hence the transactional database."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from pipelines.management.commands.verifyaudit import Command
from pipelines.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def three_events(transactional_db):
    for n in range(3):
        AuditEvent.objects.record(action="test.event", details={"n": n})


def run(capsys):
    """Run `manage.py verifyaudit`; return (exit code, stdout, stderr)."""
    try:
        Command().run_from_argv(["manage.py", "verifyaudit"])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_an_intact_log_exits_0_and_says_how_many_events_it_verified(three_events, capsys):
    assert run(capsys) == (0, "Audit log intact: 3 events verified.\n", "")


def test_an_empty_log_is_intact(capsys):
    assert run(capsys) == (0, "Audit log intact: 0 events verified.\n", "")


def test_an_event_altered_with_raw_sql_exits_1_naming_it(three_events, capsys):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s WHERE seq = 2", ['{"n": 99}'])
    code, out, err = run(capsys)
    assert code == 1 and out == ""
    assert err == "CommandError: Audit log broken at event #2: event 2 was altered after it was recorded\n"


def test_a_deleted_event_exits_1_naming_it(three_events, capsys):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq = 2")
    code, _, err = run(capsys)
    assert code == 1
    assert "Audit log broken at event #2: event 2 is missing (next stored is 3)" in err


def test_an_event_relinked_after_an_alteration_is_still_caught(three_events):
    """Recomputing the altered event's own hash is not enough: the next event no longer links to it."""
    event = AuditEvent.objects.get(seq=2)
    event.details = {"n": 99}
    event.hash = event.compute_hash()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s, hash = %s WHERE seq = 2", ['{"n": 99}', event.hash])
    with pytest.raises(CommandError, match=r"^Audit log broken at event #3: event 3 does not link to the event before it$"):
        call_command("verifyaudit")
