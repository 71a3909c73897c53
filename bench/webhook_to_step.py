"""Webhook push → staging step process started, with gunicorn and one real forking rq worker.

N times: commit and tag v1.0.<i> in the origin, take t0, POST a GitHub-signed webhook, wait for the marker
file that the staging step writes (`date +%s.%N`); latency = the step's start time − t0.
Target: median ≤ 250 ms (issue 6).

Floor, measured for each tag in the same run, on a mirror of its own: what no portal can skip between a push
and its step — fetch the new tag (the portal's fetch command), `git archive | tar -x` of the tagged commit,
and fork + exec the step (`bash -eo pipefail -c 'date … > file'`). It is printed beside the latency.
"""

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from _common import environment, git, make_origin, ms, percentile, pipeline_yaml, portal, portal_idle, report, wait_for

N = 15
TARGET = 0.250
SECRET = "bench-webhook-secret"


def post_webhook(url, tag):
    body = json.dumps({"ref": f"refs/tags/{tag}", "repository": {"name": "shop"}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature,
    })
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 202:
            raise RuntimeError(f"webhook answered {response.status}: {response.read()[:200]!r}")


def floor_once(mirror, origin, tag, work_dir):
    """Fetch `tag` from `origin` into `mirror`, write its files into a fresh directory, run a step there;
    returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run(["git", f"--git-dir={mirror}", "fetch", "--quiet", "--prune", "--force", "--no-write-fetch-head", "--",
                    str(origin), "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"], check=True)
    destination = tempfile.mkdtemp(prefix="floor-", dir=work_dir)
    archive = subprocess.Popen(["git", f"--git-dir={mirror}", "archive", "--format=tar", f"refs/tags/{tag}"],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-f", "-", "-C", destination, "--no-same-owner"], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError(f"git archive of {tag} failed")
    subprocess.run(["bash", "-eo", "pipefail", "-c", 'date +%s.%N > "$0/started"', destination], cwd=destination,
                   check=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(destination)
    return elapsed


def main():
    with portal("webhook") as the_portal, contextlib.ExitStack() as cleanup:
        from django.contrib.auth.models import Group

        from pipelines import tracking
        from pipelines.models import Deployment, Repository

        # Outside the data dir: the sandbox hides the portal's directories from steps (pipelines/sandbox.py).
        markers = Path(tempfile.mkdtemp(prefix="gitops-bench-markers-"))
        cleanup.callback(shutil.rmtree, markers, ignore_errors=True)
        staging = environment(name="staging", position=10, auto_deploy=True)
        approvers = Group.objects.create(name="approvers")  # approval needs an approver group (a constraint)
        environment(name="production", position=20, approver_group=approvers)
        pipeline = pipeline_yaml("date +%s.%N > \"$MARKER_DIR/$GITOPS_VERSION.started\"", "true",
                                 variables={"MARKER_DIR": markers})
        origin = make_origin(the_portal.data_dir / "origin", {".gitops.yml": pipeline, "deploy.sh": "echo hi\n"}, tag="v1.0.0")
        repository = Repository.objects.create(name="shop", url=str(origin), webhook_secret=SECRET)

        base_url, _ = the_portal.start_web()
        the_portal.start_worker("git", "deploy")

        def staging_done(version):
            deployment = Deployment.objects.filter(release__version=version, environment=staging).first()
            return deployment is not None and deployment.is_finished

        # Prime: the first poll makes the mirror and records v1.0.0, whose staging deployment warms the worker up.
        tracking.poll_repository(repository)
        wait_for(lambda: staging_done("v1.0.0"), 60, "the warm-up deployment of v1.0.0")
        wait_for(portal_idle, 60, "the follow-ups of v1.0.0", interval=0.02)
        warm_up = Deployment.objects.get(release__version="v1.0.0", environment=staging)
        if warm_up.status != Deployment.Status.SUCCEEDED:
            raise RuntimeError(f"the warm-up deployment {warm_up.status}: {warm_up.error}\n{warm_up.log_since(0)[0]}")
        floor_mirror = the_portal.data_dir / "floor-mirror.git"
        git(the_portal.data_dir, "clone", "-q", "--bare", str(origin), str(floor_mirror))
        floor_work = the_portal.data_dir / "floor-work"
        floor_work.mkdir()
        floors = []

        rows = []  # (POST answered, release recorded, deployment claimed, step started), seconds after t0
        for i in range(1, N + 1):
            tag = f"v1.0.{i}"
            git(origin, "commit", "-q", "--allow-empty", "-m", f"change {i}")
            git(origin, "tag", tag)
            marker = markers / f"{tag}.started"
            t0 = time.time()
            post_webhook(f"{base_url}/hooks/shop", tag)
            answered = time.time() - t0
            wait_for(lambda: marker.exists() and marker.read_text().strip(), 30, f"the staging step of {tag}", interval=0.005)
            step_started = float(marker.read_text()) - t0
            deployment = Deployment.objects.select_related("release").get(release__version=tag, environment=staging)
            recorded = deployment.release.detected_at.timestamp() - t0
            claimed = (deployment.started_at.timestamp() - t0) if deployment.started_at else float("nan")
            rows.append((answered, recorded, claimed, step_started))
            # Let the worker go idle before the next push: one deployment at a time is what is measured.
            wait_for(lambda: staging_done(tag), 30, f"the staging deployment of {tag}")
            # And for what it caused (the production deployment held, its change request opened with git work):
            # on a worker still busy with that, the next push would wait in the queue.
            wait_for(portal_idle, 60, f"the follow-ups of {tag}", interval=0.02)
            floors.append(floor_once(floor_mirror, origin, tag, floor_work))

        latencies = [row[3] for row in rows]
        median = statistics.median(latencies)
        breakdown = [statistics.median(row[k] for row in rows) for k in range(4)]
        floor = statistics.median(floors)
        report(f"webhook push → staging step started (N={N})", [
            ("latency median", ms(median), f"≤ {ms(TARGET)}", median <= TARGET),
            ("floor median (fetch, archive | tar -x, fork the step)", ms(floor), None, None),
            ("latency median − floor (the portal's own share)", ms(median - floor), None, None),
            ("latency p90", ms(percentile(latencies, 0.9)), None, None),
            ("latency max", ms(max(latencies)), None, None),
            ("  median: webhook answered (202)", ms(breakdown[0]), None, None),
            ("  median: release recorded", ms(breakdown[1]), None, None),
            ("  median: deployment claimed", ms(breakdown[2]), None, None),
            ("  median: step started", ms(breakdown[3]), None, None),
        ], notes=["all: " + " ".join(f"{v * 1000:.0f}" for v in latencies) + " ms",
                  "floor: " + " ".join(f"{v * 1000:.0f}" for v in floors) + " ms",
                  f"load average (1 min) {os.getloadavg()[0]:.1f}: on a shared machine, other work slows both"])


if __name__ == "__main__":
    main()
