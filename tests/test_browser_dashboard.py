"""The dashboard in a real browser: times in the viewer's own time zone, and a phone-wide screen."""

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connections
from django.utils import timezone
from playwright.sync_api import sync_playwright

from pipelines.models import Deployment, Environment, Repository, Target
from tests.conftest import add_stage
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, sign_in
from tests.test_views_dashboard import create_deployment, create_release

VIEWER_ZONE = "Pacific/Auckland"  # never the portal's UTC: a time shown in it was localised by the browser


@pytest.fixture
def phone(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 390, "height": 844}, timezone_id=VIEWER_ZONE, locale="en-US")
            yield context.new_page()
        finally:
            browser.close()
            connections.close_all()


@pytest.mark.browser
def test_times_show_in_the_viewers_zone_and_the_page_fits_a_phone(live_server, phone, bob, environments, staging, production):
    for position, name in enumerate(["qa", "uat", "preprod"], start=30):  # five columns: wider than a phone
        add_stage("default", Environment.objects.create(name=name, position=position), position=position * 10)
    finished = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=3)
    for n in range(3):
        repository = Repository.objects.create(name=f"a-rather-long-repository-name-{n}", url=f"/srv/git/{n}")
        release = create_release(repository, "v1.0.0")
        deployment = create_deployment(release, staging, Deployment.Status.SUCCEEDED, finished_at=finished)
        Target.objects.create(repository=repository, environment=staging, current_release=release, last_deployment=deployment)
    sign_in(phone, live_server, "bob")
    phone.wait_for_load_state("load")  # the script at the end of the page has run

    shown = phone.locator(f'td time[datetime="{finished.isoformat()}"]').first.inner_text()
    local = finished.astimezone(ZoneInfo(VIEWER_ZONE))
    assert f"{local.hour % 12 or 12}:{local.minute:02d}" in shown, shown
    assert "UTC" not in shown and shown.endswith("· 3 h ago")
    # The grid polls every 5 s; the times it brings are localised too.
    phone.evaluate("new Promise(done => document.body.addEventListener('htmx:afterSettle', done, {once: true}))")
    assert phone.locator(f'td time[datetime="{finished.isoformat()}"]').first.inner_text() == shown
    # The grid scrolls inside its box: nothing of the dashboard (the filters, the summary, the grid's box)
    # reaches past the screen. (The top bar is the shared layout's, not the dashboard's.)
    wide = phone.evaluate("""[...document.querySelectorAll('main > *, .dash-filters *, .summary *, .grid-scroll')]
        .filter(e => e.getBoundingClientRect().right > 390).map(e => e.tagName + '.' + e.className)""")
    assert wide == []
    assert phone.evaluate("document.querySelector('main').scrollWidth <= document.querySelector('main').clientWidth")
