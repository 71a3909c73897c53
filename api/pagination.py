"""Cursor pagination, newest first: `?cursor=` is opaque (the id of the last row seen), so pages stay
stable while rows are added, and every page costs one indexed query however deep it is."""

import base64
from typing import Generic, TypeVar

from ninja import Schema

from api.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
T = TypeVar("T")


class Page(Schema, Generic[T]):
    items: list[T]
    next: str | None  # pass as ?cursor= for the next page; null on the last


def _encode(pk):
    return base64.urlsafe_b64encode(f"id:{pk}".encode()).decode().rstrip("=")


def _decode(cursor):
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if kind != "id":
            raise ValueError(kind)
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
