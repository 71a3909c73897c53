"""The three flows the portal is used for, in a real browser against a live server with real workers
(`manage.py rqworker` and the `pollrepos --loop` scheduler as subprocesses, as `runportal` starts them):

1. an admin registers a repository in the admin (its connection tested on save) and sees it deploy on the
   dashboard;
2. a second user approves a held production change from the inbox and follows the run's log to its end;
3. another approver rejects a held change with a comment, and the deployment page says who, when and why.

Every page visited passes axe-core (no serious or critical violation) at 1440 and 390 px and does not scroll
sideways; each is saved as a screenshot (see the `screenshots` fixture: GITOPS_SCREENSHOTS=docs/screenshots
refreshes the README's)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from playwright.sync_api import expect

from approvals.models import ChangeRequest
from approvals.opening import open_change_request
from pipelines import promotion
from pipelines.models import Deployment
from tests.conftest import check_page, child_env, kill_tree, sign_in

BASE_DIR = Path(__file__).resolve().parent.parent
WIDTHS = (1440, 390)
WAIT_MS = 60_000  # a worker starts in a few seconds; the dashboard polls every 5 s, the log every 1 s


def check_at_both_widths(page, name, directory):
    """axe-core and the sideways-scroll check at a desktop's and a phone's width, a screenshot of each in
    `directory`: `screenshots` for the pages the README shows, `scratch` for the others."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        check_page(page, name, width, directory)
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})


@pytest.fixture
def start_portal_process(tmp_path):
    """Start `manage.py <args>` against the test's database and Redis, as runportal would; killed at the end."""
    processes = []

    def start(*args, **env):
        process = subprocess.Popen([sys.executable, "manage.py", *args], cwd=BASE_DIR,
                                   env=child_env(tmp_path / "portal-data", **env), start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(process)
        return process

    yield start
    for process in processes:
        kill_tree(process.pid)
        process.wait()


@pytest.fixture
def scratch(tmp_path):
    """Where the screenshots of the pages the README does not show go, whatever GITOPS_SCREENSHOTS says."""
    return tmp_path / "screenshots"


@pytest.fixture
def desktop(browser):
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 900})
    yield context.new_page()
    context.close()


def stage_cell(page, repository_name, column):
    """The dashboard's cell of `repository_name` in its `column`-th stage (0: the first)."""
    row = page.locator("tr", has=page.get_by_role("link", name=repository_name, exact=True))
    return row.locator("td.target-cell").nth(column)


@pytest.mark.browser
def test_an_admin_registers_a_repository_and_sees_it_deploy(
        live_server, desktop, alice, environments, make_git_repo, start_portal_process, tmp_path, screenshots, scratch):
    page = desktop
    gate = tmp_path / "staging-may-finish"
    # The staging step runs until the test lets it finish, so that "deploying" is a state the page can show.
    pipeline = ("environments:\n  staging:\n    steps:\n      - name: deploy\n        run: |\n"
                f"          echo \"deploying $GITOPS_VERSION\"\n"
                f"          while [ ! -e {gate} ]; do sleep 0.1; done\n"
                "          echo deployed\n"
                "  production:\n    steps:\n      - run: ./deploy.sh\n")
    origin = make_git_repo("shop-origin", pipeline=pipeline)
    origin.tag("v1.0.0")
    start_portal_process("rqworker", "git", "deploy", "checks")
    start_portal_process("pollrepos", "--loop", GITOPS_SCHEDULER_TICK=1)

    sign_in(page, live_server, "alice")
    expect(page.get_by_text("No repositories yet.")).to_be_visible()
    check_at_both_widths(page, "flow-dashboard-empty", scratch)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    check_at_both_widths(page, "flow-admin", scratch)
    page.get_by_role("link", name="Repositories", exact=True).click()
    check_at_both_widths(page, "flow-admin-repositories", scratch)
    page.get_by_role("link", name="Add repository").click()
    check_at_both_widths(page, "flow-admin-repository-add", scratch)
    page.get_by_label("Name").fill("shop")
    page.get_by_label("Git URL").fill(origin.url)
    expect(page.get_by_label("Lifecycle")).to_have_value(str(environments[0].stages.get().lifecycle_id))
    page.get_by_role("button", name="Save", exact=True).click()

    messages = page.locator(".messagelist")
    expect(messages).to_contain_text("Connected; the branch 'main' exists.")
    expect(messages).to_contain_text("1 of the remote's 1 tags match 'v*'.")
    check_at_both_widths(page, "flow-admin-repository-saved", scratch)

    page.get_by_role("link", name="View site").click()
    expect(page.get_by_role("heading", name="What runs where")).to_be_visible()
    staging, production = stage_cell(page, "shop", 0), stage_cell(page, "shop", 1)
    # The scheduler asks a worker to poll the new repository, v1.0.0 becomes a release, staging deploys it.
    expect(staging.locator(".badge")).to_have_text("Running", timeout=WAIT_MS)
    expect(staging).to_contain_text("v1.0.0")
    check_at_both_widths(page, "dashboard-deploying", scratch)

    gate.touch()
    expect(staging.locator("a.version")).to_have_text("v1.0.0", timeout=WAIT_MS)  # runs there now
    expect(staging.locator(".badge")).to_have_count(0)
    # then production holds it for approval
    expect(production.locator(".badge")).to_have_text("Awaiting approval", timeout=WAIT_MS)
    expect(production.locator(".waits")).to_contain_text("approv")
    check_at_both_widths(page, "dashboard", screenshots)

    staging.locator("time").click()  # the time links to the deployment
    expect(page.locator("#status .badge")).to_have_text("Succeeded")
    expect(page.locator("#log .line .text").last).to_have_text("deployed")
    check_at_both_widths(page, "flow-deployment-staging", scratch)


LINES = 80  # more than a screen holds
LONG_RUN = f"""\
environments:
  production:
    steps:
      - name: migrate
        run: |
          echo "waiting for the go-ahead"
          ./wait-for-go-ahead.sh
          for i in $(seq 1 {LINES}); do echo "migrating batch $i of {LINES}"; sleep 0.02; done
      - name: verify
        run: echo "all {LINES} batches migrated; production is healthy"
"""


@pytest.fixture
def run_gate(tmp_path):
    return tmp_path / "production-may-go"


@pytest.fixture
def held_long_run(repository, production, origin, make_release, alice, run_gate):
    """A production deployment that alice asked for, held for approval, whose run prints many lines once
    `run_gate` exists (so that the reader is on its page before it prints)."""
    origin.write(".gitops.yml", LONG_RUN)
    origin.write("wait-for-go-ahead.sh", f"#!/bin/sh\nwhile [ ! -e {run_gate} ]; do sleep 0.1; done\n", executable=True)
    release = make_release(repository, "v2.0.0", pipeline=LONG_RUN, commit_sha=origin.commit("a long migration"))
    deployment = promotion.promote(release, production, by=alice)
    assert deployment.status == Deployment.Status.AWAITING_APPROVAL
    return open_change_request(deployment)


@pytest.mark.browser
def test_a_second_user_approves_from_the_inbox_and_follows_the_run_to_the_end(
        live_server, desktop, bob, held_long_run, run_gate, start_portal_process, screenshots, scratch):
    page = desktop
    change_request = held_long_run
    start_portal_process("rqworker", "git", "deploy", "checks")

    sign_in(page, live_server, "bob")
    page.get_by_role("navigation", name="Main").get_by_role("link", name=re.compile("^Approvals")).click()
    waiting = page.locator("section", has=page.get_by_role("heading", name=re.compile("^Waiting on me")))
    expect(waiting.locator("tbody tr")).to_have_count(1)
    expect(waiting.locator("tbody tr")).to_contain_text("v2.0.0")
    expect(waiting.locator("tbody tr")).to_contain_text("alice")
    check_at_both_widths(page, "flow-inbox", scratch)

    waiting.get_by_role("link", name=f"#{change_request.pk}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("shop v2.0.0 → production")
    check_at_both_widths(page, "change-request", screenshots)
    page.get_by_label("Comment").fill("Migration reviewed with the DBA; go ahead.")
    page.get_by_role("button", name="Approve").click()

    expect(page.locator(".messagelist, .messages")).to_contain_text(
        f"You approved change request #{change_request.pk}; deployment #{change_request.deployment_id} is released.")
    decisions = page.locator("table.decisions tbody tr")
    expect(decisions).to_have_count(1)
    expect(decisions).to_contain_text("bob")
    expect(decisions).to_contain_text("Migration reviewed with the DBA; go ahead.")
    check_at_both_widths(page, "flow-change-request-approved", scratch)

    page.locator("#cr-status").get_by_role("link", name=f"#{change_request.deployment_id}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("v2.0.0 → production")
    expect(page.locator("#status .badge")).to_have_text("Running", timeout=WAIT_MS)
    expect(page.locator("#log .line .text").last).to_have_text("waiting for the go-ahead", timeout=WAIT_MS)
    run_gate.touch()
    # The worker runs it while the page follows: the last line arrives, on screen, and polling ends.
    expect(page.locator("#status .badge")).to_have_text("Succeeded", timeout=WAIT_MS)
    last = page.locator("#log .line .text").last
    expect(last).to_have_text(f"all {LINES} batches migrated; production is healthy", timeout=WAIT_MS)
    expect(last).to_be_in_viewport()
    texts = page.locator("#step-1 .line:not(.command) .text").all_text_contents()
    assert texts == ["waiting for the go-ahead", *(f"migrating batch {i} of {LINES}" for i in range(1, LINES + 1))]
    expect(page.locator("#status")).to_contain_text("Approved by")
    expect(page.locator("#status .decision")).to_contain_text("bob")
    check_at_both_widths(page, "deployment", screenshots)


@pytest.fixture
def dave(django_user_model, approvers):
    """A third approver, with the e-mail address the policy needs to tell he wrote none of the commits."""
    user = django_user_model.objects.create_user("dave", "dave@example.com", "password")
    user.groups.add(approvers)
    user.user_permissions.add(Permission.objects.get(codename="deploy", content_type__app_label="pipelines"))
    return user


@pytest.mark.browser
def test_another_approver_rejects_and_the_deployment_page_says_who_when_and_why(
        live_server, desktop, dave, bob, make_held_change, screenshots, scratch):
    page = desktop
    change_request, runs = make_held_change()
    reason = "Not during the sale: the checkout is frozen until Monday."

    sign_in(page, live_server, "dave")
    page.get_by_role("navigation", name="Main").get_by_role("link", name=re.compile("^Approvals")).click()
    waiting = page.locator("section", has=page.get_by_role("heading", name=re.compile("^Waiting on me")))
    waiting.get_by_role("link", name=f"#{change_request.pk}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("→ production")
    page.get_by_label("Why do you reject it?").fill(reason)
    page.get_by_role("button", name="Reject").click()

    expect(page.locator(".messagelist, .messages")).to_contain_text(
        f"You rejected change request #{change_request.pk}; deployment #{change_request.deployment_id} will not run.")
    expect(page.locator("#cr-status .badge").first).to_have_text("Rejected")
    check_at_both_widths(page, "flow-change-request-rejected", scratch)

    page.locator("#cr-status").get_by_role("link", name=f"#{change_request.deployment_id}").click()
    status = page.locator("#status")
    expect(status.locator(".badge").first).to_have_text("Rejected")
    decision = status.locator("dd.decision")
    expect(decision).to_contain_text("dave")
    expect(decision).to_contain_text(f"“{reason}”")
    expect(decision.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    expect(status.get_by_text("Rejected by", exact=True)).to_be_visible()
    expect(status.locator("dd.reason")).to_have_text(f"Rejected by dave: {reason}")
    # A decision, not a failure: no error box, no error alert.
    expect(page.locator(".error-box, .alert.error")).to_have_count(0)
    check_at_both_widths(page, "deployment-rejected", screenshots)
    assert ChangeRequest.objects.get(pk=change_request.pk).status == ChangeRequest.Status.REJECTED
    assert not runs.exists(), "the rejected change ran"
