"""What a deployment costs the portal itself: a no-op deployment (one step `true`; no build, no preview, no
approval, no next stage) run by the real PortalWorker takes at most 15 SQL statements, each of them named in
docs/architecture.md ("Kinds of run"), so a read added to that path fails here until it is counted there. Issue
19 ("Cheaper runs") asks 12; its worker CPU is measured by bench/deploy_throughput.py."""

import threading
import time
import traceback
from pathlib import Path

import django_rq
import pytest
from django.db import connections
from django.db.backends.signals import connection_created
from rq.job import Job

from pipelines import tracking
from pipelines.models import Deployment, Environment, Repository
from pipelines.promotion import promote
from tests.conftest import add_stage, burst_portal_worker

pytestmark = pytest.mark.django_db(transaction=True)  # the worker commits, and forks for the polls' jobs

TARGET_QUERIES = 15
NO_OP_PIPELINE = "environments:\n  staging:\n    steps:\n      - name: deploy\n        run: 'true'\n"
ROOT = Path(__file__).resolve().parent.parent


class ProcessQueries:
    """Every statement this process sends through Django, from any thread and on any connection: a job may
    replace its connection (PortalWorker cleans them around each job) and the heartbeat opens its own."""

    def __init__(self):
        self.statements = []  # (time.time(), thread name, where in the portal's code, sql)

    def __call__(self, execute, sql, params, many, context):
        self.statements.append((time.time(), threading.current_thread().name, _caller(), sql))
        return execute(sql, params, many, context)

    def attach(self, connection, **kwargs):
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    def __enter__(self):
        connection_created.connect(self.attach)
        for connection in connections.all(initialized_only=True):
            self.attach(connection)
        return self

    def __exit__(self, *exc_info):
        connection_created.disconnect(self.attach)

    def between(self, start, end):
        return [s for s in self.statements if start <= s[0] <= end]


def _caller():
    """The portal's frames that led to a statement, innermost first: where to look to cut it."""
    frames = [f for f in traceback.extract_stack()[:-2]
              if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename and "/tests/" not in f.filename]
    return " ← ".join(f"{Path(f.filename).relative_to(ROOT)}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))


def listing(statements):
    return "\n".join(f"{n:3}. [{thread}] {sql[:300]}\n       {where}"
                     for n, (_, thread, where, sql) in enumerate(statements, start=1))


@pytest.fixture
def no_op_releases(make_git_repo):
    """Two repositories with a release each whose staging deployment is one step `true`; staging is the only
    stage of the lifecycle, deploys on request only and needs no approval."""
    staging = Environment.objects.create(name="staging", position=10)
    add_stage("default", staging, position=10, auto_deploy=False)
    releases = []
    for name in ("warm-up", "measured"):
        origin = make_git_repo(name, pipeline=NO_OP_PIPELINE, deploy_script=None)
        origin.tag("v1.0.0")
        (release,) = tracking.poll_repository(Repository.objects.create(name=name, url=origin.url))
        releases.append(release)
    burst_portal_worker(("git", "deploy"))  # whatever the polls queued is done before anything is counted
    return staging, releases


def deploy_and_count(release, staging):
    """Promote `release` to staging, let the PortalWorker drain the queues, and return the deployment, the
    statements of its rq job (from its start to its end) and those of the drain outside that job."""
    deployment = promote(release, staging, by=None)
    with ProcessQueries() as queries:
        burst_portal_worker(("git", "deploy"))
    job = Job.fetch(deployment.job_id, connection=django_rq.get_connection("deploy"))
    in_job = queries.between(job.started_at.timestamp(), job.ended_at.timestamp())
    outside = [s for s in queries.statements if s not in in_job]
    deployment.refresh_from_db()
    return deployment, in_job, outside


def test_a_no_op_deployment_costs_at_most_15_statements(no_op_releases):
    staging, (warm_up, measured) = no_op_releases
    # The worker's first deployment fills its process's caches (content types and the like); a worker runs
    # many, so the second one is what each costs.
    first, first_queries, _ = deploy_and_count(warm_up, staging)
    assert first.status == Deployment.Status.SUCCEEDED, first.error

    deployment, in_job, outside = deploy_and_count(measured, staging)

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    print(f"\n{len(in_job)} statements in the rq job of the measured deployment (the worker's first: "
          f"{len(first_queries)}):\n{listing(in_job)}")
    if outside:
        print(f"\n{len(outside)} more in the drain, outside that job:\n{listing(outside)}")
    assert len(in_job) <= TARGET_QUERIES, (
        f"a no-op deployment made {len(in_job)} queries, target ≤ {TARGET_QUERIES}:\n{listing(in_job)}")
