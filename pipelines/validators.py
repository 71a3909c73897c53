"""Validation of what admins type into repository fields. Nothing here reaches git unchecked."""

import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.][A-Za-z0-9.-]*:[^:]")
_ALLOWED_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")


def validate_repository_url(url):
    """Accept https, http, ssh, git, file URLs, scp-like `user@host:path` and absolute local paths.

    Refuses what git would read as an option (`-…`) and remote-helper transports such as `ext::`,
    which run arbitrary commands."""
    if not url or url != url.strip() or any(ord(c) < 32 for c in url):
        raise ValidationError("The URL must not be empty or contain spaces at its ends or control characters.")
    if url.startswith("-"):
        raise ValidationError("A repository URL may not start with '-': git would read it as an option.")
    if "::" in url.split("/", 1)[0] or url.lower().startswith(("ext:", "fd:")):
        raise ValidationError(
            "Remote-helper transports such as 'ext::' are refused: they can run commands on the portal's machine."
        )
    if url.lower().startswith(_ALLOWED_SCHEMES):
        try:
            host = urlsplit(url).hostname or ""
        except ValueError as exc:
            raise ValidationError(f"This URL is malformed: {exc}.") from exc
        if host.startswith("-"):
            raise ValidationError("A host name may not start with '-': ssh would read it as an option.")
        return
    if _SCP_LIKE.match(url) or url.startswith("/"):
        return
    raise ValidationError(
        "Use an https://, ssh://, git://, file:// URL, user@host:path, or an absolute local path."
    )


_REF_BAD = re.compile(r"(^[-/.])|(\.\.)|([\x00-\x20~^:?*\[\\\x7f])|(@\{)|(/$)|(\.lock$)|(//)|(\.$)")


def validate_git_ref_name(name):
    if not name or _REF_BAD.search(name):
        raise ValidationError(f"{name!r} is not a valid branch name.")


_BRACKET_EXPRESSION = re.compile(r"\[!?\]?[^\]]*\]")


def validate_tag_pattern(pattern):
    if not pattern or pattern.startswith("-") or any(c in pattern for c in " \t\n~^:\\"):
        raise ValidationError("A tag pattern is a glob such as 'v*' and may not start with '-' or contain spaces.")
    # fnmatch takes an unclosed '[' literally, so 'v[0-9' would quietly match nothing that was meant.
    if "[" in _BRACKET_EXPRESSION.sub("", pattern):
        raise ValidationError(f"{pattern!r} opens a '[' that no ']' closes; write e.g. 'v[0-9]*'.")


def validate_relative_path(path):
    if not path or path.startswith(("/", "-")) or ".." in path.split("/"):
        raise ValidationError("Give a path inside the repository, such as '.gitops.yml'.")


def validate_branch_patterns(value):
    """Space-separated globs of branch names (`feature/* fix-*`); blank means every branch but the release one."""
    for pattern in value.split():
        if pattern.startswith("-") or any(c in pattern for c in "~^:\\") or ".." in pattern:
            raise ValidationError(f"{pattern!r} is not a branch glob: use names and * such as 'feature/*', "
                                  f"separated by spaces, none starting with '-'.")
