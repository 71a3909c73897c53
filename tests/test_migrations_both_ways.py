"""Every migration runs both ways on a database with data, and an upgrade from before lifecycles keeps every
pending change request decidable.

The database is migrated for real with rows written through the historical models (what the code of that
time could write); what survives is checked afterwards, and decidability with the live code."""

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from tests.conftest import PIPELINE

# The schema of commit 9035ca1, the last before lifecycles.
BEFORE_LIFECYCLES = [("pipelines", "0004_deployment_superseded_by"), ("approvals", "0001_initial")]
ZERO = [("api", None), ("approvals", None), ("pipelines", None)]


def migrate(targets):
    """Migrate to `targets` with a fresh executor (its loader then sees what is applied now); return the apps
    of the state reached."""
    MigrationExecutor(connection).migrate(targets)
    executor = MigrationExecutor(connection)
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


def sha(text):
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.fixture
def leaves():
    """The latest migrations; the database is left there afterwards, as the rest of the suite expects."""
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    yield leaves
    migrate(leaves)


# --- the round trip ---------------------------------------------------------------------------------------


def make_data_at_the_latest_schema(apps):
    """A bit of everything the portal stores today, including what the older schemas cannot hold: a stage
    that holds deployments without an approval policy, a second lifecycle, one person's decisions on two
    previews, two reporters of one external check, a check waiting for a deployer."""
    get = apps.get_model
    Group, User = get("auth", "Group"), get("auth", "User")
    Environment, Lifecycle, Stage = (get("pipelines", n) for n in ("Environment", "Lifecycle", "Stage"))
    Repository, Release, Deployment = (get("pipelines", n) for n in ("Repository", "Release", "Deployment"))
    ChangeRequest, Decision, StagePolicy = (get("approvals", n) for n in ("ChangeRequest", "Decision", "StagePolicy"))
    now = timezone.now()

    managers = Group.objects.create(name="release-managers")
    rita, ada, bob = (User.objects.create(username=n, email=f"{n}@example.com") for n in ("rita", "ada", "bob"))
    for user in (ada, bob):
        user.groups.add(managers)
    staging = Environment.objects.create(name="staging", position=10)
    production = Environment.objects.create(name="production", position=20)
    sandbox = Environment.objects.create(name="sandbox", position=30)
    default, _ = Lifecycle.objects.get_or_create(name="default")  # 0006 made it
    careful = Lifecycle.objects.create(name="careful")
    Stage.objects.create(lifecycle=default, environment=staging, position=10, auto_deploy=True)
    on_production = Stage.objects.create(lifecycle=default, environment=production, position=20, requires_approval=True)
    # Holds its deployments, but an admin removed its policy (or never set one): older schemas need a group.
    on_sandbox = Stage.objects.create(lifecycle=default, environment=sandbox, position=30, requires_approval=True)
    Stage.objects.create(lifecycle=careful, environment=staging, position=1, auto_deploy=False)
    careful_production = Stage.objects.create(lifecycle=careful, environment=production, position=2,
                                              requires_approval=True)
    StagePolicy.objects.create(stage=on_production, approver_group=managers, required_approvals=2,
                               approval_timeout=timedelta(days=2), allow_api_approval=True)
    StagePolicy.objects.create(stage=careful_production, approver_group=managers, required_approvals=3)

    shop = Repository.objects.create(name="shop", url="/srv/git/shop", lifecycle=default)
    billing = Repository.objects.create(name="billing", url="/srv/git/billing", lifecycle=careful)
    releases = {}
    for repository in (shop, billing):
        for version in ("v1.0.0", "v1.1.0", "v1.2.0"):
            releases[repository.name, version] = Release.objects.create(
                repository=repository, version=version, commit_sha=sha(f"{repository.name}/{version}"),
                pipeline_text=PIPELINE, author_email="dana@example.com")

    def deploy(repository, version, environment, status, **fields):
        return Deployment.objects.create(release=releases[repository.name, version], environment=environment,
                                         repository=repository, status=status, trigger="auto", **fields)

    Target = get("pipelines", "Target")
    for repository in (shop, billing):
        done = deploy(repository, "v1.0.0", staging, "succeeded", finished_at=now)
        Target.objects.create(repository=repository, environment=staging, current_release=done.release,
                              last_deployment=done)
        deploy(repository, "v1.1.0", staging, "failed", exit_code=1, error="step failed", finished_at=now)
        deploy(repository, "v1.2.0", staging, "running", started_at=now, heartbeat_at=now)
    deploy(shop, "v1.1.0", production, "cancelled", error="superseded")
    deploy(shop, "v1.2.0", staging, "queued")
    rejected = deploy(billing, "v1.0.0", production, "rejected")
    held_production = deploy(shop, "v1.0.0", production, "awaiting_approval")
    held_sandbox = deploy(shop, "v1.0.0", sandbox, "awaiting_approval")
    held_careful = deploy(billing, "v1.1.0", production, "awaiting_approval")

    def request(deployment, stage, status="pending", required_approvals=1, **fields):
        return ChangeRequest.objects.create(
            deployment=deployment, repository=deployment.repository, environment=deployment.environment, stage=stage,
            requested_by=rita, required_approvals=required_approvals, status=status, opened_at=now,
            author_emails=["dana@example.com"], summary={"commits": [], "files": [], "error": ""}, **fields)

    pending = request(held_production, on_production, required_approvals=2)
    request(held_sandbox, on_sandbox)
    request(held_careful, careful_production, required_approvals=3)
    decided = request(rejected, careful_production, status="rejected", decided_at=now, status_reason="rejected by bob")
    # Ada approved, the preview changed, and she approved again: one decision per person and preview.
    Decision.objects.create(change_request=pending, user=ada, verdict="approve", preview_number=0,
                            decided_at=now - timedelta(hours=1))
    Decision.objects.create(change_request=pending, user=ada, verdict="approve", preview_number=1, decided_at=now)
    Decision.objects.create(change_request=decided, user=bob, verdict="reject", comment="not now")

    get("approvals", "FreezeWindow").objects.create(name="holidays", reason="holidays", starts_at=now,
                                                    ends_at=now + timedelta(days=1)).environments.add(production)
    get("pipelines", "AuditEvent").objects.create(seq=1, created_at=now, actor_name="rita", action="deployment.created",
                                                  prev_hash="0" * 64, hash="1" * 64, repository=shop)
    get("pipelines", "FollowUp").objects.create(kind="notify", deployment=held_production, payload={"to": "ops"})
    get("pipelines", "DeploymentLogChunk").objects.create(deployment=held_production, seq=0, text="waiting\n")
    get("pipelines", "Preview").objects.create(deployment=held_production, number=1, status="succeeded")
    get("pipelines", "Build").objects.create(release=releases["shop", "v1.0.0"], status="succeeded")
    get("pipelines", "TagMove").objects.create(release=releases["shop", "v1.1.0"], from_sha="a" * 40, to_sha="b" * 40,
                                               kind="moved")
    get("pipelines", "CheckRef").objects.create(repository=shop, kind="pull_request", name="7", number=7,
                                                head_sha="c" * 40, from_fork=True)
    Check = get("pipelines", "Check")
    Check.objects.create(repository=shop, commit_sha="c" * 40, ref_name="pull/7", status="waiting", from_fork=True)
    Check.objects.create(repository=shop, commit_sha="d" * 40, ref_name="main", status="succeeded")
    ci, other_ci = (User.objects.create(username=n) for n in ("ci", "other-ci"))
    for reporter, state in ((ci, "success"), (other_ci, "failure")):
        get("pipelines", "ExternalCheck").objects.create(repository=shop, commit_sha="d" * 40, name="lint",
                                                         state=state, reported_by=reporter)
    get("pipelines", "EnvironmentSecret").objects.create(environment=production, name="TOKEN", ciphertext="x")
    get("api", "ServiceAccount").objects.create(user=ci)
    get("api", "ApiToken").objects.create(user=ci, name="ci", token_hash="e" * 64, prefix="gp_ci",
                                          scopes=["checks"], expires_at=now + timedelta(days=30))
    return {"pending": pending.pk, "sandbox": held_sandbox.pk, "careful": held_careful.pk, "decided": decided.pk,
            "managers": managers.pk, "ada": ada.pk, "bob": bob.pk}


@pytest.mark.django_db(transaction=True)
def test_every_migration_reverses_with_data_in_its_tables_and_forward_again(leaves):
    apps = migrate(leaves)
    ids = make_data_at_the_latest_schema(apps)
    deployments = dict(apps.get_model("pipelines", "Deployment").objects.values_list("pk", "status"))

    old = migrate(BEFORE_LIFECYCLES)
    Environment, ChangeRequest = old.get_model("pipelines", "Environment"), old.get_model("approvals", "ChangeRequest")
    environments = {e.name: (e.position, e.auto_deploy, e.requires_approval, e.approver_group_id, e.required_approvals)
                    for e in Environment.objects.all()}
    sandbox_group = Environment.objects.get(name="sandbox").approver_group_id
    assert environments == {
        "staging": (10, True, False, None, 1),
        "production": (20, True, True, ids["managers"], 2),
        # It held deployments without a policy: it still does, with an empty group for an admin to fill.
        "sandbox": (30, True, True, sandbox_group, 1),
    }
    assert old.get_model("auth", "Group").objects.get(pk=sandbox_group).name == "sandbox-approvers"
    assert dict(old.get_model("pipelines", "Deployment").objects.values_list("pk", "status")) == deployments
    assert set(ChangeRequest.objects.values_list("pk", "status")) == {
        (ids["pending"], "pending"), (ids["decided"], "rejected"),
        (ChangeRequest.objects.get(deployment_id=ids["sandbox"]).pk, "pending"),
        (ChangeRequest.objects.get(deployment_id=ids["careful"]).pk, "pending")}
    # One decision per person survives: Ada's latest.
    Decision = old.get_model("approvals", "Decision")
    assert sorted(Decision.objects.values_list("change_request_id", "user_id")) == sorted(
        [(ids["pending"], ids["ada"]), (ids["decided"], ids["bob"])])

    latest = migrate(leaves)
    assert dict(latest.get_model("pipelines", "Deployment").objects.values_list("pk", "status")) == deployments
    # The other lifecycle was dropped on the way down: every repository follows `default` again.
    Repository = latest.get_model("pipelines", "Repository")
    assert set(Repository.objects.values_list("lifecycle__name", flat=True)) == {"default"}
    _check_every_pending_request_is_decidable()

    migrate(ZERO)
    assert "pipelines_deployment" not in connection.introspection.table_names()
    migrate(leaves)
    assert "pipelines_deployment" in connection.introspection.table_names()


# --- the upgrade from before lifecycles ------------------------------------------------------------------


def make_requests_on_every_kind_of_environment(apps):
    """Before lifecycles an environment held deployments when it required approval, and anyone in its approver
    group could decide on a change request there, whether or not it required approval now (an admin may have
    switched it off while a request was pending). One pending request on each kind of environment."""
    get = apps.get_model
    Group, User = get("auth", "Group"), get("auth", "User")
    Environment, Repository, Release = (get("pipelines", n) for n in ("Environment", "Repository", "Release"))
    Deployment, ChangeRequest = get("pipelines", "Deployment"), get("approvals", "ChangeRequest")
    managers = Group.objects.create(name="release-managers")
    rita = User.objects.create(username="rita", email="rita@example.com")
    kinds = {
        "gated": dict(requires_approval=True, approver_group=managers, required_approvals=2, allow_self_approval=True),
        "gated-without-group": dict(requires_approval=True),
        "open-with-group": dict(requires_approval=False, approver_group=managers, block_commit_authors=False,
                                approval_timeout=timedelta(days=1)),
        "open": dict(requires_approval=False),
    }
    repository = Repository.objects.create(name="shop", url="/srv/git/shop")
    release = Release.objects.create(repository=repository, version="v1.0.0", commit_sha=sha("shop"),
                                     pipeline_text=PIPELINE)
    now = timezone.now()
    requests = {}
    for position, (name, fields) in enumerate(kinds.items()):
        environment = Environment.objects.create(name=name, position=position, **fields)
        held = Deployment.objects.create(release=release, environment=environment, repository=repository,
                                         status="awaiting_approval", trigger="manual", triggered_by=rita)
        requests[name] = ChangeRequest.objects.create(
            deployment=held, repository=repository, environment=environment, requested_by=rita,
            required_approvals=environment.required_approvals, opened_at=now, author_emails=["dana@example.com"],
            summary={"commits": [], "files": [], "error": ""}).pk
    return requests


@pytest.mark.django_db(transaction=True)
def test_an_upgrade_from_before_lifecycles_keeps_every_pending_request_decidable(leaves):
    requests = make_requests_on_every_kind_of_environment(migrate(BEFORE_LIFECYCLES))
    migrate(leaves)

    from approvals.models import ChangeRequest

    policies = {pk: ChangeRequest.objects.get(pk=pk).policy for pk in requests.values()}
    assert all(policies.values())
    gated, open_with_group = policies[requests["gated"]], policies[requests["open-with-group"]]
    assert (gated.approver_group.name, gated.required_approvals, gated.allow_self_approval) == (
        "release-managers", 2, True)
    # The settings of an environment that did not require approval are its request's policy, not dropped.
    assert (open_with_group.approver_group.name, open_with_group.block_commit_authors,
            open_with_group.approval_timeout) == ("release-managers", False, timedelta(days=1))
    assert policies[requests["gated-without-group"]].approver_group.name == "gated-without-group-approvers"
    assert policies[requests["open"]].approver_group.name == "open-approvers"
    _check_every_pending_request_is_decidable()


def _check_every_pending_request_is_decidable():
    """Each pending request can be decided by someone: a member of its policy's group (added now when the group
    is one the migration made empty) who neither requested it nor wrote its commits."""
    from django.contrib.auth.models import User

    from approvals.models import ChangeRequest

    pending = list(ChangeRequest.objects.filter(status=ChangeRequest.Status.PENDING))
    assert pending
    for change_request in pending:
        policy = change_request.policy
        assert policy is not None, f"change request {change_request.pk} on {change_request.stage} has no policy"
        name = f"approver-{policy.approver_group_id}"
        approver, _ = User.objects.get_or_create(username=name, defaults={"email": f"{name}@example.com"})
        approver.groups.add(policy.approver_group)
        assert change_request.refusal_reason(approver) is None, change_request.refusal_reason(approver)
