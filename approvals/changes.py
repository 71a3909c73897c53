"""What a change contains, for the people who approve it.

Between what runs in the environment now and the candidate: the commits, the files with lines added and
removed, and the pipeline file's difference; plus how the candidate fared in the environments before.
Computed from the git mirror once, when the change request opens, and stored with it as JSON so that the
page never waits on git. A git failure gives a summary with an "error" and empty lists, never an exception.

The summary, as the pages read it:
    from              {version, sha} of what runs now, or None (a first deployment)
    to                {version, sha} of the candidate
    first_deployment  True when nothing runs there yet: "commits" is then the candidate's latest history
    direction         by git ancestry, not by version: "first" (nothing runs there yet), "forward" (what runs
                      is in the candidate's history), "rollback" (the candidate is in the history of what
                      runs) or "diverged" (neither: a backport released over a newer line, say)
    is_rollback       True when commits leave the environment ("rollback" or "diverged"): "commits" are then
                      those that leave, as readers from before "direction" expect
    commits           [{sha, short_sha, subject, author_name, author_email, committed_at, url}], newest first
    commit_count      how many commits there are in all ("commits" stops at MAX_COMMITS)
    added_commits     "diverged" only: the commits the candidate brings that what runs lacks (else [])
    added_count       how many ("added_commits" stops at MAX_COMMITS)
    files             [{path, old_path, added, removed}] from what runs now to the candidate; counts are
                      None for a binary file, old_path is set on a rename
    totals            {files, added, removed} over all files ("files" stops at MAX_FILES)
    pipeline_path     the repository's pipeline file
    pipeline_diff     unified diff of that file when it changed, else ""
    truncated         True when any list or the diff was cut short
    earlier_results   [{environment, deployment_id, status, finished_at, duration_seconds,
                       running_for_seconds, replaced_by}] for the environments before, in order
    computed_at       when this was computed (running_for_seconds is as of then)
    error             "" or why git could not tell
"""

import logging
from dataclasses import dataclass

from django.utils import timezone

from pipelines import git
from pipelines.models import Deployment, Stage, Target

logger = logging.getLogger(__name__)

MAX_COMMITS = 200
MAX_HISTORY = 100  # a first deployment lists the latest commits of the candidate's own history
MAX_FILES = 500
MAX_DIFF_CHARS = 100_000


@dataclass(frozen=True)
class Change:
    summary: dict
    # Lower-cased e-mails of the authors and committers of all commits in the change, not only the listed ones.
    author_emails: list


def summarise(deployment):
    """The JSON-able summary of what `deployment` would change (see the module docstring)."""
    return inspect(deployment).summary


def inspect(deployment, now=None):
    """The summary and the e-mails of the commits' authors and committers of what `deployment` would change."""
    now = now or timezone.now()
    release = deployment.release
    base = running_release(deployment)
    summary = {
        "from": {"version": base.version, "sha": base.commit_sha} if base else None,
        "to": {"version": release.version, "sha": release.commit_sha},
        "first_deployment": base is None,
        "direction": "first" if base is None else "forward",
        "is_rollback": False,
        "commits": [],
        "commit_count": 0,
        "added_commits": [],
        "added_count": 0,
        "files": [],
        "totals": {"files": 0, "added": 0, "removed": 0},
        "pipeline_path": deployment.repository.pipeline_path,
        "pipeline_diff": "",
        "truncated": False,
        "earlier_results": earlier_results(deployment, now),
        "computed_at": now.isoformat(),
        "error": "",
    }
    try:
        authors = _compare(deployment.repository, base, release, summary)
    except git.GitError as exc:
        logger.warning("cannot summarise deployment #%s: %s", deployment.pk, exc)
        summary.update(is_rollback=False, commits=[], commit_count=0, added_commits=[], added_count=0, files=[],
                       pipeline_diff="", truncated=False, totals={"files": 0, "added": 0, "removed": 0}, error=str(exc))
        # Git cannot say who wrote the change; the candidate commit's author at least is known. (The
        # commit-author rule then refuses everyone anyway: see ChangeRequest.refusal_reason.)
        authors = [release.author_email.lower()] if release.author_email else []
    return Change(summary=summary, author_emails=authors)


def running_release(deployment):
    """What runs in the deployment's environment now, else what ran when it was created, else None."""
    target = (
        Target.objects.filter(repository_id=deployment.repository_id, environment_id=deployment.environment_id)
        .select_related("current_release")
        .first()
    )
    if target is not None and target.current_release is not None:
        return target.current_release
    return deployment.previous_release


def earlier_results(deployment, now):
    """How the candidate fared in each stage of its repository's lifecycle before this one where it was
    deployed, in order.

    The latest success there and how long it has run there (until now, or until a later success of
    another release replaced it); when it never succeeded there, its latest attempt."""
    order = {stage.environment_id: stage.position for stage in Stage.objects.of(deployment.repository)}
    here = order.get(deployment.environment_id)
    earlier = [environment for environment, position in order.items() if here is None or position < here]
    attempts = sorted(
        Deployment.objects.filter(release_id=deployment.release_id, environment_id__in=earlier)
        .exclude(environment_id=deployment.environment_id)
        .select_related("environment")
        .order_by("-created_at", "-id"),
        key=lambda attempt: order[attempt.environment_id],
    )
    by_environment = {}
    for attempt in attempts:
        by_environment.setdefault(attempt.environment, []).append(attempt)
    results = []
    for environment, tries in by_environment.items():
        succeeded = [t for t in tries if t.status == Deployment.Status.SUCCEEDED]
        shown = succeeded[0] if succeeded else tries[0]
        running_for, replaced_by = None, None
        if succeeded:
            replacement = (
                Deployment.objects.for_target(shown.repository_id, environment)
                .filter(status=Deployment.Status.SUCCEEDED, finished_at__gt=shown.finished_at)
                .exclude(release_id=shown.release_id)
                .select_related("release")
                .order_by("finished_at", "id")
                .first()
            )
            until = replacement.finished_at if replacement else now
            running_for = max(0, int((until - shown.finished_at).total_seconds()))
            replaced_by = replacement.release.version if replacement else None
        duration = shown.duration
        results.append({
            "environment": environment.name,
            "deployment_id": shown.pk,
            "status": shown.status,
            "finished_at": shown.finished_at.isoformat() if shown.finished_at else None,
            "duration_seconds": int(duration.total_seconds()) if duration is not None else None,
            "running_for_seconds": running_for,
            "replaced_by": replaced_by,
        })
    return results


def _compare(repository, base, release, summary):
    """Fill in the git part of `summary`; return the e-mails of the commits' authors and committers.
    Raises GitError."""
    to_sha = release.commit_sha
    from_sha = base.commit_sha if base else None
    git.ensure_commits(repository, *([from_sha, to_sha] if from_sha else [to_sha]))

    truncated = False
    if from_sha is None:
        # A first deployment: the candidate's own latest history stands for the change.
        listed = (None, to_sha)
        commits = git.log_range(repository, *listed, MAX_HISTORY)
        authors = git.commit_emails(repository, *listed, MAX_HISTORY)
    else:
        summary["direction"] = _direction(repository, from_sha, to_sha)
        if summary["direction"] in ("rollback", "diverged"):
            summary["is_rollback"] = True
            listed = (to_sha, from_sha)  # the commits that leave the environment
        else:
            listed = (from_sha, to_sha)
        commits = git.log_range(repository, *listed, MAX_COMMITS)
        authors = git.commit_emails(repository, *listed)
        if summary["direction"] == "diverged":
            # Both sides: what leaves (above) and what the candidate brings; whoever wrote either had a hand in it.
            added = git.log_range(repository, from_sha, to_sha, MAX_COMMITS)
            summary["added_commits"] = [_commit(repository, commit) for commit in added]
            summary["added_count"] = git.count_commits(repository, from_sha, to_sha)
            truncated = summary["added_count"] > len(added)
            authors = sorted({*authors, *git.commit_emails(repository, from_sha, to_sha)})
    count = git.count_commits(repository, *listed)
    summary["commits"] = [_commit(repository, commit) for commit in commits]
    summary["commit_count"] = count
    truncated = truncated or count > len(commits)

    # Files and the pipeline file go from what runs now to the candidate, whichever way that is.
    files = git.numstat(repository, from_sha, to_sha)
    summary["files"] = [
        {"path": f.path, "old_path": f.old_path, "added": f.added, "removed": f.removed} for f in files[:MAX_FILES]
    ]
    summary["totals"] = {
        "files": len(files),
        "added": sum(f.added or 0 for f in files),
        "removed": sum(f.removed or 0 for f in files),
    }
    truncated = truncated or len(files) > MAX_FILES

    path = repository.pipeline_path
    if any(path in (f.path, f.old_path) for f in files):
        diff = git.file_diff(repository, from_sha, to_sha, path)
        if len(diff) > MAX_DIFF_CHARS:
            diff, truncated = diff[:MAX_DIFF_CHARS], True
        summary["pipeline_diff"] = diff
    summary["truncated"] = truncated
    return authors


def _direction(repository, from_sha, to_sha):
    """Which way the change goes from what runs (`from_sha`) to the candidate, by ancestry (see the module
    docstring): versions can lie (8.5.3 released after 8.6.1), the history cannot."""
    if git.is_ancestor(repository, from_sha, to_sha):
        return "forward"  # the same commit too: nothing leaves
    if git.is_ancestor(repository, to_sha, from_sha):
        return "rollback"
    return "diverged"


def _commit(repository, commit):
    return {
        "sha": commit.sha,
        "short_sha": commit.sha[:10],
        "subject": commit.message.splitlines()[0] if commit.message else "",
        "author_name": commit.author_name,
        "author_email": commit.author_email,
        "committed_at": commit.committed_at.isoformat(),
        "url": repository.commit_url(commit.sha),
    }
