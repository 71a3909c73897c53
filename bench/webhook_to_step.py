"""Webhook push → staging step process started, under `manage.py runportal`, beside its floor, measured in turns
in one run: floor, portal, floor, portal (ROUNDS of each, N samples per round), so that a machine busy with
other work slows both alike.

Portal: the production processes, started by `manage.py runportal --workers 2` (gunicorn, 2 × `rqworker git
deploy checks` running PortalWorker, the scheduler `pollrepos --loop` with its reconciler). Per sample: commit
and tag v1.0.<i> in the origin, take t0, POST a GitHub-signed webhook, wait for the marker file that the
staging step writes (`date +%s.%N`); latency = the step's start time − t0. Then wait until the portal is idle
(the production deployment held for approval, its change request opened) before the next push. The
repository is polled hourly, so the release comes through the webhook's poll, not the scheduler's.

Floor: what no portal can skip between a push and its step, on a mirror and an origin of its own (a clone of
the portal's origin, so the portal never sees its tags): commit and tag, take t0, fetch the new tag (the
portal's fetch command), `git archive | tar -x` of the tagged commit, fork + exec the step (`bash -eo pipefail
-c 'date +%s.%N > marker'`); latency = the step's time − t0, as for the portal.

Target (issue 19, "Cheaper runs"): latency median ≤ 3 × the floor's median. Also shown: issue 6's ≤ 250 ms.
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

N = 10  # samples per round
ROUNDS = 2
TARGET_RATIO = 3.0
TARGET_ISSUE_6 = 0.250
SECRET = "bench-webhook-secret"
# The way from the push to the step, each stamp in seconds after the push (rq's stamps for the jobs).
STAGES = ["webhook answered (202)", "poll job started (forked work-horse)", "release recorded",
          "poll job ended (promotion carried out in it)", "deployment job enqueued", "deployment job started",
          "deployment claimed", "step started"]
STEP = 'date +%s.%N > "$MARKER_DIR/$GITOPS_VERSION.started"'


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


class Floor:
    """The floor's own origin (a clone of the portal's), mirror and work directory."""

    def __init__(self, data_dir, origin, markers):
        self.origin = data_dir / "floor-origin"
        git(data_dir, "clone", "-q", str(origin), str(self.origin))
        self.mirror = data_dir / "floor-mirror.git"
        git(data_dir, "clone", "-q", "--bare", str(self.origin), str(self.mirror))
        self.work = data_dir / "floor-work"
        self.work.mkdir()
        self.markers = markers

    def sample(self, tag):
        """Push `tag` to the floor's origin, then fetch it, write its files, start the step: seconds from the
        push to the step's start."""
        git(self.origin, "commit", "-q", "--allow-empty", "-m", f"change {tag}")
        git(self.origin, "tag", tag)
        marker = self.markers / f"floor-{tag}.started"
        t0 = time.time()
        subprocess.run(["git", f"--git-dir={self.mirror}", "fetch", "--quiet", "--prune", "--force",
                        "--no-write-fetch-head", "--", str(self.origin), "+refs/heads/*:refs/heads/*",
                        "+refs/tags/*:refs/tags/*"], check=True)
        destination = tempfile.mkdtemp(prefix="floor-", dir=self.work)
        archive = subprocess.Popen(["git", f"--git-dir={self.mirror}", "archive", "--format=tar", f"refs/tags/{tag}"],
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-f", "-", "-C", destination, "--no-same-owner"], stdin=archive.stdout, check=True)
        archive.stdout.close()
        if archive.wait() != 0:
            raise RuntimeError(f"git archive of {tag} failed")
        subprocess.run(["bash", "-eo", "pipefail", "-c", 'date +%s.%N > "$0"', str(marker)], cwd=destination, check=True)
        shutil.rmtree(destination)
        return float(marker.read_text()) - t0


def main():
    with portal("webhook") as the_portal, contextlib.ExitStack() as cleanup:
        import django_rq
        from django.contrib.auth.models import Group
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        from pipelines import tracking
        from pipelines.models import Deployment, Repository

        # Outside the data dir: the sandbox hides the portal's directories from steps (pipelines/sandbox.py).
        markers = Path(tempfile.mkdtemp(prefix="gitops-bench-markers-"))
        cleanup.callback(shutil.rmtree, markers, ignore_errors=True)
        staging = environment(name="staging", position=10, auto_deploy=True)
        approvers = Group.objects.create(name="approvers")  # approval needs an approver group (a constraint)
        environment(name="production", position=20, approver_group=approvers)
        pipeline = pipeline_yaml(STEP, "true", variables={"MARKER_DIR": markers})
        origin = make_origin(the_portal.data_dir / "origin", {".gitops.yml": pipeline, "deploy.sh": "echo hi\n"}, tag="v1.0.0")
        repository = Repository.objects.create(name="shop", url=str(origin), webhook_secret=SECRET, poll_interval=3600)
        base_url, _ = the_portal.start_runportal(workers=2)

        def staging_done(version):
            deployment = Deployment.objects.filter(release__version=version, environment=staging).first()
            return deployment is not None and deployment.is_finished

        # Prime: the first poll makes the mirror and records v1.0.0, whose staging deployment warms the workers up.
        tracking.poll_repository(repository)
        wait_for(lambda: staging_done("v1.0.0"), 60, "the warm-up deployment of v1.0.0")
        wait_for(portal_idle, 60, "the follow-ups of v1.0.0", interval=0.02)
        warm_up = Deployment.objects.get(release__version="v1.0.0", environment=staging)
        if warm_up.status != Deployment.Status.SUCCEEDED:
            raise RuntimeError(f"the warm-up deployment {warm_up.status}: {warm_up.error}\n{warm_up.log_since(0)[0]}")
        floor = Floor(the_portal.data_dir, origin, markers)
        floor.sample("v0.9.0")  # warms the floor's page cache and git, as v1.0.0 warmed the portal

        def stamps(job_id):
            """(enqueued, started, ended) of an rq job as unix times, or NaNs when it is gone."""
            try:
                job = Job.fetch(job_id, connection=django_rq.get_connection("deploy"))
            except NoSuchJobError:
                return (float("nan"),) * 3
            return tuple(t.timestamp() if t else float("nan") for t in (job.enqueued_at, job.started_at, job.ended_at))

        def portal_sample(tag):
            """(POST answered, poll job started, release recorded, poll job ended, deployment job enqueued, its job
            started, deployment claimed, step started), seconds after the push."""
            git(origin, "commit", "-q", "--allow-empty", "-m", f"change {tag}")
            git(origin, "tag", tag)
            marker = markers / f"{tag}.started"
            t0 = time.time()
            post_webhook(f"{base_url}/hooks/shop", tag)
            answered = time.time() - t0
            wait_for(lambda: marker.exists() and marker.read_text().strip(), 30, f"the staging step of {tag}",
                     interval=0.005)
            step_started = float(marker.read_text()) - t0
            deployment = Deployment.objects.select_related("release").get(release__version=tag, environment=staging)
            recorded = deployment.release.detected_at.timestamp() - t0
            claimed = (deployment.started_at.timestamp() - t0) if deployment.started_at else float("nan")
            _, poll_started, poll_ended = (t - t0 for t in stamps(f"poll-{repository.pk}"))
            job_enqueued, job_started, _ = (t - t0 for t in stamps(deployment.job_id))
            # Let the portal go idle before the next push: one deployment at a time is what is measured.
            wait_for(lambda: staging_done(tag), 30, f"the staging deployment of {tag}")
            # And for what it caused (the production deployment held, its change request opened with git work):
            # on a worker still busy with that, the next push would wait in the queue.
            wait_for(portal_idle, 60, f"the follow-ups of {tag}", interval=0.02)
            return answered, poll_started, recorded, poll_ended, job_enqueued, job_started, claimed, step_started

        rounds = []  # (floor latencies, portal rows)
        for number in range(1, ROUNDS + 1):
            floors = [floor.sample(f"v{number}.0.{i}") for i in range(1, N + 1)]
            rows = [portal_sample(f"v1.{number}.{i}") for i in range(1, N + 1)]
            rounds.append((floors, rows))
        print_report(rounds)


def print_report(rounds):
    def p50(values):
        return statistics.median(values)

    all_floors = [v for floors, _ in rounds for v in floors]
    all_rows = [row for _, rows in rounds for row in rows]
    latencies = [row[-1] for row in all_rows]
    floor, median = p50(all_floors), p50(latencies)
    table = []
    for number, (floors, rows) in enumerate(rounds, start=1):
        portal_p50 = p50([row[-1] for row in rows])
        table += [
            (f"round {number} floor: median (p90)", f"{ms(p50(floors))} ({ms(percentile(floors, 0.9))})", None, None),
            (f"round {number} portal: latency median (p90)",
             f"{ms(portal_p50)} ({ms(percentile([row[-1] for row in rows], 0.9))})",
             f"≤ {TARGET_RATIO:g} × {ms(p50(floors))}", portal_p50 <= TARGET_RATIO * p50(floors)),
        ]
    breakdown = [p50([row[k] for row in all_rows]) for k in range(len(STAGES))]
    table += [
        ("all rounds: floor median", ms(floor), None, None),
        ("all rounds: latency median", ms(median), f"≤ {TARGET_RATIO:g} × floor = {ms(TARGET_RATIO * floor)}",
         median <= TARGET_RATIO * floor),
        ("all rounds: latency median ÷ floor median", f"{median / floor:.1f} ×", f"≤ {TARGET_RATIO:g} ×",
         median <= TARGET_RATIO * floor),
        ("all rounds: latency median (issue 6)", ms(median), f"≤ {ms(TARGET_ISSUE_6)}", median <= TARGET_ISSUE_6),
        ("all rounds: latency median − floor median (the portal's own share)", ms(median - floor), None, None),
        ("all rounds: latency p90 / max", f"{ms(percentile(latencies, 0.9))} / {ms(max(latencies))}", None, None),
        *[(f"  median: {stage}", ms(value), None, None) for stage, value in zip(STAGES, breakdown)],
    ]
    notes = [(f"rounds in the order floor, portal, floor, portal …, {N} samples each; the portal is `manage.py "
              "runportal --workers 2` (rqworker git deploy checks ×2, pollrepos --loop, gunicorn)")]
    for number, (floors, rows) in enumerate(rounds, start=1):
        notes.append(f"round {number} floor: " + " ".join(f"{v * 1000:.0f}" for v in floors) + " ms")
        notes.append(f"round {number} portal: " + " ".join(f"{row[-1] * 1000:.0f}" for row in rows) + " ms")
    notes.append(f"load average (1 min) {os.getloadavg()[0]:.1f}: on a shared machine, other work slows both")
    report(f"webhook push → staging step started ({ROUNDS} rounds of {N})", table, notes=notes)


if __name__ == "__main__":
    main()
