"""The page of a long deployment log reads the newest chunks, the chunks with step lines and the stored line
counts, not the whole text (Deployment.log_tail): it shows exactly what reading the whole log would show
(run_log.tail over every chunk), in a number of queries that does not grow with the log; chunks stored before
their lines were counted are counted by the migration."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pipelines import promotion, run_log
from pipelines.models import Deployment

LIMIT = 300


def numbered(prefix, count, *, stderr_every=0):
    return "".join((run_log.STDERR_MARK if stderr_every and n % stderr_every == 0 else "") + f"{prefix} {n}\n"
                   for n in range(count))


def marked_steps(steps, lines_each, chunk_lines):
    """Chunk texts of a run's log as the runner writes it: `steps` marked steps of `lines_each` lines."""
    lines = []
    for step in range(1, steps + 1):
        lines += run_log.step_started(step, steps, f"part {step}", f"./part.sh {step}").splitlines(keepends=True)
        lines += numbered(f"step {step} line", lines_each, stderr_every=7).splitlines(keepends=True)
        lines.append(run_log.step_ended(step, steps, status="succeeded", exit_code=0, seconds=2.0))
    return ["".join(lines[start:start + chunk_lines]) for start in range(0, len(lines), chunk_lines)]


SHAPES = {
    "short: all of it shown": [numbered("line", 20)],
    "marked steps in many small chunks": marked_steps(4, 400, 10),
    "marked steps in chunks as big as the page": marked_steps(3, 500, LIMIT),
    "an old log, its steps unmarked": ["==> step 1/2: build\n" + numbered("build", 900),
                                       "==> step 2/2: ship\n", numbered("ship", 700)],
    "lines cut between chunks": ["\x1e==> step 1/1: cut\n" + numbered("a", 400) + "half of a ", "line\n",
                                 *[numbered(f"b{n}", 9) + "cut " for n in range(60)], "end\n"],
}


@pytest.fixture
def bob_client(bob):
    client = Client()
    client.force_login(bob)
    return client


@pytest.fixture
def logged(repository, staging, make_release):
    def logged(texts):
        deployment = promotion.promote(make_release(repository, f"v{len(texts)}"), staging, by=None)
        for text in texts:
            deployment.append_log(text)
        return deployment
    return logged


@pytest.mark.parametrize("shape", SHAPES)
def test_the_page_shows_of_a_long_log_what_reading_all_of_it_would_show(logged, shape):
    deployment = logged(SHAPES[shape])
    every_chunk = deployment.log_chunks_since(0)

    assert deployment.log_tail(LIMIT) == (*run_log.tail(every_chunk, LIMIT), run_log.is_unmarked(every_chunk))


def test_what_the_page_leaves_out_is_counted_and_every_step_keeps_its_section(logged):
    deployment = logged(marked_steps(4, 400, 10))
    shown, hidden, unmarked = deployment.log_tail(LIMIT)
    lines = run_log.lines_of(shown)
    sections = run_log.sections(lines, finished=True, unmarked=unmarked)

    assert [(s.number, s.status) for s in sections] == [(n, "succeeded") for n in range(1, 5)]
    output = [line.text for line in lines if not line.text.startswith(run_log.STEP_MARK)]
    # The last LIMIT lines: the last step's output but its first 101 lines, and its end.
    assert output == [f"step 4 line {n}" for n in range(101, 400)]
    every_line = sum(text.count("\n") for text in marked_steps(4, 400, 10))
    assert hidden + sum(text.count("\n") for _, text, _ in shown) == every_line


def test_the_page_of_a_long_log_reads_no_more_text_at_ten_times_the_size(logged, bob_client):
    def queries_for_page(deployment):
        with CaptureQueriesContext(connection) as queries:
            response = bob_client.get(reverse("deployment_detail", args=[deployment.pk]))
        assert response.status_code == 200
        return [query["sql"] for query in queries.captured_queries]

    # 4,000 and 40,000 lines in chunks of 50: both longer than the page, the second read in the same queries...
    short, long = queries_for_page(logged(marked_steps(4, 1000, 50))), queries_for_page(logged(marked_steps(4, 10000, 50)))
    assert len(short) == len(long)
    # ...none of which reads the text of every chunk: a batch of the newest, or the chunks with step lines.
    reading_text = [sql for sql in long if '"pipelines_deploymentlogchunk"."text"' in sql]
    assert reading_text and all(" LIMIT " in sql or '"has_step_lines"' in sql for sql in reading_text), reading_text


@pytest.mark.django_db(transaction=True)
def test_chunks_stored_before_lines_were_counted_are_counted_by_the_migration(logged, bob_client):
    deployment = logged([])
    texts = marked_steps(3, 2000, 10) + ["==> step 9/9: an old, unmarked step line\n", "cut\nline"]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    before = [("pipelines", "0017_dashboard_indexes")]
    try:
        executor.migrate(before)
        old = MigrationExecutor(connection).loader.project_state(before).apps
        Chunk = old.get_model("pipelines", "DeploymentLogChunk")
        Chunk.objects.bulk_create([Chunk(deployment_id=deployment.pk, seq=n, text=text)
                                   for n, text in enumerate(texts, start=1)])
        MigrationExecutor(connection).migrate(leaves)

        counted = list(Deployment.objects.get(pk=deployment.pk).log_chunks.order_by("seq")
                       .values_list("text", "line_count", "has_step_lines"))
        assert counted == [(text, text.count("\n"), run_log.has_step_lines(text)) for text in texts]
        html = bob_client.get(reverse("deployment_detail", args=[deployment.pk])).content.decode()
        assert all(f'id="step-{n}"' in html for n in (1, 2, 3))
        assert "earlier lines are in the" in html
    finally:
        MigrationExecutor(connection).migrate(leaves)
