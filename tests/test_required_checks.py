"""A stage may require passing checks: a release whose commit's checks failed, or never ran, is not promoted
there (by a person or automatically), and its page says why; one whose checks passed is."""

import pytest
from django.test import Client
from django.urls import reverse

from pipelines import promotion
from pipelines.models import AuditEvent, Deployment
from pipelines.promotion import PromotionError, promote
from tests.conftest import finished_check, set_stage

pytestmark = pytest.mark.django_db


@pytest.fixture
def strict_staging(staging):
    set_stage(staging, requires_passing_checks=True)
    return staging


def test_it_refuses_a_release_whose_check_failed_and_says_why_on_its_page(repository, strict_staging, make_release, alice):
    release = make_release(repository, "v1.0.0")
    check = finished_check(repository, release.commit_sha, "failed")

    with pytest.raises(PromotionError) as refused:
        promote(release, strict_staging, by=alice)
    assert "staging requires passing checks" in str(refused.value)
    assert f"check #{check.pk}" in str(refused.value) and "failed" in str(refused.value)
    assert not Deployment.objects.exists()

    page = Client()
    page.force_login(alice)
    html = page.get(reverse("release_detail", args=[repository.name, release.version])).content.decode()
    assert "Not promoted to staging" in html and "staging requires passing checks" in html
    assert "exited with status 1" in html
    repository_page = page.get(reverse("repository_detail", args=[repository.name])).content.decode()
    assert "checks required" in repository_page


def test_it_refuses_a_release_whose_checks_never_ran(repository, strict_staging, make_release, alice):
    release = make_release(repository, "v1.0.0")
    with pytest.raises(PromotionError, match="have not run"):
        promote(release, strict_staging, by=alice)


def test_the_automatic_promotion_records_why_it_skipped_a_stage_that_requires_passing_checks(
        repository, strict_staging, make_release):
    release = make_release(repository, "v1.0.0")
    finished_check(repository, release.commit_sha, "failed")

    assert promotion.on_release_recorded(release) is None
    skipped = AuditEvent.objects.get(action="promotion.skipped")
    assert "requires passing checks" in skipped.details["reason"] and "failed" in skipped.details["reason"]
    assert not Deployment.objects.exists()


def test_it_promotes_a_release_whose_check_passed_on_any_ref_of_its_commit(repository, strict_staging, make_release, alice):
    release = make_release(repository, "v1.0.0")
    finished_check(repository, release.commit_sha, "succeeded", ref_name="pull/4")

    deployment = promote(release, strict_staging, by=alice)
    assert deployment.status == Deployment.Status.QUEUED


def test_the_one_failed_check_of_a_commit_keeps_it_out_whatever_ref_heads_it(repository, strict_staging, make_release,
                                                                            alice):
    from pipelines.models import Check

    release = make_release(repository, "v1.0.0")
    failed = finished_check(repository, release.commit_sha, "failed", ref_name="feature/x")
    # A pull request opened on that commit gets the same check back: a commit is checked once.
    assert Check.objects.queue_for(repository, commit_sha=release.commit_sha, ref_name="pull/4") == failed
    with pytest.raises(PromotionError, match="failed"):
        promote(release, strict_staging, by=alice)


def test_a_stage_that_does_not_require_checks_ignores_them(repository, staging, make_release, alice):
    release = make_release(repository, "v1.0.0")
    finished_check(repository, release.commit_sha, "failed")
    assert promote(release, staging, by=alice).status == Deployment.Status.QUEUED


def test_a_check_whose_worker_was_lost_fails_and_keeps_its_release_out(repository, strict_staging, make_release, alice):
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from pipelines import reconciler
    from pipelines.models import Check

    release = make_release(repository, "v1.0.0")
    check = Check.objects.queue_for(repository, commit_sha=release.commit_sha, ref_name="feature/x")
    check.claim(worker_name="host-9:4242", runner_host="another-host", runner_pid=4242)

    assert reconciler.reconcile()["checks_lost"] == 0, "a fresh heartbeat is left alone"
    later = timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)
    assert reconciler.reconcile(now=later)["checks_lost"] == 1

    check.refresh_from_db()
    assert check.status == "failed" and check.error.startswith("Worker lost: no heartbeat from host-9:4242")
    with pytest.raises(PromotionError, match="Worker lost"):
        promote(release, strict_staging, by=alice)
