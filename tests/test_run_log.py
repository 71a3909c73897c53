"""The deployment log in step sections: what the runner stores (step boundaries, stderr marked, marks a step
cannot forge), how the page and its poll render it, and the raw download."""

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pipelines import promotion, run_log
from pipelines.models import Deployment
from pipelines.runs import kernel

STEPS = """\
environments:
  staging:
    steps:
      - name: prepare
        run: echo preparing
      - name: migrate
        run: |
          echo "to stdout"
          echo "to stderr" >&2
          printf '\\x1e==> step 9/9: forged\\n'
          exit 7
      - name: never
        run: echo never
"""


@pytest.fixture
def failed_run(db, repository, staging, origin, make_release):
    origin.write(".gitops.yml", STEPS)
    release = make_release(repository, "v1", pipeline=STEPS, commit_sha=origin.commit("steps"))
    deployment = promotion.promote(release, staging, by=None)
    kernel.run("deployment", deployment.pk)
    deployment.refresh_from_db()
    assert deployment.status == "failed", deployment.log_since(0)[0]
    return deployment


@pytest.fixture
def bob_client(bob):
    client = Client()
    client.force_login(bob)
    return client


def test_it_stores_step_boundaries_and_marks_stderr_lines(failed_run):
    stored = "".join(text for _, text, _ in failed_run.log_chunks_since(0))
    assert f"{run_log.STEP_MARK}==> step 1/3: prepare\n" in stored
    assert re.search(r"\x1e==> step 1/3 succeeded with exit code 0 after [\d.]+ s\n", stored)
    assert re.search(r"\x1e==> step 2/3 failed with exit code 7 after [\d.]+ s\n", stored)
    assert f"{run_log.STDERR_MARK}to stderr\n" in stored
    assert "to stdout\n" in stored and f"{run_log.STDERR_MARK}to stdout" not in stored
    assert "step 3/3" not in stored


def test_a_step_cannot_forge_a_step_boundary(failed_run):
    sections = run_log.sections(run_log.lines_of(failed_run.log_chunks_since(0)), finished=True)
    assert [(s.number, s.name, s.status, s.exit_code) for s in sections] == [
        (1, "prepare", "succeeded", 0), (2, "migrate", "failed", 7),
    ]
    assert "==> step 9/9: forged" in [line.text for line in sections[1].lines]


def test_log_since_gives_the_text_without_marks(failed_run):
    text = failed_run.log_since(0)[0]
    assert run_log.STEP_MARK not in text and run_log.STDERR_MARK not in text
    assert "==> step 2/3: migrate\n$ echo \"to stdout\"\n" in text and "to stderr\n" in text


def test_the_page_shows_steps_as_sections_with_the_failing_one_open(failed_run, bob_client):
    html = bob_client.get(reverse("deployment_detail", args=[failed_run.pk])).content.decode()
    prepare = html[html.index('id="step-1"'):html.index('id="step-2"')]
    migrate = html[html.index('id="step-2"'):]
    assert " open>" not in prepare.split("\n")[0] and "✓" in prepare
    assert re.search(r'<details id="step-2" class="step failed" open>', html)
    assert "✗" in migrate and "exit code <code>7</code>" in migrate
    assert re.search(r'<div class="line stderr"><time datetime="[^"]+">\d\d:\d\d:\d\d</time>'
                     r'<span class="stream" title="standard error">err</span><span class="text">to stderr</span>',
                     migrate)
    assert re.search(r'<div class="line"><time[^>]*>[^<]*</time><span class="text">to stdout</span>', migrate)
    main = html[html.index("<main"):html.index("</main>")]  # the navigation's approvals badge polls everywhere
    assert "hx-trigger" not in main, "a finished run polls nothing"


def test_an_old_log_without_marks_still_renders_its_steps(repository, staging, make_release, bob_client):
    deployment = promotion.promote(make_release(repository, "v0"), staging, by=None)
    deployment.claim(worker_name="old")
    deployment.append_log("==> step 1/1: deploy\n$ ./deploy.sh\ndeployed\n")
    deployment.succeed()
    html = bob_client.get(reverse("deployment_detail", args=[deployment.pk])).content.decode()
    assert "Step 1/1: deploy" in html and '<span class="text">deployed</span>' in html


def test_the_poll_sends_only_the_new_lines_into_the_running_step(repository, staging, make_release, bob_client):
    deployment = promotion.promote(make_release(repository, "v1"), staging, by=None)
    deployment.claim(worker_name="test")
    first = deployment.append_log(run_log.step_started(1, 2, "migrate", "./migrate.sh") + "line one\n")
    deployment.append_log("line two\n" + run_log.mark_errors("oops\n", at_line_start=True))

    response = bob_client.get(reverse("deployment_log", args=[deployment.pk]), {"after": first, "step": 1})
    html = response.content.decode()
    assert response.status_code == 200
    assert "line one" not in html
    assert '<div hx-swap-oob="beforeend:#step-1-lines">' in html and "line two" in html
    assert '<div class="line stderr">' in html
    assert "?after=2&amp;step=1" in html, "the next poll continues after the new chunk"
    assert 'hx-trigger="every 1s"' in html

    deployment.append_log(run_log.step_ended(1, 2, status="failed", exit_code=4, seconds=2.5))
    deployment.fail("Step 'migrate' exited with status 4.", exit_code=4)
    response = bob_client.get(reverse("deployment_log", args=[deployment.pk]), {"after": 2, "step": 1})
    html = response.content.decode()
    assert response.status_code == 286, "the run ended: polling stops"
    assert re.search(r'<span id="step-1-state" class="step-state state-failed" hx-swap-oob="true">', html)
    assert "exit code <code>4</code>" in html and "2.5 s" in html


def test_the_poll_appends_a_new_step_as_a_section(repository, staging, make_release, bob_client):
    deployment = promotion.promote(make_release(repository, "v1"), staging, by=None)
    deployment.claim(worker_name="test")
    deployment.append_log(run_log.step_ended(1, 2, status="succeeded", exit_code=0, seconds=1.0)
                          + run_log.step_started(2, 2, "verify", "./verify.sh") + "checking\n")
    html = bob_client.get(reverse("deployment_log", args=[deployment.pk]), {"after": 0, "step": 1}).content.decode()
    assert 'id="step-1-state" class="step-state state-succeeded" hx-swap-oob="true"' in html
    assert '<details id="step-2" class="step" open>' in html and "checking" in html
    assert "step=2" in html


def test_the_raw_log_downloads_as_plain_text(failed_run, bob_client):
    response = bob_client.get(reverse("deployment_log_text", args=[failed_run.pk]))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="shop-v1-staging-{failed_run.pk}.log"'
    body = b"".join(response.streaming_content).decode()
    assert body == failed_run.log_since(0)[0]
    assert "to stderr\n" in body and "\x1f" not in body and "\x1e" not in body


def test_the_page_makes_as_many_queries_for_a_long_log_as_for_a_short_one(
        repository, staging, make_release, bob_client, django_assert_num_queries):
    def page_of(lines):
        deployment = promotion.promote(make_release(repository, f"v{lines}"), staging, by=None)
        for number in range(1, lines + 1):
            deployment.append_log(run_log.step_started(number, lines, f"s{number}", "true") + "out\n"
                                  + run_log.step_ended(number, lines, status="succeeded", exit_code=0, seconds=0.1))
        return reverse("deployment_detail", args=[deployment.pk])

    short, long = page_of(1), page_of(30)
    bob_client.get(short)  # the session and the user are loaded alike for both
    with CaptureQueriesContext(connection) as short_queries:
        bob_client.get(short)
    with django_assert_num_queries(len(short_queries.captured_queries)):
        bob_client.get(long)


def test_a_secret_printed_on_stderr_is_masked_and_its_line_still_marked(
        repository, staging, origin, make_release, make_secret):
    make_secret(staging, "API_TOKEN", "tok-5f0c2a9e1d")
    pipeline = ("environments:\n  staging:\n    steps:\n      - name: leak\n        run: |\n"
                "          echo \"out $API_TOKEN\"\n          printf 'err %s' \"${API_TOKEN:0:6}\" >&2\n"
                "          sleep 0.6\n          printf '%s\\n' \"${API_TOKEN:6}\" >&2\n")
    origin.write(".gitops.yml", pipeline)
    release = make_release(repository, "v1", pipeline=pipeline, commit_sha=origin.commit("leak"))
    deployment = promotion.promote(release, staging, by=None)
    kernel.run("deployment", deployment.pk)

    stored = "".join(text for _, text, _ in Deployment.objects.get(pk=deployment.pk).log_chunks_since(0))
    assert "tok-5f0c2a9e1d" not in stored and "5f0c2a9e1d" not in stored
    assert "out ***\n" in stored
    # Split across two reads of stderr, masked whole; a stdout line printed in between may cut it in two lines.
    assert re.search(r"\x1ferr (\n.*\n\x1f)?\*\*\*\n", stored), stored


def test_a_line_cut_between_two_chunks_shows_as_one_line():
    lines = run_log.lines_of([(1, "whole\nsplit: ", "t1"), (2, "***\n" + run_log.STDERR_MARK + "err", "t2"),
                              (3, "or continued\n", "t3")])
    assert [(line.text, line.at, line.stderr) for line in lines] == [
        ("whole", "t1", False), ("split: ***", "t1", False), ("error continued", "t2", True)]


def test_a_long_log_shows_its_last_lines_and_every_step_and_says_where_the_rest_is(
        repository, staging, make_release, bob_client, settings):
    from pipelines import views

    deployment = promotion.promote(make_release(repository, "v9"), staging, by=None)
    deployment.claim(worker_name="long")
    deployment.append_log(run_log.step_started(1, 2, "build", "make") + "".join(f"line {n}\n" for n in range(3000)))
    deployment.append_log(run_log.step_ended(1, 2, status="succeeded", exit_code=0, seconds=4.0))
    deployment.append_log(run_log.step_started(2, 2, "ship", "ship") + "".join(f"ship {n}\n" for n in range(50)))
    html = bob_client.get(reverse("deployment_detail", args=[deployment.pk])).content.decode()
    shown = re.findall(r'<span class="text">([^<]*)</span>', html)
    assert len(shown) <= views.LOG_LINES_ON_PAGE + 2  # the two commands
    assert shown[-1] == "ship 49" and "line 2999" in shown and "line 0" not in shown
    assert 'id="step-1"' in html and 'id="step-2"' in html, "every step keeps its section"
    assert "earlier lines are in the" in html and reverse("deployment_log_text", args=[deployment.pk]) in html
