"""A build's outputs and artifacts: read what its steps left, keep it, hand it to every later step.

Outputs: `key=value` lines the build's steps write to $GITOPS_OUTPUTS (a file outside the checkout). Keys
are variable names, values one line; anything else fails the build quoting the line. Later steps get each
as GITOPS_OUTPUT_<KEY upper-cased>.

Artifacts: the files left in $GITOPS_ARTIFACTS/ are packed into one tar.gz and saved through Django's
storage API, `storages["gitops_artifacts"]` (settings.STORAGES: a folder by default, any django-storages
backend in production), so a worker on another machine finds them. Every deployment of the release unpacks
them into a fresh $GITOPS_ARTIFACTS/ before its first step, after checking the archive's sha256 and that no
member could land outside that folder (absolute paths, `..`, links out, devices are refused)."""

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages

STORAGE_ALIAS = "gitops_artifacts"
OUTPUT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_OUTPUTS_BYTES = 64 * 1024
MAX_OUTPUT_VALUE_LENGTH = 4096
_CHUNK = 1024 * 1024


class ArtifactError(Exception):
    """What a build left cannot be kept, or a stored archive cannot be used; the message says why."""


@dataclass(frozen=True)
class StoredArtifact:
    name: str  # in the storage
    size: int  # bytes of the tar.gz
    sha256: str


def artifact_storage():
    return storages[STORAGE_ALIAS]


# --- outputs -------------------------------------------------------------------------------------------


def read_outputs(path):
    """{key: value} from the file at `path` (missing or empty: {}); ArtifactError quoting a bad line."""
    path = Path(path)
    if not os.path.lexists(path):
        return {}
    # Not followed: a step could leave a link to a file only the worker may read, to have it published.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise ArtifactError("$GITOPS_OUTPUTS is not a plain file any more; outputs must be written into it.") from None
    with os.fdopen(descriptor, "rb") as outputs:
        if not stat.S_ISREG(os.fstat(outputs.fileno()).st_mode):
            raise ArtifactError("$GITOPS_OUTPUTS is not a plain file any more; outputs must be written into it.")
        content = outputs.read(MAX_OUTPUTS_BYTES + 1)
    if len(content) > MAX_OUTPUTS_BYTES:
        raise ArtifactError(f"$GITOPS_OUTPUTS holds more than {MAX_OUTPUTS_BYTES} bytes; outputs may hold at most "
                            f"{MAX_OUTPUTS_BYTES}.")
    text = content.decode("utf-8", errors="replace")
    outputs = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, equals, value = line.partition("=")
        if not equals or not OUTPUT_KEY.match(key):
            raise ArtifactError(f"Line {number} of $GITOPS_OUTPUTS is not key=value with a key of letters, digits "
                                f"and underscores: {line[:200]!r}")
        if len(value) > MAX_OUTPUT_VALUE_LENGTH:
            raise ArtifactError(f"Output {key!r} (line {number} of $GITOPS_OUTPUTS) is longer than "
                                f"{MAX_OUTPUT_VALUE_LENGTH} characters.")
        upper = key.upper()
        clash = next((k for k in outputs if k.upper() == upper and k != key), None)
        if clash is not None:
            raise ArtifactError(f"Outputs {clash!r} and {key!r} (line {number} of $GITOPS_OUTPUTS) would both be "
                                f"GITOPS_OUTPUT_{upper}.")
        outputs[key] = value.replace("\x00", "")
    return outputs


def output_variables(outputs):
    """The environment variables later steps get for `outputs`."""
    return {f"GITOPS_OUTPUT_{key.upper()}": value for key, value in (outputs or {}).items()}


# --- packing and storing -------------------------------------------------------------------------------


def pack_and_store(directory, *, prefix):
    """Pack the files in `directory` into a tar.gz saved in the artifact storage under `prefix`/; None when
    the directory is empty. ArtifactError when they exceed GITOPS_ARTIFACT_MAX_BYTES or a link leads out."""
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        raise ArtifactError("$GITOPS_ARTIFACTS is not a folder any more; artifacts must be left inside it.")
    limit = settings.GITOPS_ARTIFACT_MAX_BYTES
    members, total = _members_to_pack(directory, settings.GITOPS_ARTIFACT_MAX_MEMBERS)
    if not members:
        return None
    if total > limit:
        raise ArtifactError(f"The artifacts are {total} bytes; the limit (GITOPS_ARTIFACT_MAX_BYTES) is {limit} bytes.")
    with tempfile.TemporaryFile() as packed:
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            for path in members:
                tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
        size = packed.tell()
        if size > limit:
            raise ArtifactError(f"The packed artifacts are {size} bytes; the limit (GITOPS_ARTIFACT_MAX_BYTES) is "
                                f"{limit} bytes.")
        packed.seek(0)
        digest = _sha256(packed)
        packed.seek(0)
        name = artifact_storage().save(f"{prefix}/artifacts-{digest[:16]}.tar.gz", File(packed))
    return StoredArtifact(name=name, size=size, sha256=digest)


def _members_to_pack(directory, most):
    """The paths to pack and their size in bytes. Capped by count as well as by bytes: millions of empty files
    are small but cost the worker (and, unpacked, the next run) memory and time in proportion to their number;
    the walk stops at the first one over the cap."""
    members, total = [], 0
    root = os.path.realpath(directory)
    for current, subdirectories, files in os.walk(directory):
        subdirectories.sort()
        for name in sorted(subdirectories) + sorted(files):
            path = Path(current) / name
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink():
                target = os.path.realpath(path)
                if target != root and not target.startswith(root + os.sep):
                    raise ArtifactError(f"$GITOPS_ARTIFACTS/{relative} is a link to {os.readlink(path)!r}, outside "
                                        f"$GITOPS_ARTIFACTS; artifacts may only link to each other.")
            elif not (path.is_file() or path.is_dir()):
                raise ArtifactError(f"$GITOPS_ARTIFACTS/{relative} is neither a file, a folder nor a link.")
            elif path.is_file():
                total += path.stat().st_size
            members.append(path)
            if len(members) > most:
                raise ArtifactError(f"$GITOPS_ARTIFACTS holds more than {most} files and folders; the limit "
                                    f"(GITOPS_ARTIFACT_MAX_MEMBERS) is {most}.")
    return members, total


def _sha256(fileobj):
    digest = hashlib.sha256()
    while chunk := fileobj.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


# --- unpacking -----------------------------------------------------------------------------------------


def unpack(name, destination, *, sha256):
    """Unpack the stored archive `name` into the existing, empty folder `destination`, after checking that it
    is the archive the build stored (its sha256) and that every member stays inside `destination`."""
    destination = Path(destination)
    with tempfile.TemporaryFile() as local:
        try:
            with artifact_storage().open(name, "rb") as stored:
                shutil.copyfileobj(stored, local, _CHUNK)
        except FileNotFoundError:
            raise ArtifactError(f"The stored artifacts ({name}) are missing from the artifact storage.") from None
        local.seek(0)
        found = _sha256(local)
        if found != sha256:
            raise ArtifactError(f"The stored artifacts ({name}) have sha256 {found}, not {sha256} as stored; "
                                f"they were altered and are not used.")
        local.seek(0)
        with tarfile.open(fileobj=local, mode="r:gz") as tar:
            members = _read_members(tar, settings.GITOPS_ARTIFACT_MAX_MEMBERS)
            check_members(members)
            # The "data" filter refuses the same again (and strips modes that do not belong in a checkout).
            tar.extractall(destination, members=members, filter="data")


def _read_members(tar, most):
    """The archive's members, read one header at a time, so that an archive of millions stops at the cap
    instead of being listed whole in memory first."""
    members = []
    for member in tar:
        members.append(member)
        if len(members) > most:
            raise ArtifactError(f"The artifact archive holds more than {most} members; the limit "
                                f"(GITOPS_ARTIFACT_MAX_MEMBERS) is {most}. Nothing was unpacked.")
    return members


def check_members(members):
    """ArtifactError naming the first member that could write outside the folder it is unpacked into."""
    total = 0
    for member in members:
        path = PurePosixPath(member.name)
        if member.name.startswith("/") or path.is_absolute():
            raise ArtifactError(f"The artifact archive holds an absolute path, {member.name!r}; nothing was unpacked.")
        if ".." in path.parts:
            raise ArtifactError(f"The artifact archive holds a path leading out, {member.name!r}; nothing was unpacked.")
        if member.issym() or member.islnk():
            target = PurePosixPath(member.linkname)
            resolved = target if member.islnk() else path.parent / target
            if target.is_absolute() or _leaves(resolved):
                raise ArtifactError(f"The artifact archive holds a link out, {member.name!r} → {member.linkname!r}; "
                                    f"nothing was unpacked.")
        elif not (member.isfile() or member.isdir()):
            raise ArtifactError(f"The artifact archive holds {member.name!r}, which is neither a file, a folder nor "
                                f"a link; nothing was unpacked.")
        total += member.size
    if total > settings.GITOPS_ARTIFACT_MAX_BYTES:
        raise ArtifactError(f"The artifact archive unpacks to {total} bytes; the limit (GITOPS_ARTIFACT_MAX_BYTES) is "
                            f"{settings.GITOPS_ARTIFACT_MAX_BYTES} bytes.")


def _leaves(path):
    """Whether a relative path climbs above where it starts, once its `..` are taken into account."""
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False
