"""The microservice pipeline end to end, with two lifecycles over the same two environments.

`payments` follows `regulated`: a tag deploys to staging by itself, then waits for two approvers before
production. `blog` follows `small-team`: once staging succeeded it goes on to production by itself, and
never after a failure. Real git repositories, `pollrepos`, real rq workers and steps, the approval pages."""

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import ChangeRequest
from pipelines.models import Deployment, Environment, Release, Repository, Target
from tests.conftest import add_stage

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = """\
environments:
  staging:
    steps:
      - run: ./deploy.sh
  production:
    steps:
      - run: ./deploy.sh
"""
# Fails in staging for any version listed in BROKEN: a release that breaks there.
DEPLOY_SCRIPT = """#!/usr/bin/env bash
if [ "$GITOPS_ENVIRONMENT" = staging ] && grep -qx "$GITOPS_VERSION" BROKEN 2>/dev/null; then
  echo "smoke test failed for $GITOPS_VERSION"; exit 1
fi
echo "$GITOPS_REPOSITORY $GITOPS_VERSION is live in $GITOPS_ENVIRONMENT"
"""


@pytest.fixture
def two_lifecycles(db):
    staging = Environment.objects.create(name="staging", position=10)
    production = Environment.objects.create(name="production", position=20)
    release_managers = Group.objects.create(name="release-managers")
    add_stage("regulated", staging)
    add_stage("regulated", production, approver_group=release_managers, required_approvals=2)
    add_stage("small-team", staging)
    add_stage("small-team", production)
    return staging, production, release_managers


@pytest.fixture
def approver(django_user_model, two_lifecycles):
    def make(name):
        user = django_user_model.objects.create_user(name, f"{name}@example.com", "password")
        user.groups.add(two_lifecycles[2])
        return user

    return make


def approve_in_the_browser(user, change):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = reverse("change_request_detail", args=[change.pk])
    assert client.get(page).status_code == 200
    token = client.cookies["csrftoken"].value
    response = client.post(reverse("change_request_approve", args=[change.pk]), {"comment": "ok", "csrfmiddlewaretoken": token})
    assert response.status_code == 302


def test_each_repository_takes_the_road_of_its_own_lifecycle(
        make_git_repo, two_lifecycles, approver, alice, run_workers):
    staging, production, _ = two_lifecycles
    payments_origin = make_git_repo("payments", pipeline=PIPELINE, deploy_script=DEPLOY_SCRIPT)
    blog_origin = make_git_repo("blog", pipeline=PIPELINE, deploy_script=DEPLOY_SCRIPT)
    Repository.objects.create(name="payments", url=payments_origin.url, lifecycle=staging.stages.get(
        lifecycle__name="regulated").lifecycle)
    Repository.objects.create(name="blog", url=blog_origin.url, lifecycle=staging.stages.get(
        lifecycle__name="small-team").lifecycle)
    payments_origin.tag("v1.0.0")
    blog_origin.tag("v1.0.0")

    call_command("pollrepos")
    run_workers()

    # small-team: staging, then production by itself; nobody was asked.
    blog_v1 = Release.objects.get(repository__name="blog", version="v1.0.0")
    assert Deployment.objects.get(release=blog_v1, environment=staging).status == "succeeded"
    blog_production = Deployment.objects.get(release=blog_v1, environment=production)
    assert (blog_production.status, blog_production.trigger) == ("succeeded", "auto")
    assert "blog v1.0.0 is live in production" in blog_production.log_since(0)[0]
    assert not ChangeRequest.objects.filter(repository__name="blog").exists()

    # regulated: staging by itself, then production waits for two approvals of release-managers.
    payments_v1 = Release.objects.get(repository__name="payments", version="v1.0.0")
    assert Deployment.objects.get(release=payments_v1, environment=staging).status == "succeeded"
    held = Deployment.objects.get(release=payments_v1, environment=production)
    assert held.status == "awaiting_approval"
    change = ChangeRequest.objects.get(deployment=held)
    assert (change.required_approvals, change.stage.lifecycle.name) == (2, "regulated")

    approve_in_the_browser(approver("erin"), change)
    run_workers()
    assert Deployment.objects.get(pk=held.pk).status == "awaiting_approval", "one approval of two is not enough"
    assert "Only members of 'release-managers'" in change.refusal_reason(alice)
    approve_in_the_browser(approver("frank"), change)
    run_workers()
    held.refresh_from_db()
    assert held.status == "succeeded"
    assert "payments v1.0.0 is live in production" in held.log_since(0)[0]

    # small-team again: a release that fails in staging never reaches production.
    blog_origin.write("BROKEN", "v1.1.0\n")
    blog_origin.commit("Break the smoke test")
    blog_origin.tag("v1.1.0")
    Repository.objects.filter(name="blog").update(poll_requested_at=timezone.now())  # as its webhook would
    call_command("pollrepos")
    run_workers()
    blog_v11 = Release.objects.get(repository__name="blog", version="v1.1.0")
    assert Deployment.objects.get(release=blog_v11, environment=staging).status == "failed"
    assert not Deployment.objects.filter(release=blog_v11, environment=production).exists()
    assert Target.objects.get(repository__name="blog", environment=production).current_release == blog_v1

    # The dashboard shows each lifecycle with its own stages: production needs approval only in `regulated`.
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("dashboard")).content.decode()
    regulated = page.split('data-lifecycle="regulated"')[1].split("</section>")[0]
    small_team = page.split('data-lifecycle="small-team"')[1].split("</section>")[0]
    assert "payments" in regulated and "blog" not in regulated
    assert "blog" in small_team and "payments" not in small_team
    assert "Deployments here wait for approval" in regulated
    assert "Deployments here wait for approval" not in small_team
