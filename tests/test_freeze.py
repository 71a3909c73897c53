"""Freeze windows: deployments to a frozen environment wait, and start by themselves when the window ends.

The clock is moved with time_machine; the steps run in a real rq worker and write a file, so "nothing ran"
is something the test can see."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import django_rq
import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from approvals.context_processors import freeze_notices
from approvals.freeze import active_freezes, deploy_guard, frozen_until, override_freeze, window_end
from approvals.models import ChangeRequest, FreezeOverride, FreezeWindow
from pipelines import promotion, reconciler
from pipelines.models import AuditEvent, Deployment
from tests.conftest import stage_of

pytestmark = pytest.mark.django_db(transaction=True)

BERLIN = ZoneInfo("Europe/Berlin")

# A one-off year-end freeze, and moments inside it and at its end.
FREEZE_STARTS = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
FREEZE_ENDS = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
DURING = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

# Each step appends the version it deployed to a file named for its environment.
PIPELINE = """\
environments:
  staging:
    steps:
      - run: echo "$GITOPS_VERSION" >> {ran}/staging
  production:
    steps:
      - run: echo "$GITOPS_VERSION" >> {ran}/production
"""


@pytest.fixture
def ran(tmp_path):
    path = tmp_path / "ran"
    path.mkdir()
    return path


@pytest.fixture
def release(origin, repository, make_release, ran):
    pipeline = PIPELINE.format(ran=ran)
    origin.write(".gitops.yml", pipeline)
    return make_release(repository, "v1.0.0", commit_sha=origin.commit("steps that leave a trace"), pipeline=pipeline)


def freeze(*environments, name="Year-end freeze", reason="Change freeze over the year-end close.", **fields):
    if "cron" not in fields:
        fields = {"starts_at": FREEZE_STARTS, "ends_at": FREEZE_ENDS, **fields}
    window = FreezeWindow.objects.create(name=name, reason=reason, **fields)
    window.environments.set(environments)
    return window


def weekend_freeze(**fields):
    """Every Friday 18:00 in Berlin, for 60 hours: until Monday 06:00 local, an hour either way across DST."""
    return FreezeWindow(
        name="Weekend", reason="Nobody on call.", cron="0 18 * * 5", duration=timedelta(hours=60),
        time_zone="Europe/Berlin", **fields,
    )


def hold_for_approval(release, environment, *, by):
    """A production deployment awaiting approval, with its change request.

    The request is made here rather than by approvals/opening.py (whose follow-up is not carried out
    here) so that this file tests the freeze alone."""
    deployment = promotion.promote(release, environment, by=by)
    change_request = ChangeRequest.objects.create(
        deployment=deployment, repository=deployment.repository, environment=environment, stage=stage_of(environment),
        requested_by=by,
        required_approvals=1,
    )
    return deployment, change_request


def with_permission(user, codename):
    user.user_permissions.add(Permission.objects.get(codename=codename))
    return type(user).objects.get(pk=user.pk)  # a fresh instance: has_perm caches what it read


# --- a freeze holds a deployment, and it runs by itself when the window ends -------------------------


def test_a_one_off_window_holds_a_queued_deployment_until_it_ends_then_it_runs(
    release, staging, ran, run_workers, time_machine
):
    freeze(staging)
    time_machine.move_to(DURING)
    deployment = promotion.promote(release, staging, by=None)
    run_workers()

    deployment.refresh_from_db()
    assert deployment.status == "queued"
    assert not (ran / "staging").exists(), "the step ran during the freeze"

    time_machine.move_to(FREEZE_ENDS)  # the end itself is no longer frozen
    assert reconciler.reconcile()["deployments_requeued"] == 1
    run_workers()

    deployment.refresh_from_db()
    assert deployment.status == "succeeded"
    assert (ran / "staging").read_text() == "v1.0.0\n"


def test_the_reconciler_neither_requeues_nor_audits_a_held_deployment_while_frozen(
    release, staging, run_workers, time_machine
):
    freeze(staging)
    time_machine.move_to(DURING)
    deployment = promotion.promote(release, staging, by=None)
    run_workers()  # the worker looked at it and left it queued
    django_rq.get_connection("deploy").flushdb()  # and Redis lost whatever it remembered of the job

    for moment in (DURING, FREEZE_ENDS - timedelta(seconds=1)):
        time_machine.move_to(moment)
        assert reconciler.reconcile()["deployments_requeued"] == 0
    assert django_rq.get_queue("deploy").count == 0
    assert not AuditEvent.objects.filter(action="deployment.requeued").exists()

    time_machine.move_to(FREEZE_ENDS)
    assert reconciler.reconcile()["deployments_requeued"] == 1
    assert django_rq.get_queue("deploy").job_ids == [f"deployment-{deployment.pk}"]
    assert AuditEvent.objects.filter(action="deployment.requeued", object_id=str(deployment.pk)).count() == 1


def test_the_guard_names_the_environment_the_end_in_utc_and_the_window(release, production, staging):
    freeze(production, reason="Nothing changes while finance closes the books.")
    deployment = Deployment.objects.create(
        release=release, environment=production, repository=release.repository, status="queued", trigger="manual"
    )

    assert deploy_guard(deployment, DURING) == (
        "production is frozen until 2026-12-01 08:00 UTC "
        "(Year-end freeze: Nothing changes while finance closes the books.)"
    )
    assert deploy_guard(deployment, FREEZE_STARTS - timedelta(seconds=1)) is None
    assert deploy_guard(deployment, FREEZE_ENDS) is None
    deployment.environment = staging
    assert deploy_guard(deployment, DURING) is None, "a window freezes only its own environments"


def test_a_disabled_window_never_freezes(production):
    window = freeze(production, enabled=False)
    assert window_end(window, DURING) is None
    assert frozen_until(production, DURING) is None
    assert active_freezes(DURING) == []


def test_frozen_until_is_the_latest_end_of_overlapping_and_touching_windows(production):
    hour, day = timedelta(hours=1), timedelta(days=1)
    freeze(production, name="First", ends_at=FREEZE_ENDS)
    freeze(production, name="Overlapping", starts_at=FREEZE_STARTS + hour, ends_at=FREEZE_ENDS + 2 * hour)
    touching = freeze(production, name="Touching", starts_at=FREEZE_ENDS + 2 * hour, ends_at=FREEZE_ENDS + 2 * day)
    gap = timedelta(minutes=1)
    freeze(production, name="After a gap", starts_at=FREEZE_ENDS + 2 * day + gap, ends_at=FREEZE_ENDS + 9 * day)

    assert frozen_until(production, DURING) == (FREEZE_ENDS + 2 * day, touching)
    assert frozen_until(production, FREEZE_ENDS + 2 * day) is None, "the minute's gap lets deployments through"


def test_a_window_stored_with_a_broken_rule_is_ignored_rather_than_stopping_the_runner(production, caplog):
    freeze(production, name="Broken", cron="every friday", duration=timedelta(hours=1))  # clean() would refuse it
    assert frozen_until(production, DURING) is None
    assert "Broken" in caplog.text


# --- recurring windows and daylight saving time ------------------------------------------------------

# "0 18 * * 5" in Europe/Berlin for 60 hours. Berlin leaves summer time on Sunday 2026-10-25 and enters it
# on Sunday 2027-03-28: the window starts at 18:00 on the local clock each Friday and lasts 60 real hours, so
# it ends Monday 05:00 local after the October change (06:00 on a plain weekend) and 07:00 after the March one.
AUTUMN_END = datetime(2026, 10, 26, 5, 0, tzinfo=BERLIN)
SPRING_END = datetime(2027, 3, 29, 7, 0, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("local_now", "expected_end"),
    [
        # Across the autumn change.
        (datetime(2026, 10, 23, 17, 59), None),
        (datetime(2026, 10, 23, 18, 0), AUTUMN_END),  # at the very minute it starts
        (datetime(2026, 10, 23, 18, 30), AUTUMN_END),
        (datetime(2026, 10, 24, 12, 0), AUTUMN_END),
        (datetime(2026, 10, 26, 4, 59), AUTUMN_END),
        (datetime(2026, 10, 26, 5, 0), None),
        (datetime(2026, 10, 26, 7, 0), None),
        # The first Friday on winter time still starts at 18:00 local, now 17:00 UTC.
        (datetime(2026, 10, 30, 17, 59), None),
        (datetime(2026, 10, 30, 18, 0), datetime(2026, 11, 2, 6, 0, tzinfo=BERLIN)),
        # Across the spring change.
        (datetime(2027, 3, 26, 17, 59), None),
        (datetime(2027, 3, 26, 18, 0), SPRING_END),
        (datetime(2027, 3, 28, 12, 0), SPRING_END),
        (datetime(2027, 3, 29, 6, 59), SPRING_END),
        (datetime(2027, 3, 29, 7, 0), None),
        # The first Friday on summer time, 18:00 local, now 16:00 UTC.
        (datetime(2027, 4, 2, 17, 59), None),
        (datetime(2027, 4, 2, 18, 0), datetime(2027, 4, 5, 6, 0, tzinfo=BERLIN)),
    ],
)
def test_a_recurring_window_starts_on_the_local_clock_and_lasts_real_hours_across_dst(local_now, expected_end):
    now = local_now.replace(tzinfo=BERLIN).astimezone(UTC)
    assert window_end(weekend_freeze(), now) == expected_end


def test_the_autumn_window_ends_sixty_real_hours_after_it_started():
    started = datetime(2026, 10, 23, 18, 0, tzinfo=BERLIN)
    end = window_end(weekend_freeze(), datetime(2026, 10, 24, 10, 0, tzinfo=UTC))

    assert end == datetime(2026, 10, 26, 4, 0, tzinfo=UTC)
    assert end.astimezone(UTC) - started.astimezone(UTC) == timedelta(hours=60)
    assert end.astimezone(BERLIN).strftime("%a %H:%M %Z") == "Mon 05:00 CET"


def test_frozen_until_reads_recurring_windows_from_the_database(production):
    window = weekend_freeze()
    window.save()
    window.environments.set([production])

    assert frozen_until(production, datetime(2027, 3, 27, 12, 0, tzinfo=UTC)) == (SPRING_END, window)
    assert frozen_until(production, SPRING_END) is None


# --- approvals go on during a freeze -----------------------------------------------------------------


def test_an_approval_given_during_a_freeze_queues_the_deployment_which_runs_only_after_the_window(
    release, production, alice, bob, ran, run_workers, time_machine
):
    freeze(production)
    time_machine.move_to(DURING)
    deployment, change_request = hold_for_approval(release, production, by=alice)

    change_request.approve(bob, "Looks good; it can go after the freeze.")
    run_workers()

    change_request.refresh_from_db()
    deployment.refresh_from_db()
    assert change_request.status == "approved"
    assert deployment.status == "queued"
    assert not (ran / "production").exists(), "the step ran during the freeze"

    time_machine.move_to(FREEZE_ENDS + timedelta(minutes=1))
    reconciler.reconcile()
    run_workers()

    deployment.refresh_from_db()
    assert deployment.status == "succeeded"
    assert (ran / "production").read_text() == "v1.0.0\n"


# --- deploying during a freeze: a permission and a reason, audited ------------------------------------


def test_override_is_refused_to_someone_without_the_permission(release, staging, charlie, time_machine):
    freeze(staging)
    time_machine.move_to(DURING)
    deployment = promotion.promote(release, staging, by=None)

    with pytest.raises(PermissionDenied, match="charlie may not deploy during a freeze: that needs the permission"):
        override_freeze(deployment, by=charlie, reason="Urgent fix")
    assert not FreezeOverride.objects.exists()
    assert not AuditEvent.objects.filter(action="freeze.overridden").exists()


def test_override_needs_a_written_reason(release, staging, bob, time_machine):
    freeze(staging)
    bob = with_permission(bob, "deploy_during_freeze")
    time_machine.move_to(DURING)
    deployment = promotion.promote(release, staging, by=None)

    with pytest.raises(PermissionDenied, match="a reason is required"):
        override_freeze(deployment, by=bob, reason="   ")
    assert not FreezeOverride.objects.exists()


def test_override_lets_a_held_deployment_run_during_the_freeze_and_is_audited(
    release, staging, bob, ran, run_workers, time_machine
):
    freeze(staging)
    bob = with_permission(bob, "deploy_during_freeze")
    time_machine.move_to(DURING)
    deployment = promotion.promote(release, staging, by=None)
    run_workers()
    assert Deployment.objects.get(pk=deployment.pk).status == "queued"

    override_freeze(deployment, by=bob, reason="Security fix for CVE-2026-1234.")
    override_freeze(deployment, by=bob, reason="A second click.")
    run_workers()

    deployment.refresh_from_db()
    assert deployment.status == "succeeded"
    assert (ran / "staging").read_text() == "v1.0.0\n"
    assert frozen_until(staging, deployment.finished_at) is not None, "it ran while the window was still on"
    event = AuditEvent.objects.get(action="freeze.overridden")
    assert (event.actor, event.object_id, event.environment) == (bob, str(deployment.pk), staging)
    assert event.details["reason"] == "Security fix for CVE-2026-1234."
    assert event.details["window"] == "Year-end freeze"
    assert FreezeOverride.objects.get().user == bob


def test_override_is_refused_for_a_deployment_that_already_finished(release, staging, bob, run_workers):
    bob = with_permission(bob, "deploy_during_freeze")
    deployment = promotion.promote(release, staging, by=None)
    run_workers()
    deployment.refresh_from_db()

    with pytest.raises(PermissionDenied, match="is succeeded; only a deployment that is still waiting"):
        override_freeze(deployment, by=bob, reason="Too late")


# --- "frozen until …" on every page -------------------------------------------------------------------


def signed_in_request(user):
    request = RequestFactory().get("/")
    request.user = user
    return request


def test_the_context_processor_lists_each_frozen_environment_with_its_end_and_reason(
    production, staging, alice, time_machine
):
    window = freeze(production)
    freeze(staging, name="Over", starts_at=FREEZE_STARTS - timedelta(days=3), ends_at=FREEZE_STARTS - timedelta(days=2))
    time_machine.move_to(DURING)

    [notice] = freeze_notices(signed_in_request(alice))["freeze_notices"]

    assert (notice.environment, notice.until, notice.window) == (production, FREEZE_ENDS, window)
    assert notice.reason == "Change freeze over the year-end close."
    assert str(notice).startswith("production is frozen until 2026-12-01 08:00 UTC")


def test_the_context_processor_shows_nothing_to_anonymous_visitors(production, django_assert_num_queries):
    from django.contrib.auth.models import AnonymousUser

    freeze(production)
    with django_assert_num_queries(0):
        assert freeze_notices(signed_in_request(AnonymousUser())) == {"freeze_notices": []}


@pytest.mark.parametrize("windows", [1, 5])
def test_the_context_processor_makes_two_queries_however_many_windows(
    windows, production, staging, alice, time_machine, django_assert_max_num_queries
):
    for number in range(windows):
        if number % 2:
            freeze(production, staging, name=f"Weekly {number}", cron=f"0 {number} * * *", duration=timedelta(hours=20))
        else:
            freeze(production, staging, name=f"One-off {number}", ends_at=FREEZE_ENDS + timedelta(hours=number))
    time_machine.move_to(DURING)

    with django_assert_max_num_queries(2), CaptureQueriesContext(connection) as queries:
        notices = freeze_notices(signed_in_request(alice))["freeze_notices"]
        assert len(queries) == 0, "nothing is read until a template shows the banner"
        environments = [notice.environment for notice in notices]

    assert len(queries) == 2
    assert environments == [staging, production]


def test_every_page_says_what_is_frozen_until_when(production, staging, alice, client, time_machine):
    freeze(production, name="Year-end freeze", ends_at=FREEZE_ENDS)
    time_machine.move_to(DURING)
    client.force_login(alice)
    for page in ("/", "/approvals/", "/audit/"):
        html = client.get(page).content.decode()
        assert "production is frozen until" in html, page
        assert "staging is frozen" not in html


# --- a window is one kind or the other, and says what is wrong ---------------------------------------


NOT_BOTH = (
    "A window is either one-off (a start and an end) or recurring (a cron rule and a duration), not both: "
    "clear one or the other."
)
NEITHER = (
    "Give a start and an end for a one-off window, or a cron rule, a duration and a time zone for a recurring one."
)
CRON_HELP = "five fields, minute hour day-of-month month day-of-week, e.g. '0 18 * * FRI' for every Friday at 18:00."


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"starts_at": FREEZE_STARTS, "ends_at": FREEZE_ENDS, "cron": "0 18 * * 5", "duration": timedelta(hours=1)},
            {"__all__": [NOT_BOTH]},
        ),
        (
            {},
            {"__all__": [NEITHER]},
        ),
        ({"starts_at": FREEZE_ENDS, "ends_at": FREEZE_STARTS}, {"ends_at": ["The window must end after it starts."]}),
        ({"starts_at": FREEZE_STARTS, "ends_at": FREEZE_STARTS}, {"ends_at": ["The window must end after it starts."]}),
        ({"starts_at": FREEZE_STARTS}, {"ends_at": ["A one-off window needs an end."]}),
        (
            {"cron": "every friday", "duration": timedelta(hours=1)},
            {"cron": ["'every friday' is not a valid cron rule: " + CRON_HELP]},
        ),
        (
            {"cron": "0 0 30 2 *", "duration": timedelta(hours=1)},  # 30 February never comes
            {"cron": ["'0 0 30 2 *' is not a valid cron rule: " + CRON_HELP]},
        ),
        (
            {"duration": timedelta(hours=1)},
            {"cron": ["A recurring window needs a cron rule for when it starts, e.g. '0 18 * * FRI'."]},
        ),
        (
            {"cron": "0 18 * * 5", "duration": timedelta(0)},
            {"duration": ["A recurring window needs a positive duration, e.g. '2 15:00:00' for 2 days 15 hours."]},
        ),
        (
            {"cron": "0 18 * * 5"},
            {"duration": ["A recurring window needs a positive duration, e.g. '2 15:00:00' for 2 days 15 hours."]},
        ),
        (
            {"cron": "0 18 * * 5", "duration": timedelta(hours=60), "time_zone": "Europe/Atlantis"},
            {"time_zone": ["'Europe/Atlantis' is not a known time zone; use an IANA name such as 'Europe/Berlin'."]},
        ),
    ],
)
def test_clean_refuses_an_incoherent_window_with_a_clear_message(fields, expected):
    with pytest.raises(ValidationError) as refused:
        FreezeWindow(name="W", reason="r", **fields).full_clean()
    assert refused.value.message_dict == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"starts_at": FREEZE_STARTS, "ends_at": FREEZE_ENDS},
        {"cron": "0 18 * * FRI", "duration": timedelta(hours=60), "time_zone": "Europe/Berlin"},
        {"cron": "@weekly", "duration": timedelta(hours=2)},
    ],
)
def test_clean_accepts_a_one_off_or_a_recurring_window(fields):
    FreezeWindow(name="W", reason="r", **fields).full_clean()


# --- the admin ----------------------------------------------------------------------------------------


def admin_form(production, **overrides):
    data = {
        "name": "Weekend", "environments": [production.pk], "reason": "Nobody on call.", "enabled": "on",
        "starts_at_0": "", "starts_at_1": "", "ends_at_0": "", "ends_at_1": "",
        "cron": "0 18 * * 5", "duration": "2 12:00:00", "time_zone": "Europe/Berlin", "_save": "Save",
    }
    return {**data, **overrides}


def test_the_admin_refuses_a_window_through_the_model_clean(client, alice, production):
    client.force_login(alice)
    url = reverse("admin:approvals_freezewindow_add")
    response = client.post(url, admin_form(production, time_zone="Mars/Olympus"))

    assert response.status_code == 200
    assert "is not a known time zone; use an IANA name such as" in response.content.decode()
    assert not FreezeWindow.objects.exists()


def test_the_admin_records_who_created_a_window_and_audits_it(client, alice, production, time_machine):
    client.force_login(alice)
    response = client.post(reverse("admin:approvals_freezewindow_add"), admin_form(production))

    assert response.status_code == 302
    window = FreezeWindow.objects.get()
    assert (window.created_by, list(window.environments.all())) == (alice, [production])
    assert AuditEvent.objects.filter(action="admin.add", object_type="approvals.freezewindow", actor=alice).exists()

    time_machine.move_to(datetime(2026, 10, 24, 10, 0, tzinfo=UTC))
    changelist = client.get(reverse("admin:approvals_freezewindow_changelist")).content.decode()
    assert "0 18 * * 5 (Europe/Berlin) for 2 days, 12:00:00" in changelist
    assert "until 2026-10-26 04:00 UTC" in changelist
