"""Throughput and worker CPU of no-op deployments under `manage.py runportal`, beside their floor, measured in
turns in one run: floor, portal, floor, portal (ROUNDS of each), so that a machine busy with other work
slows both alike and the figures stay comparable.

Portal: the production processes, started by `manage.py runportal --workers 2` (gunicorn, 2 × `rqworker git
deploy checks` running PortalWorker, and the scheduler `pollrepos --loop` with its reconciler). Per round,
200 deployments of a step that does nothing (`true`) are queued at once, one per target (40 repositories ×
5 environments without approval and without automatic deployment, so nothing chains and nothing is
superseded), by promote() inside one transaction: its commit enqueues all 200 jobs. Measured: from the first
enqueue until all 200 deployments are `succeeded` and their follow-ups carried out; "lost" counts deployments
not succeeded by then (or at the deadline). Each round deploys a new tag (v1.0.<round-1>), recorded by
polling the 40 repositories before the clock starts; the repositories are polled hourly, so the scheduler's
polls stay out of the measurement (its reconciler ticks do not).
Worker CPU per deployment: user + system time of the two worker processes during the round (psutil), their
own (the portal's Python) and their reaped children's (the step, its supervisor, git, tar), divided by 200.

Floor: what a deployment cannot do without, on the same mirrors and work dir: `git archive <sha> | tar -x`
into a fresh directory, `bash -c true`, removing the directory; one at a time (median of FLOOR_SAMPLES), and
200 of them 2 in parallel (a rate, and the CPU of those processes per deployment).

Targets (issue 19, "Cheaper runs"): ≥ 40 deployments/s with 2 workers, none lost; ≤ 15 ms of worker CPU per
no-op deployment (own + children: what the workers spend on it).

Checkouts go to GITOPS_WORK_DIR; unless it is set, the bench uses a directory on /dev/shm, as the README
recommends for a slow disk (it says which in its output).
"""

import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

from _common import (
    backends_cpu_seconds,
    children_cpu_seconds,
    cpu_seconds,
    database_backends,
    environment,
    git,
    make_origin,
    ms,
    percentile,
    portal,
    portal_idle,
    report,
    wait_for,
)

REPOSITORIES, ENVIRONMENTS = 40, 5
N = REPOSITORIES * ENVIRONMENTS  # 200 deployments per round, one per target
WORKERS = 2
ROUNDS = 2
TARGET_RATE = 40.0
TARGET_CPU = 0.015  # seconds of worker CPU per deployment
DEADLINE = 300  # seconds per round; what is not done by then counts as lost
FLOOR_SAMPLES = 20


def pipeline_file():
    lines = ["environments:"]
    for n in range(1, ENVIRONMENTS + 1):
        lines += [f"  env{n}:", "    steps:", "      - name: deploy", "        run: 'true'"]
    return "\n".join(lines) + "\n"


def floor_one(mirror, sha, work_dir):
    """One deployment's unavoidable work: the files of the release, a bash, the clean-up."""
    destination = tempfile.mkdtemp(prefix="floor-", dir=work_dir)
    archive = subprocess.Popen(["git", f"--git-dir={mirror}", "archive", "--format=tar", sha], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-f", "-", "-C", destination, "--no-same-owner"], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError("git archive failed")
    subprocess.run(["bash", "-eo", "pipefail", "-c", "true"], cwd=destination, check=True)
    shutil.rmtree(destination)


def measure_floor(mirrors, sha, work_dir):
    """{"one": seconds per deployment one at a time (median), "rate": deployments per second with WORKERS in
    parallel, "cpu": CPU seconds of their processes per deployment}."""
    timings = []
    for n in range(FLOOR_SAMPLES + 2):
        started = time.perf_counter()
        floor_one(mirrors[n % len(mirrors)], sha, work_dir)
        if n >= 2:  # the first two warm the page cache
            timings.append(time.perf_counter() - started)
    errors = []

    def worker(share):
        try:
            for n in share:
                floor_one(mirrors[n % len(mirrors)], sha, work_dir)
        except Exception as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(range(k, N, WORKERS),)) for k in range(WORKERS)]
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return {"one": statistics.median(timings), "rate": N / wall, "cpu": (children_cpu_seconds() - cpu_before) / N}


def measure_portal(the_portal, running, releases, environments):
    """Queue one deployment of each release to each environment and wait for them all; the round's figures."""
    from django.db import transaction

    from pipelines.models import Deployment, FollowUp
    from pipelines.promotion import promote

    # The releases' follow-ups (automatic promotion of new releases: off everywhere) end before the clock starts.
    wait_for(portal_idle, 60, "the polls' follow-ups", interval=0.02)
    cpu_before = cpu_seconds(running.workers)
    scheduler_before = cpu_seconds([running.scheduler])[0]
    backends_before = backends_cpu_seconds(database_backends())
    enqueued_at = []
    with transaction.atomic():
        # on_commit callbacks run in the order they were registered: this one first, then the 200 enqueues.
        transaction.on_commit(lambda: enqueued_at.append(time.perf_counter()))
        deployments = [promote(release, environment, by=None) for release in releases for environment in environments]
    ids = [d.pk for d in deployments]
    finished_statuses = [Deployment.Status.SUCCEEDED, Deployment.Status.FAILED, Deployment.Status.CANCELLED]

    succeeded_at = follow_ups_at = None
    deadline = enqueued_at[0] + DEADLINE
    while time.perf_counter() < deadline:
        for _, process, _ in the_portal.children:
            the_portal.check_alive(process)
        if succeeded_at is None and Deployment.objects.filter(pk__in=ids, status__in=finished_statuses).count() == N:
            succeeded_at = time.perf_counter()
        if succeeded_at is not None and not FollowUp.objects.pending().exists():
            follow_ups_at = time.perf_counter()
            break
        time.sleep(0.02)  # polling less often would blur the end; more often would load the database

    own, children = (after - before for after, before in zip(cpu_seconds(running.workers), cpu_before))
    scheduler = cpu_seconds([running.scheduler])[0] - scheduler_before
    # A backend that started during the round counts whole; one that ended during it (a work-horse's) is missed.
    backends_after = backends_cpu_seconds(database_backends())
    database = sum(seconds - backends_before.get(pid, 0.0) for pid, seconds in backends_after.items())
    rows = list(Deployment.objects.filter(pk__in=ids))
    succeeded = [d for d in rows if d.status == Deployment.Status.SUCCEEDED]
    statuses = {}
    for d in rows:
        statuses[d.status] = statuses.get(d.status, 0) + 1
    end = follow_ups_at or succeeded_at or time.perf_counter()
    wall = end - enqueued_at[0]
    return {
        "rate": len(succeeded) / wall, "wall": wall, "lost": N - len(succeeded), "statuses": statuses,
        "deployments_only": N / (succeeded_at - enqueued_at[0]) if succeeded_at else None,
        "follow_ups_pending": FollowUp.objects.pending().count(),
        "own": own / N, "children": children / N, "scheduler": scheduler / N, "database": database / N,
        "split": job_split(succeeded),
    }


def new_releases(origin, repositories, version):
    """Tag `version` in the origin and record it in every repository (as a webhook's poll would)."""
    from pipelines import tracking

    git(origin, "commit", "-q", "--allow-empty", "-m", f"release {version}")
    git(origin, "tag", version)
    releases = []
    for repository in repositories:
        (release,) = tracking.poll_repository(repository)
        releases.append(release)
    return releases


def job_split(deployments):
    """Per deployment, from rq's stamps and the rows: (job start → claimed, claimed → finished, finished → job
    end) and, per worker, the gap from one job's end to the next job's start (dequeue; a deployment runs in the worker's
    own process, see pipelines/worker.py)."""
    import django_rq
    from rq.job import Job

    connection = django_rq.get_connection("deploy")
    jobs = {job.id: job for job in Job.fetch_many([d.job_id for d in deployments], connection=connection) if job}
    split, by_worker = [], {}
    for deployment in deployments:
        job = jobs.get(deployment.job_id)
        if job is None or not (job.started_at and job.ended_at and deployment.started_at and deployment.finished_at):
            continue
        start, end = job.started_at.timestamp(), job.ended_at.timestamp()
        claimed, finished = deployment.started_at.timestamp(), deployment.finished_at.timestamp()
        split.append((claimed - start, finished - claimed, end - finished, end - start))
        by_worker.setdefault(job.worker_name, []).append((start, end))
    gaps = []
    for spans in by_worker.values():
        spans.sort()
        gaps += [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
    return split, gaps


def main():
    work_dir_note = "GITOPS_WORK_DIR as given"
    own_work_dir = None
    if not os.environ.get("GITOPS_WORK_DIR") and os.path.isdir("/dev/shm"):
        own_work_dir = tempfile.mkdtemp(prefix="gitops-bench-work-", dir="/dev/shm")
        os.environ["GITOPS_WORK_DIR"] = own_work_dir
        work_dir_note = "a tmpfs, as the README recommends"
    try:
        run(work_dir_note)
    finally:
        if own_work_dir:
            shutil.rmtree(own_work_dir, ignore_errors=True)


def run(work_dir_note):
    with portal("throughput") as the_portal:
        from django.conf import settings

        from pipelines import git as portal_git
        from pipelines.models import Repository

        environments = [environment(name=f"env{n}", position=10 * n, auto_deploy=False)
                        for n in range(1, ENVIRONMENTS + 1)]
        origin = make_origin(the_portal.data_dir / "origin", {".gitops.yml": pipeline_file(), "deploy.sh": "echo hi\n",
                                                               "README.md": "a small repository\n"})
        # Polled hourly: the scheduler's own polls stay out of the rounds (each round polls them itself).
        repositories = [Repository.objects.create(name=f"service-{n:02d}", url=str(origin), poll_interval=3600)
                        for n in range(REPOSITORIES)]
        releases = new_releases(origin, repositories, "v1.0.0")
        settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
        mirrors = [portal_git.mirror_path(repository) for repository in repositories]
        _, running = the_portal.start_runportal(workers=WORKERS)
        load_before = os.getloadavg()[0]

        rounds = []
        for number in range(1, ROUNDS + 1):
            if number > 1:
                releases = new_releases(origin, repositories, f"v1.0.{number - 1}")
            floor = measure_floor(mirrors, releases[0].commit_sha, settings.GITOPS_WORK_DIR)
            rounds.append((floor, measure_portal(the_portal, running, releases, environments)))
        load_after = os.getloadavg()[0]
        print_report(rounds, work_dir_note=work_dir_note, work_dir=settings.GITOPS_WORK_DIR,
                     load=(load_before, load_after))


def print_report(rounds, *, work_dir_note, work_dir, load):
    rows = []
    for number, (floor, measured) in enumerate(rounds, start=1):
        cpu = measured["own"] + measured["children"]
        rows += [
            (f"round {number} floor: deployments/s, {WORKERS} in parallel", f"{floor['rate']:.0f}/s", None, None),
            (f"round {number} floor: one deployment, alone (median)", ms(floor["one"]), None, None),
            (f"round {number} floor: CPU per deployment (git archive, tar, bash)", f"{floor['cpu'] * 1000:.1f} ms",
             None, None),
            (f"round {number} portal: deployments/s, {WORKERS} workers (all succeeded, follow-ups done)",
             f"{measured['rate']:.1f}/s", f"≥ {TARGET_RATE:.0f}/s", measured["rate"] >= TARGET_RATE),
            (f"round {number} portal: lost (not succeeded)", str(measured["lost"]), "0", measured["lost"] == 0),
            (f"round {number} portal: worker CPU per deployment (own + children)",
             f"{cpu * 1000:.1f} ms ({measured['own'] * 1000:.1f} + {measured['children'] * 1000:.1f})",
             f"≤ {TARGET_CPU * 1000:.0f} ms", cpu <= TARGET_CPU),
            (f"round {number} portal: rate ÷ floor rate of the round", f"{measured['rate'] / floor['rate']:.2f}", None, None),
            (f"round {number} portal: worker time per deployment − floor alone",
             ms(WORKERS * measured["wall"] / N - floor["one"]), None, None),
            (f"round {number} portal: PostgreSQL backends' CPU per deployment (this database's)",
             f"{measured['database'] * 1000:.1f} ms", None, None),
            (f"round {number} portal: scheduler CPU per deployment", f"{measured['scheduler'] * 1000:.1f} ms", None, None),
        ]
    split = [s for _, measured in rounds for s in measured["split"][0]]
    gaps = [g for _, measured in rounds for g in measured["split"][1]]

    def med(values):
        return f"{ms(statistics.median(values))} / {ms(percentile(values, 0.9))}" if values else "-"

    rows += [
        ("all rounds, per job, median / p90: rq job start → claimed", med([s[0] for s in split]), None, None),
        ("  claimed → finished (DB rows; files, step, log)", med([s[1] for s in split]), None, None),
        ("  finished → rq job end (follow-up, wake next)", med([s[2] for s in split]), None, None),
        ("  whole rq job", med([s[3] for s in split]), None, None),
        ("  between jobs of one worker (dequeue, other jobs)", med(gaps), None, None),
    ]
    notes = [(f"{N} targets per round = {REPOSITORIES} repositories × {ENVIRONMENTS} environments; rounds in the "
              f"order floor, portal, floor, portal …; the portal is `manage.py runportal --workers {WORKERS}` "
              f"(rqworker git deploy checks ×{WORKERS}, pollrepos --loop, gunicorn)"),
             f"GITOPS_WORK_DIR = {work_dir} ({work_dir_note})",
             (f"load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after: on a shared machine, other work slows "
              "both the portal and the floor")]
    for number, (_, measured) in enumerate(rounds, start=1):
        if measured["deployments_only"]:
            notes.append(f"round {number}: {measured['deployments_only']:.1f}/s counting the deployments only, "
                         f"{ms(measured['wall'])} in all")
        if measured["follow_ups_pending"]:
            notes.append(f"round {number}: {measured['follow_ups_pending']} follow-ups still pending at the end")
        if measured["lost"]:
            notes.append(f"round {number}: statuses {measured['statuses']}")
    report(f"{N} no-op deployments per round, {WORKERS} workers, {len(rounds)} rounds", rows, notes=notes)


if __name__ == "__main__":
    main()
