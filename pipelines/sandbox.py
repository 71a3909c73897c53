"""How a step's command line is wrapped and sealed before it starts (see pipelines/runs/steps.py).

Two layers, outermost first:

1. A supervisor, GNU coreutils `timeout --kill-after=5 <N>s`. The runner starts it in a session of its own
   with a parent-death signal (SIGTERM when the runner dies: the worker, or its work-horse), so whatever happens to the runner
   the supervisor forwards SIGTERM to the step's whole process group and SIGKILLs it 5 s later; and it
   enforces the step's `timeout` on its own, even when no runner is left to do it.
2. A seal, which keeps the portal's keys, database and Redis password out of the step's reach in every mode,
   the default one (no step account) included. settings.GITOPS_STEP_SANDBOX chooses it: `auto` (the first
   that works here, in this order), `bubblewrap`, `landlock` or `none`.
   - bubblewrap, where it works (probed once per account, then cached): a private PID namespace and a
     private view of the portal's directories: `/proc` shows only the step's own processes (not the
     worker's `/proc/<pid>/environ`, which holds SECRET_KEY, DATABASE_URL and REDIS_URL), the data, work,
     mirror and artifact directories are empty tmpfs except the run's own folders, and when the
     namespace's first process dies the kernel kills every process the step started, even one that left
     its process group.
   - Landlock (pipelines/landlock.py), where bubblewrap is missing: the kernel's unprivileged file-system
     sandbox, applied in the step's child before exec and inherited by all it starts. The step may read
     and run the system (/usr, /etc, /proc …) and write its own folders, /tmp and its HOME, and nothing of
     the portal's (see `_landlock_ruleset`); it may not ptrace or read /proc/<pid>/environ of any process
     outside its sandbox, nor signal one (ABI 6). Where the worker is root, the step loses the powers
     that get around a path-based sandbox (`_ROOT_POWERS_DROPPED`).
   With neither, steps are refused (StepsUnsealed, which says why and what to do) unless the admin set
   GITOPS_ALLOW_UNSEALED_STEPS=1, for a throwaway demo; then each step's log and every page say so.

Every process a step starts dies with its run, even one that left its process group and session (`setsid`
and a double fork), which bubblewrap's PID namespace alone catches: where the machine gives this process a
cgroup v2 it may write (`run_cgroup`), each run's steps run in a cgroup of its own, emptied with
`cgroup.kill` when the step ends, and by runportal at once when the worker dies (pipelines/dead_workers.py);
elsewhere the runner is the child subreaper of what its steps leave behind and kills it
(pipelines/runs/steps.py, `_kill_leftovers`).
"""

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat
import subprocess
import threading
import time

from django.conf import settings

from pipelines import landlock

logger = logging.getLogger(__name__)

KILL_AFTER_SECONDS = 5
# A step running as root keeps its other powers, but not the two that would undo the sandbox: mounting
# (to uncover the real /proc under the private one) and ptrace access to other processes (to read the
# environment of a non-dumpable worker).
_ROOT_CAPS_DROPPED = ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE")

BUBBLEWRAP, LANDLOCK = "bubblewrap", "landlock"

_probed = {}
_bubblewrap_problems = {}
_landlock_probed = []  # [(abi or None, problem)] once probed
_announced = set()
_probe_lock = threading.Lock()


class StepsUnsealed(RuntimeError):
    """No seal works for steps here and unsealed steps are not allowed: the run fails with this reason."""


def seal_for(account=None):
    """The seal of steps run as `account` (None: as the worker) on this machine: BUBBLEWRAP, LANDLOCK, or
    None where none works or the admin chose none (settings.GITOPS_STEP_SANDBOX). Said once in the log."""
    choice = settings.GITOPS_STEP_SANDBOX
    seal = None
    if choice in ("auto", BUBBLEWRAP) and bubblewrap_for(account) is not None:
        seal = BUBBLEWRAP
    elif choice in ("auto", LANDLOCK) and landlock_abi() is not None:
        seal = LANDLOCK
    _announce(account, choice, seal)
    return seal


def refusal(account=None):
    """Why steps run as `account` may not start here, or None when they may: sealed, or unsealed steps allowed."""
    if seal_for(account) is not None or settings.GITOPS_ALLOW_UNSEALED_STEPS:
        return None
    choice = settings.GITOPS_STEP_SANDBOX
    if choice == "none":
        why = "GITOPS_STEP_SANDBOX=none turns the step sandbox off"
    else:
        uid = account.pw_uid if account is not None else os.geteuid()
        reasons = []
        if choice in ("auto", BUBBLEWRAP):
            reasons.append(f"bubblewrap does not work here ({_bubblewrap_problems.get(uid, 'not probed')})")
        if choice in ("auto", LANDLOCK):
            reasons.append(f"Landlock is unavailable ({_landlock_probed[0][1] if _landlock_probed else 'not probed'})")
        why = " and ".join(reasons)
    return (f"Steps are not run unsealed: {why}, and an unsealed step could read the portal's keys, its database "
            f"and every environment's secrets. Install bubblewrap or run the worker on a kernel with Landlock; "
            f"only for a throwaway demo, set GITOPS_ALLOW_UNSEALED_STEPS=1.")


@contextlib.contextmanager
def sealed(argv, *, account=None, workdir=None, timeout=None, shared=(), environment=None, preexec=None):
    """Yields (command, preexec_fn, seal) that start `argv` as a sealed step (see wrap for the arguments):
    bubblewrap is in the command, a Landlock ruleset is built here, applied by the preexec_fn in the child
    after `preexec`, and closed when the block ends (once the step has started). `environment`: the step's,
    whose HOME it may write and whose PATH it may run. Raises StepsUnsealed where steps may not start."""
    reason = refusal(account)
    if reason is not None:
        raise StepsUnsealed(reason)
    seal = seal_for(account)
    command = wrap(argv, account=account, workdir=workdir, timeout=timeout, shared=shared)
    if seal != LANDLOCK:
        yield command, preexec, seal
        return
    ruleset = _landlock_ruleset(workdir, shared, environment or {})
    as_root = (account.pw_uid if account is not None else os.geteuid()) == 0

    def seal_the_child():
        if preexec is not None:
            preexec()
        if as_root:
            _drop_root_powers()
        ruleset.restrict_self()

    try:
        yield command, seal_the_child, seal
    finally:
        ruleset.close()


def wrap(argv, *, account=None, workdir=None, timeout=None, shared=()):
    """The command that runs `argv` as a step: under the supervisor when a `timeout` is given, inside
    bubblewrap where that is the seal (a Landlock seal is applied by `sealed`, in the child). `shared`:
    further folders of this run the step uses besides its checkout (a build's $GITOPS_ARTIFACTS/, say),
    bound back in like the checkout."""
    command = list(argv)
    if seal_for(account) == BUBBLEWRAP:
        command = [*bubblewrap_for(account), *_hidden_directories(workdir, account, shared), "--", *command]
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
        _bubblewrap_problems[uid] = "bwrap is not installed"
        logger.warning("bubblewrap (bwrap) is not installed: steps run without a private PID namespace; they are "
                       "sealed by Landlock instead where the kernel offers it.")
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
    _bubblewrap_problems[uid] = problem
    logger.warning("bubblewrap does not work here for uid %s (%s): steps run without a private PID namespace; "
                   "they are sealed by Landlock instead where the kernel offers it.", uid, problem)
    return None


def _hidden_directories(workdir, account=None, shared=()):
    """tmpfs over the portal's directories, then the deployment's own checkout bound back in. A directory
    the step's account cannot even reach is closed already (and bwrap, unprivileged, could not mount there)."""
    hidden = []
    for directory in _portal_directories():
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


def _portal_directories():
    """The portal's own folders, which no step may see beyond its own run's: the data directory (keys,
    the embedded database, Redis and its password), the work directory (other runs' checkouts), the git
    mirrors and the stored artifacts. The last three may lie elsewhere."""
    return (settings.GITOPS_DATA_DIR, settings.GITOPS_WORK_DIR, settings.GITOPS_MIRROR_DIR,
            settings.GITOPS_ARTIFACT_DIR)


# --- Landlock -----------------------------------------------------------------------------------------------

# Read and run: the system. Write: the scratch places every tool expects. A few devices: /dev as a whole
# would let a root step read the disks beneath any rule.
_SYSTEM_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/sys",
                "/run", "/var", "/nix", "/snap")
_SYSTEM_WRITE = ("/tmp", "/var/tmp", "/dev/shm")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx", "/dev/pts")
# Where the worker is root, the step's root loses what gets around a path-based sandbox: reading by file
# handle (CAP_DAC_READ_SEARCH), raw memory and /proc/kcore (CAP_SYS_RAWIO), kernel modules, BPF and perf,
# device nodes, mounts and ptrace. As for bubblewrap's root steps, its other powers stay.
_ROOT_POWERS_DROPPED = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_PTRACE": 19,
                        "CAP_SYS_ADMIN": 21, "CAP_MKNOD": 27, "CAP_PERFMON": 38, "CAP_BPF": 39}
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
# Loaded now: a child between fork and exec must not load a library (the loader's lock may be held by a
# thread that did not follow it).
_libc = ctypes.CDLL(None, use_errno=True)


def landlock_abi():
    """The Landlock ABI version steps are sealed with here, or None where the kernel offers none or it
    does not work (probed once per process: a ruleset applied to `true` in a child)."""
    with _probe_lock:
        if not _landlock_probed:
            _landlock_probed.append(_probe_landlock())
        return _landlock_probed[0][0]


def _probe_landlock():
    try:
        abi = landlock.abi_version()
        ruleset = landlock.Ruleset(abi)
        try:
            ruleset.allow("/", landlock.READ)
            result = subprocess.run([shutil.which("true") or "/bin/true"], preexec_fn=ruleset.restrict_self,
                                    capture_output=True, timeout=15, env={"PATH": "/usr/bin:/bin"})
        finally:
            ruleset.close()
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("Landlock is unavailable here (%s)", exc)
        return None, str(exc)
    if result.returncode != 0:
        return None, f"a sealed `true` exited with status {result.returncode}"
    return abi, ""


def _announce(account, choice, seal):
    """Say once per account and choice which seal steps run under (the fallbacks' reasons are logged by the probes)."""
    key = (account.pw_uid if account is not None else None, choice, seal, settings.GITOPS_ALLOW_UNSEALED_STEPS)
    if key in _announced:
        return
    _announced.add(key)
    who = f"as {account.pw_name}" if account is not None else "as the worker's own user"
    if seal == LANDLOCK:
        logger.info("steps run %s, sealed by Landlock (ABI %s)", who, landlock_abi())
    elif seal == BUBBLEWRAP:
        logger.info("steps run %s, sealed by bubblewrap", who)
    elif settings.GITOPS_ALLOW_UNSEALED_STEPS:
        logger.warning("steps run %s UNSEALED (GITOPS_ALLOW_UNSEALED_STEPS=1): any step can read the portal's "
                       "keys, its database and every environment's secrets", who)
    else:
        logger.error("no sandbox works for steps here (GITOPS_STEP_SANDBOX=%s): steps are refused", choice)


def _landlock_ruleset(workdir, shared, environment):
    """The Landlock rules of one step: the system to read and run, scratch places and its HOME to write,
    its own folders (checkout, `shared`) to write, and none of the portal's (`_denied`), even where one lies
    inside an allowed directory (its siblings are allowed instead, one by one)."""
    ruleset = landlock.Ruleset(landlock_abi())
    try:
        denied = _denied()
        grant = lambda path, rights: _grant(ruleset, os.path.realpath(path), rights, denied)  # noqa: E731
        for path in _SYSTEM_READ:
            grant(path, landlock.READ)
        for directory in environment.get("PATH", "").split(os.pathsep):
            if os.path.isabs(directory):
                grant(directory, landlock.READ)
        home = os.path.realpath(environment.get("HOME") or os.sep)
        for path in (*_SYSTEM_WRITE, *([home] if home != os.sep else [])):  # HOME=/ would open everything
            grant(path, landlock.WRITE)
        grant("/dev", landlock.READ_DIR)
        for path in _DEVICES:
            grant(path, landlock.READ_FILE | landlock.WRITE_FILE | landlock.TRUNCATE | landlock.IOCTL_DEV)
        # The run's own folders lie in the work directory, which is denied: granted by name, the only way in.
        for path in (workdir, *shared):
            if path is not None:
                ruleset.allow(os.path.realpath(path), landlock.WRITE)
    except BaseException:
        ruleset.close()
        raise
    return ruleset


def _denied():
    """What no step may reach: the portal's folders, and a SQLite database wherever it lies (with its journals)."""
    denied = [os.path.realpath(directory) for directory in _portal_directories()]
    for database in settings.DATABASES.values():
        if database["ENGINE"].endswith("sqlite3") and str(database["NAME"]) != ":memory:":
            name = os.path.realpath(database["NAME"])
            denied += [name, f"{name}-wal", f"{name}-shm", f"{name}-journal"]
    return denied


def _within(path, directory):
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _grant(ruleset, path, rights, denied):
    """Allow `path` with `rights`, unless it is denied; where a denied path lies beneath it, allow its
    entries instead (recursively), so the denied one is the only one left out. A symbolic link is skipped:
    its target is judged where it lies."""
    if any(_within(path, d) for d in denied) or not os.path.lexists(path):
        return
    if not any(_within(d, path) for d in denied):
        try:
            ruleset.allow(path, rights)
        except OSError:
            pass  # unreadable or gone: it stays out of reach
        return
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        if not entry.is_symlink():
            _grant(ruleset, entry.path, rights, denied)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_root_powers():
    """In the child of a root worker, before exec: the capabilities of _ROOT_POWERS_DROPPED leave the bounding,
    ambient and inheritable sets, so the step's root (recomputed at exec) does not have them."""
    for number in _ROOT_POWERS_DROPPED.values():
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(number), 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")  # EINVAL: unknown to this kernel
    _libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for number in _ROOT_POWERS_DROPPED.values():
        data[number // 32].inheritable &= ~(1 << (number % 32))
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


# --- the run's cgroup ---------------------------------------------------------------------------------------

CGROUP_PREFIX = "gitops-run-"
_cgroup_probed = []  # [the cgroup v2 directory runs' cgroups are made in, or None] once probed


class RunCgroup:
    """The cgroup v2 of one run's steps: every process a step starts is in it, wherever it moves its process
    group or session, and `kill()` ends them all at once (cgroup.kill)."""

    def __init__(self, path):
        self.path = path

    def create(self):
        _remove_empty_cgroups_of_dead_runners(os.path.dirname(self.path))
        os.makedirs(self.path, exist_ok=True)
        return self

    def join(self):
        """In the step's child before exec (while it may still move itself: before it drops to the step's
        account): the child and all it will start belong to this cgroup."""
        fd = os.open(os.path.join(self.path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    def populated(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as procs:
                return bool(procs.read().strip())
        except FileNotFoundError:
            return False

    def kill(self, timeout=5.0):
        """SIGKILL every process in the cgroup and remove it once empty; True when it is gone."""
        if not os.path.isdir(self.path):
            return True
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as kill:
                kill.write("1")
        except FileNotFoundError:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)  # refused while a process is still in it (EBUSY)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    logger.warning("could not remove the step cgroup %s (%s)", self.path, exc)
                    return False
            time.sleep(0.02)


def _remove_empty_cgroups_of_dead_runners(base):
    """A runner killed while its step ran leaves its run's cgroup behind (emptied by its step's supervisor
    or by runportal); the kernel refuses to remove one that still holds a process."""
    try:
        names = [name for name in os.listdir(base) if name.startswith(CGROUP_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(CGROUP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.rmdir(os.path.join(base, name))
            except OSError:
                pass


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_cgroup(run, runner_pid=None):
    """The cgroup of the steps of `run` (a Deployment, a Build …), run by the runner `runner_pid` (by default
    this process), or None where this machine gives us no cgroup v2 to write."""
    base = cgroup_base()
    if base is None:
        return None
    name = f"{CGROUP_PREFIX}{runner_pid or os.getpid()}-{run._meta.model_name}-{run.pk}"
    return RunCgroup(os.path.join(base, name))


def cgroup_base():
    """The cgroup v2 directory of this process, where it may make cgroups for steps, or None (probed once)."""
    with _probe_lock:
        if not _cgroup_probed:
            _cgroup_probed.append(_probe_cgroup())
        return _cgroup_probed[0]


def _probe_cgroup():
    """Found from /proc/mounts and /proc/self/cgroup, never assumed: writable, with cgroup.kill (Linux 5.14),
    and a child really moved into a cgroup made there."""
    try:
        with open("/proc/mounts") as mounts:
            mount = next((fields[1] for fields in map(str.split, mounts) if len(fields) > 2 and fields[2] == "cgroup2"),
                         None)
        with open("/proc/self/cgroup") as groups:
            own = next((line.strip()[3:] for line in groups if line.startswith("0::")), None)
    except OSError:
        return None
    if mount is None or own is None:
        logger.info("no cgroup v2 here: what steps leave behind is found as the runner's orphans instead")
        return None
    base = os.path.join(mount, own.lstrip("/"))
    probe = RunCgroup(os.path.join(base, f"{CGROUP_PREFIX}probe-{os.getpid()}"))
    try:
        probe.create()
        if not os.path.exists(os.path.join(probe.path, "cgroup.kill")):
            raise OSError("it has no cgroup.kill (Linux before 5.14)")
        subprocess.run(["true"], preexec_fn=probe.join, check=True, timeout=15, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("steps get no cgroup of their own (%s: %s); what they leave behind is found as the runner's "
                    "orphans instead", base, exc)
        return None
    finally:
        probe.kill()
    return base
