"""The signed endpoint git hosts call after a push. It only wakes a poll: what changed is read from git.

Accepted signatures, all compared in constant time against the repository's webhook secret:
- GitHub:  X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>
- GitLab:  X-Gitlab-Token: <the secret itself>
- generic: X-Gitops-Signature: sha256=<hex HMAC-SHA256 of the body>

A delivery id (X-GitHub-Delivery, X-Gitlab-Event-UUID, X-Gitops-Delivery) is remembered so that a replay is
ignored; a signed request without one still wakes a poll, which is harmless to repeat. The answer is 202
whether or not the queue answered: the request is stored on the repository and the sweep honours it.

A pull request (GitHub `pull_request`) or merge request (GitLab `Merge Request Hook`) event says more than git
can: its number, title, author and state are recorded (pipelines.models.CheckRef), and the check of its head
commit is queued at once; the worker fetches the commit (the poll that follows would find it too). It also
says whether the head comes from another repository (a fork: GitHub's `pull_request.head.repo.full_name`
against `base.repo.full_name`, GitLab's `source_project_id` against `target_project_id`; a payload that does
not say counts as a fork): a fork's check gets no check secrets and waits for a deployer (pipelines/models/check.py).
"""

import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from pipelines import jobs
from pipelines.models import AuditEvent, Check, CheckRef, Repository, WebhookDelivery

MAX_BODY_BYTES = 1024 * 1024
_DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Gitlab-Event-UUID", "X-Gitops-Delivery")
_DELIVERY_ID_MAX_LENGTH = WebhookDelivery._meta.get_field("delivery_id").max_length


@csrf_exempt  # the git host has no CSRF token; the signature is the proof
@require_POST
def receive(request, name):
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _text(413, "body too large")  # refused before reading it
    body = request.body
    if len(body) > MAX_BODY_BYTES:
        return _text(413, "body too large")

    repository = Repository.objects.pollable().filter(name=name).exclude(webhook_secret="").first()
    if repository is None:
        return _text(403, "unknown repository, or webhooks are not enabled for it")
    source = _verified_source(request, body, repository.webhook_secret)
    if source is None:
        return _text(403, "missing or invalid signature")

    delivery_id = next((request.headers[h] for h in _DELIVERY_HEADERS if request.headers.get(h)), "")
    if len(delivery_id) > _DELIVERY_ID_MAX_LENGTH:
        return _text(400, "delivery id too long")
    with transaction.atomic():
        if delivery_id:
            try:
                with transaction.atomic():
                    WebhookDelivery.objects.create(repository=repository, delivery_id=delivery_id)
            except IntegrityError:  # seen before, perhaps a moment ago by a parallel request
                return _text(200, "duplicate delivery ignored")
        # The request is recorded with the delivery: if the queue is away now, the scheduler's sweep polls
        # the repository once it answers, so a delivery accepted here is never lost. The row before the audit
        # event (the lock order of every audited transaction): a poll locks this row, then records events.
        Repository.objects.filter(pk=repository.pk).update(poll_requested_at=timezone.now())
        review = _review_event(request, body)
        if review is not None:
            # After the repository row (a poll's lock) and before the audit event: the lock order of checks.
            _record_review(repository, review)
        AuditEvent.objects.record(
            action="webhook.received", actor="webhook", obj=repository, repository=repository,
            details={"source": source, "delivery": delivery_id,
                     "event": request.headers.get("X-GitHub-Event") or request.headers.get("X-Gitlab-Event") or ""},
        )
        jobs.enqueue_poll(repository.pk)
    if jobs.queue_was_unreachable():
        return _text(202, f"accepted: {repository.name} will be polled as soon as the queue is back")
    return _text(202, f"accepted: {repository.name} will be polled now")


_SHA = re.compile(r"\A[0-9a-f]{40}\Z")


@dataclass(frozen=True)
class ReviewEvent:
    """What a pull/merge request event says about it."""

    name: str  # pull/<n> or merge-requests/<n>: the ref its host publishes its head under
    number: int
    title: str
    author: str
    head_sha: str
    is_open: bool
    from_fork: bool


def _review_event(request, body):
    """The pull/merge request of a GitHub `pull_request` or GitLab merge request event, or None (any other
    event, or one that does not look like the host's: the poll still runs)."""
    github = request.headers.get("X-GitHub-Event", "")
    gitlab = request.headers.get("X-Gitlab-Event", "")
    if github != "pull_request" and gitlab != "Merge Request Hook":
        return None
    try:
        payload = json.loads(body)
        if github:
            pull = payload["pull_request"]
            number, state, sha = int(payload.get("number") or pull["number"]), pull["state"], pull["head"]["sha"]
            # A fork deleted since has no head repository: a fork all the same.
            head_repo = (pull["head"].get("repo") or {}).get("full_name")
            base_repo = ((pull.get("base") or {}).get("repo") or {}).get("full_name")
            event = ReviewEvent(name=f"pull/{number}", number=number, title=str(pull.get("title") or ""),
                                author=str((pull.get("user") or {}).get("login") or ""), head_sha=str(sha),
                                is_open=state == "open", from_fork=not head_repo or head_repo != base_repo)
        else:
            attributes = payload["object_attributes"]
            number, state = int(attributes["iid"]), attributes["state"]
            source, target = attributes.get("source_project_id"), attributes.get("target_project_id")
            event = ReviewEvent(name=f"merge-requests/{number}", number=number, title=str(attributes.get("title") or ""),
                                author=str((payload.get("user") or {}).get("username") or ""),
                                head_sha=str((attributes.get("last_commit") or {}).get("id") or ""),
                                is_open=state == "opened", from_fork=source is None or source != target)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return event if _SHA.match(event.head_sha) and event.number > 0 else None


def _record_review(repository, review):
    CheckRef.objects.record(repository, kind=CheckRef.Kind.PULL_REQUEST, name=review.name, number=review.number,
                            title=review.title, author=review.author, head_sha=review.head_sha, is_open=review.is_open,
                            from_fork=review.from_fork)
    if not review.is_open:
        return
    # A poll that saw the pull request first could not tell a fork: its check, still waiting, runs once the
    # host says it is from this repository (Check.objects.queue_for).
    Check.objects.queue_for(repository, commit_sha=review.head_sha, ref_name=review.name, by="webhook",
                            from_fork=review.from_fork)


def _verified_source(request, body, secret):
    """Which host's signature is present and valid ("github", "gitlab", "generic"), else None."""
    signed = ("sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()).encode()
    headers = request.headers
    if "X-Hub-Signature-256" in headers:
        return "github" if hmac.compare_digest(headers["X-Hub-Signature-256"].encode(), signed) else None
    if "X-Gitlab-Token" in headers:
        return "gitlab" if hmac.compare_digest(headers["X-Gitlab-Token"].encode(), secret.encode()) else None
    if "X-Gitops-Signature" in headers:
        return "generic" if hmac.compare_digest(headers["X-Gitops-Signature"].encode(), signed) else None
    return None


def _text(status, message):
    return HttpResponse(message, status=status, content_type="text/plain")
