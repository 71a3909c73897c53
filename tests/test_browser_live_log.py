"""The deployment page in a real browser: the log grows and the status changes without a reload, then polling stops."""

import hashlib

import pytest
from playwright.sync_api import expect

from pipelines.models import Deployment, Release
from tests.conftest import PIPELINE, sign_in

WAIT_MS = 15_000  # the status polls every 2 s, the log every 1 s


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


@pytest.mark.browser
def test_the_log_and_the_status_follow_a_running_deployment(live_server, page, bob, running):
    sign_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/deployments/{running.pk}/")
    log, badge = page.locator("#log"), page.locator("#status .badge")
    lines = page.locator("#log .line .text")
    expect(badge).to_have_text("Running")
    expect(lines).to_have_text(["cloning v1.2.0"])

    running.append_log("step deploy: applying\n")
    running.append_log("step deploy: 3 of 3 services updated\n")
    expect(log).to_contain_text("3 of 3 services updated", timeout=WAIT_MS)

    with page.expect_response(lambda r: "/log?after=" in r.url and r.status == 286, timeout=WAIT_MS):
        running.append_log("finished\n")
        running.succeed()
    expect(badge).to_have_text("Succeeded", timeout=WAIT_MS)
    expect(log).to_contain_text("finished")
    # each chunk exactly once, in order
    assert lines.all_text_contents() == ["cloning v1.2.0", "step deploy: applying", "step deploy: 3 of 3 services updated",
                                         "finished"]
    # nothing on the page polls any more: neither the status nor the log poller carries a trigger (the
    # navigation's approvals badge polls on every page, by design)
    expect(page.locator("main [hx-trigger]")).to_have_count(0, timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
