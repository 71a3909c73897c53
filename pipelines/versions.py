"""A release's version as a string the database can sort: release lists are ordered and paged by ORDER BY.

The key follows `packaging.version.Version` ordering (epoch, release numbers with trailing zeros ignored,
then .devN < aN < bN < rcN < final < .postN). It is made of digits only, so every collation (PostgreSQL's
locale ones, SQLite's binary one) orders it the same way, byte by byte. Each field delimits itself (numbers
carry their length), so comparing two keys as strings compares the versions field by field.

A tag that packaging cannot read ("nightly-x", "release/2024") gets UNREADABLE, below every readable
version: listed newest first, such tags come after all the others, in the order they were detected (the
lists break ties by id). The local part (`+build`) is not in the key: such versions tie, and detection decides.

This is the one version order: the pages, the API, the CLI and automatic promotion all use it (NEWEST_FIRST
in the database, `newest_first_key` in Python), so the release listed first is the one promoted."""

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

UNREADABLE = "0"
_READABLE = "1"
_MAX_DIGITS = 99  # a number's length is written with two digits


def sortable_version(version):
    """The sort key of a tag name: a string of digits, greater for a greater version."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return UNREADABLE
    try:
        return _READABLE + _number(parsed.epoch) + _release(parsed.release) + _suffixes(parsed)
    except _TooLong:
        return UNREADABLE


class _TooLong(ValueError):
    pass


def _number(n):
    digits = str(n)
    if len(digits) > _MAX_DIGITS:
        raise _TooLong(digits)
    return f"{len(digits):02d}{digits}"


def _release(numbers):
    numbers = list(numbers)
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()  # 1.9 and 1.9.0 are the same version
    # "1" before each number and "0" at the end: 1.2 (…0) sorts below 1.2.1 (…1…).
    return "".join("1" + _number(n) for n in numbers) + "0"


_PRE_PHASES = {"a": "1", "b": "2", "rc": "3"}


def _suffixes(parsed):
    if parsed.pre is not None:
        pre = _PRE_PHASES[parsed.pre[0]] + _number(parsed.pre[1])
    elif parsed.post is None and parsed.dev is not None:
        pre = "0"  # 1.0.dev1 comes before 1.0a1
    else:
        pre = "4"  # no pre-release: above every one
    post = "0" if parsed.post is None else "1" + _number(parsed.post)
    dev = "1" if parsed.dev is None else "0" + _number(parsed.dev)
    return pre + post + dev


# --- the order, in the database and in Python ------------------------------------------------------------

NEWEST_FIRST = ("-version_key", "-id")  # an index: release_version_order


def newest_first_key(release):
    """NEWEST_FIRST for saved Releases in Python: sort with reverse=True, or take max() for the newest."""
    return (release.version_key, release.pk)


def tags_in_version_order(tags):
    """Tag names oldest version first (the order a poll records them, so ids follow versions); tags that
    tie (no version, or `1.2` and `1.2.0`) by name, so that the order never depends on git's listing."""
    return sorted(tags, key=lambda tag: (sortable_version(tag), tag))


def late_tag_refusal(newer):
    """Why a poll did not promote a release it recorded: `newer`, a newer version, was recorded before it."""
    return f"{newer.version}, a newer version, was recorded before it: an older tag never deploys automatically"


# --- which versions a stage takes ------------------------------------------------------------------------


def readable_version(release):
    """The release's version as packaging reads it, or None: a tag that is no version, and every release
    of a repository in commits mode (a short sha; its key says so even when it reads as a number)."""
    if release.version_key == UNREADABLE:
        return None
    try:
        return Version(release.version)
    except InvalidVersion:
        return None


def constraint_error(text):
    """Why `text` is no PEP 440 version constraint, in words, or "" (it is one, or it is empty)."""
    try:
        SpecifierSet(text)
    except InvalidSpecifier:
        return (f"{text!r} is not a version constraint: write PEP 440 specifiers separated by commas, such as "
                f">=2,<3 or ~=1.4.")
    return ""


def rule_refusal(release, *, take_prereleases, constraint):
    """Why a stage with these rules does not take `release`, in words ("pre-release", "v1.4.0 is outside
    >=2,<3"), or "". A tag that is no version is no pre-release, and never meets a constraint."""
    version = readable_version(release)
    if not take_prereleases and version is not None and version.is_prerelease:
        return "pre-release"
    if constraint:
        if version is None:
            return f"{release.version} is not a version, so it cannot meet {constraint}"
        # The pre-release rule is the flag's: here the constraint alone decides (PEP 440 still keeps 3.0rc1 out of <3).
        if not SpecifierSet(constraint).contains(version, prereleases=True):
            return f"{release.version} is outside {constraint}"
    return ""
