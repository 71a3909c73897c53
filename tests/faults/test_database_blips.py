"""A database blip at any phase of a run is ridden out, not turned into a failure (issue 19, point 5).

The run is the real `PortalWorker`'s, drained in this process (burst mode), so the run's queries go through
this thread's connection. Right before the first query of one phase, a wrapper on that connection terminates
its PostgreSQL backend for real (pg_terminate_backend from a connection of the test's own, apart from
Django's): the query fails as it would after a restart or a failover, and the run must go on from there,
recording each of its changes once. A phase is told by its SQL: the statement, its table, and which such
statement of the run it is. Each kind of run is driven so: a deployment through every phase, a build, a
preview and a check through theirs. Beside them: an answer lost after the server did the write, and a
database away for longer than a phase may wait, which fails the run with the reason before any step."""

import logging
import time
from dataclasses import dataclass

import pytest
from django.db import connection, transaction
from django.db.utils import OperationalError

from pipelines import promotion
from pipelines.models import AuditEvent, Build, Check, Deployment, FollowUp, Preview
from tests.conftest import database_url

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("sqlite" in database_url(), reason="pg_terminate_backend is PostgreSQL's"),
]

SECRET = "s3cret-value-of-the-api"
PIPELINE = """\
environments:
  staging:
    variables: {GREETING: hello}
    preview:
      - run: echo "staging deploys without approval, so with no preview to apply"
    steps:
      - name: first
        run: echo "first says $GREETING"
      - name: second
        run: echo "second holds ${#API_TOKEN} characters of its secret"
  production:
    steps:
      - run: echo production
"""
FIRST, SECOND = "first says hello", f"second holds {len(SECRET)} characters of its secret"


@dataclass(frozen=True)
class Phase:
    """The `nth` statement of the run that is a `statement` (SELECT, INSERT, UPDATE) of `table` and holds `also`,
    counted from the first statement that holds `after`."""

    statement: str
    table: str
    also: str = ""
    nth: int = 1
    after: str = ""
    # False where the run does not ask again and needs no answer to go on (the cancel check before a step
    # says nothing when the database is away; the heartbeat goes on asking).
    asked_again: bool = True

    def matches(self, sql):
        if self.statement == "SELECT":  # of the table of its first column, or an exists() of the table
            reads = sql.startswith((f'SELECT "{self.table}".', f'SELECT %s AS "a" FROM "{self.table}"'))
            return reads and self.also in sql
        # A write may sit in a CTE of another statement (the audit event's INSERT in its head's UPDATE).
        write = {"INSERT": f'INSERT INTO "{self.table}"', "UPDATE": f'UPDATE "{self.table}"'}[self.statement]
        return write in sql and self.also in sql


DEPLOYMENT_PHASES = {
    "loading-the-run": Phase("SELECT", "pipelines_deployment"),
    "claiming-the-targets-lease": Phase("UPDATE", "pipelines_target", also='"lease_holder_id" = %s'),
    "claiming-the-run": Phase("UPDATE", "pipelines_deployment", also='"worker_name" = %s'),
    "auditing-the-claim": Phase("INSERT", "pipelines_auditevent"),
    "reading-the-secrets": Phase("SELECT", "pipelines_environmentsecret"),
    "reading-the-preview": Phase("SELECT", "pipelines_preview"),
    "reading-the-block": Phase("SELECT", "pipelines_release", also='"blocked"'),
    "writing-the-log": Phase("INSERT", "pipelines_deploymentlogchunk"),
    # The cancel check before the second step: the first after the first step's process group was recorded.
    "between-the-steps": Phase("SELECT", "pipelines_deployment", also='"cancel_requested_at" IS NULL',
                               after='SET "step_pgid"', asked_again=False),
    "recording-the-success": Phase("UPDATE", "pipelines_deployment", also='"finished_at" = %s'),
    "auditing-the-success": Phase("INSERT", "pipelines_auditevent", nth=2),
    "carrying-out-the-follow-up": Phase("SELECT", "pipelines_followup"),
}


class Blip:
    """An execute wrapper that terminates this connection's backend right before the statement of `phase`
    (`answer_lost`: right after it), once, and notes how the run's queries fared after it."""

    def __init__(self, phase, admin, *, answer_lost=False):
        self.phase, self.admin, self.answer_lost = phase, admin, answer_lost
        self.seen, self.counting = 0, not phase.after
        self.terminated_pid = None
        self.error = None  # what the statement right after the termination raised
        self.asked_again = False  # the statement of the phase succeeded after the failure
        self.pids_after = set()  # the backends of the queries that succeeded after it

    def __call__(self, execute, sql, params, many, context):
        self.counting = self.counting or self.phase.after in sql
        matches = self.counting and self.phase.matches(sql)
        if matches:
            self.seen += 1
        if matches and self.seen == self.phase.nth:
            self.terminated_pid = context["connection"].connection.info.backend_pid
            try:
                if self.answer_lost:  # the server did it (and committed it); its answer never reached the run
                    execute(sql, params, many, context)
                    terminate(self.admin, self.terminated_pid)
                    raise OperationalError("server closed the connection unexpectedly")
                terminate(self.admin, self.terminated_pid)
                return execute(sql, params, many, context)
            except Exception as exc:
                self.error = exc
                raise
        result = execute(sql, params, many, context)
        if self.error is not None:
            self.pids_after.add(context["connection"].connection.info.backend_pid)
            self.asked_again = self.asked_again or matches
        return result

    def assert_ridden_out(self):
        assert self.terminated_pid is not None, f"the run never made the statement of {self.phase}"
        assert isinstance(self.error, OperationalError), f"the statement after the termination raised {self.error!r}"
        assert self.pids_after and self.terminated_pid not in self.pids_after, "the run went on on a new backend"
        if self.phase.asked_again:
            assert self.asked_again, "the failed statement was made again, and got its answer"


def terminate(admin, pid):
    """pg_terminate_backend(pid) from the test's own connection; returns once that backend is gone."""
    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 10
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]:
        assert time.monotonic() < deadline, f"backend {pid} still there 10 s after pg_terminate_backend"
        time.sleep(0.02)


@pytest.fixture
def admin():
    """A connection apart from Django's (autocommit), to terminate the worker's backend from."""
    other = connection.get_new_connection(connection.get_connection_params())
    other.autocommit = True
    yield other
    other.close()


@pytest.fixture
def deployment(repository, staging, production, origin, make_release, make_secret):
    """A deployment of a release to staging (two steps, a variable, a secret), queued; production follows."""
    origin.write(".gitops.yml", PIPELINE)
    release = make_release(repository, "v1", pipeline=PIPELINE, commit_sha=origin.commit("v1"))
    make_secret(staging, "API_TOKEN", SECRET)
    return promotion.promote(release, staging, by=None)


def actions_of(run):
    return list(AuditEvent.objects.filter(object_type=run._meta.label_lower, object_id=str(run.pk))
                .order_by("seq").values_list("action", flat=True))


def drain_through_a_blip(drain, phase, admin, **options):
    """Drain the queues with the real worker, its backend terminated at `phase`; the blip happened, and passed."""
    blip = Blip(phase, admin, **options)
    with connection.execute_wrapper(blip):
        drain()
    blip.assert_ridden_out()


def log_of_a_success(run):
    run.refresh_from_db()
    log = run.log_since(0)[0]
    assert run.status == "succeeded", (run.error, log)
    return log


@pytest.mark.parametrize("phase", DEPLOYMENT_PHASES.values(), ids=DEPLOYMENT_PHASES.keys())
def test_a_backend_terminated_at_any_phase_of_a_deployment_does_not_fail_it(deployment, production, admin,
                                                                            run_workers, phase):
    drain_through_a_blip(run_workers, phase, admin)

    log = log_of_a_success(deployment)
    assert log.count(FIRST) == 1 and log.count(SECOND) == 1, log
    assert actions_of(deployment) == ["deployment.created", "deployment.running", "deployment.succeeded"]
    # What follows the success happened at once, once: the release waits for approval in production.
    assert FollowUp.objects.filter(deployment=deployment, done_at__isnull=False).count() == 1
    in_production = Deployment.objects.filter(environment=production)
    assert list(in_production.values_list("status", flat=True)) == ["awaiting_approval"]


BUILD_PIPELINE = """\
build:
  steps:
    - name: image
      run: echo "image=shop:$GITOPS_VERSION" >> "$GITOPS_OUTPUTS"; echo "built $GITOPS_VERSION"
environments:
  staging:
    steps:
      - run: echo "deploying $GITOPS_OUTPUT_IMAGE"
"""
BUILD_PHASES = {
    "claiming-the-build": Phase("UPDATE", "pipelines_build", also='"worker_name" = %s'),
    "writing-the-builds-log": Phase("INSERT", "pipelines_buildlogchunk"),
    "recording-the-builds-success": Phase("UPDATE", "pipelines_build", also='"finished_at" = %s'),
    # The first such read is the promotion's, in the follow-up of the build's success.
    "the-deployment-reading-the-build": Phase("SELECT", "pipelines_build", also='"pipelines_build"."release_id" = %s',
                                              nth=2),
}


@pytest.mark.parametrize("phase", BUILD_PHASES.values(), ids=BUILD_PHASES.keys())
def test_a_backend_terminated_at_any_phase_of_a_build_does_not_fail_it(repository, staging, origin, make_release,
                                                                       admin, run_workers, phase):
    origin.write(".gitops.yml", BUILD_PIPELINE)
    release = make_release(repository, "v1", pipeline=BUILD_PIPELINE, commit_sha=origin.commit("v1"))
    with transaction.atomic():  # as tracking queues it, with the release
        build = Build.objects.queue_for(release)
    drain_through_a_blip(run_workers, phase, admin)  # the build, then the deployment its success promoted

    log = log_of_a_success(build)
    assert log.count("built v1") == 1 and log.count("==> output image=shop:v1") == 1, log
    assert actions_of(build) == ["build.queued", "build.running", "build.succeeded"]
    log = log_of_a_success(Deployment.objects.get(release=release, environment=staging))
    assert log.count("deploying shop:v1") == 1, log


PREVIEW_PIPELINE = """\
environments:
  staging:
    steps:
      - run: echo staged
  production:
    preview:
      - name: plan
        run: echo "plan of $GITOPS_VERSION with ${#API_TOKEN} characters of its secret"
    steps:
      - run: echo applied
"""
PREVIEW_PHASES = {
    "claiming-the-preview": Phase("UPDATE", "pipelines_preview", also='"worker_name" = %s'),
    "reading-what-runs-there": Phase("SELECT", "pipelines_release", also='WHERE "pipelines_release"."id" = %s'),
    "recording-the-previews-success": Phase("UPDATE", "pipelines_preview", also='"exit_code" = %s'),
}


@pytest.mark.parametrize("phase", PREVIEW_PHASES.values(), ids=PREVIEW_PHASES.keys())
def test_a_backend_terminated_at_any_phase_of_a_preview_does_not_fail_it(repository, production, origin, make_release,
                                                                         make_secret, alice, admin, run_workers, phase):
    origin.write(".gitops.yml", PREVIEW_PIPELINE)
    make_secret(production, "API_TOKEN", SECRET)
    v0 = make_release(repository, "v0", pipeline=PREVIEW_PIPELINE, commit_sha=origin.commit("v0"))
    running_there = promotion.promote(v0, production, by=alice)  # what the preview compares with, as a worker leaves it
    running_there.release_hold(by=alice)
    running_there.claim(worker_name="an earlier worker")
    running_there.succeed()
    v1 = make_release(repository, "v1", pipeline=PREVIEW_PIPELINE, commit_sha=origin.commit("v1"))
    held = promotion.promote(v1, production, by=alice)  # held for approval, its preview queued
    drain_through_a_blip(run_workers, phase, admin)

    preview = Preview.objects.get(deployment=held)
    log = log_of_a_success(preview)
    assert log.count("preview #1 of v1 in production (running there now: v0)") == 1, log
    assert log.count(f"plan of v1 with {len(SECRET)} characters of its secret") == 1, log
    assert actions_of(preview) == ["preview.queued", "preview.running", "preview.succeeded"]


CHECK_PIPELINE = """\
checks:
  steps:
    - name: test
      run: echo "checked $GITOPS_COMMIT with ${#REGISTRY_TOKEN} characters of its secret"
environments:
  staging:
    steps:
      - run: echo deployed
"""
CHECK_PHASES = {
    "reading-the-checks-secrets": Phase("SELECT", "pipelines_repositorysecret"),
    "recording-the-checks-steps": Phase("UPDATE", "pipelines_check", also='"steps" = %s'),
    "recording-the-checks-success": Phase("UPDATE", "pipelines_check", also='"finished_at" = %s'),
}


@pytest.mark.parametrize("phase", CHECK_PHASES.values(), ids=CHECK_PHASES.keys())
def test_a_backend_terminated_at_any_phase_of_a_check_does_not_fail_it(repository, origin, make_check_secret, admin,
                                                                       run_check_workers, phase):
    origin.write(".gitops.yml", CHECK_PIPELINE)
    sha = origin.commit("checked")
    make_check_secret(repository, "REGISTRY_TOKEN", SECRET)
    check = Check.objects.queue_for(repository, commit_sha=sha, ref_name="feature/x")
    drain_through_a_blip(run_check_workers, phase, admin)

    log = log_of_a_success(check)
    assert check.steps == ["test"]
    assert log.count(f"checked {sha} with {len(SECRET)} characters of its secret") == 1, log
    assert actions_of(check) == ["check.queued", "check.running", "check.succeeded"]


# --- a lost answer ------------------------------------------------------------------------------------


def test_a_log_piece_whose_answer_was_lost_is_stored_once_and_what_followed_it_too(
        repository, staging, origin, make_release, admin, run_workers):
    text = ("environments:\n  staging:\n    steps:\n"
            "      - run: for i in $(seq 1 20); do echo line-$i; sleep 0.1; done\n")
    origin.write(".gitops.yml", text)
    release = make_release(repository, "v1", pipeline=text, commit_sha=origin.commit("v1"))
    deployment = promotion.promote(release, staging, by=None)
    drain_through_a_blip(run_workers, DEPLOYMENT_PHASES["writing-the-log"], admin, answer_lost=True)

    log = log_of_a_success(deployment)
    assert [line for line in log.splitlines() if line.startswith("line-")] == [f"line-{i}" for i in range(1, 21)], log


# --- longer than the patience --------------------------------------------------------------------------


class Outage:
    """An execute wrapper: right before the statement of `phase`, the database refuses new connections and every
    backend of it is terminated (a restart that takes a while), until `end()`."""

    def __init__(self, phase, server):
        self.phase, self.server, self.name = phase, server, connection.settings_dict["NAME"]
        self.began = self.ended = None

    def __call__(self, execute, sql, params, many, context):
        if self.began is None and self.phase.matches(sql):
            self.began = time.monotonic()
            self.server.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            backends = self.server.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [self.name])
            for (pid,) in backends.fetchall():
                terminate(self.server, pid)
        return execute(sql, params, many, context)

    def end(self):
        if self.began is not None and self.ended is None:
            self.ended = time.monotonic()
            self.server.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


class EndsWhenTheRunGivesUp(logging.Handler):
    """The database comes back as soon as the kernel gave the run up (it logs the crash): no sooner, so the
    phase waited all its patience; no later, so the failure can be recorded."""

    def __init__(self, outage):
        super().__init__(logging.ERROR)
        self.outage = outage

    def emit(self, record):
        if "crashed in the portal" in record.getMessage():
            self.outage.end()


@pytest.fixture
def server():
    """A connection to another database of the server: a session may not close its own database to others."""
    other = connection.get_new_connection({**connection.get_connection_params(), "dbname": "postgres"})
    other.autocommit = True
    yield other
    other.execute(f'ALTER DATABASE "{connection.settings_dict["NAME"]}" ALLOW_CONNECTIONS true')
    other.close()


def test_a_database_away_for_longer_than_the_patience_fails_the_run_with_the_reason_and_runs_no_step(
        deployment, server, run_workers, settings):
    settings.GITOPS_WORKER_LOST_AFTER, settings.GITOPS_HEARTBEAT_SECONDS = 8, 1  # a patience of 4 s
    outage = Outage(DEPLOYMENT_PHASES["reading-the-secrets"], server)
    kernel_log, gives_up = logging.getLogger("pipelines.runs.kernel"), EndsWhenTheRunGivesUp(outage)
    kernel_log.addHandler(gives_up)
    try:
        with connection.execute_wrapper(outage):
            run_workers()
    finally:
        kernel_log.removeHandler(gives_up)
    assert outage.ended is not None, "the run was given up while the database was away"
    # blips.retry gives up when its next wait would pass the patience: at the latest wait (2 s) before it.
    assert outage.ended - outage.began >= 4 - 2

    deployment.refresh_from_db()
    log = deployment.log_since(0)[0]
    assert deployment.status == "failed", (deployment.error, log)
    assert deployment.error.startswith("The portal could not run this deployment: The database did not answer while "
                                       "reading its secrets"), deployment.error
    assert FIRST not in log and SECOND not in log, "no step ran without its secrets"
    assert actions_of(deployment) == ["deployment.created", "deployment.running", "deployment.failed"]
