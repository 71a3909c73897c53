"""The deployment page in a real browser: the log grows and the status changes without a reload, then polling stops."""

import hashlib

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from pipelines.models import Deployment, Release
from tests.conftest import PIPELINE

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WAIT_MS = 15_000  # polls run every 2 s


@pytest.fixture
def page(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test still talks to the database directly.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()
            # Queries made while Playwright ran opened a connection of their own: close it, or PostgreSQL
            # cannot drop the test database at the end of the session.
            connections.close_all()


@pytest.fixture
def running(repository, staging):
    release = Release.objects.create(
        repository=repository, version="v1.2.0", commit_sha=hashlib.sha1(b"v1.2.0").hexdigest(), pipeline_text=PIPELINE
    )
    deployment = Deployment.objects.create(
        release=release, environment=staging, repository=repository, status=Deployment.Status.QUEUED,
        trigger=Deployment.Trigger.AUTO,
    )
    deployment.claim(worker_name="test")
    deployment.append_log("cloning v1.2.0\n")
    return deployment


def sign_in(page, live_server, username):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="What runs where")).to_be_visible()


@pytest.mark.browser
def test_the_log_and_the_status_follow_a_running_deployment(live_server, page, bob, running):
    sign_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/deployments/{running.pk}/")
    log, badge = page.locator("#log"), page.locator("#status .badge")
    expect(badge).to_have_text("Running")
    expect(log).to_have_text("cloning v1.2.0")

    running.append_log("step deploy: applying\n")
    running.append_log("step deploy: 3 of 3 services updated\n")
    expect(log).to_contain_text("3 of 3 services updated", timeout=WAIT_MS)

    with page.expect_response(lambda r: "/log?after=" in r.url and r.status == 286, timeout=WAIT_MS):
        running.append_log("finished\n")
        running.succeed()
    expect(badge).to_have_text("Succeeded", timeout=WAIT_MS)
    expect(log).to_contain_text("finished")
    # each chunk exactly once, in order
    assert log.text_content() == "cloning v1.2.0\nstep deploy: applying\nstep deploy: 3 of 3 services updated\nfinished\n"
    # nothing on the page polls any more: neither the status nor the log poller carries a trigger (the
    # navigation's approvals badge polls on every page, by design)
    expect(page.locator("main [hx-trigger]")).to_have_count(0, timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
