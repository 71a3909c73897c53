"""The pages in a real browser at a desktop and a phone width: axe-core finds no serious or critical
accessibility violation (contrast included, in light and dark mode), nothing scrolls sideways, and each
page is saved as a screenshot: in the test's temporary directory, or, to refresh the ones the README shows,
in the directory named by GITOPS_SCREENSHOTS (`GITOPS_SCREENSHOTS=docs/screenshots`), so that a test run
does not rewrite committed files.

axe-core is vendored under tests/vendor/axe-core/ (see its README there) and injected into each page."""

import pytest
from playwright.sync_api import expect

from tests.conftest import check_page as check
from tests.conftest import sign_in

WIDTHS = {"desktop": 1440, "phone": 390, "small-phone": 360}


@pytest.fixture
def decided_pages(make_held_change, bob, alice, charlie):
    """A rejected production change (who decided, and why, on its deployment page) and one that waits on bob."""
    rejected, _ = make_held_change()
    rejected.reject(bob, "Not during the sale: the checkout is frozen until Monday.")
    return {"deployment": f"/deployments/{rejected.deployment_id}/", "change_request": rejected.get_absolute_url()}


@pytest.mark.browser
@pytest.mark.parametrize("device, scheme", [
    ("desktop", "light"), ("desktop", "dark"), ("phone", "light"), ("phone", "dark"), ("small-phone", "light"),
])
def test_the_pages_pass_axe_and_fit_the_screen(live_server, browser, alice, decided_pages, repository, device, scheme,
                                               screenshots):
    width = WIDTHS[device]
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    suffix = "" if scheme == "light" else "-dark"

    page.goto(f"{live_server.url}/login/")
    check(page, f"login{suffix}", width, screenshots)
    sign_in(page, live_server, "alice")  # a superuser: sees the admin too
    pages = {
        "dashboard": "/",
        "approvals": "/approvals/",
        "deployment-rejected": decided_pages["deployment"],
        "change-request": decided_pages["change_request"],
        "repository": f"/repos/{repository.name}/",
        "audit": "/audit/",
        "not-found": "/no/such/page/",
        "admin-repository": f"/admin/pipelines/repository/{repository.pk}/change/",
        "admin-repository-delete": f"/admin/pipelines/repository/{repository.pk}/delete/",
    }
    for name, path in pages.items():
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == (404 if name == "not-found" else 200), name
        check(page, f"{name}{suffix}", width, screenshots)
    context.close()


@pytest.mark.browser
def test_the_skip_link_is_the_first_stop_and_leads_to_the_content(live_server, browser, alice):
    page = browser.new_page()
    sign_in(page, live_server, "alice")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main#main")).to_be_focused()


@pytest.mark.browser
def test_the_404_page_has_the_navigation_and_the_favicon_is_found(live_server, browser, alice):
    page = browser.new_page()
    sign_in(page, live_server, "alice")
    response = page.goto(f"{live_server.url}/no/such/page/")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard")).to_be_visible()
    favicon = page.goto(f"{live_server.url}/favicon.ico")
    assert favicon.status == 200 and "svg" in favicon.headers["content-type"]
