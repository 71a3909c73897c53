"""The approval policy: who may decide, how many must approve, and what one rejection does."""

import pytest
from django.contrib.auth.models import Permission

from approvals.models import ChangeRequest, Decision, DecisionRefused
from pipelines.models import AuditEvent, Deployment
from tests.conftest import set_policy, stage_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def carol(django_user_model, approvers):
    user = django_user_model.objects.create_user("carol", "carol@example.com", "password")
    user.groups.add(approvers)
    return user


@pytest.fixture
def dana(django_user_model, approvers):
    """An approver who also authored the commits in the change."""
    user = django_user_model.objects.create_user("dana", "Dana@Example.com", "password")
    user.groups.add(approvers)
    return user


@pytest.fixture
def open_request(repository, production, make_release, alice):
    """A held production deployment requested by alice and its change request (built directly)."""

    def make(required_approvals=1, requested_by=alice, author_emails=("dana@example.com",)):
        release = make_release(repository, f"v1.{Deployment.objects.count()}.0")
        deployment = Deployment.objects.create(
            release=release, environment=production, repository=repository, trigger=Deployment.Trigger.MANUAL,
            status=Deployment.Status.AWAITING_APPROVAL, triggered_by=requested_by,
        )
        return ChangeRequest.objects.create(
            deployment=deployment, repository=repository, environment=production, stage=stage_of(production),
            requested_by=requested_by, required_approvals=required_approvals, author_emails=list(author_emails),
        )

    return make


def test_an_eligible_approval_releases_the_deployment(open_request, bob):
    change = open_request()
    change.approve(bob, "looks good")
    change.deployment.refresh_from_db()
    assert change.status == "approved"
    assert change.deployment.status == "queued"
    assert AuditEvent.objects.filter(action="change_request.approved").count() == 1


def test_it_refuses_self_approval(open_request, bob):
    change = open_request(requested_by=bob)
    with pytest.raises(DecisionRefused, match="You requested this change"):
        change.approve(bob)
    assert not Decision.objects.exists()
    assert Deployment.objects.get().status == "awaiting_approval"


def test_self_approval_is_allowed_where_the_environment_says_so(open_request, production, bob):
    set_policy(production, allow_self_approval=True)
    change = open_request(requested_by=bob)
    change.approve(bob)
    assert change.status == "approved"


def test_it_refuses_approval_from_an_author_of_a_commit_in_the_change(open_request, dana):
    change = open_request()
    with pytest.raises(DecisionRefused, match="You authored or committed a commit in this change"):
        change.approve(dana)


def test_commit_authors_may_approve_where_the_environment_allows_it(open_request, production, dana):
    set_policy(production, block_commit_authors=False)
    change = open_request()
    change.approve(dana)
    assert change.status == "approved"


def test_it_refuses_someone_outside_the_approver_group(open_request, charlie):
    change = open_request()
    with pytest.raises(DecisionRefused, match="Only members of 'approvers' may decide on changes to production"):
        change.approve(charlie)


def test_two_of_n_needs_two_distinct_people(open_request, bob, carol):
    change = open_request(required_approvals=2)
    change.approve(bob)
    assert change.status == "pending"
    with pytest.raises(DecisionRefused, match="You have already decided"):
        change.approve(bob)
    assert Deployment.objects.get().status == "awaiting_approval"
    change.approve(carol)
    assert change.status == "approved"
    assert Deployment.objects.get().status == "queued"


def test_one_rejection_ends_it(open_request, bob, carol):
    change = open_request(required_approvals=2)
    change.approve(bob)
    change.reject(carol, "the migration is not reversible")
    deployment = Deployment.objects.get()
    assert change.status == "rejected"
    assert deployment.status == "rejected"
    assert "the migration is not reversible" in deployment.error
    with pytest.raises(DecisionRefused, match="already rejected"):
        change.approve(bob)


def test_a_rejection_needs_a_comment(open_request, bob):
    change = open_request()
    with pytest.raises(DecisionRefused, match="a comment is required"):
        change.reject(bob, "  ")
    assert change.status == "pending"


def test_a_second_click_on_approve_changes_nothing(open_request, bob):
    change = open_request()
    change.approve(bob)
    with pytest.raises(DecisionRefused, match="already approved"):
        ChangeRequest.objects.get(pk=change.pk).approve(bob)
    assert AuditEvent.objects.filter(action="deployment.queued").count() == 1


def test_the_refusal_reason_is_given_before_anyone_clicks(open_request, bob, charlie, alice):
    change = open_request()
    assert change.refusal_reason(bob) is None
    assert "approvers" in change.refusal_reason(charlie)
    alice.groups.add(change.policy.approver_group)
    assert change.refusal_reason(alice) == "You requested this change, so someone else has to approve it."


def test_a_request_whose_deployment_was_superseded_cannot_be_approved(open_request, bob):
    change = open_request()
    change.deployment.cancel(reason="Superseded by v2")
    with pytest.raises(DecisionRefused, match="no longer waiting for approval"):
        ChangeRequest.objects.get(pk=change.pk).approve(bob)


def test_the_permission_to_deploy_does_not_make_someone_an_approver(open_request, charlie):
    charlie.user_permissions.add(Permission.objects.get(codename="deploy"))
    with pytest.raises(DecisionRefused):
        open_request().approve(charlie)


def test_waiting_on_me_leaves_out_requests_i_may_not_approve(open_request, bob, carol):
    mine = open_request(requested_by=bob)
    theirs = open_request(requested_by=carol)
    assert list(ChangeRequest.objects.awaiting(bob)) == [theirs]
    theirs.approve(bob)
    assert list(ChangeRequest.objects.awaiting(bob)) == []
    assert list(ChangeRequest.objects.awaiting(carol)) == [mine]


def test_nobody_may_approve_while_the_commit_authors_are_unknown(open_request, bob, production):
    change = open_request(author_emails=())
    ChangeRequest.objects.filter(pk=change.pk).update(summary={"error": "Cannot reach repository"})
    change.refresh_from_db()
    with pytest.raises(DecisionRefused, match="commit authors are unknown"):
        change.approve(bob)
    set_policy(production, block_commit_authors=False)
    change.approve(bob)
    assert change.status == "approved"


def test_it_refuses_an_approver_without_an_e_mail_where_commit_authors_are_blocked(open_request, bob, production):
    bob.email = ""
    bob.save()
    change = open_request()
    with pytest.raises(DecisionRefused, match="You have no e-mail address on your account") as refused:
        change.approve(bob)
    assert "ask an admin to set one" in str(refused.value)
    assert not Decision.objects.exists()
    assert Deployment.objects.get().status == "awaiting_approval"
    # Where commit authors may approve, the e-mail does not matter.
    set_policy(production, block_commit_authors=False)
    change.approve(bob)
    assert change.status == "approved"


def test_a_blank_e_mail_is_no_e_mail(open_request, bob):
    bob.email = "   "
    bob.save()
    with pytest.raises(DecisionRefused, match="no e-mail address"):
        open_request().approve(bob)


def test_it_refuses_the_committer_of_a_commit_in_the_change(repository, origin, production, make_release, alice, bob):
    """Bob applied dana's patch: he committed it, so he may not approve it either."""
    from approvals import changes
    from pipelines import promotion
    from pipelines.models import Target
    from tests.conftest import git

    running = make_release(repository, "v1.0.0", commit_sha=origin.head())
    target = Target.objects.for_pair(repository, production)
    Target.objects.filter(pk=target.pk).update(current_release=running)
    origin.write("fix.txt", "a patch from dana\n")
    git(origin.path, "add", "-A")
    git(origin.path, "commit", "-q", "-m", "Apply dana's fix",
        env={"GIT_COMMITTER_EMAIL": "Bob@Example.com", "GIT_COMMITTER_NAME": "Bob"})
    candidate = make_release(repository, "v1.1.0", commit_sha=origin.head())
    deployment = promotion.promote(candidate, production, by=alice)

    change = changes.inspect(deployment)
    assert change.author_emails == ["bob@example.com", "dana@example.com"]
    request = ChangeRequest.objects.create(
        deployment=deployment, repository=repository, environment=production, stage=stage_of(production),
        requested_by=alice, required_approvals=1, summary=change.summary, author_emails=change.author_emails,
    )
    with pytest.raises(DecisionRefused, match="You authored or committed a commit in this change"):
        request.approve(bob)
    assert Deployment.objects.get(pk=deployment.pk).status == "awaiting_approval"


def test_a_first_deployment_counts_the_committers_of_its_history_too(repository, origin, production, make_release, alice):
    from approvals import changes
    from pipelines import promotion
    from tests.conftest import git

    git(origin.path, "commit", "-q", "--allow-empty", "-m", "Cherry-picked by erin",
        env={"GIT_COMMITTER_EMAIL": "erin@example.com"})
    candidate = make_release(repository, "v1.0.0", commit_sha=origin.head())
    change = changes.inspect(promotion.promote(candidate, production, by=alice))
    assert "erin@example.com" in change.author_emails
