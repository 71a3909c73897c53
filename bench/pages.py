"""Server time of the signed-in pages on a large portal.

Data (made in bulk, in batches): 500 repositories in one lifecycle of 5 stages (dev, staging, qa, uat,
production; production holds deployments for approval), 40 releases each deployed to every stage
(100,000 deployments), a Target per pair whose last deployment is mostly a success, with 200 waiting for
approval behind pending change requests, 25 failed, 10 running and 10 stages paused after a rollback;
100,000 audit events; one deployment with a 100,000-line log in 5 steps, as the runner writes it.

Each page is asked for with Django's test Client in this process (no network, no gunicorn): WARMUP requests,
then SAMPLES timed ones; p95 is their nearest-rank 95th percentile. Queries are counted on one more request.
Then 1,500 more repositories are added (5 stages each) and the dashboard is measured again at 2,000.
EXPLAIN of the dashboard's queries and of a filtered audit page is printed: which tables are read by index.

    DATABASE_URL=postgres://root@127.0.0.1:5432/gitops_bench_pages .venv/bin/python bench/pages.py
"""

import hashlib
import os
import re
import time
from datetime import timedelta

import psutil

from _common import ms, percentile, portal, report

REPOSITORIES, MORE_REPOSITORIES = 500, 1500
STAGES = ["dev", "staging", "qa", "uat", "production"]
RELEASES_PER_REPOSITORY = 40  # × 5 stages × 500 repositories = 100,000 deployments
AUDIT_EVENTS = 100_000
LOG_LINES = 100_000
PENDING_REQUESTS = 200
FAILED, RUNNING, PAUSED = 25, 10, 10
WARMUP, SAMPLES = 5, 100  # 100 samples: a p95 of 20 is their second slowest, at the mercy of one hiccup
BATCH = 5000

PIPELINE = "environments:\n" + "".join(f"  {name}:\n    steps:\n      - run: ./deploy.sh {name}\n" for name in STAGES)


def batched(model, rows):
    made = []
    for start in range(0, len(rows), BATCH):
        made += model.objects.bulk_create(rows[start:start + BATCH])
    return made


def sha(text):
    return hashlib.sha1(text.encode()).hexdigest()


def make_repositories(names, stages, releases_each, now, *, first=True):
    """Repositories with `releases_each` releases each deployed to every stage, and a Target per stage whose
    last deployment is the newest release's. Returns {(repository id, environment id): last deployment}."""
    from pipelines.models import Deployment, Release, Repository, Target

    repositories = batched(Repository, [Repository(name=name, url=f"https://git.example.com/{name}.git",
                                                   last_polled_at=now) for name in names])
    releases = batched(Release, [
        Release(repository=r, version=f"v1.{n}.0", commit_sha=sha(f"{r.name}{n}"), pipeline_text=PIPELINE,
                message=f"change {n}", author_name="Dana", author_email="dana@example.com")
        for r in repositories for n in range(releases_each)
    ])
    deployments = []
    for release in releases:
        n = int(release.version.split(".")[1])
        when = now - timedelta(hours=(releases_each - n) * 6)
        for stage in stages:
            deployments.append(Deployment(
                release=release, environment=stage.environment, repository=release.repository,
                status=Deployment.Status.SUCCEEDED, trigger=Deployment.Trigger.AUTO, created_at=when,
                queued_at=when, started_at=when, finished_at=when + timedelta(seconds=40), exit_code=0))
    deployments = batched(Deployment, deployments)
    last = {}
    for deployment in deployments:  # in creation order: the newest release's comes last
        last[deployment.repository_id, deployment.environment_id] = deployment
    batched(Target, [Target(repository_id=r, environment_id=e, current_release_id=d.release_id, last_deployment=d)
                     for (r, e), d in last.items()])
    return repositories, last


def make_states(repositories, stages, last, user, now):
    """Turn some last deployments into what needs someone: pending change requests, failures, runs, pauses."""
    from approvals.models import ChangeRequest
    from pipelines.models import Deployment, Target

    production = stages[-1]
    waiting = []
    for repository in repositories[:PENDING_REQUESTS]:
        deployment = last[repository.pk, production.environment_id]
        Deployment.objects.filter(pk=deployment.pk).update(status=Deployment.Status.AWAITING_APPROVAL, started_at=None,
                                                           finished_at=None, queued_at=None, exit_code=None)
        Target.objects.filter(repository=repository, environment=production.environment).update(
            current_release_id=Deployment.objects.filter(repository=repository, environment=production.environment)
            .exclude(pk=deployment.pk).order_by("-id").values_list("release_id", flat=True)[:1])
        waiting.append(ChangeRequest(deployment=deployment, repository=repository, environment=production.environment,
                                     stage=production, requested_by=None, required_approvals=2, opened_at=now,
                                     summary={"commits": [{"sha": sha(repository.name), "message": "change"}],
                                              "files": ["app.py"], "pipeline_diff": "", "is_rollback": False}))
    batched(ChangeRequest, waiting)
    staging = stages[1]
    for repository in repositories[PENDING_REQUESTS:PENDING_REQUESTS + FAILED]:
        Deployment.objects.filter(pk=last[repository.pk, staging.environment_id].pk).update(
            status=Deployment.Status.FAILED, exit_code=1, error="step 1 exited with 1")
    for repository in repositories[PENDING_REQUESTS + FAILED:PENDING_REQUESTS + FAILED + RUNNING]:
        Deployment.objects.filter(pk=last[repository.pk, stages[0].environment_id].pk).update(
            status=Deployment.Status.RUNNING, finished_at=None)
    paused = repositories[-PAUSED:]
    Target.objects.filter(repository__in=paused, environment=stages[2].environment).update(
        auto_deploy_paused=True, paused_reason="Rollback to v1.38.0 (deployment requested by admin)", paused_by=user)


def make_audit_events(repositories, environments, user, now):
    from pipelines.models import AuditEvent

    actions = ["deployment.queued", "deployment.succeeded", "deployment.failed", "change_request.approved",
               "release.detected", "target.paused"]
    events, previous = [], "0" * 64
    for seq in range(1, AUDIT_EVENTS + 1):
        digest = hashlib.sha256(f"{seq}".encode()).hexdigest()
        repository = repositories[seq % len(repositories)]
        events.append(AuditEvent(
            seq=seq, created_at=now - timedelta(seconds=(AUDIT_EVENTS - seq) * 30), actor=user if seq % 3 else None,
            actor_name="admin" if seq % 3 else "system", action=actions[seq % len(actions)], object_type="deployment",
            object_id=str(seq), object_repr=f"#{seq} {repository.name} v1.{seq % 40}.0", repository=repository,
            environment=environments[seq % len(environments)], details={"release": f"v1.{seq % 40}.0"},
            prev_hash=previous, hash=digest))
        previous = digest
    batched(AuditEvent, events)


def make_long_log(deployment, steps=5):
    """A log as the runner writes it (pipelines/run_log.py): `steps` marked steps, each a share of LOG_LINES
    lines with some on stderr, stored in chunks of 100 lines."""
    from pipelines import run_log
    from pipelines.models import DeploymentLogChunk

    lines_per_chunk, per_step = 100, LOG_LINES // steps
    texts = []
    for step in range(1, steps + 1):
        texts.append(run_log.step_started(step, steps, f"apply part {step}", f"./apply.sh {step}"))
        texts += [(run_log.STDERR_MARK if n % 50 == 49 else "")
                  + f"[{(step - 1) * per_step + n:06d}] applying manifest part {n} of the release\n"
                  for n in range(per_step)]
        texts.append(run_log.step_ended(step, steps, status="succeeded", exit_code=0, seconds=12.5))
    batched(DeploymentLogChunk, [
        DeploymentLogChunk.of(deployment, n + 1, "".join(texts[start:start + lines_per_chunk]))
        for n, start in enumerate(range(0, len(texts), lines_per_chunk))
    ])


# --- measuring -------------------------------------------------------------------------------------------


def reference_loop():
    """Seconds of a fixed pure-Python loop: printed before and after measuring, to show how fast this
    machine's CPU was meanwhile (a shared VM's varies by half from one minute to the next)."""
    started, total = time.perf_counter(), 0
    for n in range(3_000_000):
        total += n
    return time.perf_counter() - started


def measure(client, url, **headers):
    """(p95 seconds, queries, bytes, the last body) of GET url."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(WARMUP):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        body = response.content
        times.append(time.perf_counter() - started)
    with CaptureQueriesContext(connection) as queries:
        client.get(url, headers=headers)
    return percentile(times, 0.95), queries, len(body), body.decode()


def measure_stream(client, url):
    """(first byte seconds, total seconds, bytes, RSS growth) of a streamed GET."""
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    response = client.get(url)
    chunks = iter(response.streaming_content) if response.streaming else iter([response.content])
    first = next(chunks)
    first_byte = time.perf_counter() - started
    size, peak = len(first), before
    for n, chunk in enumerate(chunks):
        size += len(chunk)
        if n % 5000 == 0:
            peak = max(peak, process.memory_info().rss)
    total = time.perf_counter() - started
    return first_byte, total, size, max(peak, process.memory_info().rss) - before, response.streaming


def plans(queries, pattern=r"."):
    """For each captured query matching `pattern`: how its tables are read (EXPLAIN's scan nodes)."""
    from django.db import connection

    lines = []
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            sql = query["sql"]
            if not re.search(pattern, sql) or not sql.lstrip().lstrip("(").upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN " + sql)
            nodes = [row[0].strip().lstrip("-> ").split("  (")[0] for row in cursor.fetchall()]
            scans = [node for node in nodes if "Scan" in node]
            table = re.search(r'FROM "?(\w+)"?', sql)
            lines.append(f"  {table[1] if table else '?'}: " + "; ".join(scans or nodes[:1]))
    return lines


def profile(client, url, **headers):
    """With PAGES_PROFILE=<part of a URL>: where the time of that page goes (cProfile, top 30 by own time)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        client.get(url, headers=headers)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def page_rows(client, name, url, target_s, target_queries=None, **headers):
    if os.environ.get("PAGES_PROFILE") and os.environ["PAGES_PROFILE"] in url:
        profile(client, url, **headers)
    p95, queries, size, body = measure(client, url, **headers)
    slowest = max(queries.captured_queries, key=lambda q: float(q["time"]), default=None)
    if slowest and float(slowest["time"]) > 0.010:
        print(f"  {name}: slowest query {float(slowest['time']) * 1000:.0f} ms: {slowest['sql'][:200]}")
        if os.environ.get("PAGES_ANALYZE"):
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN ANALYZE " + slowest["sql"])
                print("\n".join("    " + row[0] for row in cursor.fetchall()))
    rows = [(f"{name}: p95 server time", ms(p95), f"≤ {ms(target_s)}", p95 <= target_s),
            (f"{name}: queries", f"{len(queries)} ({sum(float(q['time']) for q in queries.captured_queries) * 1000:.0f} ms)", f"≤ {target_queries}" if target_queries else None,
             len(queries) <= target_queries if target_queries else None),
            (f"{name}: HTML", f"{size / 1024:.0f} KB", None, None)]
    return rows, queries, body


def main():
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
    with portal("pages"):
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.db import connection
        from django.test import Client
        from django.urls import NoReverseMatch, reverse
        from django.utils import timezone

        from approvals.models import StagePolicy
        from pipelines.dashboard import DASHBOARD_PAGE_SIZE
        from pipelines.models import Deployment, Environment, Lifecycle, Release, Stage

        now = timezone.now()
        started = time.perf_counter()
        approvers = Group.objects.create(name="approvers")
        user = get_user_model().objects.create_superuser("admin", "admin@example.com", "bench-password")
        user.groups.add(approvers)
        lifecycle = Lifecycle.objects.get_or_create(name="default")[0]
        stages = []
        for position, name in enumerate(STAGES, start=1):
            environment = Environment.objects.create(name=name, position=position)
            stages.append(Stage.objects.create(lifecycle=lifecycle, environment=environment, position=position,
                                               requires_approval=name == "production"))
        StagePolicy.objects.create(stage=stages[-1], approver_group=approvers, required_approvals=2)
        stages = list(Stage.objects.select_related("environment").order_by("position"))
        repositories, last = make_repositories([f"service-{n:04d}" for n in range(REPOSITORIES)], stages,
                                               RELEASES_PER_REPOSITORY, now)
        make_states(repositories, stages, last, user, now)
        make_audit_events(repositories, [s.environment for s in stages], user, now)
        logged = last[repositories[-1].pk, stages[0].environment_id]
        make_long_log(logged)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        made = time.perf_counter() - started
        counts = f"{Deployment.objects.count():,} deployments, {Release.objects.count():,} releases"

        client = Client()
        client.force_login(user)
        reference_before = reference_loop()
        rows, notes = [], [f"data: {REPOSITORIES} repositories × {len(STAGES)} stages, {counts}, "
                           f"{AUDIT_EVENTS:,} audit events, made in {made:.0f} s"]
        dash_rows, dash_queries, dash_body = page_rows(client, f"dashboard ({REPOSITORIES} repositories)",
                                                       reverse("dashboard"), 0.050, 10)
        rows += dash_rows
        poll_rows, _, _ = page_rows(client, "dashboard poll (htmx)", reverse("dashboard"), 0.050, 10, HX_Request="true")
        rows += poll_rows
        filtered_rows, filtered_queries, _ = page_rows(client, "dashboard ?state=failed&q=service-02",
                                                       reverse("dashboard") + "?state=failed&q=service-02", 0.050, 10)
        rows += filtered_rows
        repository = repositories[PENDING_REQUESTS]
        release = Release.objects.filter(repository=repository).order_by("-id").first()
        for name, url, target in [
            ("repository page", reverse("repository_detail", args=[repository.name]), 0.150),
            ("release page", reverse("release_detail", args=[repository.name, release.version]), 0.150),
            (f"deployment page ({LOG_LINES:,}-line log)", reverse("deployment_detail", args=[logged.pk]), 0.150),
            (f"inbox ({PENDING_REQUESTS} pending)", reverse("approvals_inbox"), 0.100),
            ("navigation badge (htmx, asked for by every page once loaded)", reverse("approvals_navigation_badge"), 0.050),
            ("audit page, first", reverse("audit_log"), 0.150),
            ("audit page, filtered", reverse("audit_log") + f"?repository={repository.name}&action=deployment.", 0.150),
        ]:
            page, queries, _ = page_rows(client, name, url, target)
            rows += page
            if name == "audit page, filtered":
                audit_plans = plans(queries, r'pipelines_auditevent')
        try:
            insights = reverse("insights")
        except NoReverseMatch:
            rows.append(("insights page", "not built", "≤ 150 ms", None))
        else:
            rows += page_rows(client, "insights page", insights, 0.150)[0]
        first_byte, total, size, growth, streamed = measure_stream(client, reverse("audit_export_csv"))
        rows += [
            ("audit CSV: first byte", ms(first_byte), "≤ 200 ms", first_byte <= 0.200),
            ("audit CSV: whole", f"{total:.1f} s for {size / 2**20:.0f} MB", None, None),
            ("audit CSV: RSS growth while streaming", f"{growth / 2**20:.0f} MB", "flat (streamed)",
             bool(streamed) and growth < 64 * 2**20),
        ]

        more, more_last = make_repositories([f"more-{n:04d}" for n in range(MORE_REPOSITORIES)], stages, 1, now)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        total_repositories = REPOSITORIES + MORE_REPOSITORIES
        rows += page_rows(client, f"dashboard ({total_repositories} repositories)", reverse("dashboard"), 0.050, 10)[0]
        big_rows, big_queries, _ = page_rows(client, f"dashboard ({total_repositories}), last page",
                                             reverse("dashboard") + f"?page={total_repositories // DASHBOARD_PAGE_SIZE}", 0.050, 10)
        rows += big_rows

        report("pages (server time, Django test client in-process)", rows, notes=[
            *notes,
            "load average while measuring (other processes share the cores): "
            + ", ".join(f"{load:.1f}" for load in os.getloadavg()),
            f"reference loop (3M additions in this Python; about 150 ms on a quiet core, twice that seen on a busy host): "
            f"{ms(reference_before)} before measuring, {ms(reference_loop())} after",
            "EXPLAIN, dashboard (first page, 500 repositories):", *plans(dash_queries, r"pipelines_|approvals_"),
            "EXPLAIN, dashboard ?state=failed&q=service-02:", *plans(filtered_queries, r"pipelines_|approvals_"),
            "EXPLAIN, audit page filtered by repository and action:", *audit_plans,
        ])


if __name__ == "__main__":
    main()
