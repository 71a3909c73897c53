"""Credentials never leave the portal in what people read: audit details, pages, exports, logs.

A URL such as `https://user:token@host/org/repo.git` is shown as `https://***@host/org/repo.git`. The
rule itself lives once, in `pipelines.git.display_url`; this module finds URLs inside free text and inside
JSON-like values (audit details) and passes each through it."""

import re

# Anything that looks like `scheme://...@...` up to whitespace or a quote: only such URLs can carry userinfo.
_URL_WITH_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]*@[^\s\"'<>]*")


def display_url(url):
    from pipelines.git import display_url as git_display_url  # git.py imports GitPython: only when needed

    return git_display_url(url)


def redact_text(text):
    """`text` with the credentials of every URL in it replaced by ***."""
    if not isinstance(text, str) or "@" not in text or "://" not in text:
        return text
    return _URL_WITH_USERINFO.sub(lambda match: _redact_url(match.group(0)), text)


def _redact_url(url):
    shown = display_url(url)
    if shown == url and url.lower().startswith(("http://", "https://")):
        # display_url leaves a URL that urllib cannot parse (a bad port, a stray bracket) as it is:
        # whatever stands before the host's @ is still taken for a credential.
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            shown = f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"
    return shown


def redact(value):
    """A JSON-like value (dicts, lists, strings) with every string passed through redact_text."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_text(key) if isinstance(key, str) else key: redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value
