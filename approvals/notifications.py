"""E-mail about change requests: to the eligible approvers when one opens, to the requester when it is decided;
and about released tags that moved, to the people answerable for where that release runs.

Sent through Django's default mailer (settings.MAILERS; the console backend unless configured). Mail is
a follow-up (pipelines/followups.py) recorded in the transaction that opens or decides the request, and
carried out by a job: a mail server that is down raises, and the follow-up is tried again later."""

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, mailers

from approvals.models import ChangeRequest, Decision, StagePolicy
from pipelines.models import TagMove, Target

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "[GitOps Portal]"
LISTED_COMMITS = 10
LISTED_FILES = 10


def on_change_request_opened(follow_up):
    """The follow-up handler (settings.GITOPS_FOLLOW_UP_HANDLERS); raises to be retried."""
    notify_opened(follow_up.payload["change_request"])


def on_change_request_decided(follow_up):
    notify_decided(follow_up.payload["change_request"])


def notify_opened(change_request_id):
    """Ask every eligible approver with an e-mail address to review the request. Returns how many were sent."""
    change_request = _load(change_request_id)
    if not change_request.is_pending:
        return 0
    recipients = eligible_approvers(change_request)
    subject = f"{SUBJECT_PREFIX} Approval needed: {_title(change_request)}"
    body = _opened_body(change_request)
    return _send([EmailMessage(subject=subject, body=body, to=[user.email]) for user in recipients])


def notify_decided(change_request_id):
    """Tell the requester that their request was approved or rejected, by whom and why. Returns how many were sent."""
    change_request = _load(change_request_id)
    requester = change_request.requested_by
    decided = change_request.status in (ChangeRequest.Status.APPROVED, ChangeRequest.Status.REJECTED)
    if not decided or requester is None or not requester.email:
        return 0
    verdict = change_request.get_status_display()
    subject = f"{SUBJECT_PREFIX} {verdict}: {_title(change_request)}"
    return _send([EmailMessage(subject=subject, body=_decided_body(change_request), to=[requester.email])])


def notify_stopped(deployment_ids, reason):
    """Tell whoever asked for each of these deployments (the change request's requester, or who promoted it)
    that it will not run, and why. Returns how many were sent."""
    from pipelines.models import Deployment

    messages = []
    stopped = Deployment.objects.filter(pk__in=deployment_ids).select_related(
        "release", "environment", "repository", "triggered_by", "change_request__requested_by")
    for deployment in stopped:
        change_request = getattr(deployment, "change_request", None)
        requester = change_request.requested_by if change_request is not None else deployment.triggered_by
        if requester is None or not requester.email:
            continue
        title = f"{deployment.repository} {deployment.release.version} to {deployment.environment}"
        body = (f"Deployment #{deployment.pk} of {title} will not run: {deployment.error or reason}\n\n"
                f"Details: {settings.GITOPS_BASE_URL.rstrip('/')}{deployment.get_absolute_url()}\n")
        messages.append(EmailMessage(subject=f"{SUBJECT_PREFIX} Will not run: {title}", body=body, to=[requester.email]))
    return _send(messages)


def eligible_approvers(change_request):
    """Active members of the stage's approver group with an e-mail address who may approve this
    request: not its requester (unless the stage allows it), not an author of its commits (when the
    stage blocks them)."""
    policy = change_request.policy
    if policy is None:
        return []
    members = (
        get_user_model()
        .objects.filter(groups=policy.approver_group_id, is_active=True)
        .exclude(email="")
        .order_by("pk")
    )
    if not policy.allow_self_approval and change_request.requested_by_id is not None:
        members = members.exclude(pk=change_request.requested_by_id)
    authors = set(change_request.author_emails) if policy.block_commit_authors else set()
    return [user for user in members if user.email.lower() not in authors]


def on_tag_moved(follow_up):
    notify_tag_moved(follow_up.payload["tag_move"])


def notify_tag_moved(tag_move_id):
    """Tell the approvers of every stage whose environment runs the release that its tag moved (or, when no
    such stage has approvers, the deployers). Returns how many were sent."""
    move = TagMove.objects.select_related("release__repository").get(pk=tag_move_id)
    release = move.release
    environments = [
        target.environment for target in Target.objects.filter(repository=release.repository, current_release=release)
        .select_related("environment").order_by("environment__position")
    ]
    subject = f"{SUBJECT_PREFIX} Tag {move.get_kind_display()}: {release.repository.name} {release.version}"
    body = _tag_moved_body(move, environments)
    return _send([EmailMessage(subject=subject, body=body, to=[user.email])
                  for user in tag_move_recipients(release, environments)])


def tag_move_recipients(release, environments):
    return answerable_for(release.repository, environments)


def answerable_for(repository, environments):
    """Active users with an e-mail address in the approver groups of the stages (of the repository's
    lifecycle) of these environments. When there are none (the release runs nowhere, or only where nobody
    approves), the deployers: someone who can block the release or deploy another must hear of it."""
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    groups = StagePolicy.objects.filter(
        stage__lifecycle_id=repository.lifecycle_id, stage__environment__in=environments,
    ).values("approver_group_id")
    approvers = list(users.filter(groups__in=groups).distinct().order_by("pk"))
    if approvers:
        return approvers
    return list(users.filter(pk__in=get_user_model().objects.with_perm("pipelines.deploy")).order_by("pk"))


def on_rollback(follow_up):
    """The handler of Deployment.ROLLBACK_MAIL: an automatic rollback happened, or failed too."""
    notify_rollback(follow_up.deployment_id, follow_up.payload["what"], follow_up.payload["failed"])


def notify_rollback(deployment_id, what, failed_id):
    """Tell the people answerable for the stage (its approvers, else the deployers) and whoever asked for the
    failed deployment that the portal rolled the target back, or that its rollback failed too and a person must
    act now. Returns how many were sent."""
    from pipelines.models import Deployment

    related = ("release", "environment", "repository", "triggered_by")
    deployment = Deployment.objects.select_related(*related).get(pk=deployment_id)
    failed = Deployment.objects.select_related(*related).get(pk=failed_id)
    target = f"{deployment.repository} in {deployment.environment}"
    url = settings.GITOPS_BASE_URL.rstrip("/")
    if what == "rollback_failed":
        subject = f"{SUBJECT_PREFIX} Rollback failed, act now: {target}"
        body = (f"The automatic rollback of {target} to {deployment.release.version} (deployment #{deployment.pk}) "
                f"failed too: {deployment.error}\nNothing more is done automatically; a person must decide what runs "
                f"there now.\n\nDetails: {url}{deployment.get_absolute_url()}\n")
    else:
        subject = f"{SUBJECT_PREFIX} Rolled back: {target} to {deployment.release.version}"
        body = (f"{failed.release.version} (deployment #{failed.pk}) failed in {failed.environment}: {failed.error}\n"
                f"The stage rolls back on failure, so the portal deploys {deployment.release.version} there again "
                f"(deployment #{deployment.pk}). Automatic deployment there is paused until someone resumes it.\n\n"
                f"Details: {url}{deployment.get_absolute_url()}\n")
    recipients = {user.email: user for user in answerable_for(deployment.repository, [deployment.environment])}
    if failed.triggered_by is not None and failed.triggered_by.email:
        recipients.setdefault(failed.triggered_by.email, failed.triggered_by)
    return _send([EmailMessage(subject=subject, body=body, to=[email]) for email in recipients])


def on_drift(follow_up):
    """The handler of DRIFT_MAIL (pipelines/models/drift.py)."""
    notify_drift(follow_up.payload["drift_check"])


def notify_drift(drift_check_id):
    """Tell the people answerable for the stage (its approvers, else the deployers) that what runs on a target is
    no longer what git says, with the end of the report. Returns how many were sent."""
    from pipelines.models import DriftCheck, Stage

    check = DriftCheck.objects.select_related("repository", "environment", "release").get(pk=drift_check_id)
    target = f"{check.repository} in {check.environment}"
    stage = Stage.objects.for_target(check.repository, check.environment)
    what_next = ("The stage corrects drift: the portal deploys it again (where the stage holds for approval, the "
                 "correction waits for one)." if stage is not None and stage.correct_drift else
                 "Nothing is changed automatically: deploy it again, or change git to match.")
    report = check.log_since(0)[0].strip().splitlines()[-20:]
    body = (f"Drift check #{check.pk} found {target} is not what {check.release.version} says.\n{what_next}\n\n"
            + "\n".join(report) + f"\n\nReport: {settings.GITOPS_BASE_URL.rstrip('/')}{check.get_absolute_url()}\n")
    subject = f"{SUBJECT_PREFIX} Drifted: {target}"
    return _send([EmailMessage(subject=subject, body=body, to=[user.email])
                  for user in answerable_for(check.repository, [check.environment])])


def change_request_url(change_request):
    return settings.GITOPS_BASE_URL.rstrip("/") + change_request.get_absolute_url()


# --- composing ---------------------------------------------------------------------------------------


def _load(change_request_id):
    return ChangeRequest.objects.select_related(
        "deployment__release", "repository", "environment", "requested_by"
    ).get(pk=change_request_id)


def _title(change_request):
    release = change_request.deployment.release
    return f"{change_request.repository.name} {release.version} → {change_request.environment.name}"


def _opened_body(change_request):
    summary = change_request.summary or {}
    requester = change_request.requested_by
    lines = [
        f"{_title(change_request)} is waiting for approval.",
        "",
        f"Requested by: {requester.get_username() if requester else 'automatic promotion'}",
        f"Approvals needed: {change_request.required_approvals}",
    ]
    if change_request.expires_at:
        lines.append(f"Expires: {change_request.expires_at:%Y-%m-%d %H:%M %Z}")
    lines += ["", *_change_lines(summary), "", f"Review it, approve or reject: {change_request_url(change_request)}"]
    return "\n".join(lines) + "\n"


def _change_lines(summary):
    if summary.get("error"):
        return [f"What changes could not be read from git: {summary['error']}"]
    since = (summary.get("from") or {}).get("version")
    count = summary.get("commit_count", 0)
    commits = summary.get("commits", [])
    if summary.get("is_rollback"):
        heading = f"This is a rollback from {since}: it removes {_plural(count, 'commit')}."
    elif since:
        heading = f"Changes since {since}: {_plural(count, 'commit')}."
    else:
        heading = f"First deployment here; the latest {_plural(len(commits), 'commit')} of its history:"
    lines = [heading]
    for commit in commits[:LISTED_COMMITS]:
        author = f"{commit['author_name']} <{commit['author_email']}>"
        lines.append(f"  {commit['short_sha']} {commit['subject']} ({author})")
    if count > LISTED_COMMITS:
        lines.append(f"  … and {count - LISTED_COMMITS} more")
    totals = summary.get("totals") or {}
    counts = f"+{totals.get('added', 0)} −{totals.get('removed', 0)}"
    lines += ["", f"{_plural(totals.get('files', 0), 'file')} changed, {counts} lines:"]
    for changed in summary.get("files", [])[:LISTED_FILES]:
        counts = "binary" if changed["added"] is None else f"+{changed['added']} −{changed['removed']}"
        lines.append(f"  {changed['path']} ({counts})")
    if totals.get("files", 0) > LISTED_FILES:
        lines.append(f"  … and {totals['files'] - LISTED_FILES} more")
    if summary.get("pipeline_diff"):
        path = summary.get("pipeline_path", "")
        lines += ["", f"The pipeline file {path} changes; see the request for the difference."]
    return lines


def _tag_moved_body(move, environments):
    release = move.release
    repository = release.repository
    if move.kind == TagMove.Kind.DELETED:
        what = f"The tag {release.version} was deleted (it pointed to {move.short_from})."
    elif move.kind == TagMove.Kind.MOVED_BACK:
        what = f"The tag {release.version} is back on the released commit {release.short_sha} (it pointed to {move.short_from})."
    else:
        before = f"from {move.short_from} " if move.from_sha else "(it had been deleted) "
        what = f"The tag {release.version} moved {before}to {move.short_to}."
    running = ", ".join(environment.name for environment in environments) or "no environment"
    lines = [
        f"{what}",
        "",
        f"Repository: {repository.name}",
        f"Released commit: {release.commit_sha}",
        f"Tag now: {move.to_sha or 'deleted'}",
        f"Running in: {running}",
        "",
        "The release keeps its commit: nothing was redeployed, and deploying this version again runs the",
        "released commit. Someone rewrote a published tag; find out who and why.",
        "",
        f"Details: {settings.GITOPS_BASE_URL.rstrip('/')}{release.get_absolute_url()}",
    ]
    return "\n".join(lines) + "\n"


def _decided_body(change_request):
    verdict = change_request.get_status_display().lower()
    lines = [f"Your change request for {_title(change_request)} was {verdict}.", ""]
    rejected = change_request.status == ChangeRequest.Status.REJECTED
    shown = Decision.Verdict.REJECT if rejected else Decision.Verdict.APPROVE
    for decision in change_request.decisions.filter(verdict=shown).select_related("user"):
        line = f"{decision.get_verdict_display()} by {decision.user.get_username()}"
        lines.append(f"{line}: {decision.comment}" if decision.comment else line)
    if change_request.status == ChangeRequest.Status.APPROVED:
        lines += ["", "The deployment is queued and starts when its turn comes (and no freeze window holds it)."]
    else:
        lines += ["", "The deployment will not run."]
    lines += ["", f"Details: {change_request_url(change_request)}"]
    return "\n".join(lines) + "\n"


def _plural(count, word):
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _send(messages):
    if not messages:
        return 0
    return mailers.default.send_messages(messages)
