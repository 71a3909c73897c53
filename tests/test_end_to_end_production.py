"""From a tag to production: staging deploys itself, a change request opens, a second person approves it
through the page (CSRF on), and the production step runs with that release's commit."""

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from approvals.models import ChangeRequest
from pipelines.models import Deployment, Release, Repository, Target

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = """\
environments:
  staging:
    steps:
      - run: ./deploy.sh
  production:
    steps:
      - name: apply
        run: ./deploy.sh
"""
DEPLOY_SCRIPT = '#!/usr/bin/env bash\necho "$GITOPS_ENVIRONMENT runs $GITOPS_VERSION at $GITOPS_COMMIT: $(cat VERSION)"\n'


def signed_in(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def post_with_csrf(client, page_url, action_url, data):
    client.get(page_url)  # sets the csrftoken cookie, as a browser would get it
    token = client.cookies["csrftoken"].value
    return client.post(action_url, {**data, "csrfmiddlewaretoken": token})


def test_a_tag_reaches_production_after_a_second_person_approves_it_in_the_browser(
    make_git_repo, environments, alice, bob, run_workers
):
    staging, production = environments
    origin = make_git_repo(pipeline=PIPELINE, deploy_script=DEPLOY_SCRIPT)
    Repository.objects.create(name="shop", url=origin.url)
    origin.write("VERSION", "2.0.0\n")
    sha = origin.commit("Add the new checkout", author_email="erin@example.com", author_name="Erin")
    origin.tag("v2.0.0", annotated=True)

    call_command("pollrepos")
    run_workers()

    release = Release.objects.get(version="v2.0.0")
    assert Deployment.objects.get(release=release, environment=staging).status == "succeeded"
    change = ChangeRequest.objects.get(deployment__release=release, environment=production)
    assert change.status == "pending"
    assert [c["subject"] for c in change.summary["commits"]][0] == "Add the new checkout"
    assert "erin@example.com" in change.author_emails
    assert any("Approval needed" in message.subject and "bob@example.com" in message.to for message in mail.outbox)

    # bob, an approver, reviews and approves through the page.
    page = reverse("change_request_detail", args=[change.pk])
    bob_client = signed_in(bob)
    review = bob_client.get(page)
    assert review.status_code == 200
    assert b"Add the new checkout" in review.content
    response = post_with_csrf(bob_client, page, reverse("change_request_approve", args=[change.pk]), {"comment": "ship it"})
    assert response.status_code == 302

    run_workers()

    change.refresh_from_db()
    production_run = Deployment.objects.get(release=release, environment=production)
    assert change.status == "approved"
    assert production_run.status == "succeeded"
    assert f"production runs v2.0.0 at {sha}: 2.0.0" in production_run.log_since(0)[0]
    assert Target.objects.get(environment=production).current_release == release


def test_an_approval_post_without_the_csrf_token_is_refused(make_git_repo, environments, bob, run_workers):
    origin = make_git_repo(pipeline=PIPELINE, deploy_script=DEPLOY_SCRIPT)
    Repository.objects.create(name="shop", url=origin.url)
    origin.tag("v1.0.0")
    call_command("pollrepos")
    run_workers()
    change = ChangeRequest.objects.get()

    response = signed_in(bob).post(reverse("change_request_approve", args=[change.pk]), {"comment": "ok"})

    assert response.status_code == 403
    change.refresh_from_db()
    assert change.status == "pending"
