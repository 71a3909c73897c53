"""Migrating to lifecycles (pipelines/0006–0007, approvals/0002): a database with today's global environments
and deployments becomes one `default` lifecycle that every repository follows, with every repository's
behaviour unchanged; and it migrates back to the environments as they were.

The database is migrated for real, backwards and forwards, with rows made through the historical models;
the behaviour afterwards is checked with the live code (promotion, change requests), not with the rows alone."""

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("pipelines", "0005_fenced_runs_follow_ups_audit_mac"), ("approvals", "0001_initial")]

PIPELINE = """\
environments:
  staging:
    steps:
      - run: ./deploy.sh
  qa:
    steps:
      - run: ./deploy.sh
  production:
    steps:
      - run: ./deploy.sh
"""

TIMEOUT = timedelta(days=3, hours=4)


def latest(executor):
    return executor.loader.graph.leaf_nodes()


def migrate(targets):
    """Migrate to `targets` with a fresh executor (its loader then sees what is applied now), and return it."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection)


def make_todays_data(apps):
    """What a portal had before lifecycles: global environments carrying order, automation and approval
    policy; two repositories with releases and deployments; one production deployment held with an open
    change request. Returns the primary keys the test checks later."""
    Group = apps.get_model("auth", "Group")
    User = apps.get_model("auth", "User")
    Environment = apps.get_model("pipelines", "Environment")
    Repository = apps.get_model("pipelines", "Repository")
    Release = apps.get_model("pipelines", "Release")
    Deployment = apps.get_model("pipelines", "Deployment")
    Target = apps.get_model("pipelines", "Target")
    ChangeRequest = apps.get_model("approvals", "ChangeRequest")

    release_managers = Group.objects.create(name="release-managers")
    Group.objects.create(name="bystanders")
    requester = User.objects.create(username="rita", email="rita@example.com")
    requester.groups.add(release_managers)
    staging = Environment.objects.create(name="staging", position=10, auto_deploy=True)
    qa = Environment.objects.create(name="qa", position=15, auto_deploy=False)
    production = Environment.objects.create(
        name="production", position=20, auto_deploy=True, requires_approval=True, required_approvals=2,
        approver_group=release_managers, allow_self_approval=True, block_commit_authors=False,
        approval_timeout=TIMEOUT,
    )
    now = timezone.now()
    ids = {"environments": {"staging": staging.pk, "qa": qa.pk, "production": production.pk},
           "releases": {}, "deployments": {}, "requester": requester.pk, "group": release_managers.pk}
    for name in ("shop", "billing"):
        repository = Repository.objects.create(name=name, url=f"/srv/git/{name}")
        ids.setdefault("repositories", []).append(repository.pk)
        for version in ("v1.0.0", "v1.1.0"):
            release = Release.objects.create(
                repository=repository, version=version, commit_sha=hashlib.sha1(f"{name}/{version}".encode()).hexdigest(),
                pipeline_text=PIPELINE, author_email="dana@example.com",
            )
            ids["releases"][(name, version)] = release.pk
        v100, v110 = (Release.objects.get(pk=ids["releases"][(name, v)]) for v in ("v1.0.0", "v1.1.0"))
        for environment in (staging, qa, production):
            done = Deployment.objects.create(
                release=v100, environment=environment, repository=repository, status="succeeded", trigger="auto",
                created_at=now - timedelta(days=1), finished_at=now - timedelta(days=1),
            )
            Target.objects.create(repository=repository, environment=environment, current_release=v100, last_deployment=done)
        ids["deployments"][(name, "v1.0.0", "production")] = done.pk
        on_staging = Deployment.objects.create(
            release=v110, environment=staging, repository=repository, status="succeeded", trigger="auto",
            finished_at=now - timedelta(hours=1),
        )
        Target.objects.filter(repository=repository, environment=staging).update(current_release=v110, last_deployment=on_staging)
        ids["deployments"][(name, "v1.1.0", "staging")] = on_staging.pk
    shop = Repository.objects.get(name="shop")
    held = Deployment.objects.create(
        release_id=ids["releases"][("shop", "v1.1.0")], environment=production, repository=shop,
        status="awaiting_approval", trigger="manual", triggered_by=requester,
    )
    Target.objects.filter(repository=shop, environment=production).update(last_deployment=held)
    ids["deployments"][("shop", "v1.1.0", "production")] = held.pk
    change_request = ChangeRequest.objects.create(
        deployment=held, repository=shop, environment=production, requested_by=requester, required_approvals=2,
        opened_at=now, expires_at=now + TIMEOUT, author_emails=["dana@example.com"],
        summary={"commits": [], "files": [], "error": ""},
    )
    ids["change_request"] = change_request.pk
    return ids


def statuses(Deployment):
    return dict(Deployment.objects.values_list("pk", "status"))


@pytest.mark.django_db(transaction=True)
def test_todays_environments_migrate_to_one_default_lifecycle_with_behaviour_unchanged(django_user_model):
    executor = MigrationExecutor(connection)
    leaves = latest(executor)
    try:
        executor = migrate(BEFORE)
        old = executor.loader.project_state(BEFORE).apps
        ids = make_todays_data(old)
        deployments_before = statuses(old.get_model("pipelines", "Deployment"))
        releases_before = old.get_model("pipelines", "Release").objects.count()
        targets_before = sorted(old.get_model("pipelines", "Target").objects.values_list(
            "repository_id", "environment_id", "current_release_id", "last_deployment_id"))

        migrate(leaves)
        _check_the_migrated_rows(ids, deployments_before, releases_before, targets_before)
        _check_the_behaviour_is_unchanged(ids, django_user_model)

        executor = migrate(BEFORE)
        _check_the_environments_are_restored(executor.loader.project_state(BEFORE).apps, ids)
    finally:
        # The test database is shared with the rest of the suite: leave it at the latest migration.
        migrate(leaves)


def _check_the_migrated_rows(ids, deployments_before, releases_before, targets_before):
    from approvals.models import ChangeRequest, StagePolicy
    from pipelines.models import Deployment, Lifecycle, Release, Repository, Stage, Target

    assert list(Lifecycle.objects.values_list("name", flat=True)) == ["default"]
    default = Lifecycle.objects.get()
    stages = list(default.stages.select_related("environment").order_by("position"))
    assert [(s.environment.name, s.position, s.auto_deploy, s.requires_approval) for s in stages] == [
        ("staging", 10, True, False),
        ("qa", 15, False, False),
        ("production", 20, True, True),
    ]
    production_stage = stages[2]
    policy = StagePolicy.objects.get()
    assert policy.stage == production_stage
    assert (policy.required_approvals, policy.approver_group_id, policy.allow_self_approval,
            policy.block_commit_authors, policy.approval_timeout) == (2, ids["group"], True, False, TIMEOUT)

    assert sorted(Repository.objects.values_list("pk", flat=True)) == sorted(ids["repositories"])
    assert set(Repository.objects.values_list("lifecycle__name", flat=True)) == {"default"}
    change_request = ChangeRequest.objects.get(pk=ids["change_request"])
    assert change_request.stage == production_stage
    assert change_request.status == ChangeRequest.Status.PENDING
    assert change_request.policy == policy

    assert statuses(Deployment) == deployments_before
    assert Release.objects.count() == releases_before
    assert sorted(Target.objects.values_list(
        "repository_id", "environment_id", "current_release_id", "last_deployment_id")) == targets_before
    # A repository made after the migration follows `default` too, without being told.
    assert Repository.objects.create(name="newcomer", url="/srv/git/newcomer").lifecycle == default
    assert Stage.objects.count() == 3


def _check_the_behaviour_is_unchanged(ids, django_user_model):
    from approvals.models import ChangeRequest
    from approvals.opening import open_change_request
    from pipelines import promotion
    from pipelines.models import Deployment, Environment, Release, Repository

    staging, qa, production = (Environment.objects.get(pk=ids["environments"][n]) for n in ("staging", "qa", "production"))
    billing = Repository.objects.get(name="billing")
    requester = django_user_model.objects.get(pk=ids["requester"])

    # Order and automation: a success in staging waits for a person before qa (qa never deployed
    # automatically); a success in qa moves on to production, which deploys automatically into its hold.
    on_staging = Deployment.objects.get(pk=ids["deployments"][("billing", "v1.1.0", "staging")])
    assert on_staging.next_stage() is None
    on_qa = Deployment.objects.filter(repository=billing, environment=qa).get()
    assert on_qa.next_stage().environment == production
    assert Deployment.objects.get(pk=ids["deployments"][("billing", "v1.0.0", "production")]).next_stage() is None
    assert [stage.environment.name for stage in on_staging.release.stages()] == ["staging", "qa", "production"]

    # A new release deploys to staging by itself and is queued; to production it is held for approval.
    v120 = Release.objects.create(repository=billing, version="v1.2.0", commit_sha="c" * 40, pipeline_text=PIPELINE)
    first = promotion.on_release_recorded(v120)
    assert (first.environment, first.status) == (staging, Deployment.Status.QUEUED)
    v110 = Release.objects.get(pk=ids["releases"][("billing", "v1.1.0")])
    held = promotion.promote(v110, production, by=requester)
    assert held.status == Deployment.Status.AWAITING_APPROVAL
    assert promotion.promote(v110, qa, by=requester).status == Deployment.Status.QUEUED

    # The new hold opens its request under the migrated policy: two approvals, the timeout.
    opened = open_change_request(held)
    assert opened.stage.environment == production
    assert opened.required_approvals == 2
    assert opened.expires_at == opened.opened_at + TIMEOUT

    # Who may decide on the migrated request is what the environment said: members of its group only,
    # the requester too (self-approval allowed), and commit authors too (not blocked), even without an e-mail.
    change_request = ChangeRequest.objects.get(pk=ids["change_request"])
    outsider = django_user_model.objects.create_user("oscar", "oscar@example.com")
    assert change_request.refusal_reason(outsider) == (
        "Only members of 'release-managers' may decide on changes to production.")
    assert change_request.refusal_reason(requester) is None
    author = django_user_model.objects.create_user("dana", "dana@example.com")
    no_email = django_user_model.objects.create_user("nemo", "")
    for user in (author, no_email):
        user.groups.add(ids["group"])
        assert change_request.refusal_reason(user) is None

    # And two approvals release it, not one.
    change_request.approve(requester)
    assert change_request.status == ChangeRequest.Status.PENDING
    change_request.approve(author)
    assert change_request.status == ChangeRequest.Status.APPROVED
    assert Deployment.objects.get(pk=ids["deployments"][("shop", "v1.1.0", "production")]).status == Deployment.Status.QUEUED


def _check_the_environments_are_restored(apps, ids):
    Environment = apps.get_model("pipelines", "Environment")
    ChangeRequest = apps.get_model("approvals", "ChangeRequest")
    restored = {
        environment.name: (environment.position, environment.auto_deploy, environment.requires_approval,
                           environment.required_approvals, environment.approver_group_id,
                           environment.allow_self_approval, environment.block_commit_authors, environment.approval_timeout)
        for environment in Environment.objects.all()
    }
    assert restored == {
        "staging": (10, True, False, 1, None, False, True, None),
        "qa": (15, False, False, 1, None, False, True, None),
        "production": (20, True, True, 2, ids["group"], True, False, TIMEOUT),
    }
    assert ChangeRequest.objects.filter(pk=ids["change_request"], environment_id=ids["environments"]["production"]).exists()
