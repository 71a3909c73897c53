"""Cancel in a real browser, on the page of each kind of run: the confirmation says what will happen, nothing is
sent when it is declined, and once accepted the page says the run was cancelled and offers no Cancel again
(the build's section and the preview's are polled partials; the check's page polls whole)."""

import pytest
from playwright.sync_api import expect

from tests.conftest import check_page, sign_in
from tests.test_cancel_every_kind import KINDS, fresh, marker, named, page_of, queued  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_asks_first_then_cancels_and_the_page_says_so(kind, live_server, page, queued, bob, screenshots):
    run = queued(kind)
    sign_in(page, live_server, "bob")
    page.goto(live_server.url + page_of(run))
    check_page(page, f"cancel-{kind}", 1280, screenshots)  # the button passes axe and fits the page
    cancel = page.get_by_role("button", name="Cancel", exact=True)

    asked = []

    def decline(dialog):
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", decline)
    cancel.click()
    expect(cancel).to_be_visible()
    assert len(asked) == 1 and asked[0].startswith(f"Cancel {named(run)}") and "It will not run." in asked[0], asked
    assert fresh(run).status == run.status, "declined: nothing was sent"

    page.once("dialog", lambda dialog: dialog.accept())
    cancel.click()
    said = f"{named(run)[0].upper()}{named(run)[1:]} was cancelled."
    expect(page.get_by_role("status")).to_contain_text(said)
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)
    assert fresh(run).status == "cancelled"
