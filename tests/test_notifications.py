"""E-mail: the eligible approvers hear of a request when it opens, the requester of the decision."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from approvals.models import ChangeRequest
from pipelines import promotion
from pipelines.models import Deployment, FollowUp, Target
from tests.conftest import set_policy

pytestmark = pytest.mark.django_db


@pytest.fixture
def candidate(repository, origin, production, make_release):
    """v1.0.0 runs in production; v1.1.0 adds two commits, one of them by Dave."""
    running = make_release(repository, "v1.0.0", commit_sha=origin.head())
    Target.objects.filter(pk=Target.objects.for_pair(repository, production).pk).update(current_release=running)
    origin.write("app.py", "print('hello')\n")
    origin.commit("Add the app", author_email="Dave@Example.com", author_name="Dave Author")
    origin.write("README", "shop\n")
    return make_release(repository, "v1.1.0", commit_sha=origin.commit("Write a readme"))


@pytest.fixture
def approvers_cast(django_user_model, approvers, alice, bob):
    """Alice (who requests) and Bob are approvers; so are Dave, who wrote a commit, Erin without an
    e-mail address and Frank, whose account is disabled."""
    alice.groups.add(approvers)
    dave = django_user_model.objects.create_user("dave", "dave@example.com", "password")
    erin = django_user_model.objects.create_user("erin", "", "password")
    frank = django_user_model.objects.create_user("frank", "frank@example.com", "password", is_active=False)
    for user in (dave, erin, frank):
        user.groups.add(approvers)
    # Someone outside the group never hears of it.
    django_user_model.objects.create_user("grace", "grace@example.com", "password").groups.add(
        Group.objects.create(name="auditors")
    )
    return alice, bob, dave


def request_for(candidate, production, by, run_follow_ups):
    deployment = promotion.promote(candidate, production, by=by)
    run_follow_ups()  # opens the request, then mails about it
    return ChangeRequest.objects.get(deployment=deployment)


def test_it_mails_the_eligible_approvers_when_a_request_opens_but_not_the_requester_or_a_commit_author(
    candidate, production, approvers_cast, mailoutbox, run_follow_ups
):
    alice, bob, dave = approvers_cast
    change_request = request_for(candidate, production, alice, run_follow_ups)

    assert [message.to for message in mailoutbox] == [["bob@example.com"]]
    message = mailoutbox[0]
    assert message.subject == "[GitOps Portal] Approval needed: shop v1.1.0 → production"
    assert message.from_email == settings.DEFAULT_FROM_EMAIL
    assert "Requested by: alice" in message.body
    assert "Changes since v1.0.0: 2 commits." in message.body
    commits = change_request.summary["commits"]
    assert f"  {commits[1]['short_sha']} Add the app (Dave Author <Dave@Example.com>)" in message.body
    assert "2 files changed, +2 −0 lines:" in message.body
    assert "  app.py (+1 −0)" in message.body
    link = settings.GITOPS_BASE_URL + reverse("change_request_detail", args=[change_request.pk])
    assert message.body.endswith(f"Review it, approve or reject: {link}\n")


def test_it_mails_the_requester_and_the_authors_too_when_the_environment_lets_them_approve(
    candidate, production, approvers_cast, mailoutbox, run_follow_ups
):
    set_policy(production, allow_self_approval=True, block_commit_authors=False)
    request_for(candidate, production, approvers_cast[0], run_follow_ups)
    recipients = sorted(message.to[0] for message in mailoutbox)
    assert recipients == ["alice@example.com", "bob@example.com", "dave@example.com"]


def test_it_tells_the_requester_who_approved_and_what_they_said(
    candidate, production, approvers_cast, mailoutbox, run_follow_ups
):
    alice, bob, _ = approvers_cast
    change_request = request_for(candidate, production, alice, run_follow_ups)
    mailoutbox.clear()

    change_request.approve(bob, "Looks good, ship it")
    run_follow_ups()

    assert [message.to for message in mailoutbox] == [["alice@example.com"]]
    message = mailoutbox[0]
    assert message.subject == "[GitOps Portal] Approved: shop v1.1.0 → production"
    assert "Your change request for shop v1.1.0 → production was approved." in message.body
    assert "Approved by bob: Looks good, ship it" in message.body


def test_it_tells_the_requester_who_rejected_and_why(
    candidate, production, approvers_cast, mailoutbox, run_follow_ups
):
    alice, bob, _ = approvers_cast
    change_request = request_for(candidate, production, alice, run_follow_ups)
    mailoutbox.clear()

    change_request.reject(bob, "Not during the sale")
    run_follow_ups()

    (message,) = mailoutbox
    assert message.to == ["alice@example.com"]
    assert message.subject == "[GitOps Portal] Rejected: shop v1.1.0 → production"
    assert "Rejected by bob: Not during the sale" in message.body
    assert "The deployment will not run." in message.body


def test_a_partial_approval_mails_nobody(
    candidate, production, approvers_cast, mailoutbox, run_follow_ups
):
    set_policy(production, required_approvals=2)
    alice, bob, _ = approvers_cast
    change_request = request_for(candidate, production, alice, run_follow_ups)
    mailoutbox.clear()
    change_request.approve(bob)
    run_follow_ups()
    assert mailoutbox == []


def test_an_automatic_request_has_no_requester_to_tell(
    candidate, production, approvers_cast, mailoutbox, run_follow_ups
):
    _, bob, _ = approvers_cast
    deployment = promotion.promote(candidate, production, by=None, trigger=Deployment.Trigger.AUTO)
    run_follow_ups()
    assert sorted(message.to[0] for message in mailoutbox) == ["alice@example.com", "bob@example.com"]
    assert "Requested by: automatic promotion" in mailoutbox[0].body
    mailoutbox.clear()
    ChangeRequest.objects.get(deployment=deployment).approve(bob)
    run_follow_ups()
    assert mailoutbox == []


def test_a_mail_server_that_is_down_delays_the_mail_and_never_the_decision(
    candidate, production, approvers_cast, settings, mailoutbox, run_follow_ups
):
    # Port 9 on localhost: nothing listens, the connection is refused.
    locmem = settings.MAILERS
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                    "OPTIONS": {"host": "127.0.0.1", "port": 9, "timeout": 5}}}
    alice, bob, _ = approvers_cast
    change_request = request_for(candidate, production, alice, run_follow_ups)
    change_request.approve(bob)
    run_follow_ups()
    change_request.refresh_from_db()
    assert change_request.status == "approved"
    unsent = FollowUp.objects.pending().filter(kind__startswith="mail.").order_by("pk")
    assert [f.kind for f in unsent] == ["mail.change_request_opened", "mail.change_request_decided"]
    assert all(f.attempts == 1 and "refused" in f.last_error.lower() for f in unsent)

    settings.MAILERS = locmem  # the mail server is back; the reconciler's re-drive runs them again
    run_follow_ups(now=timezone.now() + timedelta(minutes=1))
    # The request was decided meanwhile: asking bob to review it would be noise; alice hears the verdict.
    assert [message.to for message in mailoutbox] == [["alice@example.com"]]
    assert not FollowUp.objects.pending().exists()
