"""Risky actions in a real browser: the confirmation says what will happen, and nothing is sent unless the
reader agrees."""

import pytest
from playwright.sync_api import expect

from pipelines import promotion
from pipelines.models import Deployment
from tests.conftest import sign_in


@pytest.mark.browser
def test_deploy_asks_first_and_sends_nothing_when_declined(live_server, page, bob, repository, staging, make_release):
    old = make_release(repository, "v1")
    deployment = promotion.promote(old, staging, by=bob)
    deployment.claim(worker_name="test")
    deployment.succeed()
    release = make_release(repository, "v2")
    sign_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/repos/shop/releases/v2/")

    messages = []

    def decline(dialog):
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", decline)
    page.get_by_role("button", name="Deploy to staging").click()
    expect(page.get_by_role("button", name="Deploy to staging")).to_be_visible()
    assert messages == ["Deploy v2 to staging? Its steps run there now; it replaces v1, which runs in staging now."]
    assert not Deployment.objects.filter(release=release).exists()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Deploy to staging").click()
    expect(page.get_by_role("heading", name="v2 → staging")).to_be_visible()
    assert Deployment.objects.filter(release=release, environment=staging).count() == 1
