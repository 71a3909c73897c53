"""A release's version as a string the database can sort: release lists are ordered and paged by ORDER BY.

The key follows `packaging.version.Version` ordering (epoch, release numbers with trailing zeros ignored,
then .devN < aN < bN < rcN < final < .postN). It is made of digits only, so every collation (PostgreSQL's
locale ones, SQLite's binary one) orders it the same way, byte by byte. Each field delimits itself (numbers
carry their length), so comparing two keys as strings compares the versions field by field.

A tag that packaging cannot read ("nightly-x", "release/2024") gets UNREADABLE, below every readable
version: listed newest first, such tags come after all the others, in the order they were detected (the
lists break ties by id). The local part (`+build`) is not in the key: such versions tie, and detection decides."""

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
