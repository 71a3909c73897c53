"""The signed webhook endpoint: only a valid signature wakes a poll, and only once per delivery."""

import hashlib
import hmac
import json

import django_rq
import pytest
from django.test import Client
from django.urls import reverse

from pipelines.models import AuditEvent, Deployment, Release, Repository, WebhookDelivery

SECRET = "correct horse battery staple"
BODY = json.dumps({"ref": "refs/tags/v1.0.0"}).encode()


def sign(body, secret=SECRET):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github(body=BODY, secret=SECRET, delivery="gh-1"):
    return {"X-Hub-Signature-256": sign(body, secret), "X-GitHub-Delivery": delivery, "X-GitHub-Event": "push"}


def gitlab(body=BODY, secret=SECRET, delivery="gl-1"):
    return {"X-Gitlab-Token": secret, "X-Gitlab-Event-UUID": delivery, "X-Gitlab-Event": "Tag Push Hook"}


def generic(body=BODY, secret=SECRET, delivery="g-1"):
    return {"X-Gitops-Signature": sign(body, secret), "X-Gitops-Delivery": delivery}


SOURCES = {"github": github, "gitlab": gitlab, "generic": generic}


@pytest.fixture
def client():
    return Client(enforce_csrf_checks=True)  # a git host has no CSRF token


@pytest.fixture
def hooked(repository):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET)
    repository.refresh_from_db()
    return repository


def deliver(client, repository_name, headers, body=BODY):
    url = reverse("webhook", args=[repository_name])
    return client.post(url, data=body, content_type="application/json", headers=headers)


def git_queue_length():
    return django_rq.get_queue("git").count


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("source", SOURCES)
def test_it_accepts_a_valid_signature_and_the_poll_records_the_release(
        client, hooked, origin, environments, run_workers, source):
    origin.tag("v1.0.0")

    response = deliver(client, "shop", SOURCES[source]())

    assert (response.status_code, response.content) == (202, b"accepted: shop will be polled now")
    assert git_queue_length() == 1
    assert WebhookDelivery.objects.filter(repository=hooked).count() == 1
    event = AuditEvent.objects.get(action="webhook.received")
    assert (event.actor_name, event.details["source"], event.repository_id) == ("webhook", source, hooked.pk)
    # Stored with the delivery, so that the sweep polls it even if the queue loses the job.
    assert Repository.objects.get(pk=hooked.pk).poll_requested_at is not None

    run_workers()

    assert Release.objects.get(repository=hooked).version == "v1.0.0"
    assert Deployment.objects.filter(release__version="v1.0.0", environment__name="staging").exists()
    assert Repository.objects.get(pk=hooked.pk).poll_requested_at is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("source", SOURCES)
def test_it_refuses_a_forged_signature_and_changes_nothing(client, hooked, source):
    response = deliver(client, "shop", SOURCES[source](secret="guessed"))

    assert response.status_code == 403
    assert response.content == b"missing or invalid signature"
    assert git_queue_length() == 0
    assert not WebhookDelivery.objects.exists()
    assert not AuditEvent.objects.exists()
    assert Repository.objects.get(pk=hooked.pk).poll_requested_at is None


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_signature_over_another_body(client, hooked):
    response = deliver(client, "shop", github(body=b'{"ref": "refs/heads/main"}'))
    assert response.status_code == 403
    assert git_queue_length() == 0


@pytest.mark.django_db(transaction=True)
def test_it_refuses_an_unsigned_request(client, hooked):
    response = deliver(client, "shop", {"X-GitHub-Delivery": "gh-1"})
    assert response.status_code == 403
    assert git_queue_length() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", ["unknown", "disabled", "no secret"])
def test_it_refuses_repositories_that_do_not_take_webhooks(client, hooked, case):
    name = "nonesuch" if case == "unknown" else "shop"
    if case == "disabled":
        Repository.objects.filter(pk=hooked.pk).update(enabled=False)
    if case == "no secret":
        Repository.objects.filter(pk=hooked.pk).update(webhook_secret="")

    # Signed with the secret it had, and with the empty secret it now has: neither is enough.
    for headers in (github(), github(secret="")):
        response = deliver(client, name, headers)
        assert response.status_code == 403
        assert response.content == b"unknown repository, or webhooks are not enabled for it"
    assert git_queue_length() == 0
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_ignores_a_replayed_delivery(client, hooked):
    assert deliver(client, "shop", github(delivery="abc")).status_code == 202
    django_rq.get_queue("git").empty()

    replay = deliver(client, "shop", github(delivery="abc"))

    assert (replay.status_code, replay.content) == (200, b"duplicate delivery ignored")
    assert git_queue_length() == 0
    assert WebhookDelivery.objects.count() == 1
    assert AuditEvent.objects.filter(action="webhook.received").count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_accepts_the_same_delivery_id_for_another_repository(client, hooked, make_git_repo):
    other = Repository.objects.create(name="billing", url=make_git_repo("billing").url, webhook_secret="other secret")
    assert deliver(client, "shop", github(delivery="abc")).status_code == 202
    assert deliver(client, "billing", github(secret="other secret", delivery="abc")).status_code == 202
    assert WebhookDelivery.objects.filter(repository=other).count() == 1


def test_it_answers_only_posts(client, hooked):
    response = client.get(reverse("webhook", args=["shop"]))
    assert response.status_code == 405


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_body_over_a_megabyte(client, hooked):
    body = b"x" * (1024 * 1024 + 1)
    response = deliver(client, "shop", github(body=body), body=body)
    assert response.status_code == 413
    assert git_queue_length() == 0
    assert not WebhookDelivery.objects.exists()
