"""A model of change control: Hypothesis drives the real portal through random sequences of what people, git and
workers do, and checks the promises of the product after every step.

Driven for real: tags pushed to a real git repository (pre-releases, `.post` releases, older backports) and
found by the real poll job; approvals and rejections by eligible and ineligible people through
`ChangeRequest.approve/reject`; check results reported by CI and by someone who may not; block and unblock; a freeze window starting and ending; pause and resume;
manual promotions and rollbacks by a deployer; steps that fail; and the real `PortalWorker` in burst mode, which
runs deployments in its own process and forks for polls and follow-ups, with the reconciler beside it.

Checked after every step:
- each target runs at most one deployment at a time;
- production never started a release while it was blocked, without an approval under its stage's policy, without
  CI's check passing at that moment, automatically against its version rule (no pre-releases), or after it failed
  in staging without succeeding there; nobody but CI reports a check, nobody outside the policy decides;
- an automatic deployment never goes back to an older version than the one it replaced;
- every change of a deployment's status is in the audit chain, and `verifyaudit`'s walk finds the chain intact.
And whenever the portal has settled (no freeze, nothing queued, no follow-up due): each target runs the release
of the newest deployment that was let through to it (approved, or queued automatically) unless that one failed,
and nothing older ran after it.

`make test` runs GITOPS_MODEL_EXAMPLES examples (default 8) of up to GITOPS_MODEL_STEPS steps (default 30);
`make fuzz` runs many more. Hypothesis keeps failing examples in .hypothesis/ (not in git) and replays them first."""

import itertools
import os
import subprocess
from datetime import timedelta

import django_rq
import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from approvals.models import ChangeRequest, Decision, DecisionRefused, FreezeWindow
from pipelines import jobs, promotion, reconciler
from pipelines.models import AuditEvent, Deployment, ExternalCheck, FollowUp, Release, Repository, Target
from pipelines.models.external_check import ReportRefused
from pipelines.versions import rule_refusal
from tests.conftest import burst_portal_worker, git, set_policy, set_stage

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = int(os.environ.get("GITOPS_MODEL_EXAMPLES", "8"))
STEPS = int(os.environ.get("GITOPS_MODEL_STEPS", "30"))

# Tags in the order a team might push them, and out of it: finals, release candidates, a post release, backports.
VERSIONS = ["1.0.0", "1.1.0rc1", "1.1.0", "1.1.0.post1", "1.0.1", "2.0.0a1", "1.2.0", "2.0.0", "1.1.1", "0.9.9"]
PEOPLE = ["alice", "bob", "carol", "charlie", "ci"]  # alice deploys; bob and carol approve; ci reports checks; charlie nothing
DECIDERS = ["bob", "carol", "bob", "carol", "alice", "charlie"]  # the eligible more often: two approvals are needed
ENVIRONMENTS = ["staging", "production"]

PIPELINE = """\
environments:
  staging:
    variables: {{RAN: "{ran}", CTL: "{ctl}"}}
    steps:
      - run: |
          {step}
  production:
    variables: {{RAN: "{ran}", CTL: "{ctl}"}}
    steps:
      - run: |
          {step}
"""
# Fails when the control file for its repository and environment exists; otherwise records what it deployed.
STEP = ('mkdir -p "$RAN/$GITOPS_REPOSITORY"; if [ -e "$CTL/$GITOPS_REPOSITORY-fail-$GITOPS_ENVIRONMENT" ]; '
        'then exit 1; fi; echo "$GITOPS_VERSION" >> "$RAN/$GITOPS_REPOSITORY/$GITOPS_ENVIRONMENT"')


@pytest.fixture(scope="module")
def base_repository(tmp_path_factory):
    """One repository with a commit per version, made once: each example clones it and tags what it pushes."""
    root = tmp_path_factory.mktemp("model")
    ran, ctl, work = root / "ran", root / "ctl", root / "base"
    for path in (ran, ctl, work):
        path.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / ".gitops.yml").write_text(PIPELINE.format(ran=ran, ctl=ctl, step=STEP))
    commits = {}
    for version in VERSIONS:
        (work / "VERSION").write_text(version + "\n")
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", f"release {version}")
        commits[version] = git(work, "rev-parse", "HEAD").strip()
    return {"path": work, "ran": ran, "ctl": ctl, "commits": commits, "root": root}


class ChangeControl(RuleBasedStateMachine):
    """One example: a fresh repository in the `default` lifecycle (staging, then production held for two
    approvals from the `approvers` group), fresh freeze windows, and the people above."""

    base = None  # set by the test: the module's base repository
    users = None
    numbers = itertools.count(1)

    @initialize()
    def start(self):
        number = next(self.numbers)
        self.name = f"model-{os.getpid()}-{number}"
        origin = self.base["root"] / f"{self.name}.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(self.base["path"]), str(origin)], check=True)
        self.origin = origin
        FreezeWindow.objects.all().delete()
        self.repository = Repository.objects.create(name=self.name, url=str(origin))
        self.staging, self.production = (self.environment(name) for name in ENVIRONMENTS)
        self.tags = []
        self.blocked_since = {}  # release id -> when its current block began
        self.block_spans = {}  # release id -> [(began, ended)] of blocks already lifted
        self.frozen = False
        self.reports = []  # (commit, state, when) of each check result CI reported
        self.push_tag(VERSIONS[0])
        self.work()

    def environment(self, name):
        from pipelines.models import Environment

        return Environment.objects.get(name=name)

    # --- what git, people and workers do -------------------------------------------------------------

    @rule(version=st.sampled_from(VERSIONS), ci_passes=st.sampled_from([True, True, True, False]))
    def push_tag(self, version, ci_passes=True):
        """A tag is pushed; CI usually has reported its commit's check as passed by the time the poll sees it."""
        if version in self.tags:
            return
        self.tags.append(version)
        commit = self.base["commits"][version]
        if ci_passes:
            ExternalCheck.objects.report(self.repository, commit_sha=commit, name="ci/tests", state="success",
                                         by=self.users["ci"])
            self.reports.append((commit, "success", timezone.now()))
        git(self.origin, "tag", f"v{version}", commit)
        jobs.enqueue_poll(self.repository.pk)  # as a webhook would: the poll runs in a forked work-horse
        self.work()

    @rule(person=st.sampled_from(DECIDERS), pick=st.integers(0, 5), reject=st.sampled_from([False, False, False, True]))
    def decide(self, person, pick, reject):
        pending = list(ChangeRequest.objects.pending().filter(repository=self.repository).order_by("pk"))
        if not pending:
            return
        change_request = pending[pick % len(pending)]
        user = self.users[person]
        try:
            if reject:
                change_request.reject(user, "Not now.")
            else:
                change_request.approve(user, "Fine.")
        except DecisionRefused:
            return
        assert person in ("bob", "carol"), f"{person} decided on a production change"
        assert change_request.requested_by_id != user.pk, "the requester approved their own change"

    @rule(pick=st.integers(0, 5))
    def approvers_agree(self, pick):
        """Both approvers approve one pending request: the common case, which random pairs reach too rarely."""
        for person in ("bob", "carol"):
            self.decide(person, pick, False)

    @rule(pick=st.integers(0, 9), reporter=st.sampled_from(["ci", "ci", "charlie"]),
          state=st.sampled_from(["success", "success", "failure", "pending"]))
    def report_check(self, pick, reporter, state):
        """CI reports the result of `ci/tests` for a release's commit; anyone else who tries is refused."""
        releases = list(Release.objects.filter(repository=self.repository).order_by("pk"))
        if not releases:
            return
        release = releases[pick % len(releases)]
        try:
            ExternalCheck.objects.report(self.repository, commit_sha=release.commit_sha, name="ci/tests", state=state,
                                         by=self.users[reporter])
        except ReportRefused:
            assert reporter != "ci"
            return
        assert reporter == "ci", f"{reporter} reported a check result"
        self.reports.append((release.commit_sha, state, timezone.now()))

    def checks_passed_at(self, commit, moment):
        states = [state for sha, state, when in self.reports if sha == commit and when <= moment]
        return bool(states) and states[-1] == "success"

    @rule(pick=st.integers(0, 9))
    def block(self, pick):
        releases = list(Release.objects.filter(repository=self.repository, blocked=False).order_by("pk"))
        if releases:
            release = releases[pick % len(releases)]
            release.block(by=self.users["alice"], reason="Known bad.")
            self.blocked_since[release.pk] = timezone.now()

    @rule(pick=st.integers(0, 9))
    def unblock(self, pick):
        releases = list(Release.objects.filter(repository=self.repository, blocked=True).order_by("pk"))
        if releases:
            release = releases[pick % len(releases)]
            release.unblock(by=self.users["alice"])
            self.block_spans.setdefault(release.pk, []).append((self.blocked_since.pop(release.pk), timezone.now()))

    @rule()
    def freeze_production(self):
        if not self.frozen:
            now = timezone.now()
            window = FreezeWindow.objects.create(name="model", reason="Frozen by the model.",
                                                 starts_at=now - timedelta(minutes=1), ends_at=now + timedelta(days=1))
            window.environments.set([self.production])
            self.frozen = True

    @rule()
    def end_the_freeze(self):
        if self.frozen:
            FreezeWindow.objects.filter(name="model").update(ends_at=timezone.now() - timedelta(seconds=1))
            self.frozen = False

    @rule(environment=st.sampled_from(ENVIRONMENTS), pause=st.booleans())
    def pause_or_resume(self, environment, pause):
        target = Target.objects.for_pair(self.repository, self.environment(environment))
        if pause and not target.auto_deploy_paused:
            target.pause(by=self.users["alice"], reason="The model paused it.")
        elif not pause and target.auto_deploy_paused:
            target.resume(by=self.users["alice"])

    @rule(pick=st.integers(0, 9), environment=st.sampled_from(ENVIRONMENTS), rollback=st.booleans())
    def deploy_by_hand(self, pick, environment, rollback):
        releases = list(Release.objects.filter(repository=self.repository).order_by("pk"))
        if not releases:
            return
        release = releases[pick % len(releases)]
        try:
            if rollback:
                promotion.rollback(release, self.environment(environment), by=self.users["alice"], reason="model")
            else:
                promotion.promote(release, self.environment(environment), by=self.users["alice"], reason="model")
        except promotion.PromotionError:
            pass

    @rule(environment=st.sampled_from(ENVIRONMENTS), fail=st.booleans())
    def steps_fail_or_recover(self, environment, fail):
        marker = self.base["ctl"] / f"{self.name}-fail-{environment}"
        if fail:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    @rule()
    def work(self):
        """What the scheduler and the workers do: a reconciler tick, then burst workers on every queue."""
        reconciler.reconcile()
        burst_portal_worker((jobs.GIT_QUEUE, jobs.DEPLOY_QUEUE))

    @precondition(lambda self: not self.frozen)
    @rule()
    def settle(self):
        """Work until nothing is left to do, then check where every target ended."""
        for _ in range(12):
            reconciler.reconcile(now=timezone.now() + timedelta(minutes=10))  # follow-ups past their delay too
            self.work()
            waiting = Deployment.objects.filter(repository=self.repository, status__in=["queued", "running"]).exists()
            due = FollowUp.objects.due(timezone.now() + timedelta(minutes=10)).exists()
            if not waiting and not due:
                break
        else:
            raise AssertionError("the portal did not settle: work is still queued after 12 rounds")
        for environment in (self.staging, self.production):
            self.check_settled_target(environment)

    def check_settled_target(self, environment):
        deployments = Deployment.objects.filter(repository=self.repository, environment=environment)
        let_through = deployments.filter(queued_at__isnull=False).exclude(status=Deployment.Status.CANCELLED)
        newest = let_through.order_by("-pk").select_related("release").first()
        if newest is None:
            return
        assert newest.status in ("succeeded", "failed"), f"#{newest.pk} is {newest.status} once settled"
        if newest.status == "succeeded":
            target = Target.objects.get(repository=self.repository, environment=environment)
            assert target.current_release_id == newest.release_id, (
                f"{environment} runs {target.current_release} but the newest deployment let through is #{newest.pk} "
                f"({newest.release.version})")
        ran_later = let_through.filter(pk__lt=newest.pk, started_at__gt=newest.started_at)
        assert not ran_later.exists(), f"an older deployment ran in {environment} after #{newest.pk}"

    # --- the promises, after every step ---------------------------------------------------------------

    @invariant()
    def one_run_per_target(self):
        if not hasattr(self, "repository"):
            return
        for environment_id in (self.staging.pk, self.production.pk):
            running = Deployment.objects.filter(repository=self.repository, environment_id=environment_id,
                                                status=Deployment.Status.RUNNING).count()
            assert running <= 1

    @invariant()
    def production_runs_only_what_its_policy_allows(self):
        if not hasattr(self, "repository"):
            return
        # What ran a step there (a run refused by the runner's last check before its first step was claimed, but
        # never touched production).
        started = (Deployment.objects.filter(repository=self.repository, environment=self.production,
                                             started_at__isnull=False, step_pgid__isnull=False)
                   .select_related("release", "change_request"))
        approvers = set(Group.objects.get(name="approvers").user_set.values_list("pk", flat=True))
        for deployment in started:
            release = deployment.release
            spans = list(self.block_spans.get(release.pk, []))
            if release.pk in self.blocked_since:
                spans.append((self.blocked_since[release.pk], None))
            for began, ended in spans:
                assert not (began <= deployment.started_at and (ended is None or deployment.started_at <= ended)), \
                    f"#{deployment.pk} started {release.version} in production while it was blocked"
            change_request = getattr(deployment, "change_request", None)
            assert change_request is not None and change_request.status == ChangeRequest.Status.APPROVED, \
                f"#{deployment.pk} ran in production without an approved change request"
            approved_by = set(change_request.decisions.filter(verdict=Decision.Verdict.APPROVE)
                              .values_list("user_id", flat=True))
            assert approved_by <= approvers, "someone outside the approver group approved"
            assert change_request.requested_by_id not in approved_by, "the requester approved their own change"
            assert len(approved_by) >= change_request.required_approvals
            assert self.checks_passed_at(release.commit_sha, deployment.started_at), \
                f"#{deployment.pk} started {release.version} in production without passing checks"
            refusal = rule_refusal(release, take_prereleases=False, constraint="")
            assert deployment.trigger != Deployment.Trigger.AUTO or not refusal, \
                f"#{deployment.pk} took {release.version} to production automatically: {refusal}"
            staging_runs = Deployment.objects.filter(release=release, environment=self.staging,
                                                     finished_at__lte=deployment.started_at)
            failed = staging_runs.filter(status=Deployment.Status.FAILED).exists()
            succeeded = staging_runs.filter(status=Deployment.Status.SUCCEEDED).exists()
            assert succeeded or not failed, f"#{deployment.pk} took {release.version} to production after it failed in staging"

    @invariant()
    def automatic_deployments_never_go_back(self):
        if not hasattr(self, "repository"):
            return
        automatic = Deployment.objects.filter(repository=self.repository, trigger=Deployment.Trigger.AUTO,
                                              previous_release__isnull=False).select_related("release", "previous_release")
        for deployment in automatic:
            assert deployment.release.version_key >= deployment.previous_release.version_key, (
                f"#{deployment.pk} deployed {deployment.release.version} automatically over "
                f"{deployment.previous_release.version}")

    @invariant()
    def every_status_change_is_audited(self):
        if not hasattr(self, "repository"):
            return
        for pk, status in Deployment.objects.filter(repository=self.repository).values_list("pk", "status"):
            actions = set(AuditEvent.objects.filter(object_id=str(pk), action__startswith="deployment.")
                          .values_list("action", flat=True))
            assert "deployment.created" in actions, f"#{pk} has no creation event"
            if status not in ("awaiting_approval", "queued"):
                assert f"deployment.{status}" in actions, f"#{pk} became {status} without an audit event"

    @invariant()
    def the_audit_chain_verifies(self):
        report = AuditEvent.objects.verify()  # what `manage.py verifyaudit` walks
        assert report.intact, report.message

    def teardown(self):
        if os.environ.get("GITOPS_MODEL_VERBOSE") and hasattr(self, "repository"):
            counts = {}
            for environment, status in Deployment.objects.filter(repository=self.repository).values_list(
                    "environment__name", "status"):
                counts[f"{environment}:{status}"] = counts.get(f"{environment}:{status}", 0) + 1
            print(self.name, "tags", self.tags, "deployments", counts,
                  "requests", list(ChangeRequest.objects.filter(repository=self.repository).values_list("status", flat=True)))
        if hasattr(self, "name"):
            for environment in ENVIRONMENTS:
                (self.base["ctl"] / f"{self.name}-fail-{environment}").unlink(missing_ok=True)
        FreezeWindow.objects.all().delete()
        django_rq.get_connection("deploy").flushdb()


def test_change_control_keeps_its_promises_whatever_happens(base_repository, environments, approvers,
                                                            django_user_model, settings):
    settings.GITOPS_WORKER_LOST_AFTER = 30
    staging, production = environments
    set_policy(production, required_approvals=2)
    # Production takes no pre-release automatically and only releases whose checks passed (reported by CI).
    set_stage(production, take_prereleases=False, requires_passing_checks=True)
    users = {name: django_user_model.objects.create_user(name, f"{name}@example.com", "password") for name in PEOPLE}
    for name in ("bob", "carol"):
        users[name].groups.add(approvers)
    from django.contrib.auth.models import Permission

    users["alice"].user_permissions.add(Permission.objects.get(codename="deploy"))
    users["ci"].user_permissions.add(Permission.objects.get(codename="report_checks"))
    users = {name: type(user).objects.get(pk=user.pk) for name, user in users.items()}  # no cached permissions
    ChangeControl.base = base_repository
    ChangeControl.users = users
    run_state_machine_as_test(ChangeControl, settings=hypothesis_settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
