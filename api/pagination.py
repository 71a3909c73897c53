"""Cursor pagination, newest first: `?cursor=` is opaque (the id of the last row seen, or for releases its
version key and id), so pages stay stable while rows are added, and every page costs one indexed query
however deep it is."""

import base64
from typing import Generic, TypeVar

from ninja import Schema

from api.errors import ApiError
from pipelines.versions import NEWEST_FIRST

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
T = TypeVar("T")


class Page(Schema, Generic[T]):
    items: list[T]
    next: str | None  # pass as ?cursor= for the next page; null on the last


def _encode(pk):
    return base64.urlsafe_b64encode(f"id:{pk}".encode()).decode().rstrip("=")


def _encode_version(release):
    return base64.urlsafe_b64encode(f"version:{release.version_key}:{release.pk}".encode()).decode().rstrip("=")


def _decode(cursor, kind="id"):
    try:
        found, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if found != kind:
            raise ValueError(found)
        if kind == "version":
            key, _, pk = value.partition(":")
            if key and not key.isdigit():  # the key is digits only (it may be empty on a row made by hand)
                raise ValueError(key)
            return key, int(pk)
        return int(value)
    except ValueError:
        raise ApiError(400, "invalid_cursor", "The cursor is not one this API gave out; start without one.") from None


def paginate(queryset, *, cursor, limit, serialize):
    limit = max(1, min(limit or DEFAULT_LIMIT, MAX_LIMIT))
    if cursor:
        queryset = queryset.filter(pk__lt=_decode(cursor))
    rows = list(queryset.order_by("-pk")[:limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [serialize(row) for row in rows], "next": _encode(rows[-1].pk) if more else None}


def paginate_releases(queryset, *, cursor, limit, serialize):
    """Releases in the one version order (pipelines/versions.py: newest version first, ties by id), as the
    pages list them; the cursor is the last row's (version key, id), the order's own keys, so a release
    recorded meanwhile lands where it belongs and no row is listed twice or left out."""
    limit = max(1, min(limit or DEFAULT_LIMIT, MAX_LIMIT))
    if cursor:
        key, pk = _decode(cursor, "version")
        # `<= key` is a range on the index (release_version_order), so a deep page starts where the cursor is;
        # only the rows that tie with it are then left out by id.
        queryset = queryset.filter(version_key__lte=key).exclude(version_key=key, pk__gte=pk)
    rows = list(queryset.order_by(*NEWEST_FIRST)[:limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [serialize(row) for row in rows], "next": _encode_version(rows[-1]) if more else None}
