"""Turning what git says into Releases: poll a repository, record new versions, hand the newest to promotion.

A poll asks `ls-remote` first and fetches only when the refs that matter moved. Git work happens
before the transaction; the transaction only writes rows, so it never waits on the network."""

import hashlib
import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase

from django.db import transaction
from django.utils import timezone

from pipelines import git, promotion
from pipelines.models import AuditEvent, Environment, Release, Repository
from pipelines.pipeline_file import PipelineFileError, parse_pipeline

logger = logging.getLogger(__name__)

ACTOR = "poller"
MAX_NEW_COMMITS = 50
_VERSION_MAX_LENGTH = Release._meta.get_field("version").max_length


@dataclass
class Candidate:
    """A version seen in git and not recorded yet."""

    version: str
    commit: git.Commit


def poll_repository(repository):
    """Record the repository's new releases and return them; a git failure is stored, never raised."""
    now = timezone.now()
    try:
        refs = git.ls_remote(repository)
        tracked = _tracked_refs(repository, refs)
        fingerprint = _fingerprint(repository, tracked)
        if fingerprint == repository.refs_fingerprint:
            _save_state(repository, last_polled_at=now, last_error="")
            return []
        git.sync_mirror(repository)
        if repository.release_from == Repository.ReleaseFrom.TAGS:
            candidates, moved = _tag_candidates(repository, tracked)
        else:
            candidates, moved = _commit_candidates(repository, tracked), {}
        environments = set(Environment.objects.values_list("name", flat=True))
        prepared = [_prepare(repository, candidate, environments) for candidate in candidates]
    except git.GitError as exc:
        _record_failure(repository, str(exc), now)
        return []

    with transaction.atomic():
        # Serialise pollers of one repository (a webhook and the scheduler may both run one).
        Repository.objects.select_for_update().get(pk=repository.pk)
        previous_versions = list(repository.releases.values_list("version", flat=True))
        recorded = [release for release in prepared if _record(release, previous_versions)]
        for version, new_sha in moved.items():
            _flag_moved_tag(repository, version, new_sha)
        _save_state(repository, last_polled_at=now, last_error="", refs_fingerprint=fingerprint)

    newest = _release_to_promote(repository, recorded, previous_versions, tracked)
    if newest is not None:
        try:
            promotion.on_release_recorded(newest)
        except Exception:
            # The release stays recorded; a deployer can still promote it by hand.
            logger.exception("automatic promotion of %s failed", newest)
    return recorded


def poll_due_repositories(now=None):
    """Poll every repository that is due. One repository's failure never stops the others."""
    summary = {"polled": 0, "releases": 0, "failed": []}
    for repository in Repository.objects.due_for_poll(now):
        summary["polled"] += 1
        try:
            summary["releases"] += len(poll_repository(repository))
        except Exception as exc:
            logger.exception("polling %s failed unexpectedly", repository)
            _record_failure(repository, f"Polling failed unexpectedly: {exc}", timezone.now())
        if repository.last_error:
            summary["failed"].append(repository.name)
    return summary


# --- which refs matter -------------------------------------------------------------------------------


def _tracked_refs(repository, refs):
    """{tag name: sha} of the matching tags, or {branch ref: sha} in commits mode."""
    if repository.release_from == Repository.ReleaseFrom.TAGS:
        tags = {name.removeprefix("refs/tags/"): sha for name, sha in refs.items() if name.startswith("refs/tags/")}
        return {tag: sha for tag, sha in tags.items() if fnmatchcase(tag, repository.tag_pattern)}
    ref = f"refs/heads/{repository.branch}"
    if ref not in refs:
        url = git.display_url(repository.url)
        raise git.GitError(f"Branch {repository.branch!r} does not exist in repository {url}.")
    return {ref: refs[ref]}


def _fingerprint(repository, tracked):
    # The settings are part of it: changing the pattern or the branch must lead to a fresh look.
    lines = [repository.release_from, repository.branch, repository.tag_pattern]
    lines += [f"{sha} {name}" for name, sha in sorted(tracked.items())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _tag_candidates(repository, tags):
    """New tags in version order, and recorded tags that now point elsewhere ({version: new sha})."""
    recorded = dict(repository.releases.filter(version__in=list(tags)).values_list("version", "commit_sha"))
    candidates, moved = [], {}
    for tag in sorted(tags, key=git.version_sort_key):
        if tag in recorded:
            if recorded[tag] != tags[tag]:
                moved[tag] = tags[tag]
        elif len(tag) > _VERSION_MAX_LENGTH:
            logger.warning("tag %r of %s is too long to record", tag[:80], repository)
        else:
            candidates.append(Candidate(version=tag, commit=git.commit_info(repository, tags[tag])))
    return candidates, moved


def _commit_candidates(repository, tracked):
    """The first poll records only the head; later ones every new first-parent commit up to it."""
    (head,) = tracked.values()
    last = repository.releases.order_by("-id").only("commit_sha").first()
    if last is not None and last.commit_sha == head:
        return []
    if last is None or not git.has_commit(repository, last.commit_sha):
        # A first poll, or history rewritten past the last release: start again from the head.
        commits = [git.commit_info(repository, head)]
    else:
        # Empty when the branch was reset to an ancestor: then the head alone is what should run.
        commits = git.commits_between(repository, last.commit_sha, head, MAX_NEW_COMMITS)
        commits = commits or [git.commit_info(repository, head)]
    shas = [commit.sha for commit in commits]
    known = set(repository.releases.filter(commit_sha__in=shas).values_list("commit_sha", flat=True))
    return [Candidate(version=commit.sha[:12], commit=commit) for commit in commits if commit.sha not in known]


# --- recording ---------------------------------------------------------------------------------------


def _prepare(repository, candidate, environments):
    """An unsaved Release with its pipeline file read and checked at the commit."""
    commit = candidate.commit
    path = repository.pipeline_path
    text = git.read_file(repository, commit.sha, path)
    error = ""
    if text is None:
        text, error = "", f"{path} not found at commit {commit.sha[:10]}"
    elif "\0" in text:
        text, error = "", f"{path} at commit {commit.sha[:10]} is not a text file"
    else:
        try:
            parse_pipeline(text, known_environments=environments)
        except PipelineFileError as exc:
            error = f"{path} {exc}" if exc.line else f"{path}: {exc}"
    return Release(
        repository=repository,
        version=candidate.version,
        commit_sha=commit.sha,
        message=_clean(commit.message),
        author_name=_clean(commit.author_name)[:200],
        author_email=_clean(commit.author_email)[:254],
        committed_at=commit.committed_at,
        pipeline_text=text,
        pipeline_sha256=hashlib.sha256(text.encode()).hexdigest() if text else "",
        error=error,
    )


def _record(release, previous_versions):
    """Save a prepared release unless another poller recorded that version first."""
    if release.version in previous_versions:
        return False
    release.full_clean()
    release.save(force_insert=True)
    AuditEvent.objects.record(
        action="release.recorded", actor=ACTOR, obj=release, repository=release.repository,
        details={"version": release.version, "commit": release.commit_sha, "error": release.error},
    )
    return True


def _flag_moved_tag(repository, version, new_sha):
    """A tag now on another commit: say so once; the release keeps its commit and nothing redeploys."""
    release = repository.releases.select_for_update().get(version=version)
    if release.tag_moved_to:
        return
    Release.objects.filter(pk=release.pk).update(tag_moved_to=new_sha)
    AuditEvent.objects.record(
        action="release.tag_moved", actor=ACTOR, obj=release, repository=repository,
        details={"version": version, "old_commit": release.commit_sha, "new_commit": new_sha},
    )


def _release_to_promote(repository, recorded, previous_versions, tracked):
    """The newest new release, if it is newer than all before it: a late old tag must not roll back."""
    if not recorded:
        return None
    if repository.release_from != Repository.ReleaseFrom.TAGS:
        # The branch head, and only if it is new: it is what the branch says should run now.
        return recorded[-1] if recorded[-1].commit_sha in tracked.values() else None
    newest = max(recorded, key=lambda release: git.version_sort_key(release.version))
    key = git.version_sort_key(newest.version)
    return newest if all(key > git.version_sort_key(v) for v in previous_versions) else None


def _save_state(repository, **fields):
    Repository.objects.filter(pk=repository.pk).update(**fields)
    for name, value in fields.items():
        setattr(repository, name, value)


def _record_failure(repository, message, now):
    """Store the error; audit it only when it differs from the last one, so a dead host is not spam."""
    with transaction.atomic():
        changed = message != repository.last_error
        _save_state(repository, last_error=message, last_error_at=now, last_polled_at=now)
        if changed:
            AuditEvent.objects.record(
                action="repository.poll_failed", actor=ACTOR, obj=repository, repository=repository,
                details={"error": message},
            )


def _clean(text):
    return text.replace("\0", "")  # PostgreSQL text cannot hold NUL
