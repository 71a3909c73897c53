"""Turning what git says into Releases: poll a repository, record new versions, hand the newest to promotion.

A poll asks `ls-remote` first and fetches only when the refs that matter moved. Git work happens
before the transaction; the transaction only writes rows, so it never waits on the network. New tags are
read in a few batched git calls (one `for-each-ref`, one `log --stdin`, one `cat-file --batch`), however
many there are.

Each candidate stands on its own: a tag on a blob is skipped and listed in `Repository.skipped_tags`, a
pipeline file that cannot be read or parsed makes that one release invalid with the reason. Nothing one
tag holds can stop the repository's later releases from being recorded.

A repository adopted with its history may take the pipeline file from its release branch for the releases
whose commit has none (`Repository.pipeline_from_branch`): such a release keeps the file as it was at the
branch's head when recorded, and the releases recorded invalid for lack of a file are read again."""

import hashlib
import logging
import threading
from dataclasses import dataclass
from functools import cache
from fnmatch import fnmatchcase

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from pipelines import followups, git, jobs
from pipelines.models import AuditEvent, Build, Check, CheckRef, Environment, FollowUp, Release, Repository
from pipelines.pipeline_file import PipelineFileError, parse_pipeline, size_problem
from pipelines.redaction import redact_text
from pipelines.versions import (NEWEST_FIRST, UNREADABLE, late_tag_refusal, newest_first_key, sortable_version,
                                tags_in_version_order)

logger = logging.getLogger(__name__)

ACTOR = "poller"
MAX_NEW_COMMITS = 50
# GitHub keeps refs/pull/<n>/head of every pull request ever opened, and polling cannot tell open from closed:
# a first poll of an old repository would otherwise queue hundreds of checks. Beyond this many per poll, the
# newest first, a moved head is recorded without a check (a webhook's pull_request event checks it).
MAX_NEW_CHECKS = 20
# One-shot sweeps poll this many repositories at once: most of a poll is waiting on git.
DEFAULT_POLL_CONCURRENCY = 4
_VERSION_MAX_LENGTH = Release._meta.get_field("version").max_length


@dataclass
class Candidate:
    """A version seen in git and not recorded yet."""

    version: str
    commit: git.Commit


def poll_repository(repository, *, unchanged=None):
    """Record the repository's new releases and return them; a failure is stored, never raised.

    Only the transaction that records the releases may raise (the database itself is away). With a list
    as `unchanged`, a repository that was fine and is still unchanged is appended to it instead of being
    written: a sweep then records all of those with one statement."""
    now = timezone.now()
    try:
        refs = git.ls_remote(repository)
        unstorable = git.unstorable_refs(repository, refs)  # left out of the mirror: see git.sync_mirror
        tracked = _tracked_refs(repository, refs, unstorable)
        checked = _checked_refs(repository, {ref: sha for ref, sha in refs.items() if ref not in unstorable})
        fingerprint = _fingerprint(repository, tracked, checked, branch_head=refs.get(f"refs/heads/{repository.branch}"))
        if fingerprint == repository.refs_fingerprint:
            if unchanged is not None and _nothing_to_clear(repository):
                unchanged.append(repository)
            else:
                _record_success(repository, now)
            return []
        git.sync_mirror(repository, refs)
        if repository.release_from == Repository.ReleaseFrom.TAGS:
            candidates, moved, skipped = _tag_candidates(repository, tracked, unstorable)
            if moved:  # their commits may now hang on no ref: keep them deployable
                git.keep_commits(repository, repository.releases.filter(version__in=list(moved))
                                 .values_list("commit_sha", flat=True))
        else:
            candidates, moved, skipped = _commit_candidates(repository, tracked), {}, []
        environments = set(Environment.objects.values_list("name", flat=True))
        branch_file = cache(lambda: _branch_file(repository, refs, unstorable))  # read only if a release needs it
        prepared = _prepare_all(repository, candidates, environments, branch_file)
        adoptable = _adoptable(repository, branch_file, environments)
        moved_heads = _moved_check_refs(repository, checked)
    except git.GitError as exc:
        _record_failure(repository, str(exc), now)
        return []
    except Exception as exc:
        logger.exception("polling %s failed unexpectedly", repository)
        _record_failure(repository, f"Polling failed unexpectedly: {exc}", now)
        return []

    with transaction.atomic():
        # Serialise pollers of one repository (a webhook and the scheduler may both run one).
        Repository.objects.select_for_update().get(pk=repository.pk)
        # Checks before releases: queueing one locks the ref's waiting checks, and rows come before the audit chain.
        _record_check_refs(repository, checked, moved_heads)
        # Rows before the audit chain (the lock order of every audited transaction): the moved tags' releases too.
        moved_releases = list(repository.releases.select_for_update().filter(version__in=list(moved)))
        adopted = _adopt(repository, *adoptable)
        previous_versions = set(repository.releases.values_list("version", flat=True))
        fresh = [release for release in prepared if release.version not in previous_versions]  # else another poller won
        recorded = _record_all(fresh, skipped)
        for release in moved_releases:
            # Compared with the locked row: a move another poller recorded meanwhile is not recorded twice.
            release.record_tag_seen_at(moved[release.version], by=ACTOR)
        _audit_adopted(adopted)
        newest = _release_to_promote(repository, recorded, tracked)
        follow_up = None
        if newest is not None and newest.is_valid and newest.pipeline is not None and newest.pipeline.build is not None:
            # Built first, once; the build's success records the promotion (Build.succeed).
            Build.objects.queue_for(newest)
        elif newest is not None and newest.is_valid:
            # Written with the release: if promotion fails or this process dies, the follow-up is retried.
            follow_up = FollowUp.objects.schedule(followups.PROMOTE_NEW_RELEASE, release=newest, enqueue=False,
                                                  delay=settings.GITOPS_WORKER_LOST_AFTER)
        _record_success(repository, now, refs_fingerprint=fingerprint, skipped_tags=skipped)
    if follow_up is not None:
        # Carried out here at once, with no job of its own: on `rqworker git deploy` that job would be taken
        # before the deployment it queues (the git queue comes first), a fork for nothing on the way from a
        # push to its step. If this attempt fails or this process dies first, the reconciler re-drives it.
        try:
            followups.carry_out(follow_up.pk, before_due=True)
        except Exception:
            logger.exception("the automatic promotion of %s failed; it will be retried", newest)
    return recorded


def poll_due_repositories(now=None, concurrency=None):
    """Poll every repository that is due, several at a time. One repository's failure never stops the others."""
    due = Repository.objects.due_for_poll(now)
    summary = {"polled": 0, "releases": 0, "failed": []}
    lock = threading.Lock()
    unchanged = []

    def poll(repository):
        try:
            releases = len(poll_repository(repository, unchanged=unchanged))
        except Exception as exc:
            logger.exception("polling %s failed unexpectedly", repository)
            try:
                _record_failure(repository, f"Polling failed unexpectedly: {exc}", timezone.now())
            except Exception:  # the database itself is away: the next sweep tries again
                logger.exception("could not record the failure of %s", repository)
                repository.last_error = str(exc) or type(exc).__name__
            releases = 0
        with lock:
            summary["polled"] += 1
            summary["releases"] += releases
            if repository.last_error:
                summary["failed"].append(repository.name)

    concurrency = concurrency or getattr(settings, "GITOPS_POLL_CONCURRENCY", DEFAULT_POLL_CONCURRENCY)
    # Rows written in an open transaction are invisible to other connections: then poll here, one by one.
    if concurrency <= 1 or len(due) <= 1 or transaction.get_connection().in_atomic_block:
        for repository in due:
            poll(repository)
    else:
        _in_threads(poll, due, concurrency)
    if unchanged:
        Repository.objects.filter(pk__in=[repository.pk for repository in unchanged]).update(last_polled_at=timezone.now())
    summary["failed"].sort()
    return summary


def enqueue_due_polls(now=None):
    """The scheduler's sweep: one poll job per due repository on the "git" queue, none while one waits or runs.

    A repository asked for is marked as polled now, so it is not asked again every tick; if its job is
    lost it is due again after its interval (or at once, while a webhook's request for it stands)."""
    now = now or timezone.now()
    asked, waiting, unreachable = [], 0, 0
    due = Repository.objects.due_for_poll(now)
    for index, repository in enumerate(due):
        outcome = jobs.enqueue_poll_unless_pending(repository.pk)
        if outcome == "enqueued":
            asked.append(repository.pk)
        elif outcome == "pending":
            waiting += 1
        else:  # the queue is away: do not wait on it once per repository; the next tick tries again
            unreachable = len(due) - index
            break
    if asked:
        Repository.objects.filter(pk__in=asked).update(last_polled_at=now)
    return {"asked": len(asked), "waiting": waiting, "unreachable": unreachable}


def _in_threads(function, items, concurrency):
    """Call `function` on each item from `concurrency` threads; each thread closes its own database connection."""
    pending = list(items)
    lock = threading.Lock()

    def work():
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    item = pending.pop(0)
                function(item)
        finally:
            connections.close_all()  # this thread's connections only

    threads = [threading.Thread(target=work, name=f"poll-{n}") for n in range(min(concurrency, len(pending)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- which refs matter -------------------------------------------------------------------------------


def _tracked_refs(repository, refs, unstorable):
    """{tag name: sha} of the matching tags, or {branch ref: sha} in commits mode."""
    if repository.release_from == Repository.ReleaseFrom.TAGS:
        tags = {name.removeprefix("refs/tags/"): sha for name, sha in refs.items() if name.startswith("refs/tags/")}
        return {tag: sha for tag, sha in tags.items() if fnmatchcase(tag, repository.tag_pattern)}
    ref = f"refs/heads/{repository.branch}"
    url = git.display_url(repository.url)
    if ref not in refs:
        raise git.GitError(f"Branch {repository.branch!r} does not exist in repository {url}.")
    if ref in unstorable:
        raise git.GitError(f"Branch {repository.branch!r} of repository {url} cannot be fetched: {unstorable[ref]}.")
    return {ref: refs[ref]}


def _checked_refs(repository, refs):
    """{name: CheckRefHead} of the branches whose commits run the checks (not the release branch; those the
    repository's `check_branches` globs match) and of every pull/merge request head."""
    heads = {}
    for ref, sha in refs.items():
        if ref.startswith("refs/heads/"):
            branch = ref.removeprefix("refs/heads/")
            if repository.runs_checks_on(branch):
                heads[branch] = CheckRefHead(CheckRef.Kind.BRANCH, branch, None, sha)
        elif review := git.review_number(ref):
            prefix, number = review
            name = f"{prefix}/{number}"
            heads[name] = CheckRefHead(CheckRef.Kind.PULL_REQUEST, name, number, sha)
    return heads


@dataclass(frozen=True)
class CheckRefHead:
    kind: str
    name: str
    number: int | None
    sha: str


def _moved_check_refs(repository, checked):
    """The heads that moved since the last poll, each with whether its commit's file has a `checks:` section
    (a file that does not parse counts as having one: the check then fails with the parser's message)."""
    known = {(kind, name): sha for kind, name, sha in
             CheckRef.objects.filter(repository=repository).values_list("kind", "name", "head_sha")}
    moved = [head for head in checked.values() if known.get((head.kind, head.name)) != head.sha]
    if not moved:
        return []
    # Branches first, then pull requests, the newest first (see MAX_NEW_CHECKS).
    moved.sort(key=lambda head: (head.kind != CheckRef.Kind.BRANCH, -(head.number or 0), head.name))
    checked_now = moved[:MAX_NEW_CHECKS]
    texts = git.read_files(repository, sorted({head.sha for head in checked_now}), repository.pipeline_path)
    return ([(head, _has_checks(texts.get(head.sha))) for head in checked_now]
            + [(head, False) for head in moved[MAX_NEW_CHECKS:]])


def _has_checks(text):
    if not text or "\0" in text:
        return False
    try:
        return parse_pipeline(text).checks is not None
    except (PipelineFileError, RecursionError):
        return True
    except Exception:
        logger.exception("parsing a pipeline file for checks failed unexpectedly")
        return True


def _record_check_refs(repository, checked, moved_heads):
    """Record the moved heads and queue the checks of their commits; branches gone from the remote are closed.
    Polling knows no pull request's title, author, state or origin: a webhook's stay as they were. A pull
    request no webhook said is from this repository is checked as a fork's (no check secrets, waiting for a
    deployer): GitHub publishes forks' pull requests under refs/pull/<n>/head like any other."""
    for head, has_checks in moved_heads:
        ref = CheckRef.objects.record(repository, kind=head.kind, name=head.name, head_sha=head.sha, number=head.number,
                                      is_open=True if head.kind == CheckRef.Kind.BRANCH else None)
        if has_checks:
            Check.objects.queue_for(repository, commit_sha=head.sha, ref_name=head.name, by=ACTOR,
                                    from_fork=ref.treated_as_fork)
    branches = [head.name for head in checked.values() if head.kind == CheckRef.Kind.BRANCH]
    (CheckRef.objects.filter(repository=repository, kind=CheckRef.Kind.BRANCH, is_open=True)
     .exclude(name__in=branches).update(is_open=False, updated_at=timezone.now()))


def _fingerprint(repository, tracked, checked=None, branch_head=None):
    # The settings are part of it: changing the pattern, the branch or the pipeline path must lead to a fresh look.
    lines = [repository.release_from, repository.branch, repository.tag_pattern, repository.check_branches]
    if repository.pipeline_from_branch:
        # Turning it on, or the branch's file changing, may make releases recorded invalid deployable (_adoptable).
        lines.append(f"{branch_head} pipeline from the branch")
    lines += [f"{sha} {name}" for name, sha in sorted(tracked.items())]
    lines += [f"{head.sha} check {name}" for name, head in sorted((checked or {}).items())]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _tag_candidates(repository, tags, unstorable):
    """New tags in version order, recorded tags that are not where the last poll saw them ({version: sha
    now, or None when deleted}), and the tags that can never be releases ([{"tag", "reason"}]), among them
    those the mirror cannot hold (`unstorable`: {ref: reason}, left out of the fetch).

    Only releases whose version matches the tag pattern are watched: after the pattern changes, the
    releases it no longer covers are not reported as deleted (nor are a former commits mode's versions)."""
    recorded = {}
    for version, commit_sha, moved_to, deleted in repository.releases.values_list(
            "version", "commit_sha", "tag_moved_to", "tag_deleted"):
        if fnmatchcase(version, repository.tag_pattern):
            recorded[version] = None if deleted else (moved_to or commit_sha)
    moved = {version: tags.get(version) for version, seen in recorded.items() if tags.get(version) != seen}
    skipped, new = [], []
    for tag in tags_in_version_order(tags):
        if tag in recorded:
            continue
        elif f"refs/tags/{tag}" in unstorable:
            skipped.append({"tag": _shortened(tag), "reason": unstorable[f"refs/tags/{tag}"]})
        elif len(tag) > _VERSION_MAX_LENGTH:
            skipped.append({"tag": _shortened(tag), "reason": f"the name is longer than {_VERSION_MAX_LENGTH} characters"})
        else:
            new.append(tag)
    if not new:
        return [], moved, skipped
    targets = git.tag_targets(repository)
    commit_tags = []
    for tag in new:
        target = targets.get(tag)
        if target is None:
            continue  # deleted between ls-remote and fetch: the next poll sees the truth
        if target.kind != "commit":
            skipped.append({"tag": tag, "reason": f"it points to a {target.kind}, not a commit"})
        else:
            commit_tags.append((tag, target.sha))
    commits = git.commits_info(repository, [sha for _, sha in commit_tags])
    candidates = []
    for tag, sha in commit_tags:
        if sha in commits:
            candidates.append(Candidate(version=tag, commit=commits[sha]))
        else:
            skipped.append({"tag": tag, "reason": f"its commit {sha[:10]} could not be read"})
    return candidates, moved, skipped


def _shortened(tag):
    return tag if len(tag) <= 80 else tag[:80] + "…"


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


def _prepare_all(repository, candidates, environments, branch_file):
    """Unsaved Releases for the candidates, their pipeline files read in one batch."""
    if not candidates:
        return []
    texts = git.read_files(repository, [candidate.commit.sha for candidate in candidates], repository.pipeline_path)
    errors = {}  # the pipeline file rarely changes between tags: parse each distinct text once
    return [_prepare(repository, candidate, texts.get(candidate.commit.sha), environments, errors, branch_file)
            for candidate in candidates]


def _prepare(repository, candidate, text, environments, errors, branch_file):
    """An unsaved Release with its pipeline file checked; whatever goes wrong with the file makes it invalid.
    Without a file at its commit, it takes the branch's where the repository says so (`branch_file()`)."""
    commit = candidate.commit
    path = repository.pipeline_path
    source = None
    if text is None and repository.pipeline_from_branch:
        source = branch_file()
        text, error = _file_from_branch(path, commit.sha, source, environments, errors)
    else:
        text, error = _checked_file(path, commit.sha, text, environments, errors)
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
        pipeline_commit_sha=source.sha if source and source.text is not None else "",
        pipeline_branch=source.branch if source and source.text is not None else "",
        error=error,
        version_key=_version_key(repository, candidate.version),
    )


def _checked_file(path, sha, text, environments, errors):
    """(text to keep, error) of the file `text` read at commit `sha` (None: it has none)."""
    if text is None:
        return "", _missing_file(path, sha)
    if "\0" in text:
        return "", f"{path} at commit {sha[:10]} is not a text file"
    if problem := size_problem(text):
        return "", f"{path} {problem}"  # nothing of it is stored: see size_problem
    if text not in errors:
        errors[text] = _pipeline_error(path, text, environments)
    return text, errors[text]


def _missing_file(path, sha):
    return f"{path} not found at commit {sha[:10]}"


# --- the branch's file for releases whose commit has none (Repository.pipeline_from_branch) -----------


@dataclass(frozen=True)
class BranchFile:
    """The pipeline file at the head of the release branch: `sha` None when the remote has no such branch,
    `text` None when its head has no file."""

    branch: str
    sha: str | None
    text: str | None


def _branch_file(repository, refs, unstorable):
    ref = f"refs/heads/{repository.branch}"
    sha = refs.get(ref) if ref not in unstorable else None
    if sha is None:
        return BranchFile(repository.branch, None, None)
    return BranchFile(repository.branch, sha, git.read_files(repository, [sha], repository.pipeline_path).get(sha))


def _file_from_branch(path, sha, source, environments, errors):
    """(text to keep, error) for a release whose commit `sha` has no file, from the branch's (`source`)."""
    if source.sha is None:
        return "", f"{_missing_file(path, sha)}, and the branch {source.branch} to take it from does not exist"
    if source.text is None:
        return "", f"{_missing_file(path, sha)}, nor at the head of the branch {source.branch} ({source.sha[:10]})"
    text, error = _checked_file(path, source.sha, source.text, environments, errors)
    if error:
        error = f"{error} (taken from the head of the branch {source.branch}, {source.sha[:10]})"
    return text, error


def _lacks_its_own_file(release, path):
    """True for a release recorded invalid because its commit has no pipeline file (whatever the branch had)."""
    missing = _missing_file(path, release.commit_sha)
    return release.error == missing or release.error.startswith(missing + ",") or bool(release.pipeline_commit_sha)


def _adoptable(repository, branch_file, environments):
    """(the releases recorded invalid for lack of a file, the branch's file) when the repository takes the
    file from its branch and that file is usable now: read before the transaction, adopted in it (_adopt).

    The setting may be turned on after the old tags were recorded invalid; the release branch may gain or
    fix its file later. Such a release never ran, so giving it the file now changes nothing that ran."""
    if not repository.pipeline_from_branch:
        return [], None
    invalid = [release for release in repository.releases.filter(error__gt="").only("pk", "commit_sha", "error",
                                                                                     "pipeline_commit_sha")
               if _lacks_its_own_file(release, repository.pipeline_path)]
    if not invalid:
        return [], None
    source = branch_file()
    if source.text is None:
        return [], None
    _, error = _file_from_branch(repository.pipeline_path, "", source, environments, {})
    return ([release.pk for release in invalid], source) if not error else ([], None)


def _adopt(repository, ids, source):
    """Give the releases `ids` the branch's file; returns [(release, its error before)]. Inside the poll's transaction, before the audit
    chain: their rows are locked and looked at again (another poller may have adopted them)."""
    if not ids:
        return []
    locked = [release for release in repository.releases.select_for_update().filter(pk__in=ids, error__gt="")
              .order_by("pk") if _lacks_its_own_file(release, repository.pipeline_path)]
    fields = dict(pipeline_text=source.text, pipeline_sha256=hashlib.sha256(source.text.encode()).hexdigest(),
                  pipeline_commit_sha=source.sha, pipeline_branch=source.branch, error="")
    Release.objects.filter(pk__in=[release.pk for release in locked]).update(**fields)
    adopted = [(release, release.error) for release in locked]
    for release in locked:
        for name, value in fields.items():
            setattr(release, name, value)
    return adopted


def _audit_adopted(adopted):
    """Audited like the recording it corrects: the release was invalid, and deployable from now on."""
    AuditEvent.objects.record_many([
        dict(action="release.pipeline_adopted", actor=ACTOR, obj=release, repository=release.repository,
             details={"version": release.version, "pipeline_branch": release.pipeline_branch,
                      "pipeline_commit": release.pipeline_commit_sha, "error_before": error_before})
        for release, error_before in adopted
    ])


def _version_key(repository, version):
    """Tags sort by version; in commits mode the version is a short sha, and detection alone orders them."""
    if repository.release_from == Repository.ReleaseFrom.TAGS:
        return sortable_version(version)
    return UNREADABLE


def _pipeline_error(path, text, environments):
    """Why the pipeline file is unusable, in words, or ""."""
    try:
        parse_pipeline(text, known_environments=environments)
    except PipelineFileError as exc:
        return f"{path} {exc}" if exc.line else f"{path}: {exc}"
    except RecursionError:
        return f"{path}: the file is nested too deeply to be read"
    except Exception as exc:  # a parser bug must cost this release, not the repository
        logger.exception("parsing %s failed unexpectedly", path)
        return f"{path}: the file could not be read ({type(exc).__name__}: {exc})"
    return ""


def _record_all(releases, skipped):
    """Save the prepared releases and their audit events in a few statements (a first poll may bring
    thousands); one that fails validation is listed in `skipped` with the reason instead."""
    valid = []
    for release in releases:
        try:
            # Uniqueness is settled by the caller under the repository lock, and the repository row is
            # locked (checking the foreign key would cost a query per release); the rest is checked here.
            release.full_clean(exclude=["repository"], validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            skipped.append({"tag": release.version, "reason": "it cannot be recorded: " + "; ".join(exc.messages)})
        else:
            valid.append(release)
    if not valid:
        return []
    if len(valid) == 1:
        valid[0].save(force_insert=True)
    else:
        Release.objects.bulk_create(valid)
        if valid[0].pk is None:  # a database that does not return the new ids (not PostgreSQL, not SQLite)
            ids = dict(Release.objects.filter(repository=valid[0].repository, version__in=[r.version for r in valid])
                       .values_list("version", "pk"))
            for release in valid:
                release.pk = ids[release.version]
    AuditEvent.objects.record_many([
        dict(action="release.recorded", actor=ACTOR, obj=release, repository=release.repository,
             details={"version": release.version, "commit": release.commit_sha, "error": release.error,
                      **({"pipeline_commit": release.pipeline_commit_sha} if release.pipeline_commit_sha else {})})
        for release in valid
    ])
    return valid


def _release_to_promote(repository, recorded, tracked):
    """The newest new release, if it is first in the version order (pipelines/versions.py, as the lists show
    it): a late old tag must not roll back, and says so in the audit log."""
    if not recorded:
        return None
    if repository.release_from != Repository.ReleaseFrom.TAGS:
        # The branch head, and only if it is new: it is what the branch says should run now.
        return recorded[-1] if recorded[-1].commit_sha in tracked.values() else None
    newest = max(recorded, key=newest_first_key)
    # Only one recorded before can be above it: a later id wins a tie (`1.2` after `1.2.0`, two tags that are
    # no version), as it is listed first.
    newer = (repository.releases.filter(version_key__gt=newest.version_key).order_by(*NEWEST_FIRST)
             .only("version").first())
    if newer is None:
        return newest
    AuditEvent.objects.record(
        action="promotion.skipped", actor=ACTOR, obj=newest, repository=repository,
        details={"release": newest.version, "reason": late_tag_refusal(newer)},
    )
    return None


def _served_request(repository):
    """The update that clears the webhook's request this poll served, unless a newer one came meanwhile."""
    if repository.poll_requested_at is None:
        return {}
    return {"poll_requested_at": Case(When(poll_requested_at=repository.poll_requested_at, then=Value(None)),
                                      default=F("poll_requested_at"))}


def _nothing_to_clear(repository):
    """True when a successful poll would only move last_polled_at."""
    return repository.poll_requested_at is None and not repository.last_error and not repository.consecutive_failures


def _record_success(repository, now, **fields):
    fields = {"last_polled_at": now, "last_error": "", "consecutive_failures": 0, **fields}
    Repository.objects.filter(pk=repository.pk).update(**fields, **_served_request(repository))
    for name, value in fields.items():
        setattr(repository, name, value)
    repository.poll_requested_at = None


def _record_failure(repository, message, now):
    """Store the error and back off; audit it only when it differs from the last one, so a dead host is not spam.

    A webhook's request counts as served: the back-off, not every tick, decides when to try again."""
    message = redact_text(message)  # an unexpected exception may quote the URL with its token
    with transaction.atomic():
        changed = message != repository.last_error
        Repository.objects.filter(pk=repository.pk).update(
            last_error=message, last_error_at=now, last_polled_at=now,
            consecutive_failures=F("consecutive_failures") + 1, **_served_request(repository),
        )
        repository.last_error, repository.last_error_at, repository.last_polled_at = message, now, now
        repository.consecutive_failures += 1
        repository.poll_requested_at = None
        if changed:
            AuditEvent.objects.record(
                action="repository.poll_failed", actor=ACTOR, obj=repository, repository=repository,
                details={"error": message},
            )


def _clean(text):
    return text.replace("\0", "")  # PostgreSQL text cannot hold NUL

