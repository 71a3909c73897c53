"""The inbox shows the newest requests of each section, says how many there are, and all of them on asking."""

from django.urls import reverse

from approvals.views import INBOX_ROWS
from tests import test_views_approvals
from tests.test_views_approvals import section

make_request = test_views_approvals.make_request  # the fixture: a pending change request held for production


def test_the_inbox_shows_the_newest_requests_and_counts_them_all(client, bob, make_request):
    requests = [make_request() for _ in range(INBOX_ROWS + 1)]
    client.force_login(bob)
    html = client.get(reverse("approvals_inbox")).content.decode()
    for title in ("Waiting on me", "All pending"):
        part = section(html, title)
        assert f'<span class="count-pill">{INBOX_ROWS + 1}</span>' in part
        assert f"The newest {INBOX_ROWS} of {INBOX_ROWS + 1}." in part
        assert reverse("change_request_detail", args=[requests[-1].pk]) in part  # the newest
        assert reverse("change_request_detail", args=[requests[0].pk]) not in part  # the oldest, beyond the first rows

    everything = client.get(reverse("approvals_inbox"), {"all": "1"}).content.decode()
    for title in ("Waiting on me", "All pending"):
        part = section(everything, title)
        assert reverse("change_request_detail", args=[requests[0].pk]) in part
        assert "The newest" not in part
