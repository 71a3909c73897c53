"""A poll sweep over 100 unchanged repositories: `manage.py pollrepos` when every repository is due.

100 small origins with a tag each are registered and polled once (their releases recorded; the only environment
has auto_deploy off, so nothing deploys and no worker is needed). Then, 5 times: mark all due, time one sweep
(in-process call_command; it polls several repositories at once). Target: ≤ 0.5 s. The floor, measured in the
same run: plain `git ls-remote` of all 100 origins, two at a time. One more sweep, one repository at a time, is
instrumented (time inside `git.ls_remote` and in database queries).
"""

import io
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from _common import MANAGE, environment, make_origin, ms, pipeline_yaml, portal, report

REPOSITORIES = 100
SWEEPS = 5
TARGET = 0.5
FLOOR_PARALLELISM = 2


def sweep():
    from django.core.management import call_command

    from pipelines.models import Repository

    Repository.objects.update(last_polled_at=None)  # everything due, nothing moved
    out = io.StringIO()
    started = time.perf_counter()
    call_command("pollrepos", stdout=out)
    elapsed = time.perf_counter() - started
    expected = f"Polled {REPOSITORIES} repositories: 0 new releases, 0 failed."
    if out.getvalue().strip() != expected:
        raise RuntimeError(f"unexpected sweep outcome: {out.getvalue().strip()!r}")
    return elapsed


def instrumented_sweep():
    """One sweep, one repository at a time (so that one connection sees every query), with the time inside
    git.ls_remote and inside SQL measured."""
    from django.db import connection

    from pipelines import git, tracking
    from pipelines.models import Repository

    spent = {"ls_remote": 0.0, "ls_remote_calls": 0, "sql": 0.0, "queries": 0}
    original = git.ls_remote

    def timed_ls_remote(repository):
        started = time.perf_counter()
        try:
            return original(repository)
        finally:
            spent["ls_remote"] += time.perf_counter() - started
            spent["ls_remote_calls"] += 1

    def timed_sql(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            spent["sql"] += time.perf_counter() - started
            spent["queries"] += 1

    git.ls_remote = timed_ls_remote
    try:
        Repository.objects.update(last_polled_at=None)
        with connection.execute_wrapper(timed_sql):
            started = time.perf_counter()
            tracking.poll_due_repositories(concurrency=1)
            spent["total"] = time.perf_counter() - started
    finally:
        git.ls_remote = original
    return spent


def ls_remote_floor(urls):
    """Plain `git ls-remote` of every origin, FLOOR_PARALLELISM at a time: what any sweep must at least wait for."""
    def ls_remote(url):
        subprocess.run(["git", "ls-remote", "--heads", "--tags", "--", url], check=True, capture_output=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=FLOOR_PARALLELISM) as pool:
        list(pool.map(ls_remote, urls))
    return time.perf_counter() - started


def main():
    with portal("poll") as the_portal:
        from django.conf import settings

        from pipelines import tracking
        from pipelines.models import Release, Repository

        environment(name="staging", position=10, auto_deploy=False)
        pipeline = pipeline_yaml("./deploy.sh")
        for n in range(REPOSITORIES):
            origin = make_origin(the_portal.data_dir / "origins" / f"repo-{n:03d}",
                                 {".gitops.yml": pipeline, "deploy.sh": f"echo {n}\n"}, tag="v1.0.0")
            Repository.objects.create(name=f"repo-{n:03d}", url=str(origin))
        first = tracking.poll_due_repositories()
        if first["polled"] != REPOSITORIES or first["failed"] or Release.objects.count() != REPOSITORIES:
            raise RuntimeError(f"the first poll did not record every repository: {first}")

        urls = list(Repository.objects.values_list("url", flat=True))
        timings, floors = [], []
        for _ in range(SWEEPS):  # interleaved, so that both see the same load on the machine
            timings.append(sweep())
            floors.append(ls_remote_floor(urls))
        spent = instrumented_sweep()
        whole_command = []  # the command as cron or an operator runs it: interpreter and Django start-up included
        for _ in range(3):
            Repository.objects.update(last_polled_at=None)
            started = time.perf_counter()
            subprocess.run([*MANAGE, "pollrepos"], check=True, capture_output=True)
            whole_command.append(time.perf_counter() - started)

        median, floor = statistics.median(timings), statistics.median(floors)
        other = spent["total"] - spent["ls_remote"] - spent["sql"]
        concurrency = getattr(settings, "GITOPS_POLL_CONCURRENCY", tracking.DEFAULT_POLL_CONCURRENCY)
        report(f"poll sweep over {REPOSITORIES} unchanged repositories ({SWEEPS} sweeps, call_command, "
               f"{concurrency} at a time)", [
            ("sweep median", ms(median), f"≤ {ms(TARGET)}", median <= TARGET),
            (f"floor: `git ls-remote` of all {REPOSITORIES}, {FLOOR_PARALLELISM} at a time, median", ms(floor), None, None),
            ("sweep max", ms(max(timings)), None, None),
            ("`manage.py pollrepos` process, median of 3", ms(statistics.median(whole_command)), None, None),
            ("profiled sweep, one at a time: total", ms(spent["total"]), None, None),
            (f"  in git.ls_remote ({spent['ls_remote_calls']} calls)", ms(spent["ls_remote"]), None, None),
            (f"  in SQL ({spent['queries']} queries)", ms(spent["sql"]), None, None),
            ("  rest (Python, ORM)", ms(other), None, None),
        ], notes=["per repository: " + f"{spent['ls_remote'] / spent['ls_remote_calls'] * 1000:.1f} ms ls-remote, "
                  f"{spent['queries'] / REPOSITORIES:.1f} queries; sweeps: "
                  + " ".join(f"{t * 1000:.0f}" for t in timings) + " ms; floors: "
                  + " ".join(f"{t * 1000:.0f}" for t in floors) + " ms"])

if __name__ == "__main__":
    main()
