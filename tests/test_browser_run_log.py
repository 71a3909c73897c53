"""A second user follows the production run's log to the end, in a real browser, while a real rq worker runs
the steps: the page follows the tail unless the reader scrolls up, steps are sections with their state,
stderr lines are marked, and the failing step is open with its exit code."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from pipelines import promotion
from pipelines.models import Deployment
from tests.conftest import child_env, kill_tree, sign_in, wait_for

BASE_DIR = Path(__file__).resolve().parent.parent
SCREENSHOTS = BASE_DIR / "docs" / "screenshots"
WAIT_MS = 30_000
LINES = 180
PIPELINE = f"""\
environments:
  production:
    steps:
      - name: migrate
        run: |
          for i in $(seq 1 {LINES}); do
            echo "migrating batch $i of {LINES}"
            if [ $((i % 45)) -eq 0 ]; then echo "warning: batch $i was slow" >&2; fi
            sleep 0.04
          done
      - name: verify
        run: |
          echo "checking health"
          echo "health check failed: 2 of 3 replicas down" >&2
          exit 3
"""


def last_line_is_in_view(page):
    return page.evaluate("""() => {
        const lines = document.querySelectorAll('#log .line');
        const last = lines[lines.length - 1];
        if (!last) return false;
        const box = last.getBoundingClientRect();
        return box.top >= 0 && box.bottom <= window.innerHeight;
    }""")


def line_count(page):
    return page.locator("#log .line").count()


@pytest.mark.browser
def test_a_second_user_follows_the_production_run_to_its_failing_end(
        live_server, page, alice, bob, repository, production, origin, make_release, tmp_path):
    origin.write(".gitops.yml", PIPELINE)
    release = make_release(repository, "v3.0.0", pipeline=PIPELINE, commit_sha=origin.commit("slow migration"))
    deployment = promotion.promote(release, production, by=alice)
    assert deployment.status == Deployment.Status.AWAITING_APPROVAL
    deployment.release_hold(by=alice)

    sign_in(page, live_server, "bob")
    page.set_viewport_size({"width": 1100, "height": 700})
    page.goto(f"{live_server.url}/deployments/{deployment.pk}/")
    worker = subprocess.Popen([sys.executable, "manage.py", "rqworker", "deploy"], cwd=BASE_DIR,
                              env=child_env(tmp_path / "worker-data"), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Following: the newest line is on screen while the step prints.
        wait_for(lambda: line_count(page) >= 40, "the first lines of the migration", timeout=60)
        assert page.evaluate("window.scrollY") > 0, "the page scrolled down with the log"
        assert last_line_is_in_view(page)

        # The reader scrolls up: the page stays where they are while lines keep coming.
        page.mouse.move(500, 400)
        page.mouse.wheel(0, -500)
        wait_for(lambda: page.evaluate("window.scrollY") > 0 and not last_line_is_in_view(page), "the scroll up",
                 timeout=10)
        stopped_at, seen = page.evaluate("window.scrollY"), line_count(page)
        wait_for(lambda: line_count(page) >= seen + 20, "more lines", timeout=30)
        assert not Deployment.objects.get(pk=deployment.pk).is_finished, "the step printed too fast for this test"
        assert page.evaluate("window.scrollY") == stopped_at, "the page did not move while the reader read above"
        assert not last_line_is_in_view(page)

        # Back at the bottom, it follows again, to the end of the run.
        page.keyboard.press("End")
        wait_for(lambda: Deployment.objects.get(pk=deployment.pk).is_finished, "the run to end", timeout=60)
    finally:
        kill_tree(worker.pid)
        worker.wait()

    expect(page.locator("#status .badge")).to_have_text("Failed", timeout=WAIT_MS)
    last = page.locator("#log .line").last
    expect(last.locator(".text")).to_have_text("health check failed: 2 of 3 replicas down", timeout=WAIT_MS)
    expect(last).to_be_in_viewport()
    assert last_line_is_in_view(page)

    migrate, verify = page.locator("#step-1"), page.locator("#step-2")
    expect(migrate.locator(".step-state")).to_contain_text("✓")
    expect(verify).to_have_attribute("open", "")
    expect(verify.locator(".step-state")).to_contain_text("✗")
    expect(verify.locator(".step-state")).to_contain_text("exit code 3")
    # stderr lines are marked, stdout lines are not
    expect(page.locator("#log .line.stderr .text")).to_have_text([
        "warning: batch 45 was slow", "warning: batch 90 was slow", "warning: batch 135 was slow",
        "warning: batch 180 was slow", "health check failed: 2 of 3 replicas down",
    ])
    expect(verify.locator(".line.command .text")).to_have_text(
        ['$ echo "checking health"', re.compile("health check failed"), "  exit 3"])
    expect(verify.locator(".line:not(.stderr):not(.command) .text")).to_have_text(["checking health"])
    # each line once, in order
    assert migrate.locator(".line.command .text").first.text_content() == f"$ for i in $(seq 1 {LINES}); do"
    texts = migrate.locator(".line:not(.stderr):not(.command) .text").all_text_contents()
    assert texts == [f"migrating batch {i} of {LINES}" for i in range(1, LINES + 1)]

    # docs/screenshots/ is refreshed on request only, so that a test run leaves the worktree clean.
    screenshots = SCREENSHOTS if os.environ.get("GITOPS_SAVE_SCREENSHOTS") else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=screenshots / "deployment-log.png")
