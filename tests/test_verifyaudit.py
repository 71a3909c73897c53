"""`manage.py verifyaudit`: exit 0 when the chain holds, 1 naming the first altered, forged or missing event;
either way the outcome is recorded as an AuditVerification, which the audit page shows.

These run the command as `manage.py` does (argv, exit code, stdout and stderr). That closes the database
connections afterwards, hence the transactional database."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from pipelines.management.commands.verifyaudit import Command
from pipelines.models import AuditEvent, AuditVerification

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def three_events(transactional_db):
    """The genesis marker (#1) and three events (#2 to #4)."""
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
    assert run(capsys) == (0, "Audit log intact: 4 events verified.\n", "")
    verification = AuditVerification.objects.get()
    assert verification.intact and verification.events == 4 and verification.finished_at is not None


def test_a_fresh_install_is_intact(capsys):
    assert run(capsys) == (0, "Audit log intact: 0 events verified.\n", "")


def test_an_event_altered_with_raw_sql_exits_1_naming_it(three_events, capsys):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s WHERE seq = 3", ['{"n": 99}'])
    code, out, err = run(capsys)
    assert code == 1 and out == ""
    assert err == "CommandError: Audit log broken at event #3: event 3 was altered after it was recorded\n"
    verification = AuditVerification.objects.get()
    assert (verification.intact, verification.first_bad_seq) == (False, 3)


def test_a_deleted_event_exits_1_naming_it(three_events, capsys):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent WHERE seq = 3")
    code, _, err = run(capsys)
    assert code == 1
    assert "Audit log broken at event #3: event 3 is missing (next stored is 4)" in err


def test_an_event_relinked_after_an_alteration_is_still_caught(three_events):
    """Recomputing the altered event's own hash is not enough: the next event no longer links to it."""
    event = AuditEvent.objects.get(seq=3)
    event.details = {"n": 99}
    event.hash = event.compute_hash()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE pipelines_auditevent SET details = %s, hash = %s WHERE seq = 3", ['{"n": 99}', event.hash])
    with pytest.raises(CommandError, match=r"^Audit log broken at event #3: event 3 does not carry a valid MAC"):
        call_command("verifyaudit")


def test_a_wiped_log_is_not_taken_for_a_fresh_install(three_events, repository, make_release, capsys):
    make_release(repository, "v1.0.0")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pipelines_auditevent")
        cursor.execute("DELETE FROM pipelines_audithead")
    code, _, err = run(capsys)
    assert code == 1
    assert err == ("CommandError: Audit log broken at event #1: the audit log is empty but the portal holds "
                   "1 release: its events were deleted\n")
