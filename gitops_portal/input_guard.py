"""Text the database cannot hold is bad input: refused at the edge of every request, with a 400 that names the field.

PostgreSQL's text refuses U+0000 (NUL), and a lone surrogate (U+D800–U+DFFF, which JSON's "\\ud800" escape
produces) cannot be encoded as UTF-8 at all; either one, used as a filter or stored, ended in a 500 page. So one
check, here, before any view: the path, the headers, the query string's names and values, a form's names and
values, and every key and string of a JSON body. The API answers in its own shape (`{"error", "detail", "field"}`),
pages with a 400 page that names the field; nothing has changed by then.

Not a concern here: invalid UTF-8 in a query string or a form (Django decodes it to U+FFFD, which is text) or in
a path (kept percent-encoded); a JSON body that does not parse (the API refuses it itself). The raw body stays
readable: the signed webhook checks its signature over the very bytes read here."""

import json
import re
from collections import deque

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse

from api.errors import json_error

# Code points PostgreSQL's text (UTF-8) cannot hold.
_REFUSED = re.compile("[\x00\ud800-\udfff]")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_SHOWN_LENGTH = 100


class RefusedText(Exception):
    def __init__(self, field, where, char):
        """`field`: the name a program may act on; `where`: the same in words ("The query parameter 'status'")."""
        super().__init__(where)
        self.field, self.where, self.char = field, where, char

    @property
    def detail(self):
        if self.char == "\x00":
            what = "a NUL character (U+0000)"
        else:
            what = f"a lone surrogate (U+{ord(self.char):04X}), half of a UTF-16 pair"
        return f"{self.where} contains {what}, which is not text the portal can store or search for. Send it without."


def shown(text):
    """`text` as it may be quoted back: refused code points escaped (\\u0000), at most 100 characters."""
    text = _REFUSED.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    return text if len(text) <= _SHOWN_LENGTH else text[:_SHOWN_LENGTH] + "…"


def check_text(text, field, where):
    match = _REFUSED.search(text)
    if match:
        raise RefusedText(field, where, match.group())


class InputGuardMiddleware:
    """Answers 400 to a request that carries text the database cannot hold; passes every other one on."""

    def __init__(self, get_response):
        self.get_response = get_response
        self._api_prefix = None

    def __call__(self, request):
        try:
            inspect(request)
        except RefusedText as refused:
            return self.refuse(request, refused)
        return self.get_response(request)

    def refuse(self, request, refused):
        if self._api_prefix is None:
            self._api_prefix = reverse("api:api-root")
        if request.path.startswith(self._api_prefix):
            return json_error(400, "invalid_characters", refused.detail, field=refused.field)
        if refused.field.startswith("header "):
            # The page would read the session and the user, and a cookie is a header: say it in plain words.
            return _plain(refused.detail)
        return render(request, "bad_input.html", {"refused": refused}, status=400)


def inspect(request):
    """Raise RefusedText for the first field of `request` that holds text the database cannot."""
    check_text(request.path, "path", "The path of the address")
    for name, value in request.headers.items():
        check_text(value, f"header {name}", f"The header {name}")
    _check_fields(request.GET, "query parameter")
    if request.method in ("GET", "HEAD", "OPTIONS") or not _body_is_readable(request):
        return
    if request.content_type in _FORM_TYPES:
        request.body  # noqa: B018 -- read first, so that views may still read the raw body after the form is parsed
        _check_fields(request.POST, "form field")
        for name, upload in request.FILES.items():
            check_text(upload.name or "", shown(name), f"The name of the file sent as {shown(name)!r}")
    elif request.content_type == "application/json" or request.content_type.endswith("+json"):
        try:
            document = json.loads(request.body)
        except (ValueError, RecursionError):
            return  # not JSON: the view refuses it in its own words
        _check_json(document)


def _check_fields(querydict, kind):
    for name, values in querydict.lists():
        check_text(name, shown(name), f"The name of the {kind} {shown(name)!r}")
        for value in values:
            check_text(value, name, f"The {kind} {name!r}")


def _check_json(document):
    """Every key and string of a parsed JSON document, named by its path (`reason`, `steps[2].name`), without
    recursion: a deeply nested document costs a loop, not the stack."""
    pending = deque([("", document)])
    while pending:
        path, value = pending.popleft()
        if isinstance(value, str):
            check_text(value, path or "body", f"The JSON field {path!r}" if path else "The JSON body")
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{key}" if path else key
                check_text(key, shown(name), f"The name of the JSON field {shown(name)!r}")
                pending.append((name, item))
        elif isinstance(value, list):
            pending.extend((f"{path}[{index}]", item) for index, item in enumerate(value))


def _body_is_readable(request):
    """Whether Django would read this body into memory: a larger one is refused by Django itself when a view
    reads it (or, for the webhook, by its own limit first), so the guard leaves it alone."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return length > 0 and (limit is None or length <= limit)


def _plain(detail):
    return HttpResponse(detail, status=400, content_type="text/plain; charset=utf-8")
