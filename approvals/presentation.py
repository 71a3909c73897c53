"""What a change contains, as the change-request page shows it: the summary stored on the request (JSON,
computed from git when it opened: approvals/changes.py) turned into rows for the template. Summaries stored
by older versions lack some keys; each has a default that reads them as they were meant."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils.dateparse import parse_datetime

from pipelines.models import Deployment


@dataclass
class Commit:
    sha: str
    short_sha: str
    subject: str
    author_name: str
    author_email: str
    committed_at: datetime | None
    url: str


@dataclass
class FileChange:
    path: str
    old_path: str  # set on a rename
    added: int | None  # None for a binary file
    removed: int | None


@dataclass
class EarlierResult:
    environment: str
    deployment_id: int | None
    status: str
    finished_at: datetime | None
    ran: timedelta | None
    running_for: timedelta | None  # until the summary was computed, or until replaced_by replaced it
    replaced_by: str

    @property
    def succeeded(self):
        return self.status == Deployment.Status.SUCCEEDED

    @property
    def status_label(self):
        return Deployment.Status(self.status).label if self.status in Deployment.Status.values else self.status


@dataclass
class Change:
    """The summary JSON (see approvals/changes.py) made ready for the page."""

    recorded: bool
    direction: str  # first, forward, rollback or diverged (by git ancestry)
    added: list  # the commits the candidate brings (a first deployment: its latest history)
    added_count: int
    rolled_back: list  # the commits that leave the environment (a rollback, or one side of diverged lines)
    rolled_back_count: int
    first_deployment: bool
    files: list
    file_count: int
    lines_added: int
    lines_removed: int
    pipeline_path: str
    pipeline_diff: list  # (kind, line) with kind in meta, hunk, add, del, context
    is_rollback: bool  # commits leave the environment
    from_release: dict | None  # {"version", "sha"}
    to_release: dict | None
    earlier_results: list
    computed_at: datetime | None
    truncated: bool
    error: str

    @property
    def diverged(self):
        return self.direction == "diverged"

    @classmethod
    def from_summary(cls, summary):
        summary = summary or {}
        commits = [_commit(item) for item in summary.get("commits") or []]
        count = summary.get("commit_count") or len(commits)
        first, is_rollback = bool(summary.get("first_deployment")), bool(summary.get("is_rollback"))
        # Summaries stored before "direction" was recorded: is_rollback alone meant an ancestor.
        direction = summary.get("direction") or ("rollback" if is_rollback else "first" if first else "forward")
        if is_rollback:
            # "commits" are those that leave; a diverged change lists what it brings apart.
            added = [_commit(item) for item in summary.get("added_commits") or []]
            added_count = summary.get("added_count") or len(added)
            rolled_back, rolled_back_count = commits, count
        else:
            added, added_count, rolled_back, rolled_back_count = commits, count, [], 0
        files = [
            FileChange(item.get("path", ""), item.get("old_path") or "", item.get("added"), item.get("removed"))
            for item in summary.get("files") or []
        ]
        totals = summary.get("totals") or {}
        return cls(
            recorded=bool(summary),
            direction=direction,
            added=added,
            added_count=added_count,
            rolled_back=rolled_back,
            rolled_back_count=rolled_back_count,
            first_deployment=first,
            files=files,
            file_count=totals.get("files", len(files)),
            lines_added=totals.get("added", sum(f.added or 0 for f in files)),
            lines_removed=totals.get("removed", sum(f.removed or 0 for f in files)),
            pipeline_path=summary.get("pipeline_path") or "",
            pipeline_diff=_diff_lines(summary.get("pipeline_diff") or ""),
            is_rollback=is_rollback,
            from_release=summary.get("from"),
            to_release=summary.get("to"),
            earlier_results=[_earlier_result(item) for item in summary.get("earlier_results") or []],
            computed_at=_datetime(summary.get("computed_at")),
            truncated=bool(summary.get("truncated")),
            error=summary.get("error") or "",
        )


def _datetime(value):
    return parse_datetime(value) if isinstance(value, str) else None


def _seconds(value):
    return timedelta(seconds=value) if isinstance(value, (int, float)) else None


def _commit(item):
    url = item.get("url") or ""
    sha = item.get("sha", "")
    return Commit(
        sha=sha,
        short_sha=item.get("short_sha") or sha[:10],
        subject=item.get("subject", ""),
        author_name=item.get("author_name", ""),
        author_email=item.get("author_email", ""),
        committed_at=_datetime(item.get("committed_at")),
        # Only web links: the summary is data, not markup.
        url=url if url.startswith(("https://", "http://")) else "",
    )


def _earlier_result(item):
    return EarlierResult(
        environment=item.get("environment", ""),
        deployment_id=item.get("deployment_id"),
        status=item.get("status") or Deployment.Status.SUCCEEDED,
        finished_at=_datetime(item.get("finished_at")),
        ran=_seconds(item.get("duration_seconds")),
        running_for=_seconds(item.get("running_for_seconds")),
        replaced_by=item.get("replaced_by") or "",
    )


def _diff_lines(diff):
    lines = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---", "diff ", "index ")):
            kind = "meta"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "context"
        lines.append((kind, line))
    return lines
