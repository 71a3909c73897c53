"""Throughput of no-op deployments with 2 real rq workers, beside the floor measured in the same run.

200 deployments of a step that does nothing (`true`) are queued at once, one per target (40 repositories ×
5 environments without approval and without automatic deployment, so nothing chains and nothing is
superseded), by promote() inside one transaction: its commit enqueues all 200 jobs. Two `manage.py rqworker
git deploy` processes (the production command: the follow-up jobs that each success schedules run on the
`git` queue) were started and registered before. Measured: from the first enqueue until all 200 deployments
are `succeeded` and their follow-ups carried out; "lost" counts deployments not succeeded by then (or at the
deadline).

Floor: what a deployment cannot do without, measured on the same mirrors and work dir in this run:
`git archive <sha> | tar -x` into a fresh directory, `bash -c true`, removing the directory; per deployment
(sequentially) and as a rate with 2 running in parallel.
Portal overhead per deployment = 2 workers × wall time / 200 − the floor per deployment.
Target: ≥ 20 deployments per second, none lost.

Checkouts go to GITOPS_WORK_DIR; unless it is set, the bench uses a directory on /dev/shm, as the README
recommends for a slow disk (it says which in its output).
"""

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

import psutil

from _common import environment, make_origin, ms, percentile, portal, portal_idle, report, wait_for

REPOSITORIES, ENVIRONMENTS = 40, 5
N = REPOSITORIES * ENVIRONMENTS  # 200 deployments, one per target
WORKERS = 2
TARGET_RATE = 20.0
DEADLINE = 300  # seconds; what is not done by then counts as lost
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
    """(seconds per deployment, sequentially: median; deployments per second with WORKERS in parallel)."""
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
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return statistics.median(timings), N / wall


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
        gaps += [later[0] - earlier[1] for earlier, later in zip(spans, spans[1:])]
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
        from django.db import transaction

        from pipelines import git, tracking
        from pipelines.models import Deployment, FollowUp, Repository
        from pipelines.promotion import promote

        environments = [environment(name=f"env{n}", position=10 * n, auto_deploy=False)
                        for n in range(1, ENVIRONMENTS + 1)]
        origin = make_origin(the_portal.data_dir / "origin", {".gitops.yml": pipeline_file(), "deploy.sh": "echo hi\n",
                                                               "README.md": "a small repository\n"}, tag="v1.0.0")
        releases = []
        for n in range(REPOSITORIES):
            repository = Repository.objects.create(name=f"service-{n:02d}", url=str(origin))
            (release,) = tracking.poll_repository(repository)
            releases.append(release)
        settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
        mirrors = [git.mirror_path(release.repository) for release in releases]
        floor, floor_rate = measure_floor(mirrors, releases[0].commit_sha, settings.GITOPS_WORK_DIR)
        workers = [psutil.Process(the_portal.start_worker("git", "deploy").pid) for _ in range(WORKERS)]
        # The polls' follow-ups (automatic promotion of the new releases: off everywhere) run before the clock starts.
        wait_for(portal_idle, 60, "the polls' follow-ups", interval=0.02)
        cpu_before = sum(cpu_seconds(worker) for worker in workers)
        load_before = os.getloadavg()[0]

        enqueued_at = []
        with transaction.atomic():
            # on_commit callbacks run in the order they were registered: this one first, then the 200 enqueues.
            transaction.on_commit(lambda: enqueued_at.append(time.perf_counter()))
            deployments = [promote(release, environment, by=None)
                           for release in releases for environment in environments]
        ids = [d.pk for d in deployments]

        def finished():
            rows = Deployment.objects.filter(pk__in=ids)
            done = rows.filter(status__in=[Deployment.Status.SUCCEEDED, Deployment.Status.FAILED,
                                           Deployment.Status.CANCELLED]).count()
            return done == N

        succeeded_at = follow_ups_at = None
        deadline = enqueued_at[0] + DEADLINE
        while time.perf_counter() < deadline:
            for _, process, _ in the_portal.children:
                the_portal.check_alive(process)
            if succeeded_at is None and finished():
                succeeded_at = time.perf_counter()
            if succeeded_at is not None and not FollowUp.objects.pending().exists():
                follow_ups_at = time.perf_counter()
                break
            time.sleep(0.02)  # polling less often would blur the end; more often would load the database

        cpu = sum(cpu_seconds(worker) for worker in workers) - cpu_before
        load_after = os.getloadavg()[0]
        rows = list(Deployment.objects.filter(pk__in=ids))
        succeeded = [d for d in rows if d.status == Deployment.Status.SUCCEEDED]
        lost = N - len(succeeded)
        pending_follow_ups = FollowUp.objects.pending().count()
        end = follow_ups_at or succeeded_at or time.perf_counter()
        wall = end - enqueued_at[0]
        rate = len(succeeded) / wall
        per_deployment = WORKERS * wall / N
        overhead = per_deployment - floor
        split, gaps = job_split(succeeded)

        def med(values):
            return f"{ms(statistics.median(values))} / {ms(percentile(values, 0.9))}" if values else "-"

        rows_out = [
            ("deployments per second (all succeeded, follow-ups done)", f"{rate:.1f}/s", f"≥ {TARGET_RATE:.0f}/s",
             rate >= TARGET_RATE and lost == 0),
            ("lost (not succeeded)", str(lost), "0", lost == 0),
            ("  wall time, first enqueue → all succeeded",
             ms(succeeded_at - enqueued_at[0]) if succeeded_at else "not reached", None, None),
            ("  wall time, first enqueue → follow-ups done", ms(wall) if follow_ups_at else "not reached", None, None),
            ("  rate counting the deployments only",
             f"{N / (succeeded_at - enqueued_at[0]):.1f}/s" if succeeded_at else "-", None, None),
            ("worker time per deployment (2 × wall / 200)", ms(per_deployment), None, None),
            ("portal overhead per deployment (that − floor)", ms(overhead), None, None),
            ("CPU of the workers per deployment (steps included)", ms(cpu / N), None, None),
            ("floor per deployment (archive | tar -x, bash -c true, rm)", ms(floor), None, None),
            ("floor rate, 2 in parallel", f"{floor_rate:.0f}/s", None, None),
            ("per job, median / p90: rq job start → claimed", med([s[0] for s in split]), None, None),
            ("  claimed → finished (DB rows; files, step, log)", med([s[1] for s in split]), None, None),
            ("  finished → rq job end (follow-up, wake next)", med([s[2] for s in split]), None, None),
            ("  whole rq job", med([s[3] for s in split]), None, None),
            ("  between jobs of one worker (dequeue, follow-up jobs)", med(gaps), None, None),
        ]
        notes = [f"{N} targets = {REPOSITORIES} repositories × {ENVIRONMENTS} environments; {WORKERS} × "
                 "`manage.py rqworker git deploy`; no scheduler or reconciler running",
                 f"GITOPS_WORK_DIR = {settings.GITOPS_WORK_DIR} ({work_dir_note})",
                 f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after: on a shared machine, "
                 "other work slows both the portal and the floor"]
        if pending_follow_ups:
            notes.append(f"{pending_follow_ups} follow-ups still pending at the end")
        if lost:
            statuses = {}
            for d in rows:
                statuses[d.status] = statuses.get(d.status, 0) + 1
            notes.append(f"statuses: {statuses}")
        report(f"{N} no-op deployments, {WORKERS} workers", rows_out, notes=notes)


def cpu_seconds(process):
    """User + system CPU of a worker and of the children it has reaped (the steps, and any work-horses of git jobs)."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


if __name__ == "__main__":
    main()
