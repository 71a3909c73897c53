"""A stage's soak time (issue 20): a release must stay verified there that long before the next stage takes it
automatically. Real git, pollrepos and the real PortalWorker; the clock is moved only where the follow-up is
carried out (run_follow_ups(now=…)), the boundary the soak is about."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from pipelines import followups, promotion
from pipelines.models import AuditEvent, Deployment, FollowUp, Lifecycle, Release, Repository
from pipelines.models.followup import PROMOTE_AFTER_SUCCESS
from tests.conftest import set_stage
from tests.test_admin import stage_rows

pytestmark = pytest.mark.django_db(transaction=True)

SOAK = timedelta(hours=1)


@pytest.fixture
def soaking(origin, environments):
    """staging soaks for an hour before production (which holds for approval) takes a release."""
    staging, production = environments
    set_stage(staging, soak_time=SOAK)
    return Repository.objects.create(name="shop", url=origin.url)


def release_to_staging(origin, run_workers, version):
    origin.write("VERSION", f"{version}\n")
    origin.commit(f"release {version}")
    origin.tag(version)
    call_command("pollrepos", "--repository", "shop")
    run_workers()
    return Release.objects.get(version=version)


def pending_promotion(release):
    return FollowUp.objects.pending().get(kind=PROMOTE_AFTER_SUCCESS, deployment__release=release)


def test_a_release_reaches_the_next_stage_only_after_the_soak_time(
        soaking, origin, staging, production, run_workers, run_follow_ups):
    release = release_to_staging(origin, run_workers, "v1.0.0")
    staged = Deployment.objects.get(release=release, environment=staging)
    assert staged.status == "succeeded"
    assert not Deployment.objects.filter(environment=production).exists(), "not at once"
    follow_up = pending_promotion(release)
    assert abs(follow_up.due_at - (staged.finished_at + SOAK)) < timedelta(seconds=5)

    run_follow_ups(now=follow_up.due_at - timedelta(seconds=2))
    assert not Deployment.objects.filter(environment=production).exists(), "a second too early"

    run_follow_ups(now=follow_up.due_at)
    assert Deployment.objects.get(environment=production).release == release


def test_an_attempt_before_the_soak_ends_waits_again_for_its_end(
        soaking, origin, staging, production, run_workers):
    release = release_to_staging(origin, run_workers, "v1.0.0")
    early = pending_promotion(release)

    # As the runner would carry it out (at once, before it is due): it must not promote, but wait again.
    assert followups.carry_out(early.pk, timezone.now(), before_due=True)
    assert not Deployment.objects.filter(environment=production).exists()
    again = pending_promotion(release)
    assert again.pk != early.pk and abs(again.due_at - early.due_at) < timedelta(seconds=2)

    followups.carry_out(again.pk, again.due_at)
    assert Deployment.objects.get(environment=production).release == release


def test_a_release_replaced_during_its_soak_goes_no_further_and_the_audit_says_why(
        soaking, origin, staging, production, run_workers, run_follow_ups):
    first = release_to_staging(origin, run_workers, "v1.0.0")
    first_due = pending_promotion(first).due_at
    second = release_to_staging(origin, run_workers, "v1.1.0")
    assert Deployment.objects.get(release=second, environment=staging).status == "succeeded"

    run_follow_ups(now=first_due)
    assert not Deployment.objects.filter(environment=production).exists()
    skipped = AuditEvent.objects.filter(action="promotion.skipped").latest("id")
    assert skipped.details == {"release": "v1.0.0", "reason": "staging no longer runs v1.0.0"}

    run_follow_ups(now=pending_promotion(second).due_at)
    assert list(Deployment.objects.filter(environment=production).values_list("release__version", flat=True)) == [
        "v1.1.0"]


def test_reevaluation_does_not_promote_a_release_still_soaking(soaking, origin, production, run_workers):
    release_to_staging(origin, run_workers, "v1.0.0")
    set_stage(production, requires_approval=False)

    assert promotion.reevaluate(soaking) == []
    assert not Deployment.objects.filter(environment=production).exists()


def test_without_a_soak_time_the_next_stage_takes_the_release_at_once(origin, environments, run_workers):
    staging, production = environments
    Repository.objects.create(name="shop", url=origin.url)
    release = release_to_staging(origin, run_workers, "v1.0.0")

    assert Deployment.objects.get(release=release, environment=production).status == "awaiting_approval"


def test_the_dashboard_shows_the_soak_time_left(soaking, origin, run_workers, client, alice):
    release_to_staging(origin, run_workers, "v1.0.0")

    client.force_login(alice)
    page = client.get(reverse("dashboard")).content.decode()
    assert "soaking: 59 min" in page or "soaking: 1 h 00 min" in page


def test_the_soak_time_is_set_on_the_stage_in_the_admin_and_on_record(environments, client, alice):
    lifecycle = Lifecycle.objects.get(name="default")
    url = reverse("admin:pipelines_lifecycle_change", args=[lifecycle.pk])
    client.force_login(alice)
    assert "Soak time" in client.get(url).content.decode()

    saved = client.post(url, {"name": "default", "description": "", "_save": "Save",
                              **stage_rows(lifecycle, soak_time="0:30:00", take_prereleases="on")})

    assert saved.status_code == 302, saved.content.decode()[:3000]
    assert lifecycle.stages.get(environment=environments[1]).soak_time == timedelta(minutes=30)
    event = AuditEvent.objects.get(action="admin.change", object_type="pipelines.stage")
    assert event.details["values"] == {"soak_time": ["0:00:00", "0:30:00"]}
