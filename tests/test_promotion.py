"""Promotion: the first environment gets a new release, approval holds it, newer supersedes older."""

import pytest

from pipelines import promotion
from pipelines.models import AuditEvent, Deployment, Target
from tests.conftest import set_stage

pytestmark = pytest.mark.django_db

ONLY_PRODUCTION = """\
environments:
  production:
    steps:
      - run: ./deploy.sh
"""


def test_a_new_release_queues_a_deployment_to_the_first_environment_its_file_names(repository, staging, make_release):
    deployment = promotion.on_release_recorded(make_release(repository, "v1.0.0"))
    assert deployment.environment == staging
    assert deployment.status == "queued" and deployment.trigger == "auto"
    assert Target.objects.get(repository=repository, environment=staging).last_deployment == deployment


def test_an_environment_that_requires_approval_holds_the_deployment(repository, production, make_release):
    deployment = promotion.on_release_recorded(make_release(repository, "v1.0.0", pipeline=ONLY_PRODUCTION))
    assert deployment.environment == production
    assert deployment.status == "awaiting_approval"
    assert deployment.job_id == ""


def test_a_newer_queued_release_supersedes_an_older_queued_one(repository, staging, make_release):
    older = promotion.on_release_recorded(make_release(repository, "v1.0.0"))
    newer = promotion.on_release_recorded(make_release(repository, "v1.1.0"))
    older.refresh_from_db()
    assert older.status == "cancelled"
    assert older.error == f"Superseded by v1.1.0 (deployment #{newer.pk})."
    assert older.superseded_by == newer
    assert newer.status == "queued"


def test_a_paused_target_receives_nothing_automatically(repository, staging, make_release, alice):
    Target.objects.for_pair(repository, staging).pause(by=alice, reason="incident 42")
    assert promotion.on_release_recorded(make_release(repository, "v1.0.0")) is None
    assert not Deployment.objects.exists()
    skipped = AuditEvent.objects.get(action="promotion.skipped")
    assert "incident 42" in skipped.details["reason"]


def test_an_environment_without_auto_deploy_waits_for_a_person(repository, staging, make_release):
    set_stage(staging, auto_deploy=False)
    assert promotion.on_release_recorded(make_release(repository, "v1.0.0")) is None


def test_a_blocked_or_invalid_release_is_never_promoted_automatically(repository, staging, make_release):
    blocked = make_release(repository, "v1.0.0")
    blocked.blocked = True
    assert promotion.on_release_recorded(blocked) is None
    invalid = make_release(repository, "v1.0.1", error=".gitops.yml line 3: not valid YAML")
    assert promotion.on_release_recorded(invalid) is None
    with pytest.raises(promotion.PromotionError, match="cannot be deployed: .gitops.yml line 3"):
        promotion.promote(invalid, staging, by=None)


def test_success_moves_the_release_to_the_next_environment(repository, staging, production, make_release):
    deployment = promotion.on_release_recorded(make_release(repository, "v1.0.0"))
    deployment.claim(worker_name="w")
    deployment.succeed()
    following = promotion.on_deployment_succeeded(deployment)
    assert following.environment == production
    assert following.status == "awaiting_approval"
    assert following.previous_release is None


def test_a_rollback_does_not_move_on_to_the_next_environment(repository, staging, production, make_release, alice):
    deployment = promotion.promote(make_release(repository, "v1.0.0"), staging, by=alice, trigger=Deployment.Trigger.ROLLBACK)
    deployment.claim(worker_name="w")
    deployment.succeed()
    assert promotion.on_deployment_succeeded(deployment) is None


def test_promoting_to_an_environment_the_file_does_not_name_is_refused(repository, staging, make_release, alice):
    release = make_release(repository, "v1.0.0", pipeline=ONLY_PRODUCTION)
    with pytest.raises(promotion.PromotionError, match="does not name the environment 'staging'"):
        promotion.promote(release, staging, by=alice)
    assert not Deployment.objects.exists()


def test_previous_release_is_what_ran_there_before(repository, staging, make_release, alice):
    first = promotion.promote(make_release(repository, "v1.0.0"), staging, by=alice)
    first.claim(worker_name="w")
    first.succeed()
    second = promotion.promote(make_release(repository, "v1.1.0"), staging, by=alice)
    assert second.previous_release == first.release


def test_a_rollback_goes_only_to_a_release_that_succeeded_there(repository, staging, make_release, alice):
    old, new = make_release(repository, "v1.0.0"), make_release(repository, "v1.1.0")
    with pytest.raises(promotion.PromotionError, match="v1.0.0 never succeeded in staging"):
        promotion.rollback(old, staging, by=alice)
    for release in (old, new):
        deployment = promotion.promote(release, staging, by=alice)
        deployment.claim(worker_name="w")
        deployment.succeed()
    rollback = promotion.rollback(old, staging, by=alice, reason="v1.1.0 leaks memory")
    assert rollback.trigger == "rollback"
    assert rollback.previous_release == new


def test_after_a_rollback_automatic_deployment_to_that_target_pauses(repository, staging, make_release, alice):
    old = make_release(repository, "v1.0.0")
    first = promotion.promote(old, staging, by=alice)
    first.claim(worker_name="w")
    first.succeed()
    promotion.rollback(old, staging, by=alice)
    target = Target.objects.get(repository=repository, environment=staging)
    assert target.auto_deploy_paused
    assert "Rollback to v1.0.0" in target.paused_reason
    assert promotion.on_release_recorded(make_release(repository, "v1.2.0")) is None


def test_a_blocked_release_is_never_promoted_and_is_audited(repository, staging, make_release, alice):
    release = make_release(repository, "v1.0.0")
    release.block(by=alice, reason="corrupts the cache")
    assert promotion.on_release_recorded(release) is None
    with pytest.raises(promotion.PromotionError, match="blocked \\(corrupts the cache\\)"):
        promotion.promote(release, staging, by=alice)
    release.unblock(by=alice)
    assert promotion.promote(release, staging, by=alice).status == "queued"
    assert [e.action for e in AuditEvent.objects.order_by("seq") if e.action.startswith("release.")] == [
        "release.blocked", "release.unblocked"
    ]


def test_a_new_candidate_awaiting_approval_does_not_cancel_an_approved_one(repository, production, make_release, alice):
    approved = promotion.promote(make_release(repository, "v1.0.0", pipeline=ONLY_PRODUCTION), production, by=alice)
    approved.release_hold(by=alice)  # approved, queued behind a freeze or a running deployment
    newer = promotion.promote(make_release(repository, "v1.1.0", pipeline=ONLY_PRODUCTION), production, by=alice)
    approved.refresh_from_db()
    assert approved.status == "queued"
    assert newer.status == "awaiting_approval"


def test_retrying_a_failed_rollback_is_still_a_rollback(repository, staging, production, make_release, alice):
    old = make_release(repository, "v1.0.0")
    first = promotion.promote(old, staging, by=alice)
    first.claim(worker_name="w")
    first.succeed()
    rollback = promotion.rollback(old, staging, by=alice)
    rollback.claim(worker_name="w")
    rollback.fail("boom", exit_code=1)
    again = promotion.retry(rollback, by=alice)
    assert again.trigger == "rollback"
    again.claim(worker_name="w")
    again.succeed()
    assert promotion.on_deployment_succeeded(again) is None
    assert not Deployment.objects.filter(environment=production).exists()
