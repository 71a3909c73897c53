"""All git access of the portal. The only module that imports GitPython.

Every call is one short-lived `git` subprocess through GitPython's command wrapper: no Repo objects and
no persistent cat-file processes, so long-lived workers leak nothing. Each repository has a bare
mirror under settings.GITOPS_MIRROR_DIR; all commands name it with `--git-dir`, so git never picks up
the configuration of whatever repository the process happens to run inside.

Safety: URLs are re-validated before every call, always follow `--`, and only the transports in
GIT_ALLOW_PROTOCOL work (no `ext::`, no `fd::`); shas and paths are checked before they reach git.
"""

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import git
from django.conf import settings
from django.core.exceptions import ValidationError

from pipelines.validators import validate_relative_path, validate_repository_url

# Network calls are bounded three ways: a connect timeout and an idle timeout where the transport has
# them (http(s): curl's low-speed limit; ssh: ConnectTimeout and server-alive probes), and an overall kill
# timeout for everything (git:// has nothing else). A remote that accepts a connection and never answers
# costs one poll at most GITOPS_GIT_TIMEOUT seconds, and the scheduler never waits for it (see pollrepos).
DEFAULT_GIT_TIMEOUT = 30  # ls-remote: a host that does not list its refs in 30 s is taken as unreachable
CONNECT_TIMEOUT = 10
IDLE_TIMEOUT = 15  # seconds below 1,000 bytes/s (http) or without an answer to ssh keep-alives (GITOPS_GIT_IDLE_TIMEOUT)
PROBE_TIMEOUT = 5  # the admin's check of a repository as it is saved: someone waits for it
FETCH_TIMEOUT = 300  # a first mirror of a large repository takes longer than a ref listing
LOCAL_TIMEOUT = 300

_SHA = re.compile(r"^[0-9a-f]{40}$")
_GIT_OPTIONS = [
    "-c", "protocol.ext.allow=never",
    "-c", "protocol.fd.allow=never",
    # Fetch runs `gc --auto`; in the foreground it cannot outlive the call as a stray process.
    "-c", "gc.autoDetach=false",
    "-c", "maintenance.autoDetach=false",
]
# git archive honours the archived tree's own .gitattributes; these would silently drop files
# (export-ignore) or rewrite them (export-subst), so the mirror overrides both.
_MIRROR_ATTRIBUTES = "* -export-ignore -export-subst\n"


class GitError(Exception):
    """A git operation failed; the message says what and why in plain words."""


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author_name: str
    author_email: str
    committed_at: datetime


def mirror_path(repository):
    return Path(settings.GITOPS_MIRROR_DIR) / f"{repository.pk}-{repository.name}.git"


def display_url(url):
    """The URL as shown to people: without a password or token."""
    return _redact(url, url)


# --- talking to the remote ---------------------------------------------------------------------------


def network_timeout():
    return int(getattr(settings, "GITOPS_GIT_TIMEOUT", DEFAULT_GIT_TIMEOUT))


def _idle_timeout():
    return int(getattr(settings, "GITOPS_GIT_IDLE_TIMEOUT", IDLE_TIMEOUT))


# The heads of GitHub pull requests and GitLab merge requests, as their hosts publish them: checks run on them.
_REVIEW_HEAD = re.compile(r"\Arefs/(pull|merge-requests)/([0-9]+)/head\Z")


def review_number(ref):
    """(kind, number) of a pull/merge request head ref ("pull" or "merge-requests"), or None."""
    match = _REVIEW_HEAD.match(ref)
    return (match.group(1), int(match.group(2))) if match else None


def ls_remote(repository):
    """Branches, tags and pull/merge request heads of the remote as {ref name: commit sha}; annotated tags
    are peeled."""
    url = _checked_url(repository)
    # Run inside the mirror (empty on a first poll) so that git reads no other repository's config.
    mirror = _ensure_mirror(repository)
    output = _run(mirror, [*_network_options(url), "ls-remote", "--", url],
                  timeout=network_timeout(), failure=f"Cannot reach repository {display_url(url)}", url=url)
    return _parse_refs(output)


def probe_remote(repository, *, timeout=PROBE_TIMEOUT):
    """`ls_remote` for a repository as a form holds it (perhaps not saved yet), within `timeout` seconds:
    run in a throwaway empty git directory, so that no mirror is made for a setup that may be refused."""
    url = _checked_url(repository)
    with tempfile.TemporaryDirectory(prefix="gitops-probe-") as scratch:
        scratch = Path(scratch)
        _run(scratch, ["init", "--quiet", "--bare", "--template="], timeout=LOCAL_TIMEOUT,
             failure="Cannot prepare a directory for the check")
        output = _run(scratch, [*_network_options(url), "ls-remote", "--heads", "--tags", "--", url],
                      timeout=timeout, failure=f"Cannot reach repository {display_url(url)}", url=url)
    return _parse_refs(output)


def _parse_refs(output):
    refs, peeled = {}, {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        elif name.startswith(("refs/heads/", "refs/tags/")) or _REVIEW_HEAD.match(name):
            refs[name] = sha
    # An annotated tag is listed as its tag object, then `name^{}` gives the commit it points to.
    return {name: peeled.get(name, sha) for name, sha in refs.items()}


def sync_mirror(repository, refs=None):
    """Bring the mirror's branches, tags and pull/merge request heads up to date with the remote (force, prune).

    A ref whose name the mirror's file system cannot hold (see `unstorable_refs`) is left out: otherwise git
    fails the whole fetch on it, every time, and the repository is stuck. `refs` is what `ls_remote` answered
    just before; without it the remote is asked first. Returns the refs left out, {ref: reason}."""
    url = _checked_url(repository)
    mirror = _ensure_mirror(repository)
    unstorable = unstorable_refs(repository, ls_remote(repository) if refs is None else refs)
    # Negative refspecs leave those refs out; --no-tags, or git's tag following would fetch them all the same.
    left_out = [f"^{ref}" for ref in sorted(unstorable)]
    with _locked(mirror):
        _run(mirror, [*_network_options(url), "fetch", "--quiet", "--no-tags", "--prune", "--force", "--no-write-fetch-head",
                      "--", url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
                      "+refs/pull/*/head:refs/pull/*/head", "+refs/merge-requests/*/head:refs/merge-requests/*/head",
                      *left_out],
             timeout=FETCH_TIMEOUT, failure=f"Cannot fetch from repository {display_url(url)}", url=url)
    return unstorable


_LOCK_SUFFIX = len(b".lock")  # git writes a ref through "<name>.lock" beside it


def unstorable_refs(repository, refs):
    """{ref: reason} of the refs whose names the mirror's file system cannot hold as files: a part of the name
    longer than its NAME_MAX (255 bytes almost everywhere; the last part less git's ".lock"), or the whole path
    longer than PATH_MAX. Such a ref is valid to git and may exist on a host that stores refs otherwise."""
    mirror = mirror_path(repository)
    probe = mirror if mirror.is_dir() else mirror.parent
    name_max, path_max = _fs_limit(probe, "PC_NAME_MAX", 255), _fs_limit(probe, "PC_PATH_MAX", 4096)
    prefix = len(os.fsencode(mirror)) + 1
    unstorable = {}
    for ref in refs:
        encoded = ref.encode()
        *parents, last = encoded.split(b"/")
        longest = max(len(part) for part in parents) if parents else 0
        if longest > name_max or len(last) + _LOCK_SUFFIX > name_max:
            size = max(longest, len(last) + _LOCK_SUFFIX)
            unstorable[ref] = (f"its name cannot be stored as a file: a part of it takes {size} bytes (with git's "
                               f"'.lock'), more than the {name_max} bytes a file name may have here")
        elif prefix + len(encoded) + _LOCK_SUFFIX >= path_max:
            unstorable[ref] = (f"its name cannot be stored as a file: the path to it would be longer than the "
                               f"{path_max} bytes a path may have here")
    return unstorable


def _fs_limit(path, name, default):
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def keep_commits(repository, shas):
    """Hold these commits in the mirror under refs/gitops/kept/ (the fetch prunes only heads and tags).

    A released commit whose tag moved or was deleted may be reachable from no branch or tag any more, and
    `git gc` would drop it; the release still deploys it. A commit the mirror lacks is left out: the remote
    lost it before this mirror saw it."""
    mirror = mirror_path(repository)
    kept = [sha for sha in {_checked_sha(sha) for sha in shas} if has_commit(repository, sha)]
    if not kept:
        return []
    commands = "".join(f"update refs/gitops/kept/{sha} {sha}\n" for sha in sorted(kept))
    _run(mirror, ["update-ref", "--stdin"], stdin=commands, timeout=LOCAL_TIMEOUT,
         failure=f"Cannot keep the released commits of repository {display_url(repository.url)}")
    return sorted(kept)


# --- reading the mirror ------------------------------------------------------------------------------

_LOG_FORMAT = "--format=%H%x1f%an%x1f%ae%x1f%cI%x1f%B"


def has_commit(repository, sha):
    mirror = mirror_path(repository)
    if not _SHA.match(sha or "") or not mirror.is_dir():
        return False
    status, _, _ = _execute(mirror, ["cat-file", "-e", f"{sha}^{{commit}}"], timeout=LOCAL_TIMEOUT)
    return status == 0


def commit_info(repository, sha):
    return _log(repository, [_checked_sha(sha)], "-n", "1")[0]


def commits_between(repository, old_sha, new_sha, limit):
    """First-parent commits after `old_sha` up to `new_sha`, oldest first: the newest `limit` of them."""
    revisions = [_checked_sha(new_sha), "^" + _checked_sha(old_sha)]
    commits = _log(repository, revisions, "--first-parent", "-n", str(int(limit)))
    return commits[::-1]


def read_file(repository, sha, path):
    """The text of `path` at commit `sha`, or None when the commit has no such file."""
    _checked_sha(sha)
    try:
        validate_relative_path(path)
    except ValidationError as exc:
        raise GitError(f"Refusing to read {path!r}: {exc.messages[0]}") from exc
    mirror = mirror_path(repository)
    listing = _run(mirror, ["ls-tree", "-z", sha, "--", path], timeout=LOCAL_TIMEOUT,
                   failure=f"Cannot read {path} at commit {sha[:10]}")
    meta, _, name = listing.split("\0")[0].partition("\t")  # "<mode> <type> <object>\t<path>"
    if not meta or name != path:
        return None
    _, kind, blob = meta.split()
    if kind != "blob":
        return None  # a directory or a submodule of that name is not the file
    return _run(mirror, ["cat-file", "blob", blob], timeout=LOCAL_TIMEOUT,
                failure=f"Cannot read {path} at commit {sha[:10]}", strip=False)


# --- reading many tags at once (a first poll may see thousands) ----------------------------------------


@dataclass(frozen=True)
class TagTarget:
    """What a tag points at once peeled: `kind` is "commit" for a usable tag, else "blob", "tree" …"""

    kind: str
    sha: str


def tag_targets(repository):
    """{tag name: TagTarget} of every tag in the mirror, peeled, from one `for-each-ref`."""
    mirror = mirror_path(repository)
    output = _run(mirror, ["for-each-ref", "--format=%(refname) %(objecttype) %(objectname) %(*objecttype) %(*objectname)",
                           "refs/tags/"], timeout=LOCAL_TIMEOUT,
                  failure=f"Cannot list the tags of repository {display_url(repository.url)}")
    targets, nested = {}, {}
    for line in output.splitlines():
        # Ref names cannot contain spaces, so the fields split cleanly; `*` fields are empty unless annotated.
        name, kind, sha, peeled_kind, peeled_sha = (line.split(" ") + ["", ""])[:5]
        name = name.removeprefix("refs/tags/")
        if peeled_kind == "tag":
            nested[name] = peeled_sha  # a tag of a tag: peeled below
        elif peeled_kind:
            targets[name] = TagTarget(peeled_kind, peeled_sha)
        else:
            targets[name] = TagTarget(kind, sha)
    if nested:
        names = list(nested)
        answers = _batch(mirror, [f"{nested[name]}^{{}}" for name in names], "--batch-check")
        for name, (kind, sha, _) in zip(names, answers):
            targets[name] = TagTarget(kind or "missing", sha)
    return targets


def commits_info(repository, shas):
    """{sha: Commit} for the given commit shas, from one `git log --no-walk --stdin`."""
    shas = sorted({_checked_sha(sha) for sha in shas})
    if not shas:
        return {}
    mirror = mirror_path(repository)
    output = _run(mirror, ["log", "-z", "--no-walk=unsorted", _LOG_FORMAT, "--stdin"], timeout=LOCAL_TIMEOUT,
                  stdin="".join(f"{sha}\n" for sha in shas), strip=False,
                  failure=f"Cannot read the commits of repository {display_url(repository.url)}")
    return {commit.sha: commit for commit in _parse_log(output)}


def read_files(repository, shas, path):
    """{sha: text of `path` at that commit, or None without such a file}, from one `git cat-file --batch`."""
    try:
        validate_relative_path(path)
    except ValidationError as exc:
        raise GitError(f"Refusing to read {path!r}: {exc.messages[0]}") from exc
    if "\n" in path:
        raise GitError(f"Refusing to read {path!r}: a path with a line break.")
    shas = sorted({_checked_sha(sha) for sha in shas})
    if not shas:
        return {}
    answers = _batch(mirror_path(repository), [f"{sha}:{path}" for sha in shas], "--batch")
    # A directory or a submodule of that name is not the file.
    return {sha: content.decode("utf-8", "replace") if kind == "blob" else None
            for sha, (kind, _, content) in zip(shas, answers)}


def _batch(mirror, requests, mode):
    """Answers of `git cat-file <mode>` to each request line: (type, sha, content) — ("", "", b"") when missing."""
    status, stdout, stderr = _execute(mirror, ["cat-file", mode], timeout=LOCAL_TIMEOUT,
                                      stdin="".join(f"{request}\n" for request in requests))
    if status != 0:
        raise GitError(f"Cannot read objects of the mirror {mirror.name}: {_first_line(stderr) or f'status {status}'}")
    answers, position = [], 0
    for _ in requests:
        end = stdout.index(b"\n", position)
        header = stdout[position:end].decode("utf-8", "replace")
        position = end + 1
        fields = header.rsplit(" ", 2)
        if len(fields) != 3 or not fields[2].isdigit():  # "<request> missing", "<request> ambiguous"
            answers.append(("", "", b""))
            continue
        sha, kind, size = fields[0], fields[1], int(fields[2])
        content = b""
        if mode == "--batch":
            content = stdout[position:position + size]
            position += size + 1  # the content is followed by a newline
        answers.append((kind, sha, content))
    return answers


def materialise(repository, commit_sha, destination):
    """Write the files of `commit_sha` into the existing empty directory `destination`.

    `git archive` piped into tar: one pass, modes (the executable bit) kept, no index or worktree
    metadata left in the mirror. A worker on another machine may not have the commit yet: then the archive
    fails at once, writing nothing, and the commit is fetched (asking first would cost every run a git
    process of its own)."""
    _checked_sha(commit_sha)
    try:
        _archive_into(repository, commit_sha, destination)
        return
    except GitError:
        if has_commit(repository, commit_sha):
            raise  # the commit is here: something else went wrong
    sync_mirror(repository)
    if not has_commit(repository, commit_sha):
        raise GitError(f"Commit {commit_sha[:10]} is no longer in repository {display_url(repository.url)}.")
    _archive_into(repository, commit_sha, destination)


def _archive_into(repository, commit_sha, destination):
    mirror = mirror_path(repository)
    if not mirror.is_dir():
        raise GitError(f"There is no mirror of repository {repository.name} on this machine yet.")
    archive = _git(mirror).execute(
        _command(mirror, ["archive", "--format=tar", commit_sha]), as_process=True, env=_environment()
    )
    try:
        tar = subprocess.run(
            ["tar", "-x", "-f", "-", "-C", str(destination), "--no-same-owner"],
            stdin=archive.proc.stdout, capture_output=True, timeout=LOCAL_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        archive.proc.kill()
        raise GitError(f"Writing the files of commit {commit_sha[:10]} took longer than {LOCAL_TIMEOUT} s.") from exc
    finally:
        archive.proc.stdout.close()
        archive_status = archive.proc.wait(timeout=LOCAL_TIMEOUT)
        archive_error = archive.proc.stderr.read().decode("utf-8", "replace")
        archive.proc.stderr.close()
    if archive_status != 0 or tar.returncode != 0:
        reason = _first_line(archive_error) or _first_line(tar.stderr.decode("utf-8", "replace"))
        raise GitError(f"Cannot write the files of commit {commit_sha[:10]}: {reason}")


# --- comparing two commits (what a change request shows) ----------------------------------------------

# The tree of no files: "compare with nothing" for a first deployment. git knows it without storing it.
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_DIFF_OPTIONS = ["--no-color", "--no-ext-diff", "--no-textconv"]  # never run a user's configured diff tools


@dataclass(frozen=True)
class FileChange:
    path: str
    added: int | None  # None for a binary file
    removed: int | None
    old_path: str = ""  # the name before, when git saw a rename


def ensure_commits(repository, *shas):
    """Fetch once when the mirror lacks one of these commits; GitError when the remote lacks it too."""
    for sha in shas:
        _checked_sha(sha)
    if all(has_commit(repository, sha) for sha in shas):
        return
    sync_mirror(repository)
    for sha in shas:
        if not has_commit(repository, sha):
            raise GitError(f"Commit {sha[:10]} is no longer in repository {display_url(repository.url)}.")


def is_ancestor(repository, ancestor_sha, descendant_sha):
    """True when `ancestor_sha` is in the history of `descendant_sha` (a commit is its own ancestor)."""
    args = ["merge-base", "--is-ancestor", _checked_sha(ancestor_sha), _checked_sha(descendant_sha)]
    status, _, stderr = _execute(mirror_path(repository), args, timeout=LOCAL_TIMEOUT)
    if status in (0, 1):
        return status == 0
    reason = _first_line(stderr) or f"git exited with status {status}"
    raise GitError(f"Cannot compare commits {ancestor_sha[:10]} and {descendant_sha[:10]}: {reason}")


def log_range(repository, from_sha, to_sha, limit):
    """Commits in the history of `to_sha` and not of `from_sha`, newest first, at most `limit`.

    All parents are followed (a merged branch's commits are part of the change). With `from_sha`
    None, the history of `to_sha` itself."""
    return _log(repository, _range(from_sha, to_sha), "-n", str(int(limit)))


def count_commits(repository, from_sha, to_sha):
    """How many commits `log_range` would list without a limit."""
    output = _run(mirror_path(repository), ["rev-list", "--count", *_range(from_sha, to_sha), "--"],
                  timeout=LOCAL_TIMEOUT, failure=f"Cannot count the commits up to {to_sha[:10]}")
    return int(output)


def author_emails(repository, from_sha, to_sha):
    """The distinct author e-mails, lower-cased and sorted, of all the commits `log_range` would list."""
    output = _run(mirror_path(repository), ["log", "--format=%ae", *_range(from_sha, to_sha), "--"],
                  timeout=LOCAL_TIMEOUT, failure=f"Cannot read the authors of the commits up to {to_sha[:10]}")
    return sorted({line.strip().lower() for line in output.splitlines() if line.strip()})


def commit_emails(repository, from_sha, to_sha, limit=None):
    """The distinct author and committer e-mails, lower-cased and sorted, of the commits `log_range` would
    list (the newest `limit` of them when given): whoever committed a commit had a hand in it too."""
    options = ["-n", str(int(limit))] if limit is not None else []
    output = _run(mirror_path(repository), ["log", *options, "--format=%ae%n%ce", *_range(from_sha, to_sha), "--"],
                  timeout=LOCAL_TIMEOUT, failure=f"Cannot read who wrote the commits up to {to_sha[:10]}")
    return sorted({line.strip().lower() for line in output.splitlines() if line.strip()})


def numstat(repository, from_sha, to_sha):
    """The files that differ from `from_sha` to `to_sha`, with lines added and removed, as FileChanges.

    With `from_sha` None every file of `to_sha` counts as added."""
    base = _checked_sha(from_sha) if from_sha else EMPTY_TREE
    args = ["diff", "--numstat", "-z", "-M", *_DIFF_OPTIONS, base, _checked_sha(to_sha), "--"]
    output = _run(mirror_path(repository), args, timeout=LOCAL_TIMEOUT, strip=False,
                  failure=f"Cannot compare commit {to_sha[:10]} with {base[:10]}")
    # Records are "added<TAB>removed<TAB>path<NUL>"; a rename leaves the path empty and
    # follows with "old<NUL>new<NUL>". Binary files count "-" lines.
    fields, changes, index = output.split("\0"), [], 0
    while index < len(fields):
        record = fields[index]
        index += 1
        if not record:
            continue
        added, removed, path = record.split("\t", 2)
        old_path = ""
        if not path:
            old_path, path = fields[index], fields[index + 1]
            index += 2
        changes.append(FileChange(path=path, old_path=old_path, added=None if added == "-" else int(added),
                                  removed=None if removed == "-" else int(removed)))
    return changes


def file_diff(repository, from_sha, to_sha, path):
    """The unified diff of one file from `from_sha` (None: from nothing) to `to_sha`; "" when it did not change."""
    base = _checked_sha(from_sha) if from_sha else EMPTY_TREE
    _checked_sha(to_sha)
    try:
        validate_relative_path(path)
    except ValidationError as exc:
        raise GitError(f"Refusing to compare {path!r}: {exc.messages[0]}") from exc
    # ":(literal)" so that a path is never read as pathspec magic.
    args = ["diff", *_DIFF_OPTIONS, "--no-renames", base, to_sha, "--", f":(literal){path}"]
    return _run(mirror_path(repository), args, timeout=LOCAL_TIMEOUT, strip=False,
                failure=f"Cannot compare {path} between {base[:10]} and {to_sha[:10]}")


# --- plumbing ----------------------------------------------------------------------------------------


def _environment():
    environment = {
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody will type
        "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    }
    if "GIT_SSH" not in os.environ:  # an admin's own ssh wrapper wins; otherwise ssh never prompts nor hangs
        keep_alive = max(1, _idle_timeout() // 3)
        environment["GIT_SSH_COMMAND"] = (
            os.environ.get("GIT_SSH_COMMAND", "ssh") + f" -o BatchMode=yes -o ConnectTimeout={CONNECT_TIMEOUT}"
            f" -o ServerAliveInterval={keep_alive} -o ServerAliveCountMax=3"
        )
    return environment


def _network_options(url):
    """Idle limit for http(s): give up when fewer than 1,000 bytes/s arrive for the idle timeout
    (that covers a server that accepts the connection and never answers)."""
    if url.lower().startswith(("http://", "https://")):
        return ["-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={_idle_timeout()}"]
    return []


def _git(mirror):
    return git.Git(str(mirror) if mirror.is_dir() else None)


def _command(mirror, args):
    return [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *_GIT_OPTIONS, f"--git-dir={mirror}", *args]


def _execute(mirror, args, *, timeout, stdin=None):
    """Run git; `stdin` (text) is handed over through a temporary file, so no pipe can fill and block."""
    with contextlib.ExitStack() as stack:
        istream = None
        if stdin is not None:
            istream = stack.enter_context(tempfile.TemporaryFile())
            istream.write(stdin.encode())
            istream.seek(0)
        try:
            return _git(mirror).execute(
                _command(mirror, args), with_extended_output=True, with_exceptions=False, istream=istream,
                kill_after_timeout=timeout, env=_environment(), stdout_as_string=False, strip_newline_in_stdout=False,
            )
        except git.GitCommandNotFound as exc:
            raise GitError("git is not installed on this machine.") from exc


def _run(mirror, args, *, timeout, failure, url="", strip=True, stdin=None):
    status, stdout, stderr = _execute(mirror, args, timeout=timeout, stdin=stdin)
    if status != 0:
        if stderr.startswith("Timeout:"):  # GitPython killed it after `timeout`
            reason = f"no answer within {timeout} s"
        else:
            reason = _first_line(stderr) or f"git exited with status {status}"
        raise GitError(_redact(f"{failure}: {reason}", url))
    text = stdout.decode("utf-8", "replace")
    return text.strip() if strip else text


def _log(repository, revisions, *options):
    mirror = mirror_path(repository)
    output = _run(mirror, ["log", "-z", *options, _LOG_FORMAT, *revisions, "--"], timeout=LOCAL_TIMEOUT,
                  failure=f"Cannot read commit {revisions[0][:10]} of repository {display_url(repository.url)}")
    return _parse_log(output)


def _parse_log(output):
    commits = []
    for record in filter(None, output.split("\0")):
        sha, name, email, date, message = record.split("\x1f", 4)
        commits.append(Commit(sha=sha, message=message.strip(), author_name=name, author_email=email,
                              committed_at=datetime.fromisoformat(date)))
    return commits


def _range(from_sha, to_sha):
    revisions = [_checked_sha(to_sha)]
    if from_sha:
        revisions.append("^" + _checked_sha(from_sha))
    return revisions


def _ensure_mirror(repository):
    """Create the bare mirror if absent: built aside and renamed, so a half-made one is never seen."""
    mirror = mirror_path(repository)
    if mirror.is_dir():
        return mirror
    mirror.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{mirror.name}-", dir=mirror.parent))
    try:
        # An empty template: no sample hooks, nothing of the machine's git templates.
        _run(building, ["init", "--quiet", "--bare", "--template="], timeout=LOCAL_TIMEOUT,
             failure=f"Cannot create the mirror at {mirror}")
        (building / "info").mkdir(exist_ok=True)
        (building / "info" / "attributes").write_text(_MIRROR_ATTRIBUTES)
        try:
            building.rename(mirror)
        except OSError:
            if not mirror.is_dir():  # otherwise another process made it first, which is as good
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return mirror


@contextmanager
def _locked(mirror):
    """One fetch per mirror at a time on this machine (the poller and a worker may both want one)."""
    with open(mirror.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _checked_url(repository):
    """Validate again at the last moment: the database may hold a row that bypassed the form."""
    url = repository.url
    try:
        validate_repository_url(url)
    except ValidationError as exc:
        raise GitError(f"Refusing repository {repository.name}: {exc.messages[0]}") from exc
    # ssh would read a host starting with '-' as an option (CVE-2017-1000117).
    if "://" in url:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError as exc:
            raise GitError(f"Refusing repository {repository.name}: {exc}.") from exc
    else:
        host = "" if url.startswith("/") else url.split("@", 1)[-1]
    if host.startswith("-"):
        raise GitError(f"Refusing repository {repository.name}: its host name starts with '-'.")
    return url


def _checked_sha(sha):
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise GitError(f"{sha!r} is not a full commit sha.")
    return sha


def _first_line(stderr):
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    for line in stderr.splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(fatal|error): ", "", line)
    return ""


def _redact(text, url):
    """Never show credentials embedded in a URL: a token often stands where the user name would."""
    if "://" in url:
        try:
            parts = urlsplit(url)
            userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        except ValueError:
            return text  # not a URL urllib can read; _checked_url refuses it before git runs
        if userinfo and parts.scheme.lower() in ("http", "https"):
            text = text.replace(userinfo + "@", "***@")
            for secret in (parts.username, parts.password):
                if secret:
                    text = text.replace(secret, "***")
    return text
