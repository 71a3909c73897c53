"""How a deploy step's command line is wrapped before it starts (see pipelines/runner.py).

Two layers, outermost first:

1. A supervisor, GNU coreutils `timeout --kill-after=5 <N>s`. The runner starts it in a session of its own
   with a parent-death signal (SIGTERM when the runner dies: the worker, or its work-horse), so whatever happens to the runner
   the supervisor forwards SIGTERM to the step's whole process group and SIGKILLs it 5 s later; and it
   enforces the step's `timeout` on its own, even when no runner is left to do it.
2. Where bubblewrap works (probed once per account, then cached), a private PID namespace and a private
   view of the portal's directories: `/proc` shows only the step's own processes (not the worker's
   `/proc/<pid>/environ`, which holds SECRET_KEY, DATABASE_URL and REDIS_URL), the data, work and mirror
   directories are empty tmpfs except the deployment's own checkout, and when the namespace's first
   process dies the kernel kills every process the step started, even one that left its process group.
   Where bubblewrap is missing or fails its probe, steps run without it; that is logged once.
"""

import logging
import os
import shutil
import stat
import subprocess
import threading

from django.conf import settings

logger = logging.getLogger(__name__)

KILL_AFTER_SECONDS = 5
# A step running as root keeps its other powers, but not the two that would undo the sandbox: mounting
# (to uncover the real /proc under the private one) and ptrace access to other processes (to read the
# environment of a non-dumpable worker).
_ROOT_CAPS_DROPPED = ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE")

_probed = {}
_probe_lock = threading.Lock()


def wrap(argv, *, account=None, workdir=None, timeout=None, shared=()):
    """The command that runs `argv` as a step: under the supervisor when a `timeout` is given, inside
    bubblewrap where it works. `shared`: further folders of this run the step uses besides its checkout
    (a build's $GITOPS_ARTIFACTS/, say), bound back in like the checkout."""
    command = list(argv)
    bwrap = bubblewrap_for(account)
    if bwrap is not None:
        command = [*bwrap, *_hidden_directories(workdir, account, shared), "--", *command]
    if timeout is not None:
        supervisor = shutil.which("timeout") or "timeout"
        command = [supervisor, f"--kill-after={KILL_AFTER_SECONDS}", f"{int(timeout)}s", *command]
    return command


def bubblewrap_for(account=None):
    """The bwrap command line prefix for steps run as `account` (None: as the worker), or None where
    bubblewrap is missing or does not work for that account on this machine."""
    uid = account.pw_uid if account is not None else os.geteuid()
    with _probe_lock:
        if uid not in _probed:
            _probed[uid] = _probe(account, uid)
        return _probed[uid]


def _base_command(binary, uid):
    command = [binary, "--bind", "/", "/", "--unshare-pid", "--die-with-parent", "--proc", "/proc", "--dev", "/dev"]
    if uid == 0:
        for capability in _ROOT_CAPS_DROPPED:
            command += ["--cap-drop", capability]
    return command


def _probe(account, uid):
    binary = shutil.which("bwrap")
    if binary is None:
        logger.warning("bubblewrap (bwrap) is not installed: deploy steps run without a private PID namespace "
                       "and can see the worker's processes and the data directory (file permissions still apply).")
        return None
    command = _base_command(binary, uid)
    as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    try:
        result = subprocess.run([*command, "--", "true"], capture_output=True, text=True, timeout=15,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, **as_account)
    except (OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    else:
        if result.returncode == 0:
            return command
        problem = result.stderr.strip() or f"exit status {result.returncode}"
    logger.warning("bubblewrap does not work here for uid %s (%s): deploy steps run without a private PID "
                   "namespace and can see the worker's processes and the data directory (file permissions "
                   "still apply).", uid, problem)
    return None


def _hidden_directories(workdir, account=None, shared=()):
    """tmpfs over the portal's directories, then the deployment's own checkout bound back in. A directory
    the step's account cannot even reach is closed already (and bwrap, unprivileged, could not mount there)."""
    hidden = []
    for directory in (settings.GITOPS_DATA_DIR, settings.GITOPS_WORK_DIR, settings.GITOPS_MIRROR_DIR):
        path = os.path.realpath(directory)
        if not os.path.isdir(path) or path == os.sep or not _reachable(path, account):
            continue
        if not any(path == h or path.startswith(h + os.sep) for h in hidden):
            hidden = [h for h in hidden if not h.startswith(path + os.sep)] + [path]
    arguments = []
    for path in hidden:
        arguments += ["--tmpfs", path]
    for path in map(os.path.realpath, shared):
        if any(path.startswith(h + os.sep) for h in hidden):
            arguments += ["--bind", path, path]
    if workdir is not None:
        workdir = os.path.realpath(workdir)
        if any(workdir.startswith(h + os.sep) for h in hidden):
            arguments += ["--bind", workdir, workdir]
        arguments += ["--chdir", workdir]
    return arguments


def _reachable(path, account):
    """Whether `account` (None: the worker itself) may traverse every directory down to `path`."""
    if account is None or account.pw_uid == 0:
        return True
    current = os.sep
    for part in [p for p in path.split(os.sep) if p]:
        info = os.stat(current)
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == account.pw_gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
        current = os.path.join(current, part)
    return True
