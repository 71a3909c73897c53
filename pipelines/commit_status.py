"""Reporting checks to the git host as commit statuses (GitHub's statuses API, GitLab's commit status API).

How a check reports its state, inside the transaction that records it: the model asks for it
(`Check.schedule_report`: `wakeups.ask("schedule_check_report", check)`, installed by `install_wakeups`), and
`schedule_check_report` turns the check's state into

    commit_status.schedule_report(repository, sha=…, state="pending" | "success" | "failure" | "error",
                                  context="gitops/checks", description="3 of 4 steps passed",
                                  target_url=commit_status.portal_url(check.get_absolute_url()))

which, when the repository reports commit statuses (a git host, an API token, a project), records the
follow-up `check.report` (CHECK_REPORT) with `repository=` and the payload
{"sha", "state", "context", "description", "target_url"}. Its handler, `report_follow_up`, is registered in
settings.GITOPS_FOLLOW_UP_HANDLERS. A failure (an HTTP error, a timeout, a refused connection) raises
ReportFailed, saying what to fix: the follow-up keeps it as `last_error`, is retried with back-off, and the
repository page and its admin show it ("Reporting to GitHub failed 3 times: 401 Bad credentials …").

Reports of one (commit, context) are sent in the order they were scheduled: a retried older one never
overwrites a newer state (see ReportedCommitStatus). `report()` alone sends one status now, unordered.

The review loop: a check that wrote `summary=…` to $GITOPS_OUTPUTS has that line as its status's description
on success (cut to the host's limit), and a finished check writes its result and its log (the full plan) on
each open pull/merge request whose head it checked, as one comment per pull request that later results
update rather than repeat: GitHub issue comments (POST /repos/{o}/{r}/issues/{n}/comments, then PATCH
/repos/{o}/{r}/issues/comments/{id}), GitLab merge request notes (POST and PUT
/projects/{id}/merge_requests/{iid}/notes[/{id}]). The host's id of that comment is kept on the CheckRef; one
deleted on the host is posted anew. These are `check.report` follow-ups too (payload {"comment_on": ref id}),
retried and shown like a status; each writes what the pull request's head says now, so their order does not
matter.

The token is stored encrypted (Repository.set_api_token); it goes into the request's header and nowhere
else: not in a log, an error, or an audit event."""

import json
import logging
import urllib.error
import urllib.request
from urllib.parse import quote

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pipelines import masking

logger = logging.getLogger(__name__)

CHECK_REPORT = "check.report"
STATES = ("pending", "success", "failure", "error")
# GitLab's names for the same states (it has no "error": a check that could not run has failed).
GITLAB_STATES = {"pending": "pending", "success": "success", "failure": "failed", "error": "failed"}
# The longest description, and comment, each host takes.
DESCRIPTION_LENGTH = {"github": 140, "gitlab": 255}
COMMENT_LENGTH = {"github": 65536, "gitlab": 1_000_000}
COMMENT_MARK = "<!-- gitops-portal: checks -->"


class ReportFailed(Exception):
    """The git host did not take a commit status. The message says why and what to fix, never the token."""


def portal_url(path):
    """The portal's absolute URL for `path` (a status links back to its check's page)."""
    return settings.GITOPS_BASE_URL.rstrip("/") + path


def schedule_report(repository, *, sha, state, context, description, target_url):
    """Record the follow-up that reports this state (call inside the transaction that causes it). Returns
    it, or None when the repository reports no commit statuses."""
    from pipelines.models import FollowUp

    _check_state(state)
    if not repository.reports_commit_statuses:
        return None
    payload = {"sha": sha, "state": state, "context": context, "description": description, "target_url": target_url}
    return FollowUp.objects.schedule(CHECK_REPORT, repository=repository, payload=payload)


def schedule_check_report(check):
    """Record the report of a check's state (Check.HOST_STATES; a failure says its error) to the git host, inside
    the transaction that records the state. The model asks for it through `wakeups` (installed below)."""
    state, description = _headline(check)
    if check.is_finished and check.status != check.Status.CANCELLED:
        schedule_check_comments(check)
    return schedule_report(check.repository, sha=check.commit_sha, state=state, context=check.HOST_CONTEXT,
                           description=description, target_url=portal_url(check.get_absolute_url()))


def _headline(check):
    """(state, description) of a check on the git host: its summary once it passed, its error if it failed."""
    state, description = check.HOST_STATES[check.status]
    if check.status == check.Status.FAILED and check.error:
        description = check.error
    elif check.status == check.Status.SUCCEEDED and check.summary:
        description = check.summary
    return state, description


def schedule_check_comments(check):
    """Record the comment of a finished check on each open pull/merge request it heads (follow-ups, inside the
    transaction that records the check's state); none when the repository reports nothing."""
    from pipelines.models import CheckRef, FollowUp

    repository = check.repository
    if not repository.reports_commit_statuses:
        return []
    refs = CheckRef.objects.filter(repository=repository, kind=CheckRef.Kind.PULL_REQUEST, is_open=True,
                                   head_sha=check.commit_sha).values_list("pk", flat=True)
    return [FollowUp.objects.schedule(CHECK_REPORT, repository=repository, payload={"comment_on": pk}) for pk in refs]


def install_wakeups():
    """Carry out the models' requests for commit statuses (pipelines/models/wakeups.py); PipelinesConfig.ready."""
    from pipelines.models import wakeups

    wakeups.install("schedule_check_report", schedule_check_report)
    wakeups.install("schedule_check_comments", schedule_check_comments)


def report_follow_up(follow_up):
    """The handler of CHECK_REPORT: report its payload, unless a newer report of the same (commit, context)
    went through already. Raises ReportFailed to be retried."""
    from pipelines.models import ReportedCommitStatus

    repository, payload = follow_up.repository, follow_up.payload
    if repository is None or not repository.reports_commit_statuses:
        logger.info("follow-up #%s: repository reports no commit statuses now; nothing sent", follow_up.pk)
        return
    if "comment_on" in payload:
        return _comment_follow_up(repository, payload["comment_on"])
    # The row stays locked while the status is sent, so two reports of one (commit, context) never cross.
    with transaction.atomic():
        last, _ = ReportedCommitStatus.objects.select_for_update().get_or_create(
            repository=repository, sha=payload["sha"], context=payload["context"], defaults={"state": ""})
        if last.follow_up_id >= follow_up.pk:
            logger.info("follow-up #%s: %s of %s is older than the %s already reported; skipped",
                        follow_up.pk, payload["state"], payload["context"], last.state)
            return
        report(repository, sha=payload["sha"], state=payload["state"], context=payload["context"],
               description=payload.get("description", ""), target_url=payload.get("target_url", ""))
        last.state, last.follow_up_id, last.reported_at = payload["state"], follow_up.pk, timezone.now()
        last.save(update_fields=["state", "follow_up_id", "reported_at"])


def report(repository, *, sha, state, context, description, target_url):
    """Send one commit status to the repository's git host now. Raises ReportFailed."""
    _check_state(state)
    host, api, project, token, headers = _host(repository)
    description = _fit(description or "", DESCRIPTION_LENGTH[host])
    if host == repository.GitHost.GITHUB:
        url = f"{api}/repos/{project}/statuses/{sha}"
        body = {"state": state, "target_url": target_url, "description": description, "context": context}
    else:
        url = f"{api}/projects/{quote(project, safe='')}/statuses/{sha}"
        body = {"state": GITLAB_STATES[state], "name": context, "target_url": target_url,
                "description": description}
    _send("POST", url, body, headers, repository=repository, token=token)


def comment(repository, *, number, body, comment_id=""):
    """Write `body` as the comment `comment_id` on pull/merge request `number` (updated), or as a new one when
    there is none yet or the host no longer has it. Returns the comment's id on the host. Raises ReportFailed."""
    host, api, project, token, headers = _host(repository)
    body = {"body": body}
    if host == repository.GitHost.GITHUB:
        create = f"{api}/repos/{project}/issues/{number}/comments"
        update = f"{api}/repos/{project}/issues/comments/{comment_id}"
        method = "PATCH"
    else:
        create = f"{api}/projects/{quote(project, safe='')}/merge_requests/{number}/notes"
        update = f"{create}/{comment_id}"
        method = "PUT"
    send = {"body": body, "headers": headers, "repository": repository, "token": token, "action": "comment"}
    if comment_id:
        try:
            _send(method, update, **send)
            return comment_id
        except CommentGone:
            logger.info("comment %s on %s #%s is gone from the host; posting it anew", comment_id, repository, number)
    answer = _send("POST", create, **send)
    if not answer.get("id"):
        raise ReportFailed(f"{repository.git_host_label} took the comment on #{number} but named no id for it.")
    return str(answer["id"])


def _host(repository):
    """(host, API URL, project, token, headers) of the repository's git host; ReportFailed saying what is missing."""
    host = repository.effective_git_host
    if not host:
        raise ReportFailed(f"Repository {repository.name} has no git host to report to (its URL names neither "
                           f"github.com nor gitlab.*): choose GitHub or GitLab in the admin.")
    token = repository.api_token()
    if not token:
        raise ReportFailed(f"Repository {repository.name} has no API token: set one in the admin.")
    project = repository.effective_host_project
    if not project:
        raise ReportFailed(f"The URL of repository {repository.name} names no project: set its host project "
                           f"(owner/repository) in the admin.")
    if host == repository.GitHost.GITHUB:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
    else:
        headers = {"PRIVATE-TOKEN": token, "Accept": "application/json"}
    return host, repository.effective_api_url, project, token, headers


def _fit(text, limit):
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- the comment on a pull/merge request ---------------------------------------------------------------------


def _comment_follow_up(repository, ref_pk):
    """Write the result of the check of the pull request's head as its one comment. The ref stays locked while
    it is sent, so two results of one pull request never post two comments."""
    from pipelines.models import Check, CheckRef

    with transaction.atomic():
        ref = CheckRef.objects.select_for_update().filter(pk=ref_pk, repository=repository).first()
        if ref is None or not ref.is_open or ref.kind != CheckRef.Kind.PULL_REQUEST:
            return
        check = (Check.objects.for_commit(repository, ref.head_sha).exclude(status=Check.Status.CANCELLED)
                 .select_related("repository").first())
        if check is None or not check.is_finished:
            return  # its head moved on: the result of the new head brings its own follow-up
        body = comment_body(check, limit=COMMENT_LENGTH[repository.effective_git_host])
        comment_id = comment(repository, number=ref.number, body=body, comment_id=ref.comment_id)
        if comment_id != ref.comment_id:
            ref.comment_id = comment_id
            ref.save(update_fields=["comment_id"])


def comment_body(check, *, limit):
    """Markdown: the check's result in one line, a link to its page, and its log (the full plan), whose start
    is cut when the whole would exceed `limit` characters."""
    state, headline = _headline(check)
    mark = {"success": "✅", "failure": "❌"}.get(state, "⚠️")
    log = check.log_since(0)[0].rstrip("\n")
    fence = "```"
    while fence in log:
        fence += "`"
    head = (f"{COMMENT_MARK}\n{mark} **{check.HOST_CONTEXT}: {headline}**\n\n"
            f"[Check #{check.pk}]({portal_url(check.get_absolute_url())}) of `{check.commit_sha[:10]}` "
            f"{check.get_status_display().lower()}.\n\n")
    room = limit - len(head) - 2 * len(fence) - 200
    if len(log) > room:
        log = f"… (the start is on the check's page)\n{log[len(log) - room:]}"
    return f"{head}{fence}\n{log}\n{fence}\n"


def _check_state(state):
    if state not in STATES:
        raise ValueError(f"{state!r} is not a commit status state: use one of {', '.join(STATES)}.")


class CommentGone(Exception):
    """The comment to update is no longer on the host (deleted by someone): post a new one."""


def _send(method, url, body, headers, *, repository, token, action="status"):
    """One request to the host's API; its JSON answer ({} when it is none). Raises ReportFailed."""
    label, timeout = repository.git_host_label, settings.GITOPS_GIT_HOST_TIMEOUT
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={**headers, "Content-Type": "application/json",
                                              "User-Agent": "gitops-portal"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", "replace")
        if error.code == 404 and method != "POST":
            raise CommentGone() from None
        if _already_in_that_state(repository, error.code, text):
            return {}
        raise ReportFailed(masking.mask(_explain(error.code, text, repository, action), masking.usable({token}))) from None
    except (urllib.error.URLError, OSError) as error:  # TimeoutError is an OSError; urlopen may wrap it
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            raise ReportFailed(f"{label} did not answer within {timeout} s ({repository.effective_api_url}).") from None
        raise ReportFailed(f"Could not reach {label} at {repository.effective_api_url}: {reason}.") from None
    try:
        answer = json.loads(text or b"{}")
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _already_in_that_state(repository, status, text):
    # GitLab refuses to set a state a commit's status already has ("Cannot transition status via :run from
    # :running"): that happens when a report went through but its follow-up did not get to record it.
    return (repository.effective_git_host == repository.GitHost.GITLAB and status == 400
            and "Cannot transition status" in text)


def _host_message(status, text):
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    message = ""
    if isinstance(answer, dict):
        message = answer.get("message") or answer.get("error") or ""
        if not isinstance(message, str):
            message = json.dumps(message)
    message = (message or text.strip())[:300]
    if message.startswith(str(status)):
        return message
    return f"{status} {message}".strip()


def _explain(status, text, repository, action="status"):
    """The host's own words, and what to fix for the answers that need a person."""
    label, message = repository.git_host_label, _host_message(status, text)
    if status == 401:
        return f"{message}: {label} refused the API token; set a valid one on the repository in the admin."
    if status == 403:
        github = repository.effective_git_host == repository.GitHost.GITHUB
        if action == "comment":
            scope = ("the repo scope (a fine-grained token: Pull requests, read and write)" if github
                     else "the api scope, with at least the Reporter role on the project")
            return f"{message}: the API token may not comment on pull/merge requests; it needs {scope}."
        scope = ("the repo:status scope (a fine-grained token: Commit statuses, read and write)" if github
                 else "the api scope, with at least the Developer role on the project")
        return f"{message}: the API token may not set commit statuses; it needs {scope}."
    if status == 404:
        return (f"{message}: {label} at {repository.effective_api_url} knows no project "
                f"{repository.effective_host_project} that this token can see; check the host project, the API "
                f"URL and the token's access.")
    return f"{message} from {label}."


def reporting_trouble(repository):
    """What the repository page and the admin show while a report keeps failing, or "" when none does:
    "Reporting to GitHub failed 3 times: 401 Bad credentials: … — retrying"."""
    from pipelines.models import FollowUp

    if not repository.reports_commit_statuses:
        return ""  # reports left over from before are dropped unsent (report_follow_up): nothing to show
    failing = (FollowUp.objects.pending().filter(repository=repository, kind=CHECK_REPORT).exclude(last_error="")
               .order_by("-attempts", "-id").only("attempts", "last_error").first())
    if failing is None:
        return ""
    times = "once" if failing.attempts == 1 else f"{failing.attempts} times"
    label = repository.git_host_label or "the git host"
    return f"Reporting to {label} failed {times}: {failing.last_error} — retrying"
