"""Landlock, the kernel's unprivileged file-system sandbox, through its three system calls: what seals a
step where bubblewrap is missing (pipelines/sandbox.py decides which paths a step may use).

Our own small module over ctypes rather than PyPI's `landlock` binding: that is a pre-release (1.0.0.dev5
when this was written), and the interface is three system calls and two structs that the kernel keeps
stable as part of its ABI. What the portal needs of it is one thing, "these hierarchies, with these rights,
and nothing else", so a dependency would add more to review and pin than the code it saves.

System call numbers: 444, 445 and 446 on x86_64 and aarch64 alike (calls added since Linux 5.1 have one
number on every architecture but alpha, which the portal does not run on).

Rights are allow-lists by path hierarchy: a rule on a directory grants its rights to everything beneath it,
and nothing takes them back below. To keep a directory out of reach inside an allowed one, allow its
siblings instead of its parent (pipelines/sandbox.py does)."""

import ctypes
import os
import sys

CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
# The file-system rights each ABI version knows: 1 up to MAKE_SYM, 2 adds REFER, 3 TRUNCATE, 5 IOCTL_DEV.
_KNOWN_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_KNOWN_SINCE_5 = (1 << 16) - 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

# What a rule on a file (not a directory) may grant.
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
# Everything but making device nodes: a step that could make a block device could read the disk beneath
# any rule.
WRITE = _KNOWN_SINCE_5 & ~(MAKE_CHAR | MAKE_BLOCK)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall, _prctl = _libc.syscall, _libc.prctl
    _syscall.restype = ctypes.c_long
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
else:  # pragma: no cover - the portal's workers run on Linux
    _syscall = _prctl = None


def _call(number, *arguments):
    result = _syscall(ctypes.c_long(number), *arguments)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def abi_version():
    """The Landlock ABI version this kernel offers; OSError when it offers none (ENOSYS: too old;
    EOPNOTSUPP: built in but not enabled at boot; EPERM: a seccomp filter forbids it)."""
    if _syscall is None:
        raise OSError(0, "Landlock exists only on Linux")
    return _call(CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))


class Ruleset:
    """A ruleset built in the parent (`allow`), applied in the child by `restrict_self` (a preexec_fn:
    two system calls, nothing else), then closed in the parent."""

    def __init__(self, abi):
        self.known = _KNOWN_BY_ABI.get(abi, _KNOWN_SINCE_5)
        # Signals and abstract unix sockets scoped too where the kernel can (ABI 6): a step can then neither
        # signal the worker nor reach a daemon's abstract socket.
        scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
        attr = _RulesetAttr(handled_access_fs=self.known, handled_access_net=0, scoped=scoped)
        self.fd = _call(CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))

    def allow(self, path, rights):
        """Grant `rights` on `path` and beneath it (only FILE_RIGHTS when it is not a directory)."""
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            if not os.path.isdir(path):
                rights &= FILE_RIGHTS
            rule = _PathBeneath(allowed_access=rights & self.known, parent_fd=fd)
            _call(ADD_RULE, ctypes.c_int(self.fd), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0))
        finally:
            os.close(fd)

    def restrict_self(self):
        """In the child, before exec: no new privileges (set-uid programs no longer raise them; Landlock
        requires it of an unprivileged caller), then the ruleset, for this process and all it starts."""
        if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        _call(RESTRICT_SELF, ctypes.c_int(self.fd), ctypes.c_uint32(0))

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
