"""The dashboard says what needs someone, in words, with a link to the place to act; filters live in the URL."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.models import FreezeWindow
from pipelines.dashboard import DASHBOARD_PAGE_SIZE
from pipelines.models import Deployment, Lifecycle, Repository, Target
from tests.test_views_dashboard import create_deployment, create_release

STAGING_ONLY = "environments:\n  staging:\n    steps:\n      - run: ./deploy.sh\n"


def dashboard(client, user, **query):
    client.force_login(user)
    response = client.get(reverse("dashboard"), query)
    assert response.status_code == 200
    return response.content.decode()


def repository_order(html):
    return re.findall(r'class="repo-name">([^<]+)<', html)


def test_it_says_how_many_approvals_from_whom_and_links_the_change_request(client, charlie, bob, make_held_change):
    change, _ = make_held_change(required_approvals=2)
    change.approve(bob)
    html = dashboard(client, charlie)
    assert "1 of 2 approvals from approvers" in html
    assert f'href="{reverse("change_request_detail", args=[change.pk])}">1 of 2 approvals' in html
    assert "<strong>1</strong> awaiting approval" in html


def test_it_has_distinct_words_for_each_way_nothing_runs(client, charlie, environments, make_release):
    Repository.objects.create(name="no-tags", url="/srv/git/no-tags")
    staged = Repository.objects.create(name="staged", url="/srv/git/staged")
    make_release(staged, "v1.0.0", pipeline=STAGING_ONLY)
    rows = dict(re.findall(r'class="repo-name">([^<]+)</a>(.*?)</tr>', dashboard(client, charlie), re.S))
    assert rows["no-tags"].count("no release matches") == 2
    assert "not yet deployed" in rows["staged"]  # staging: in its pipeline file, never deployed
    assert "not in this pipeline" in rows["staged"]  # production: its pipeline file does not name it
    assert "no release matches" not in rows["staged"]


def test_it_puts_broken_repositories_first_with_links_to_act(client, charlie, environments, make_release):
    calm = Repository.objects.create(name="aaa-calm", url="/srv/git/calm")
    make_release(calm, "v1.0.0")
    invalid = Repository.objects.create(name="mmm-invalid", url="/srv/git/invalid")
    make_release(invalid, "v0.2.0")
    make_release(invalid, "v0.3.0", error="line 3: 'environments' is empty")
    Repository.objects.create(name="zzz-unreachable", url="/srv/git/gone", last_error="git ls-remote failed: not found")
    html = dashboard(client, charlie)
    assert repository_order(html) == ["mmm-invalid", "zzz-unreachable", "aaa-calm"]
    assert f'href="{reverse("release_detail", args=["mmm-invalid", "v0.3.0"])}">newest release v0.3.0 is invalid' in html
    assert f'href="{reverse("repository_detail", args=["zzz-unreachable"])}">cannot reach the repository' in html
    assert repository_order(dashboard(client, charlie, state="unreachable")) == ["zzz-unreachable"]
    assert repository_order(dashboard(client, charlie, state="attention")) == ["mmm-invalid", "zzz-unreachable"]


def test_it_says_a_stage_is_paused_after_a_rollback(client, charlie, repository, staging):
    release = create_release(repository, "v1.0.0")
    deployment = create_deployment(release, staging, Deployment.Status.SUCCEEDED, finished_at=timezone.now())
    Target.objects.create(repository=repository, environment=staging, current_release=release, last_deployment=deployment,
                          auto_deploy_paused=True, paused_reason="Rollback to v1.0.0 (deployment requested by bob)")
    html = dashboard(client, charlie)
    assert f'href="{reverse("repository_detail", args=["shop"])}" title="Rollback to v1.0.0' in html
    assert ">paused after rollback</a>" in html
    assert "<strong>1</strong> paused" in html


def test_it_says_until_when_an_environment_is_frozen(client, charlie, repository, production):
    window = FreezeWindow.objects.create(name="Close", reason="Year-end close", starts_at=timezone.now() - timedelta(hours=1),
                                         ends_at=timezone.now() + timedelta(hours=2))
    window.environments.set([production])
    until = timezone.localtime(window.ends_at).strftime("%Y-%m-%d %H:%M")
    html = dashboard(client, charlie)
    assert f'<span class="tag warn-tag">frozen until {until}' in html  # production's column
    assert "<strong>1</strong> frozen environment" in html


def test_it_shows_the_sha_and_times_both_absolute_and_relative(client, charlie, repository, staging):
    release = create_release(repository, "v1.0.0")
    finished = timezone.now() - timedelta(minutes=3)
    deployment = create_deployment(release, staging, Deployment.Status.SUCCEEDED, finished_at=finished,
                                   started_at=finished - timedelta(seconds=42))
    Target.objects.create(repository=repository, environment=staging, current_release=release, last_deployment=deployment)
    html = dashboard(client, charlie)
    assert f'<code class="sha small">{release.commit_sha[:10]}</code>' in html
    absolute = timezone.localtime(finished).strftime("%Y-%m-%d %H:%M %Z")
    assert f'<time datetime="{finished.isoformat()}">{absolute} · 3 min ago</time>' in html
    assert "took 42 s" in html
    assert "new Intl.DateTimeFormat(undefined" in html  # the browser shows them in the viewer's zone


def test_filters_live_in_the_url_and_the_poll_keeps_them(client, charlie, environments, repository, staging):
    failing = Repository.objects.create(name="billing", url="/srv/git/billing")
    release = create_release(failing, "v1.0.0")
    failed = create_deployment(release, staging, Deployment.Status.FAILED, finished_at=timezone.now())
    Target.objects.create(repository=failing, environment=staging, last_deployment=failed)
    Repository.objects.create(name="billing-archive", url="/srv/git/archive")

    html = dashboard(client, charlie, state="failed")
    assert repository_order(html) == ["billing"]
    assert '<option value="failed" selected>' in html
    assert 'hx-get="/?state=failed"' in html
    assert f'href="{reverse("deployment_detail", args=[failed.pk])}">v1.0.0 failed: see its log' in html
    assert repository_order(dashboard(client, charlie, q="BILL")) == ["billing", "billing-archive"]
    assert 'value="BILL"' in dashboard(client, charlie, q="BILL")
    assert repository_order(dashboard(client, charlie, lifecycle="default", q="shop")) == ["shop"]
    assert repository_order(dashboard(client, charlie, lifecycle="nope")) == []
    assert "No repository matches these filters" in dashboard(client, charlie, lifecycle="nope")
    # The filters of one request stay in it: the querysets the dashboard shares between requests are not
    # narrowed by them.
    assert repository_order(dashboard(client, charlie)) == ["billing", "billing-archive", "shop"]


def test_the_summary_counts_stages_by_state(client, charlie, environments, staging, production):
    for n, status in enumerate([Deployment.Status.FAILED, Deployment.Status.FAILED, Deployment.Status.RUNNING]):
        repository = Repository.objects.create(name=f"service-{n}", url=f"/srv/git/{n}")
        deployment = create_deployment(create_release(repository, "v1.0.0"), staging, status)
        Target.objects.create(repository=repository, environment=staging, last_deployment=deployment)
    html = dashboard(client, charlie)
    assert "<strong>2</strong> failed" in html
    assert "<strong>1</strong> running" in html
    assert "<strong>0</strong> awaiting approval" in html


def test_it_shows_a_page_at_a_time(client, charlie, environments):
    Repository.objects.bulk_create([Repository(name=f"service-{n:03d}", url=f"/srv/git/{n}")
                                    for n in range(DASHBOARD_PAGE_SIZE + 1)])
    first = dashboard(client, charlie)
    assert len(repository_order(first)) == DASHBOARD_PAGE_SIZE
    assert 'rel="next" href="?page=2"' in first
    second = dashboard(client, charlie, page=2)
    assert repository_order(second) == [f"service-{DASHBOARD_PAGE_SIZE:03d}"]
    assert 'rel="prev" href="?"' in second
    assert 'rel="next"' not in second


@pytest.mark.parametrize("page", ["0", "x", "-3"])
def test_a_page_number_that_makes_no_sense_shows_the_first_page(client, charlie, repository, page):
    assert repository_order(dashboard(client, charlie, page=page)) == ["shop"]


def test_the_search_takes_its_text_literally_and_archived_repositories_stay_off(client, charlie, alice, environments):
    for name in ["web_api", "webxapi", "web-api-old"]:
        Repository.objects.create(name=name, url=f"/srv/git/{name}")
    Repository.objects.get(name="web-api-old").archive(by=alice)
    assert repository_order(dashboard(client, charlie, q="B_A")) == ["web_api"]  # "_" is no wildcard
    assert repository_order(dashboard(client, charlie, q="%")) == []
    assert repository_order(dashboard(client, charlie, q="web")) == ["web_api", "webxapi"]


def test_a_repository_in_a_lifecycle_without_stages_is_listed_under_its_lifecycle(client, charlie, environments):
    empty = Lifecycle.objects.create(name="sandbox")
    Repository.objects.create(name="scratch", url="/srv/git/scratch", lifecycle=empty)
    html = dashboard(client, charlie, lifecycle="sandbox")
    assert repository_order(html) == ["scratch"]
    assert 'data-lifecycle="sandbox"' in html
