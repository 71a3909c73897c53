"""The approvals inbox, the change-request page (Approve, Reject, the reason instead of the buttons, live
status) and the navigation count. Requests are created directly; what the page shows is their summary."""

import copy
import hashlib
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection, connections
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from approvals.models import ChangeRequest, Decision
from approvals.navigation import pending_approvals
from pipelines.models import AuditEvent, Deployment, Preview, Release
from tests.conftest import PIPELINE, set_policy, stage_of

NAVIGATION = "approvals.navigation.pending_approvals"


def create_release(repository, version):
    sha = hashlib.sha1(f"{repository.name}/{version}".encode()).hexdigest()
    return Release.objects.create(
        repository=repository, version=version, commit_sha=sha, pipeline_text=PIPELINE, message=f"Release {version}",
        author_name="Dana Developer", author_email="dana@example.com",
    )


def create_deployment(release, environment, status, **fields):
    return Deployment.objects.create(
        release=release, environment=environment, repository=release.repository, status=status,
        trigger=fields.pop("trigger", Deployment.Trigger.MANUAL), **fields,
    )


def commit(n, **fields):
    sha = hashlib.sha1(f"commit {n}".encode()).hexdigest()
    return {
        "sha": sha, "short_sha": sha[:10], "subject": f"Change number {n}", "author_name": "Dana Developer",
        "author_email": "dana@example.com", "committed_at": (timezone.now() - timedelta(hours=n)).isoformat(),
        "url": f"https://git.example.com/shop/commit/{sha}", **fields,
    }


def summary(commits=3, is_rollback=False):
    return {
        "from": {"version": "v1.3.0", "sha": "a" * 40},
        "to": {"version": "v1.4.0", "sha": "b" * 40},
        "first_deployment": False,
        "is_rollback": is_rollback,
        "commits": [commit(n) for n in range(commits)],
        "commit_count": commits,
        "files": [
            {"path": "app/checkout.py", "old_path": None, "added": 42, "removed": 7},
            {"path": "static/logo.png", "old_path": None, "added": None, "removed": None},
            {"path": ".gitops.yml", "old_path": None, "added": 2, "removed": 1},
        ],
        "totals": {"files": 3, "added": 44, "removed": 8},
        "pipeline_path": ".gitops.yml",
        "pipeline_diff": "--- a/.gitops.yml\n+++ b/.gitops.yml\n@@ -3,3 +3,4 @@\n     steps:\n-      - run: ./deploy.sh\n+      - run: ./deploy.sh --canary\n+        timeout: 900\n",
        "truncated": False,
        "earlier_results": [{
            "environment": "staging", "deployment_id": 7, "status": "succeeded",
            "finished_at": (timezone.now() - timedelta(hours=2)).isoformat(),
            "duration_seconds": 14, "running_for_seconds": 7200, "replaced_by": None,
        }],
        "computed_at": timezone.now().isoformat(),
        "error": "",
    }


@pytest.fixture
def make_request(repository, production):
    """A pending change request for a new release held for production, as opening would record it."""
    counter = iter(range(1, 1000))

    def make(requested_by=None, required_approvals=1, **fields):
        release = create_release(repository, f"v1.4.{next(counter)}")
        held = create_deployment(release, production, Deployment.Status.AWAITING_APPROVAL, triggered_by=requested_by)
        fields.setdefault("summary", summary())
        fields.setdefault("expires_at", timezone.now() + timedelta(days=3))
        return ChangeRequest.objects.create(
            deployment=held, repository=repository, environment=production, stage=stage_of(production),
            requested_by=requested_by, required_approvals=required_approvals, **fields,
        )

    return make


@pytest.fixture
def change_request(make_request, alice):
    return make_request(requested_by=alice, author_emails=["dana@example.com"])


@pytest.fixture
def navigation(settings):
    """The navigation count, as settings will register it."""
    templates = copy.deepcopy(settings.TEMPLATES)
    processors = templates[0]["OPTIONS"]["context_processors"]
    if NAVIGATION not in processors:
        processors.append(NAVIGATION)
    settings.TEMPLATES = templates


def page(client, change_request):
    return client.get(reverse("change_request_detail", args=[change_request.pk])).content.decode()


def section(html, title):
    """The HTML of the inbox section whose heading starts with `title`."""
    start = html.index(f"<h2>{title}")
    return html[start:html.index("</section>", start)]


def csrf_client(user):
    """A client that enforces CSRF like a browser session: it must send the token it was given."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_post(client, page_url, url, data):
    client.get(page_url)
    token = client.cookies["csrftoken"].value
    return client.post(url, {**data, "csrfmiddlewaretoken": token}, follow=True)


# --- signing in ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, name, args", [
    ("get", "approvals_inbox", []),
    ("get", "change_request_detail", [1]),
    ("post", "change_request_approve", [1]),
    ("post", "change_request_reject", [1]),
    ("get", "deployment_change_request", [1]),
])
def test_every_page_requires_sign_in(client, db, method, name, args):
    url = reverse(name, args=args)
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={url}"


# --- the inbox -------------------------------------------------------------------------------------


def test_the_inbox_shows_what_waits_on_me_all_pending_and_recently_decided(client, bob, charlie, make_request, alice):
    mine = make_request(requested_by=alice)
    automatic = make_request()
    decided = make_request()
    decided.approve(bob)
    client.force_login(bob)
    html = client.get(reverse("approvals_inbox")).content.decode()

    waiting = section(html, "Waiting on me")
    assert reverse("change_request_detail", args=[mine.pk]) in waiting
    assert reverse("change_request_detail", args=[automatic.pk]) in waiting
    assert reverse("change_request_detail", args=[decided.pk]) not in waiting
    row = waiting[waiting.index(f"#{mine.pk}</a>"):]
    assert "shop" in row and mine.deployment.release.version in row and "production" in row
    assert "alice" in row and "0/1" in row and "just now" in row and "in 2\xa0days" in row
    assert "automatic" in waiting

    assert reverse("change_request_detail", args=[mine.pk]) in section(html, "All pending")
    recent = section(html, "Recently decided")
    assert reverse("change_request_detail", args=[decided.pk]) in recent
    assert "1/1" in recent and "cr-approved" in recent
    assert reverse("change_request_detail", args=[mine.pk]) not in recent

    client.force_login(charlie)  # not an approver: nothing waits on him, but he sees all that is pending
    html = client.get(reverse("approvals_inbox")).content.decode()
    assert "Nothing is waiting on you." in section(html, "Waiting on me")
    assert reverse("change_request_detail", args=[mine.pk]) in section(html, "All pending")


def test_a_request_i_decided_no_longer_waits_on_me(client, bob, make_request):
    two_needed = make_request(required_approvals=2)
    two_needed.approve(bob)
    client.force_login(bob)
    html = client.get(reverse("approvals_inbox")).content.decode()
    assert reverse("change_request_detail", args=[two_needed.pk]) not in section(html, "Waiting on me")
    assert "1/2" in section(html, "All pending")


def test_the_inbox_makes_the_same_number_of_queries_for_one_or_ten_requests(
    client, bob, make_request, django_user_model, approvers, navigation, django_assert_max_num_queries
):
    others = [django_user_model.objects.create_user(f"approver{n}", f"a{n}@example.com") for n in range(3)]
    for user in others:
        user.groups.add(approvers)

    def add_requests(count):
        for n in range(count):
            pending = make_request(required_approvals=3, summary=summary(commits=20))
            pending.approve(others[0])
            pending.approve(others[1])
            closed = make_request()
            closed.reject(others[2], "not during the sale")

    client.force_login(bob)
    add_requests(1)
    with CaptureQueriesContext(connection) as one:
        response = client.get(reverse("approvals_inbox"))
    assert response.status_code == 200
    assert len(one) <= 10  # session, user, the three sections, the navigation count (and the freeze banner's)

    add_requests(9)
    with django_assert_max_num_queries(len(one)):
        html = client.get(reverse("approvals_inbox")).content.decode()
    assert section(html, "Waiting on me").count("2/3") == 10
    assert section(html, "Recently decided").count("cr-rejected") == 10


# --- the navigation count ----------------------------------------------------------------------------


def test_the_navigation_counts_what_waits_on_me_in_one_query(bob, make_request, django_assert_num_queries):
    make_request()
    make_request().approve(bob)
    request = RequestFactory().get("/")
    request.user = bob
    count = pending_approvals(request)["approvals_waiting_count"]
    with django_assert_num_queries(1):
        assert count() == 1
        assert count() == 1  # asked twice in one page, counted once


def test_the_navigation_asks_nothing_for_anonymous_visitors(db, django_assert_num_queries):
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    with django_assert_num_queries(0):
        assert pending_approvals(request) == {}


def test_the_navigation_links_approvals_with_the_count_and_audit(client, bob, charlie, make_request, navigation):
    change_request = make_request()
    client.force_login(bob)
    html = client.get(reverse("dashboard")).content.decode()
    # The page links Approvals and asks for its count once loaded (the count is not computed for the page).
    assert nav_count(html) is None and 'hx-trigger="load, every 10s' in html
    assert f'<a href="{reverse("audit_log")}">Audit</a>' in html
    badge = badge_html(client)
    assert nav_count(badge) == "1"
    assert 'aria-label="Approvals, 1 waiting on you"' in badge

    change_request.approve(bob)
    badge = badge_html(client)
    assert f'href="{reverse("approvals_inbox")}"' in badge and nav_count(badge) is None

    client.force_login(charlie)
    assert "nav-count" not in badge_html(client)


def badge_html(client):
    """The navigation's Approvals link as the page asks for it once loaded, with the count."""
    return client.get(reverse("approvals_navigation_badge"), headers={"HX-Request": "true"}).content.decode()


def nav_count(html):
    """The number on the navigation's Approvals link, or None without one."""
    found = re.search(r'id="approvals-nav"[^>]*>Approvals(?: <span class="nav-count" title="Waiting on you">(\d+)</span>)?</a>', html)
    assert found, "no Approvals link in the navigation"
    return found.group(1)


def test_only_what_i_may_decide_waits_on_me_and_counts_on_the_badge(client, bob, make_request, production, navigation):
    decidable = make_request(author_emails=["dana@example.com"])
    with_my_commits = make_request(author_emails=["bob@example.com"])
    expired = make_request(expires_at=timezone.now() - timedelta(minutes=1))
    unreadable = make_request(summary={**summary(), "error": "git fetch failed"})
    previewing = make_request()
    Preview.objects.create(deployment=previewing.deployment, number=1, status=Preview.Status.RUNNING)
    client.force_login(bob)

    html = client.get(reverse("approvals_inbox")).content.decode()

    waiting, pending = section(html, "Waiting on me"), section(html, "All pending")
    assert reverse("change_request_detail", args=[decidable.pk]) in waiting
    for undecidable in (with_my_commits, expired, unreadable, previewing):
        assert undecidable.refusal_reason(bob) is not None
        assert reverse("change_request_detail", args=[undecidable.pk]) not in waiting
        assert reverse("change_request_detail", args=[undecidable.pk]) in pending  # still listed for everyone
    assert nav_count(badge_html(client)) == "1"

    set_policy(production, block_commit_authors=False)  # then their own commits do not stop them
    assert nav_count(badge_html(client)) == "3"


def test_the_badge_refreshes_from_a_fragment_that_follows_decisions(client, bob, make_request, navigation):
    change_request = make_request()
    client.force_login(bob)
    page_html = client.get(reverse("dashboard")).content.decode()
    badge_url = reverse("approvals_navigation_badge")
    assert f'hx-get="{badge_url}"' in page_html and 'hx-trigger="load, every 10s' in page_html

    assert nav_count(client.get(badge_url, headers={"HX-Request": "true"}).content.decode()) == "1"
    change_request.approve(bob)  # in another tab: this page's badge learns it from the poll
    fragment = client.get(badge_url, headers={"HX-Request": "true"}).content.decode()
    assert nav_count(fragment) is None and "<html" not in fragment

    client.logout()
    response = client.get(badge_url, headers={"HX-Request": "true"})
    assert response.status_code == 204 and response.content == b""


# --- the change-request page -------------------------------------------------------------------------


def test_the_page_shows_the_release_the_request_and_what_changes(client, bob, change_request):
    client.force_login(bob)
    html = page(client, change_request)
    release = change_request.deployment.release

    assert f"Change request #{change_request.pk}: shop {release.version} → production" in html
    assert release.short_sha in html
    assert "cr-pending" in html and "<strong>0</strong> of 1 approval" in html
    assert "alice" in html and "in 2\xa0days" in html
    # the commits, each with its subject, author and a link on its short sha
    first = commit(0)
    assert f'<a href="{first["url"]}" rel="noopener"><code>{first["short_sha"]}</code></a>' in html
    assert "Change number 0" in html and "Change number 2" in html and "Dana Developer" in html
    assert "From <strong>v1.3.0</strong>" in html
    # the files with their lines added and removed, a binary one without
    assert "app/checkout.py" in html and "+42" in html and "−7" in html
    assert "binary" in html
    # the pipeline file's difference, line by line
    assert ".gitops.yml changed" in html
    assert '<span class="diff-add">+      - run: ./deploy.sh --canary</span>' in html
    assert '<span class="diff-del">-      - run: ./deploy.sh</span>' in html
    # how the release fared before
    assert "Succeeded in <strong>staging</strong>" in html
    assert "2 h ago" in html and ", ran 14 s" in html and "running there for 2 h 00 min" in html
    assert "No one has decided yet." in html


def test_a_rollback_shows_the_commits_it_removes(client, bob, make_request):
    # Stored before summaries said their direction: is_rollback alone means "commits" are those that leave.
    rollback = make_request(summary=summary(is_rollback=True))
    client.force_login(bob)
    html = page(client, rollback)
    assert "This change rolls back 3 commits" in html and ">rolls back 3 commits</span>" in html
    assert all(commit(n)["subject"] in section_of(html, "rolled-back") for n in range(3))
    assert 'id="added"' not in html


def section_of(html, section_id):
    """The HTML of the page's section with this id."""
    start = html.index(f'id="{section_id}"')
    return html[start:html.index("</section>", start)]


def test_a_backport_over_a_newer_release_says_what_it_rolls_back_what_it_adds_and_the_files_as_they_become(
    client, bob, repository, origin, production, make_release, alice
):
    from approvals.opening import open_change_request
    from pipelines import promotion
    from tests.test_change_summary import backport_over_newer, now_running

    newer, older, ten, backport, _ = backport_over_newer(origin, repository, make_release)
    now_running(repository, production, newer)
    change_request = open_change_request(promotion.promote(older, production, by=alice))
    client.force_login(bob)

    html = page(client, change_request)

    assert ">rolls back 10 commits</span>" in html, "said in the title"
    rolled_back = section_of(html, "rolled-back")
    assert "This change rolls back 10 commits" in rolled_back
    assert "v8.5.3 and v8.6.1 have diverged" in rolled_back
    assert [sha[:10] for sha in ten] == re.findall(r"<code>([0-9a-f]{10})</code></td>", rolled_back)
    assert all(f"Feature {n}<" in rolled_back for n in range(1, 11))
    added = section_of(html, "added")
    assert "It adds 1 commit that v8.6.1 does not have" in added and "Backport fix" in added
    assert backport[:10] in added and "Feature 1<" not in added
    files = section_of(html, "files")
    assert "Files as they become with v8.5.3" in files and "from v8.6.1, which runs in production now" in files
    row = re.search(r"<code>features/feature_7\.py</code></td>\s*<td class=\"num added\">\+(\d+)</td>\s*"
                    r"<td class=\"num removed\">−(\d+)</td>", files)
    assert row and row.groups() == ("0", "1"), "the feature goes"


def test_a_commit_without_a_web_link_shows_its_sha_only(client, bob, make_request):
    unlinked = make_request(summary={**summary(commits=0), "commits": [commit(1, url=""), commit(2, url="javascript:alert(1)")]})
    client.force_login(bob)
    html = page(client, unlinked)
    assert f'<code>{commit(1)["short_sha"]}</code>' in html
    assert "javascript:" not in html


def test_a_request_without_a_summary_says_so(client, bob, make_request):
    bare = make_request(summary={})
    client.force_login(bob)
    assert "No summary of the change was recorded" in page(client, bare)


def test_the_page_shows_the_decisions_so_far(client, bob, make_request, django_user_model, approvers):
    carol = django_user_model.objects.create_user("carol", "carol@example.com")
    carol.groups.add(approvers)
    two_needed = make_request(required_approvals=2)
    two_needed.approve(carol, "looks good, canary first")
    client.force_login(bob)
    html = page(client, two_needed)
    assert "carol" in html and "verdict-approve" in html and "looks good, canary first" in html
    assert "<strong>1</strong> of 2 approvals" in html


def test_the_page_makes_the_same_number_of_queries_however_many_commits_and_decisions(
    client, bob, make_request, django_user_model, approvers, navigation, django_assert_max_num_queries
):
    small = make_request(required_approvals=5, summary=summary(commits=1))
    small.approve(_approver(django_user_model, approvers, 0))
    client.force_login(bob)
    with CaptureQueriesContext(connection) as one:
        page(client, small)
    assert len(one) <= 12  # session, user, request, decisions, the two policy checks, the preview, navigation (and freezes)

    large = make_request(required_approvals=5, summary=summary(commits=200))
    for n in range(4):
        large.approve(_approver(django_user_model, approvers, n + 1), f"comment {n}")
    with django_assert_max_num_queries(len(one)):
        html = page(client, large)
    assert html.count("Change number") == 200 and "comment 3" in html


def _approver(django_user_model, approvers, n):
    user = django_user_model.objects.create_user(f"approver{n}", f"approver{n}@example.com")
    user.groups.add(approvers)
    return user


def test_an_unknown_request_is_404(client, bob, db):
    client.force_login(bob)
    assert client.get(reverse("change_request_detail", args=[999])).status_code == 404


# --- who may decide: the buttons or the reason ---------------------------------------------------------


def test_an_eligible_approver_gets_approve_and_reject_with_a_required_comment(client, bob, change_request):
    client.force_login(bob)
    html = page(client, change_request)
    assert f'action="{reverse("change_request_approve", args=[change_request.pk])}"' in html
    assert f'action="{reverse("change_request_reject", args=[change_request.pk])}"' in html
    assert '<textarea id="reject-comment" name="comment" rows="3" required>' in html
    assert '<textarea id="approve-comment" name="comment" rows="3">' in html


def test_someone_outside_the_approver_group_sees_the_reason_instead_of_the_buttons(client, charlie, change_request):
    client.force_login(charlie)
    html = page(client, change_request)
    assert "Only members of &#x27;approvers&#x27; may decide on changes to production." in html
    assert reverse("change_request_approve", args=[change_request.pk]) not in html
    assert ">Reject</button>" not in html


def test_the_requester_sees_that_someone_else_has_to_approve(client, alice, approvers, change_request):
    alice.groups.add(approvers)
    client.force_login(alice)
    html = page(client, change_request)
    assert "You requested this change, so someone else has to approve it." in html
    assert ">Approve</button>" not in html


def test_an_author_of_a_commit_sees_that_someone_else_has_to_approve(client, django_user_model, approvers, change_request):
    dana = django_user_model.objects.create_user("dana", "Dana@example.com")
    dana.groups.add(approvers)
    client.force_login(dana)
    html = page(client, change_request)
    assert "You authored or committed a commit in this change, so someone else has to approve it." in html
    assert ">Approve</button>" not in html


# --- deciding through the page, CSRF on ------------------------------------------------------------


def test_an_approver_approves_through_the_page_and_the_deployment_is_released(bob, change_request):
    client = csrf_client(bob)
    url = reverse("change_request_detail", args=[change_request.pk])
    response = csrf_post(client, url, reverse("change_request_approve", args=[change_request.pk]), {"comment": "ship it"})

    assert response.redirect_chain == [(url, 302)]
    assert f"You approved change request #{change_request.pk}" in response.content.decode()
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.APPROVED
    assert change_request.deployment.status == Deployment.Status.QUEUED
    decision = Decision.objects.get()
    assert decision.user == bob and decision.verdict == Decision.Verdict.APPROVE and decision.comment == "ship it"
    assert AuditEvent.objects.filter(action="change_request.approved_by", actor=bob).exists()


def test_a_decision_without_the_csrf_token_is_refused(bob, change_request):
    client = csrf_client(bob)
    assert client.post(reverse("change_request_approve", args=[change_request.pk])).status_code == 403
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.PENDING and not Decision.objects.exists()


def test_a_second_approve_click_changes_nothing(bob, make_request):
    two_needed = make_request(required_approvals=2)
    client = csrf_client(bob)
    url = reverse("change_request_detail", args=[two_needed.pk])
    approve = reverse("change_request_approve", args=[two_needed.pk])
    csrf_post(client, url, approve, {})
    events = AuditEvent.objects.count()

    response = csrf_post(client, url, approve, {})
    html = response.content.decode()
    assert "You have already decided on this change request. Nothing was changed." in html
    assert Decision.objects.count() == 1 and AuditEvent.objects.count() == events
    two_needed.refresh_from_db()
    assert two_needed.status == ChangeRequest.Status.PENDING
    assert two_needed.deployment.status == Deployment.Status.AWAITING_APPROVAL


def test_a_second_click_after_the_request_closed_changes_nothing(bob, change_request):
    client = csrf_client(bob)
    url = reverse("change_request_detail", args=[change_request.pk])
    approve = reverse("change_request_approve", args=[change_request.pk])
    csrf_post(client, url, approve, {})
    response = csrf_post(client, url, approve, {})
    assert "This change request is already approved." in response.content.decode()
    assert Decision.objects.count() == 1
    assert Deployment.objects.get().status == Deployment.Status.QUEUED


def test_rejecting_without_a_comment_is_refused(bob, change_request):
    client = csrf_client(bob)
    url = reverse("change_request_detail", args=[change_request.pk])
    response = csrf_post(client, url, reverse("change_request_reject", args=[change_request.pk]), {"comment": "   "})
    assert "Say why you reject the change: a comment is required." in response.content.decode()
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.PENDING and not Decision.objects.exists()
    assert change_request.deployment.status == Deployment.Status.AWAITING_APPROVAL


def test_rejecting_with_a_comment_ends_the_request_and_the_deployment(bob, change_request):
    client = csrf_client(bob)
    url = reverse("change_request_detail", args=[change_request.pk])
    response = csrf_post(client, url, reverse("change_request_reject", args=[change_request.pk]), {"comment": "not during the sale"})
    html = response.content.decode()
    assert f"You rejected change request #{change_request.pk}" in html
    assert "not during the sale" in html and "verdict-reject" in html
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.REJECTED
    assert change_request.deployment.status == Deployment.Status.REJECTED
    assert AuditEvent.objects.filter(action="change_request.rejected_by", actor=bob,
                                     details__comment="not during the sale").exists()


def test_someone_who_may_not_decide_is_told_why_and_nothing_changes(client, charlie, change_request):
    client.force_login(charlie)
    response = client.post(reverse("change_request_approve", args=[change_request.pk]), follow=True)
    assert "Only members of &#x27;approvers&#x27; may decide" in response.content.decode()
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.PENDING and not Decision.objects.exists()


def test_deciding_refuses_get(client, bob, change_request):
    client.force_login(bob)
    assert client.get(reverse("change_request_approve", args=[change_request.pk])).status_code == 405


# --- live status ---------------------------------------------------------------------------------------


def test_a_pending_request_polls_its_status_every_3_seconds(client, bob, change_request):
    client.force_login(bob)
    url = reverse("change_request_detail", args=[change_request.pk])
    assert f'id="cr-status" class="card" hx-get="{url}" hx-trigger="every 3s" hx-swap="outerHTML"' in page(client, change_request)

    response = client.get(url, headers={"HX-Request": "true"})
    fragment = response.content.decode()
    assert response.status_code == 200
    assert fragment.lstrip().startswith('<section id="cr-status"')
    assert "<html" not in fragment and 'id="decide"' not in fragment


def test_the_poll_stops_with_286_once_the_request_is_closed_and_replaces_the_buttons(client, bob, change_request):
    client.force_login(bob)
    url = reverse("change_request_detail", args=[change_request.pk])
    change_request.approve(bob, "ship it")

    response = client.get(url, headers={"HX-Request": "true"})
    fragment = response.content.decode()
    assert response.status_code == 286
    assert "hx-trigger" not in fragment
    assert "cr-approved" in fragment and "ship it" in fragment
    assert '<section id="decide" class="card" hx-swap-oob="true">' in fragment
    assert "This change request is already approved." in fragment

    assert "hx-trigger" not in page(client, change_request).split("<main", 1)[1]  # (the navigation's badge polls)


# --- from the deployment to its request ------------------------------------------------------------


def test_a_held_deployment_leads_to_its_change_request(client, charlie, change_request, repository, production):
    client.force_login(charlie)
    response = client.get(reverse("deployment_change_request", args=[change_request.deployment_id]))
    assert response.status_code == 302 and response.url == reverse("change_request_detail", args=[change_request.pk])

    html = client.get(reverse("deployment_detail", args=[change_request.deployment_id])).content.decode()
    assert reverse("deployment_change_request", args=[change_request.deployment_id]) in html

    orphan = create_deployment(create_release(repository, "v9.9.9"), production, Deployment.Status.AWAITING_APPROVAL)
    response = client.get(reverse("deployment_change_request", args=[orphan.pk]), follow=True)
    assert f"No change request has been opened for deployment #{orphan.pk} yet." in response.content.decode()


# --- live status in a real browser ---------------------------------------------------------------------


@pytest.fixture
def browser_page(monkeypatch):
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM, CHROMIUM_ARGS

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()
            connections.close_all()  # or PostgreSQL cannot drop the test database


@pytest.mark.browser
def test_a_decision_made_elsewhere_shows_up_without_a_reload_and_the_buttons_go(live_server, browser_page, bob, change_request, django_user_model, approvers):
    from playwright.sync_api import expect

    carol = _approver(django_user_model, approvers, 99)
    page = browser_page
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{live_server.url}{reverse('change_request_detail', args=[change_request.pk])}")
    page.locator("#approve-comment").fill("half-typed comment")
    expect(page.get_by_role("button", name="Approve")).to_be_visible()

    page.wait_for_timeout(3500)  # a poll while pending keeps what bob typed
    expect(page.locator("#approve-comment")).to_have_value("half-typed comment")

    change_request.approve(carol, "approved from my phone")
    expect(page.locator("#cr-status .cr-approved")).to_be_visible(timeout=10_000)
    expect(page.locator("#cr-status")).to_contain_text("approved from my phone")
    expect(page.locator("#decide")).to_contain_text("This change request is already approved.")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    assert page.locator("#cr-status").get_attribute("hx-trigger") is None  # polling stopped


# --- who decided, on the deployment page -------------------------------------------------------------


def test_the_deployment_page_names_who_approved_when_and_why_with_a_link_to_the_request(client, bob, charlie, make_request, alice):
    change_request = make_request(requested_by=alice)
    change_request.approve(bob, "checked the plan")
    client.force_login(charlie)

    html = client.get(reverse("deployment_detail", args=[change_request.deployment_id])).content.decode()

    facts = html[html.index('<dl class="facts">'):html.index("</dl>")]
    assert f'<a href="{reverse("change_request_detail", args=[change_request.pk])}">#{change_request.pk}</a>' in facts
    assert "approved" in facts and "requested by alice" in facts
    assert "<dt>Approved by</dt>" in facts and "bob" in facts and "“checked the plan”" in facts and "<time" in facts


def test_a_rejected_deployment_shows_who_rejected_and_why_not_an_error(client, bob, charlie, make_request):
    change_request = make_request()
    change_request.reject(bob, "not during the sale")
    client.force_login(charlie)

    html = client.get(reverse("deployment_detail", args=[change_request.deployment_id])).content.decode()

    facts = html[html.index('<dl class="facts">'):html.index("</dl>")]
    assert "<dt>Rejected by</dt>" in facts and "“not during the sale”" in facts
    assert "<dt>Why it was rejected</dt>" in facts and "Rejected by bob: not during the sale" in facts
    assert "error-box" not in facts and "<dt>Error</dt>" not in facts


def test_the_release_page_names_who_decided_on_each_deployment_in_constant_queries(
    client, bob, charlie, make_request, django_user_model, approvers
):
    first = make_request()
    first.reject(bob, "not during the sale")
    client.force_login(charlie)
    release = first.deployment.release
    url = reverse("release_detail", args=[release.repository.name, release.version])

    with CaptureQueriesContext(connection) as one:
        html = client.get(url).content.decode()
    assert f'href="{reverse("change_request_detail", args=[first.pk])}">change request #{first.pk}</a>' in html
    assert "rejected by bob" in html and "“not during the sale”" in html

    # More held deployments of the same release, each decided: the page asks no more queries.
    for n in range(3):
        other = django_user_model.objects.create_user(f"approver{n}", f"a{n}@example.com")
        other.groups.add(approvers)
        held = Deployment.objects.create(release=release, environment=first.environment, repository=release.repository,
                                         status=Deployment.Status.AWAITING_APPROVAL, trigger=Deployment.Trigger.MANUAL)
        ChangeRequest.objects.create(deployment=held, repository=release.repository, environment=first.environment,
                                     stage=first.stage, required_approvals=1, summary=summary()).approve(other, "fine")
    with CaptureQueriesContext(connection) as four:
        html = client.get(url).content.decode()
    assert html.count("approved by approver") == 3
    assert len(four) == len(one)
