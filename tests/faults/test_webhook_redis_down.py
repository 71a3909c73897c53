"""Redis stopped while a git host delivers a webhook: the delivery is answered 202 and its poll is not lost.

The portal is pointed at a redis-server of the test's own, which is really stopped and started again."""

import hashlib
import hmac
import json

import pytest
from django.test import Client
from django.urls import reverse

from pipelines import tracking
from pipelines.models import Release, Repository, WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("environments")]

SECRET = "webhook secret"
BODY = json.dumps({"ref": "refs/tags/v1.1.0"}).encode()


def deliver(delivery_id):
    signature = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    return Client(enforce_csrf_checks=True).post(
        reverse("webhook", args=["shop"]), data=BODY, content_type="application/json",
        headers={"X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery_id, "X-GitHub-Event": "push"},
    )


def test_a_webhook_accepted_while_redis_is_down_is_polled_once_it_is_back(
        repository, origin, queues_on_private_redis, run_workers):
    redis_server = queues_on_private_redis
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET, poll_interval=3600)
    repository.refresh_from_db()
    origin.tag("v1.0.0")
    tracking.poll_repository(repository)  # polled just now: only the webhook's request makes it due
    origin.commit("the change the webhook announces")
    origin.tag("v1.1.0")
    assert Repository.objects.due_for_poll() == []

    redis_server.stop()
    response = deliver("delivery-1")

    assert (response.status_code, response.content) == (
        202, b"accepted: shop will be polled as soon as the queue is back")
    assert WebhookDelivery.objects.filter(repository=repository, delivery_id="delivery-1").exists()
    repository.refresh_from_db()
    assert repository.poll_requested_at is not None
    # The scheduler's sweep cannot reach the queue either: the request stays.
    assert tracking.enqueue_due_polls() == {"asked": 0, "waiting": 0, "unreachable": 1}
    assert Repository.objects.get(pk=repository.pk).poll_requested_at is not None

    redis_server.start()
    # The git host retries the same delivery: it is a duplicate, and that is fine, because nothing was lost.
    retry = deliver("delivery-1")
    assert (retry.status_code, retry.content) == (200, b"duplicate delivery ignored")
    assert tracking.enqueue_due_polls()["asked"] == 1
    run_workers()

    assert list(Release.objects.filter(repository=repository).order_by("id").values_list("version", flat=True)) == [
        "v1.0.0", "v1.1.0"]
    repository.refresh_from_db()
    assert repository.poll_requested_at is None and repository.last_error == ""
    assert Repository.objects.due_for_poll() == []


def test_a_webhook_says_it_is_polled_now_when_redis_answers(repository, origin, queues_on_private_redis, run_workers):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET)
    origin.tag("v1.0.0")

    response = deliver("delivery-2")

    assert (response.status_code, response.content) == (202, b"accepted: shop will be polled now")
    run_workers()
    assert Release.objects.get(repository=repository).version == "v1.0.0"
    assert Repository.objects.get(pk=repository.pk).poll_requested_at is None
