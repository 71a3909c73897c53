"""What the release page says about its tag: where it points now and every move the poller saw, as rows."""

from dataclasses import dataclass

from pipelines.models import TagMove


@dataclass
class TagMoveRow:
    move: TagMove
    from_url: str  # a link to the commit on the git host, "" when the host is unknown or there was none
    to_url: str


@dataclass
class TagHistory:
    state: str  # "moved", "deleted", "back" or "" (never moved)
    rows: list  # TagMoveRow, oldest first


def tag_history(release):
    """One query: the release's moves. Its current state comes from the row itself (kept by record_tag_seen_at)."""
    repository = release.repository
    rows = [
        TagMoveRow(move=move, from_url=repository.commit_url(move.from_sha) if move.from_sha else "",
                   to_url=repository.commit_url(move.to_sha) if move.to_sha else "")
        for move in release.tag_moves.order_by("seen_at", "id")
    ]
    if release.tag_deleted:
        state = "deleted"
    elif release.tag_moved_to:
        state = "moved"
    elif rows:
        state = "back"
    else:
        state = ""
    return TagHistory(state=state, rows=rows)
