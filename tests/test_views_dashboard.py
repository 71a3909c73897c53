import hashlib
import re
from datetime import timedelta
from html import unescape as html_unescape
from html.parser import HTMLParser

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from pipelines.dashboard import DASHBOARD_PAGE_SIZE
from pipelines.models import Deployment, Environment, Lifecycle, Release, Repository, Target
from tests.conftest import PIPELINE, add_stage


def create_release(repository, version, **fields):
    sha = hashlib.sha1(f"{repository.name}/{version}".encode()).hexdigest()
    return Release.objects.create(repository=repository, version=version, commit_sha=sha, pipeline_text=PIPELINE, **fields)


def create_deployment(release, environment, status, **fields):
    return Deployment.objects.create(
        release=release, environment=environment, repository=release.repository, status=status,
        trigger=Deployment.Trigger.AUTO, **fields,
    )


def populate(names, environments):
    """One repository per name, each with three releases deployed to every environment and a Target per pair."""
    for name in names:
        repository = Repository.objects.create(name=name, url=f"/srv/git/{name}")
        releases = [create_release(repository, f"v1.{i}.0") for i in range(3)]
        for environment in environments:
            for release in releases:
                last = create_deployment(release, environment, Deployment.Status.SUCCEEDED, finished_at=timezone.now())
            Target.objects.create(repository=repository, environment=environment, current_release=releases[-1], last_deployment=last)


@pytest.fixture
def deployed(repository, staging, production):
    """shop runs v1.0.0 in staging, where v1.1.0 then failed; production never saw a deployment."""
    v100, v110 = create_release(repository, "v1.0.0"), create_release(repository, "v1.1.0")
    create_deployment(v100, staging, Deployment.Status.SUCCEEDED, finished_at=timezone.now() - timedelta(hours=2))
    failed = create_deployment(v110, staging, Deployment.Status.FAILED, finished_at=timezone.now() - timedelta(minutes=3))
    Target.objects.create(repository=repository, environment=staging, current_release=v100, last_deployment=failed)
    return failed


def test_healthz_answers_ok_without_login(client, db):
    response = client.get(reverse("health"))
    assert response.status_code == 200
    assert response.content == b"ok"


@pytest.mark.parametrize("method, name, args", [
    ("get", "dashboard", []),
    ("get", "repository_detail", ["shop"]),
    ("get", "release_detail", ["shop", "v1.0.0"]),
    ("get", "deployment_detail", [1]),
    ("get", "deployment_log", [1]),
    ("post", "release_deploy", [1]),
    ("post", "deployment_cancel", [1]),
    ("post", "deployment_retry", [1]),
    ("post", "target_pause", ["shop", "staging"]),
    ("post", "target_resume", ["shop", "staging"]),
])
def test_it_sends_anonymous_visitors_to_sign_in(client, db, method, name, args):
    url = reverse(name, args=args)
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={url}"


def test_login_page_renders_and_signs_in(client, charlie):
    assert b'name="password"' in client.get(reverse("login")).content
    response = client.post(reverse("login"), {"username": "charlie", "password": "password"})
    assert response.status_code == 302
    assert response.url == reverse("dashboard")


def test_it_shows_what_runs_where(client, charlie, deployed, repository):
    client.force_login(charlie)
    response = client.get(reverse("dashboard"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<th>staging</th>" in html
    assert "<th>production <span" in html  # with its "approval" tag
    assert reverse("repository_detail", args=["shop"]) in html
    # current version, then the last deployment: its status, its link, its release and its age
    assert "v1.0.0" in html
    assert 'class="badge status-failed"' in html
    assert reverse("deployment_detail", args=[deployed.pk]) in html
    assert "v1.1.0" in html
    assert "3 min ago" in html
    assert "not yet deployed" in html  # production has no Target yet


def test_it_marks_paused_targets_failing_and_disabled_repositories(client, charlie, deployed, repository, staging):
    Target.objects.filter(repository=repository, environment=staging).update(auto_deploy_paused=True, paused_reason="db migration")
    Repository.objects.filter(pk=repository.pk).update(enabled=False, last_error="git ls-remote failed: repository not found")
    client.force_login(charlie)
    html = client.get(reverse("dashboard")).content.decode()
    assert "auto-deploy paused" in html
    assert "db migration" in html
    assert "disabled" in html
    assert 'class="error-text small"' in html
    assert "git ls-remote failed: repository not found" in html


def test_what_a_tag_an_error_or_a_pause_reason_says_is_shown_as_text_not_markup(client, charlie, repository, staging):
    # Git allows <, >, & and " in tag names; errors and reasons quote what a git host or a person wrote.
    release = create_release(repository, 'v1<b>"&amp;')
    last = create_deployment(release, staging, Deployment.Status.FAILED, finished_at=timezone.now())
    Target.objects.create(repository=repository, environment=staging, current_release=release, last_deployment=last,
                          auto_deploy_paused=True, paused_reason="Rollback by <i>eve</i>")
    Repository.objects.filter(pk=repository.pk).update(last_error="fatal: <script>alert(1)</script>")
    client.force_login(charlie)
    html = client.get(reverse("dashboard")).content.decode()
    assert "<b>" not in html and "<i>eve" not in html and "<script>alert" not in html
    assert ">v1&lt;b&gt;&quot;&amp;amp;</a>" in html
    assert "Rollback by &lt;i&gt;eve&lt;/i&gt;" in html
    assert "fatal: &lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_staff_see_the_admin_link_and_others_do_not(client, alice, charlie, db):
    client.force_login(charlie)
    assert reverse("admin:index") not in client.get(reverse("dashboard")).content.decode()
    client.force_login(alice)
    assert reverse("admin:index") in client.get(reverse("dashboard")).content.decode()


def test_the_page_carries_csrf_for_htmx_and_signs_out_by_post(client, charlie, db):
    client.force_login(charlie)
    html = client.get(reverse("dashboard")).content.decode()
    assert """hx-headers='{"x-csrftoken": \"""" in html
    assert f'method="post" action="{reverse("logout")}"' in html
    assert "htmx-2.min.js" in html


def test_the_grid_polls_and_htmx_gets_only_the_grid(client, charlie, deployed):
    client.force_login(charlie)
    page = client.get(reverse("dashboard")).content.decode()
    assert 'id="grid" hx-get="/" hx-trigger="every 5s"' in page

    fragment = client.get(reverse("dashboard"), headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<div id="grid"')
    assert "<html" not in fragment
    assert "v1.0.0" in fragment


def test_it_makes_the_same_number_of_queries_for_one_or_twelve_repositories(client, charlie, environments, django_assert_max_num_queries):
    client.force_login(charlie)
    populate(["service-00"], environments)
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("dashboard"))

    assert len(one) <= 8  # today: session, user, environments, targets (with their releases), repositories
    populate([f"service-{n:02d}" for n in range(1, 12)], environments)
    with django_assert_max_num_queries(len(one)):
        response = client.get(reverse("dashboard"))
    assert response.content.decode().count('class="version" href') == 12 * 2
    with django_assert_max_num_queries(len(one)):
        client.get(reverse("dashboard"), headers={"HX-Request": "true"})


class DashboardGrid(HTMLParser):
    """What the dashboard shows per lifecycle group: its column headers, and each repository's row with its
    number of target cells. `groups` maps a lifecycle's name to {"headers": [...], "rows": {name: cells}}."""

    def __init__(self, html):
        super().__init__()
        self.groups, self.group, self.part, self.row, self.header = {}, None, None, None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "lifecycle-group" in attrs.get("class", "").split():
            self.group = self.groups.setdefault(attrs["data-lifecycle"], {"headers": [], "rows": {}})
        elif self.group is None:
            return
        elif tag in ("thead", "tbody"):
            self.part = tag
        elif tag == "th" and self.part == "thead":
            self.header = []
        elif tag == "a" and attrs.get("class") == "repo-name":
            self.row = "?"
        elif tag == "td" and "target-cell" in attrs.get("class", "").split():
            self.group["rows"][self.row] += 1

    def handle_data(self, data):
        if self.header is not None:
            self.header.append(data)
        elif self.row == "?":
            self.row = data.strip()
            self.group["rows"][self.row] = 0

    def handle_endtag(self, tag):
        if tag == "th" and self.header is not None:
            self.group["headers"].append("".join(self.header).split()[0])
            self.header = None
        elif tag == "section":
            self.group = None


LIFECYCLES = {  # name: the environments of its stages, in order; production in `regulated` needs approval
    "fast": ["staging", "production"],
    "internal": ["dev", "qa"],
    "classic": ["dev", "staging", "production"],
    "tested": ["staging", "qa", "uat", "production"],
    "regulated": ["dev", "staging", "qa", "uat", "preprod", "production"],
}


def populate_lifecycle(lifecycle, names):
    """Repositories following `lifecycle`, made in bulk: each with one release that succeeded in every
    stage of it (or waits for approval where the stage holds deployments), and a Target per stage."""
    stages = list(lifecycle.stages.select_related("environment").order_by("position"))
    repositories = Repository.objects.bulk_create(
        [Repository(name=name, url=f"/srv/git/{name}", lifecycle=lifecycle) for name in names])
    releases = Release.objects.bulk_create([
        Release(repository=r, version="v2.0.0", commit_sha=hashlib.sha1(r.name.encode()).hexdigest(), pipeline_text=PIPELINE)
        for r in repositories
    ])
    now = timezone.now()
    pairs = [(release, stage) for release in releases for stage in stages]
    deployments = Deployment.objects.bulk_create([
        Deployment(release=release, environment=stage.environment, repository=release.repository,
                   status=Deployment.Status.AWAITING_APPROVAL if stage.requires_approval else Deployment.Status.SUCCEEDED,
                   trigger=Deployment.Trigger.AUTO, finished_at=None if stage.requires_approval else now)
        for release, stage in pairs
    ])
    Target.objects.bulk_create([
        Target(repository=release.repository, environment=stage.environment, last_deployment=deployment,
               current_release=None if stage.requires_approval else release)
        for (release, stage), deployment in zip(pairs, deployments)
    ])


def test_queries_stay_constant_with_500_repositories_across_5_lifecycles(client, charlie, approvers):
    environments = {name: Environment.objects.create(name=name, position=position) for position, name in
                    enumerate(["dev", "staging", "qa", "uat", "preprod", "production"], start=1)}
    lifecycles = {}
    for name, stage_names in LIFECYCLES.items():
        lifecycles[name] = Lifecycle.objects.create(name=name)
        for environment in stage_names:
            held = name == "regulated" and environment == "production"
            add_stage(lifecycles[name], environments[environment], approver_group=approvers if held else None)
    # The baseline: two repositories, one of them with a deployment waiting for approval (its notes' query).
    populate_lifecycle(lifecycles["fast"], ["fast-000"])
    populate_lifecycle(lifecycles["regulated"], ["regulated-000"])
    client.force_login(charlie)
    with CaptureQueriesContext(connection) as one_page:
        assert client.get(reverse("dashboard")).status_code == 200
    with CaptureQueriesContext(connection) as one_poll:
        assert client.get(reverse("dashboard"), headers={"HX-Request": "true"}).status_code == 200
    assert len(one_page) <= 10
    for name in LIFECYCLES:
        first = 1 if name in ("fast", "regulated") else 0
        populate_lifecycle(lifecycles[name], [f"{name}-{n:03d}" for n in range(first, 100)])
    assert Repository.objects.count() == 500

    with CaptureQueriesContext(connection) as many_poll:
        poll = client.get(reverse("dashboard"), headers={"HX-Request": "true"})
    assert len(many_poll) == len(one_poll), [q["sql"] for q in many_poll.captured_queries]
    # Waiting for approval needs someone: regulated's 100 repositories fill the first two pages.
    assert set(DashboardGrid(poll.content.decode()).groups) == {"regulated"}

    # Every page costs the baseline's queries; together the pages show each repository once.
    seen = {name: {"headers": None, "rows": {}} for name in LIFECYCLES}
    url, pages, html = reverse("dashboard"), 0, ""
    while url:
        with CaptureQueriesContext(connection) as many_page:
            page = client.get(url).content.decode()
        # At most: a page without a waiting deployment skips the query about change requests.
        assert len(many_page) <= len(one_page), [q["sql"] for q in many_page.captured_queries]
        pages, html = pages + 1, html + page
        for name, group in DashboardGrid(page).groups.items():
            assert seen[name]["headers"] in (None, group["headers"])
            seen[name]["headers"] = group["headers"]
            assert not set(seen[name]["rows"]) & set(group["rows"])
            seen[name]["rows"].update(group["rows"])
        following = re.search(r'rel="next" href="([^"]+)"', page)
        url = reverse("dashboard") + html_unescape(following[1]) if following else None
    assert pages == 500 // DASHBOARD_PAGE_SIZE
    for name, stage_names in LIFECYCLES.items():
        # Its own stages head its table, in its order, and no stage of another lifecycle does.
        assert seen[name]["headers"] == ["Repository", *stage_names]
        # Each of its 100 repositories, and only those, with one cell per stage.
        assert seen[name]["rows"] == {f"{name}-{n:03d}": len(stage_names) for n in range(100)}
    assert html.count("status-awaiting_approval") == 100  # regulated's production holds; nowhere else
    assert html.count(">waits for approval<") == 100  # made in bulk: no change request was opened
    assert html.count('class="version" href') == sum(100 * len(s) for s in LIFECYCLES.values()) - 100
