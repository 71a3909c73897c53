"""The insights page: DORA figures of a history with known answers, in a constant number of queries, with
filters, SVG charts, CSV exports and approvals' approval-wait part; a screenshot in a real browser."""

import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from approvals.models import ChangeRequest, Decision
from pipelines import insights
from pipelines.models import Deployment, Repository
from tests.conftest import add_stage, sign_in, stage_of

S, F, C = Deployment.Status.SUCCEEDED, Deployment.Status.FAILED, Deployment.Status.CANCELLED
H = timedelta(hours=1)


def ran(release, environment, status, finished_at, *, trigger=Deployment.Trigger.AUTO, created_at=None, previous=None):
    """A deployment row as the state machine leaves it once finished (queued, started, then its end)."""
    created_at = created_at or finished_at - H / 2
    return Deployment.objects.create(
        release=release, environment=environment, repository=release.repository, status=status, trigger=trigger,
        previous_release=previous, created_at=created_at, queued_at=created_at,
        started_at=None if status == C else created_at + H / 6, finished_at=finished_at, exit_code=0 if status == S else 1)


def released(make_release, repository, version, committed_at):
    release = make_release(repository, version)
    release.committed_at = committed_at
    release.save(update_fields=["committed_at"])
    return release


@pytest.fixture
def history(repository, staging, production, make_release, alice, bob, origin):
    """Thirty days (`start` to now) of shop (staging → production) and tools (a lifecycle whose last stage is
    staging), with the answers worked out by hand in the comments. Times are hours after the period starts."""
    start = timezone.now() - timedelta(days=30)
    at = lambda hours: start + hours * H  # noqa: E731
    tools = Repository.objects.create(name="tools", url=origin.url, lifecycle=add_stage("small", staging).lifecycle)

    r0 = released(make_release, repository, "v0", at(-48))
    ran(r0, production, S, at(-24))                              # before the period: not counted
    r1 = released(make_release, repository, "v1", at(22))
    ran(r1, staging, S, at(23))                                  # not the last stage of shop
    d1 = ran(r1, production, S, at(26))                          # week 0: lead 4 h
    r2 = released(make_release, repository, "v2", at(188))
    ran(r2, production, F, at(190))                              # week 1: failed; outage 190 → 192
    ran(r2, production, S, at(192), trigger=Deployment.Trigger.RETRY)  # lead 4 h, restore 2 h
    t1 = released(make_release, tools, "t1", at(200))
    ran(t1, staging, S, at(224))                                 # week 1, tools' last stage: lead 24 h
    r3 = released(make_release, repository, "v3", at(348))
    d3 = ran(r3, production, S, at(372), previous=r2)            # week 2: lead 24 h, later rolled back
    ran(r2, production, S, at(379), trigger=Deployment.Trigger.ROLLBACK, created_at=at(378), previous=r3)  # restore 1 h
    r4 = released(make_release, repository, "v4", at(520))
    ran(r4, production, F, at(522))                              # week 3: one outage from 522 …
    ran(r4, production, F, at(523), trigger=Deployment.Trigger.RETRY)
    ran(r4, production, S, at(526), trigger=Deployment.Trigger.RETRY)  # … to 526: restore 4 h; lead 6 h
    r5 = released(make_release, repository, "v5", at(690))
    ran(r5, production, F, at(694))                              # week 4: failed, not restored yet
    ran(r5, production, C, at(700), trigger=Deployment.Trigger.MANUAL)  # never ran: not counted

    # Approval wait in production: 1 h (bob); 4 h, with alice deciding after 3 h and bob after 4 h.
    stage = stage_of(production)
    for deployment, opened, decisions in ((d1, 24, [(bob, 25)]), (d3, 360, [(alice, 363), (bob, 364)])):
        request = ChangeRequest.objects.create(
            deployment=deployment, repository=repository, environment=production, stage=stage, requested_by=alice,
            status=ChangeRequest.Status.APPROVED, required_approvals=len(decisions), opened_at=at(opened),
            decided_at=at(decisions[-1][1]))
        for user, hour in decisions:
            Decision.objects.create(change_request=request, user=user, verdict=Decision.Verdict.APPROVE, decided_at=at(hour))
    return start


def figures_of(history, **params):
    """The figures as the page computes them, at the moment the history ends (now, when it was made)."""
    return insights.delivery(insights.scope_from(params, now=history + timedelta(days=30)))


def test_it_computes_the_four_keys_of_a_known_history(history):
    figures = figures_of(history, period="30d")

    assert [b.start for b in figures.buckets] == [history + timedelta(days=7 * i) for i in range(5)]
    assert [(b.deployments, b.failed, b.rolled_back) for b in figures.buckets] == [
        (1, 0, 0), (2, 1, 0), (1, 0, 1), (1, 2, 0), (0, 1, 0)]
    assert figures.deployments == 5
    assert figures.per_day == pytest.approx(5 / 30, rel=1e-6)
    assert figures.change_failure_rate == pytest.approx(5 / 9)          # (4 failed + 1 rolled back) / 9 that ran
    # lead times 4, 4, 6, 24 and 24 h
    assert [(b.lead_count, b.lead_time_median) for b in figures.buckets] == [
        (1, 4 * H), (2, 14 * H), (1, 24 * H), (1, 6 * H), (0, None)]
    assert figures.lead_count == 5
    assert figures.lead_time_median == 6 * H
    assert figures.lead_time_p90 == 24 * H
    assert sorted(figures.restore_times) == [1 * H, 2 * H, 4 * H]
    assert figures.restore_median == 2 * H
    assert figures.open_outages == 1


def test_it_narrows_to_a_repository_a_lifecycle_or_an_environment(history):
    tools = figures_of(history, repository="tools")
    assert (tools.deployments, tools.lead_time_median, tools.change_failure_rate) == (1, 24 * H, 0)
    small = figures_of(history, lifecycle="small")
    assert (small.deployments, small.lead_time_median) == (1, 24 * H)
    staging = figures_of(history, environment="staging")
    assert (staging.deployments, staging.lead_time_median, staging.lead_time_p90) == (2, 12.5 * H, 24 * H)
    a_week = figures_of(history, period="7d")
    assert (a_week.deployments, a_week.failed, len(a_week.buckets)) == (0, 1, 7)  # a bar per day


def test_it_reads_a_period_from_dates_and_says_what_it_cannot_read(db):
    scope = insights.scope_from({"from": "2026-03-01", "to": "2026-03-14"})
    assert (scope.start.date().isoformat(), scope.days, len(scope.buckets())) == ("2026-03-01", 14, 14)
    scope = insights.scope_from({"period": "forever", "repository": "nope"})
    assert scope.days == 30
    assert scope.errors == ["Unknown period 'forever': choose one of 7d, 30d, 90d, 365d.", "No repository is named 'nope'."]


def test_the_page_shows_charts_numbers_and_approval_wait(client, alice, history):
    client.force_login(alice)
    response = client.get(reverse("insights"), {"period": "30d"})
    assert response.status_code == 200
    assert response.context["frequency_chart"].count('<rect class="bar"') == 5
    assert response.context["lead_time_chart"].count('<circle class="point"') == 4  # week 4 has no lead time
    page = response.content.decode()
    assert ">Deployment frequency</title>" in page and 'role="img"' in page
    assert page.count("<tr><td><time") == 5
    assert "56 %" in page  # change failure rate 5/9
    # approvals' slot: per environment 1 h and 4 h (median 2 h 30), per approver alice 3 h, bob 1 h and 4 h
    assert "<tr><td>production</td><td>2</td><td>2 h 30 min</td><td>4 h 00 min</td></tr>" in page
    assert "<tr><td>alice</td><td>1</td><td>3 h 00 min</td><td>3 h 00 min</td></tr>" in page
    assert "<tr><td>bob</td><td>2</td><td>2 h 30 min</td><td>4 h 00 min</td></tr>" in page
    assert reverse("approval_wait_export_csv") in page


def test_the_page_applies_its_filters(client, alice, history):
    client.force_login(alice)
    response = client.get(reverse("insights"), {"repository": "tools", "period": "30d"})
    assert (response.context["figures"].deployments, response.context["figures"].lead_time_median) == (1, 24 * H)
    assert response.context["frequency_chart"].count('<rect class="bar"') == 5
    page = response.content.decode()
    assert "No change request was decided in the period." in page  # approvals filtered too
    assert '<option value="tools" selected>tools</option>' in page and '<option value="30d" selected>last 30d</option>' in page
    assert page.count(" selected>") == 2  # the choices kept: no other repository, lifecycle or environment
    response = client.get(reverse("insights"), {"from": (history + timedelta(days=7)).date().isoformat(),
                                                 "to": (history + timedelta(days=13)).date().isoformat()})
    assert len(response.context["figures"].buckets) == 7  # a week: a bar per day
    assert client.get(reverse("insights"), {"environment": "nowhere"}).context["scope"].errors == [
        "No environment is named 'nowhere'."]


def test_the_page_renders_without_approvals(client, alice, history, settings):
    settings.GITOPS_TEMPLATE_SLOTS = {}
    client.force_login(alice)
    page = client.get(reverse("insights")).content.decode()
    assert "Deployment frequency" in page and "approval-wait" not in page


def test_the_csv_exports_hold_the_figures(client, alice, history):
    client.force_login(alice)
    response = client.get(reverse("insights_export_csv"), {"period": "30d"})
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][2:] == ["deployments", "failed", "rolled_back", "change_failure_rate", "lead_time_median_hours",
                           "lead_time_p90_hours", "time_to_restore_median_hours"]
    assert [row[2:5] for row in rows[1:6]] == [["1", "0", "0"], ["2", "1", "0"], ["1", "0", "1"], ["1", "2", "0"], ["0", "1", "0"]]
    assert rows[6][2:] == ["5", "4", "1", "0.5556", "6.00", "24.00", "2.00"]

    response = client.get(reverse("approval_wait_export_csv"), {"period": "30d"})
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows == [["per", "name", "decisions", "median_hours", "p90_hours"],
                    ["environment", "production", "2", "2.50", "4.00"],
                    ["approver", "alice", "1", "3.00", "3.00"], ["approver", "bob", "2", "2.50", "4.00"]]


def test_a_name_that_would_start_a_formula_is_exported_as_text(client, alice, django_user_model, history, production):
    django_user_model.objects.filter(username="bob").update(username="=cmd")
    client.force_login(alice)
    response = client.get(reverse("approval_wait_export_csv"))
    assert "'=cmd" in b"".join(response.streaming_content).decode()


def test_it_takes_as_many_queries_for_a_thousand_deployments_as_for_ten(client, alice, repository, production, make_release):
    client.force_login(alice)
    release = make_release(repository, "v1")
    release.committed_at = timezone.now() - timedelta(days=40)
    release.save(update_fields=["committed_at"])

    def add(count):
        now = timezone.now()
        Deployment.objects.bulk_create([
            Deployment(release=release, environment=production, repository=repository, status=(S, F)[i % 2],
                       trigger=Deployment.Trigger.AUTO, created_at=now - timedelta(hours=i + 1),
                       finished_at=now - timedelta(hours=i + 1) + H / 2) for i in range(count)])

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert client.get(reverse("insights"), {"period": "90d"}).status_code == 200
        return len(captured)

    add(10)
    few = queries()
    add(990)
    assert Deployment.objects.count() == 1000
    assert queries() == few


@pytest.mark.browser
def test_a_screenshot_of_the_page(live_server, page, history, screenshots):
    sign_in(page, live_server, "bob")
    page.set_viewport_size({"width": 1280, "height": 1400})
    page.goto(f"{live_server.url}/insights/?period=30d")
    assert page.locator("svg.chart rect.bar").count() == 5 + 1  # five weeks, one environment's approval wait
    assert page.get_by_role("img", name="Deployment frequency").is_visible()
    # Into docs/screenshots/ (the README's picture) only with GITOPS_SCREENSHOTS=docs/screenshots.
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "insights.png"), full_page=True)


def test_it_counts_drift_found_in_the_period_and_the_time_to_be_back_in_sync(history, repository, staging, production,
                                                                             client, alice):
    from pipelines.models import DriftCheck, Release

    at = lambda hours: history + hours * H  # noqa: E731
    release = Release.objects.get(repository=repository, version="v2")

    def checked(environment, status, hours):
        return DriftCheck.objects.create(repository=repository, environment=environment, release=release,
                                         status=status, created_at=at(hours) - H / 6, finished_at=at(hours))

    checked(production, "drifted", -10)  # before the period: not counted
    checked(production, "in_sync", -9)
    checked(production, "drifted", 100)  # one episode from 100 …
    checked(production, "drifted", 101)
    checked(production, "in_sync", 103)  # … back in sync 3 h later
    checked(staging, "drifted", 200)     # one more, back after 1 h
    checked(staging, "in_sync", 201)
    checked(staging, "drifted", 600)     # still drifted
    checked(production, "failed", 300)   # a check that failed is no drift

    figures = figures_of(history)
    assert (figures.drift_events, figures.drift_correct_median, figures.drift_open) == (3, 2 * H, 1)
    assert figures_of(history, environment="staging").drift_events == 2
    client.force_login(alice)
    page = client.get("/insights/?period=30d").content.decode()
    assert "drift found" in page
