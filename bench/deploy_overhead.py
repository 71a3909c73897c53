"""The portal's own overhead per deployment of a 2,000-file repository, with a real rq worker.

The staging step does nothing but write two timestamps, so what is left is the portal:
overhead = (step start − rq job started_at) + (rq job ended_at − step end).
rq stamps started_at in the worker right before calling the job, and ended_at right after it returns.
The split uses the rows too: claimed (Deployment.started_at) and finished (Deployment.finished_at). (The
first log line no longer marks "files written": the runner buffers it and stores it with the step's output.)
Target: median ≤ 150 ms.
"""

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import environment, make_origin, ms, percentile, pipeline_yaml, portal, report, wait_finished

N = 30
TARGET = 0.150
DIRS, FILES_PER_DIR = 40, 50


def diagnostics(repository, release, work_dir):
    """Where the pickup time goes: writing the files (vs tar alone, the floor of this disk), and the imports
    that a worker makes once before its first job."""
    from django.conf import settings

    from pipelines import git

    def best_of_three(write):
        timings = []
        for _ in range(3):
            destination = tempfile.mkdtemp(dir=work_dir)
            started = time.perf_counter()
            write(destination)
            timings.append(time.perf_counter() - started)
            subprocess.run(["rm", "-rf", destination], check=True)
        return min(timings)

    archive = work_dir / "release.tar"
    subprocess.run(["git", f"--git-dir={git.mirror_path(repository)}", "archive", "-o", str(archive), release.commit_sha],
                   check=True)
    materialise = best_of_three(lambda d: git.materialise(repository, release.commit_sha, d))
    tar_alone = best_of_three(lambda d: subprocess.run(["tar", "-x", "-f", str(archive), "-C", d], check=True))
    code = ("import time, django; django.setup(); t = time.perf_counter(); import pipelines.runs.kernel; "
            "print(time.perf_counter() - t)")
    imports = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    return [f"in-process, best of 3, into GITOPS_WORK_DIR ({settings.GITOPS_WORK_DIR}):",
            f"  git.materialise {ms(materialise)}, tar -x of the same archive alone {ms(tar_alone)} (this disk's floor)",
            f"  import pipelines.runs.kernel after django.setup(): {ms(imports)} (paid once per worker: PortalWorker imports it "
            "at start and runs deployments in its own process)"]


def main():
    with portal("deploy") as the_portal, contextlib.ExitStack() as cleanup:
        from pipelines import tracking
        from pipelines.models import Deployment, Repository
        from pipelines.promotion import promote

        # Outside the data dir: the sandbox hides the portal's directories from steps (pipelines/sandbox.py).
        marker = Path(tempfile.mkdtemp(prefix="gitops-bench-marker-"))
        cleanup.callback(shutil.rmtree, marker, ignore_errors=True)
        staging = environment(name="staging", position=10, auto_deploy=False)
        files = {f"src/dir{d:02d}/file{f:02d}.txt": f"directory {d} file {f}\n" + "x" * 300 + "\n"
                 for d in range(DIRS) for f in range(FILES_PER_DIR)}
        files[".gitops.yml"] = pipeline_yaml('date +%s.%N > "$MARKER/start"; date +%s.%N > "$MARKER/end"',
                                             variables={"MARKER": marker})
        origin = make_origin(the_portal.data_dir / "origin", files, tag="v1.0.0")
        repository = Repository.objects.create(name="big", url=str(origin))
        (release,) = tracking.poll_repository(repository)

        the_portal.start_worker("deploy")
        samples = []  # per deployment: the four intervals of the report's split, in seconds
        for n in range(N + 1):  # the first one warms up and is not counted
            trigger = Deployment.Trigger.MANUAL if n == 0 else Deployment.Trigger.RETRY
            deployment, job = wait_finished(promote(release, staging, by=None, trigger=trigger))
            if deployment.status != Deployment.Status.SUCCEEDED:
                raise RuntimeError(f"deployment #{deployment.pk} {deployment.status}: {deployment.error}")
            start, end = (float((marker / name).read_text()) for name in ("start", "end"))
            job_start, job_end = job.started_at.timestamp(), job.ended_at.timestamp()
            claimed, finished = deployment.started_at.timestamp(), deployment.finished_at.timestamp()
            if n:
                samples.append((claimed - job_start, start - claimed, finished - end, job_end - finished))

        from django.conf import settings

        notes = diagnostics(repository, release, settings.GITOPS_WORK_DIR)
        pickup = [sum(s[:2]) for s in samples]
        bookkeeping = [sum(s[2:]) for s in samples]
        overhead = [p + b for p, b in zip(pickup, bookkeeping)]

        def row(label, values, target=None):
            ok = None if target is None else statistics.median(values) <= target
            return (label, f"{ms(statistics.median(values))} / {ms(percentile(values, 0.9))}",
                    f"median ≤ {ms(target)}" if target else None, ok)

        report(f"portal overhead per deployment, {len(files)} files (N={N}, median / p90)", [
            row("overhead per deployment", overhead, TARGET),
            row("  pickup → step start", pickup),
            row("    job start → claimed (DB)", [s[0] for s in samples]),
            row("    claimed → step start (files, fork)", [s[1] for s in samples]),
            row("  step end → job end", bookkeeping),
            row("    step end → finished (DB)", [s[2] for s in samples]),
            row("    finished → job end (wake the next)", [s[3] for s in samples]),
        ], notes=["overhead: " + " ".join(f"{v * 1000:.0f}" for v in overhead) + " ms", *notes])


def main_in_both_places():
    """Measure with the checkouts on the data dir's disk and on tmpfs (GITOPS_WORK_DIR), each in its own process:
    on a slow disk, creating 2,000 files is most of the time, and operators can choose the place."""
    for label, work_dir in (("on the data dir's disk", None), ("on tmpfs", "/dev/shm")):
        env = dict(os.environ, BENCH_DEPLOY_CHILD="1")
        if work_dir:
            env["GITOPS_WORK_DIR"] = tempfile.mkdtemp(prefix="gitops-bench-work-", dir=work_dir)
        print(f"\n### checkouts {label}", flush=True)
        try:
            subprocess.run([sys.executable, __file__], env=env, check=False)
        finally:
            if work_dir:
                shutil.rmtree(env["GITOPS_WORK_DIR"], ignore_errors=True)


if __name__ == "__main__":
    if os.environ.get("BENCH_DEPLOY_CHILD") or not os.path.isdir("/dev/shm"):
        main()
    else:
        main_in_both_places()
