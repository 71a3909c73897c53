"""Run the whole portal from one command: the embedded Redis, the web server, the workers and the scheduler.

    python manage.py runportal [--host 127.0.0.1] [--port 8000] [--workers 2]

Without REDIS_URL in the environment the embedded Redis is started first, on the socket that the default
REDIS_URL names (in a 0700 directory, with a generated password: see pipelines/embedded.py), and held until
the end. Each child runs in its own process group (so Ctrl-C reaches only
this command, which then stops the children in order).

A worker or the scheduler that dies is started again, after a delay that doubles with each death within
CRASH_LOOP_SECONDS; the web server goes on serving meanwhile. The runs a dead worker held are failed with how
it died ("signal 11 (SIGSEGV)"), once their steps are gone (pipelines/dead_workers.py). A child that crash-loops
(more than CRASH_LOOP_RESTARTS restarts within CRASH_LOOP_SECONDS), or a web server that dies, stops the
portal with status 1: restarting would only hide the failure."""

import collections
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections
from django.utils import timezone

from pipelines import dead_workers, embedded
from pipelines.reconciler import SUPERVISOR_ENV

# How long children get to finish after SIGTERM before they and everything they started are killed.
GRACE_SECONDS = 10
READY_TIMEOUT_SECONDS = 60
POLL_SECONDS = 0.2
# Restarts of a dead worker or scheduler: the first after RESTART_FIRST_DELAY, doubling with each death of
# the same child within CRASH_LOOP_SECONDS; more than CRASH_LOOP_RESTARTS of them in that time is a crash loop.
RESTART_FIRST_DELAY = 0.25
RESTART_MAX_DELAY = 30
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_SECONDS = 60
# How long this command tries to fail a dead worker's runs itself; after that the reconciler does (its lease).
DEAD_RUNS_SECONDS = 60


def _die_with_parent():
    """Runs in each child before exec: on Linux, the child gets SIGTERM if this command is killed outright."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


class Child:
    def __init__(self, name, args, label, *, restarts=True):
        self.name, self.args, self.label, self.process = name, args, label, None
        self.restarts = restarts  # False: its death stops the portal
        self.deaths = collections.deque()  # monotonic times, within CRASH_LOOP_SECONDS
        self.restart_at = None  # monotonic time of the next start of a dead child
        self.started_at = None  # when it started, to match the runs it claimed

    def start(self, env):
        self.restart_at = None
        self.started_at = timezone.now()
        self.process = subprocess.Popen(
            self.args,
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the terminal's Ctrl-C does not reach it
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    @property
    def pid(self):
        return self.process.pid

    def running(self):
        return self.process is not None and self.process.poll() is None

    def descendants(self):
        # Only while the child is unreaped: its pid cannot have been reused by an unrelated process.
        if not self.running():
            return []
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Command(BaseCommand):
    help = "Run the web server, the workers and the scheduler (and the embedded Redis without REDIS_URL) until Ctrl-C."
    requires_migrations_checks = True

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="Address to bind (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)), help="Port (default 8000).")
        parser.add_argument("--workers", type=int, default=2, help="rq workers for the git, deploy and checks queues (default 2).")
        parser.add_argument("--threads", type=int, default=4, help="Threads of the web server (default 4).")

    def handle(self, *args, host, port, workers, threads, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        self.stop_requested = 0
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._request_stop)
        self._check_port_free(host, port)
        redis_server = self._start_embedded_redis() if not os.environ.get("REDIS_URL") else None
        children = self._children(host, port, workers, threads)
        self.dead_runners = []  # (pid, start time, return code, monotonic deadline) of dead workers
        self.dead_runner_errors = set()
        failure = None
        try:
            env = self.env = self._child_environment(self._served_url(host, port))
            for child in children:
                if not self.stop_requested:
                    child.start(env)
                    self.stdout.write(f"Started {child.name} (pid {child.pid}): {child.label}")
            failure = self._wait_until_ready(children, host, port)
            if failure is None and not self.stop_requested:
                self._announce(host, port)
                failure = self._supervise(children)
        finally:
            self._stop(children)
            if redis_server is not None:
                embedded.stop(redis_server)
        if failure:
            raise CommandError(f"{failure} The portal was stopped.")
        self.stdout.write("The portal has stopped.")

    # --- starting -------------------------------------------------------------------------------------

    def _children(self, host, port, workers, threads):
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        web = [
            sys.executable, "-m", "gunicorn", "gitops_portal.wsgi",
            "--bind", f"{host}:{port}", "--workers", "1", "--threads", str(max(2, threads)),
            "--graceful-timeout", "5", "--timeout", "60", "--error-logfile", "-", "--no-control-socket",
        ]
        return [
            Child("web", web, f"gunicorn on {host}:{port}", restarts=False),
            # -v 0: rq logs only warnings and failed jobs; progress is on the portal's pages.
            *[Child(f"worker-{n}", [*manage, "rqworker", *queues, "-v", "0"], f"manage.py rqworker {' '.join(queues)}")
              for n, queues in enumerate(worker_queues(workers), start=1)],
            Child("scheduler", [*manage, "pollrepos", "--loop"], "manage.py pollrepos --loop"),
        ]

    def _start_embedded_redis(self):
        data_dir = settings.GITOPS_DATA_DIR
        socket_path = embedded.socket_path_of(settings.REDIS_URL)
        if socket_path is None:
            raise CommandError(f"REDIS_URL is not set, yet the settings name {settings.REDIS_URL}; expected a unix:// URL.")
        # One embedded portal per data directory: a second one would take over the first one's Redis.
        self.lock = open(data_dir / "runportal.lock", "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(f"Another runportal is already running with the data directory {data_dir}.") from None
        try:
            server = embedded.start(data_dir, socket_path)
        except embedded.EmbeddedRedisError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Embedded Redis listening on {socket_path} only, with the password in {embedded.password_file(data_dir)} "
            f"(data in {embedded.redis_dir(data_dir)})."
        )
        return server

    def _check_port_free(self, host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise CommandError(f"Cannot listen on {host}:{port} ({exc.strerror}); choose another with --port.") from None

    @staticmethod
    def _served_url(host, port):
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"

    def _child_environment(self, served_url):
        env = dict(os.environ)
        # Links in mail and in the admin name the address served here, unless the operator chose one
        # (behind a proxy the outside URL differs from the bound one).
        if not env.get("GITOPS_BASE_URL"):
            env["GITOPS_BASE_URL"] = served_url.rstrip("/")
        # The children must agree with this process even when it was started with --settings or another cwd.
        env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        # The scheduler's reconciler leaves a dead worker's runs to this process, which learns how it died.
        env[SUPERVISOR_ENV] = str(os.getpid())
        env["GITOPS_DATA_DIR"] = str(settings.GITOPS_DATA_DIR)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _wait_until_ready(self, children, host, port):
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        while not self.stop_requested:
            failure = self._dead_child(children)
            if failure:
                return failure
            try:
                with socket.create_connection((connect_host, port), timeout=1):
                    return None
            except OSError:
                pass
            if time.monotonic() > deadline:
                return f"The web server did not accept connections on {host}:{port} within {READY_TIMEOUT_SECONDS} s."
            time.sleep(POLL_SECONDS)
        return None

    def _announce(self, host, port):
        url = self._served_url(host, port)
        self.stdout.write(self.style.SUCCESS(f"GitOps Portal is running at {url}"))
        password_file = settings.GITOPS_DATA_DIR / "admin-password.txt"
        try:
            admin = get_user_model().objects.filter(username="admin", is_superuser=True).exists()
        except DatabaseError:
            admin = False  # not migrated: check_migrations said so above
        finally:
            connections.close_all()
        if admin and password_file.exists():
            password = password_file.read_text().strip()
            self.stdout.write(f"Sign in at {url} as admin / {password}  (initial password, kept in {password_file})")
        else:
            self.stdout.write(f"Sign in at {url} with a superuser account (create one with `manage.py ensureadmin`).")
        self.stdout.write("Press Ctrl-C to stop.")
        self.stdout.flush()

    # --- running --------------------------------------------------------------------------------------

    def _request_stop(self, signum, frame):
        # Only a flag: writing output here could re-enter a write the main loop is in the middle of.
        self.stop_requested += 1

    def _dead_child(self, children):
        """Reap and restart (when due) the children that died; the reason to stop the portal, or None."""
        now = time.monotonic()
        for child in children:
            if child.process is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at and not self.stop_requested:
                    child.start(self.env)
                    self.stdout.write(f"Restarted {child.name} (pid {child.pid}): {child.label}")
                    self.stdout.flush()
                continue
            code = child.process.poll()
            if code is None:
                continue
            how = dead_workers.how_it_ended(code)
            if child.name.startswith("worker-"):
                self.dead_runners.append((child.pid, child.started_at, code, now + DEAD_RUNS_SECONDS))
            if not child.restarts:
                return f"The {child.name} process (pid {child.pid}) exited unexpectedly with {how}."
            child.deaths.append(now)
            while child.deaths and child.deaths[0] < now - CRASH_LOOP_SECONDS:
                child.deaths.popleft()
            if len(child.deaths) > CRASH_LOOP_RESTARTS:
                return (f"The {child.name} process crash-looped: it died {len(child.deaths)} times within "
                        f"{CRASH_LOOP_SECONDS} s, the last time (pid {child.pid}) with {how}.")
            delay = min(RESTART_MAX_DELAY, RESTART_FIRST_DELAY * 2 ** (len(child.deaths) - 1))
            child.restart_at = now + delay
            self.stderr.write(f"The {child.name} process (pid {child.pid}) died with {how}; restarting it in "
                              f"{delay:g} s (death {len(child.deaths)} within {CRASH_LOOP_SECONDS} s).")
            self.stderr.flush()
        return None

    def _fail_runs_of_dead_workers(self):
        """Fail the runs that dead workers held, saying how each died, once their steps are gone."""
        if not self.dead_runners:
            return
        left = []
        for pid, started_at, code, deadline in self.dead_runners:
            try:
                done = dead_workers.fail_runs_of(pid, started_at=started_at, returncode=code)
            except Exception as exc:  # the database away: try again, the reconciler is the fallback
                if pid not in self.dead_runner_errors:  # said once, not at every poll
                    self.dead_runner_errors.add(pid)
                    self.stderr.write(f"Could not fail the runs of the dead worker {pid} yet ({exc}); retrying.")
                connections.close_all()
                done = False
            if not done and time.monotonic() < deadline:
                left.append((pid, started_at, code, deadline))
        self.dead_runners = left
        if not left:
            connections.close_all()  # no connection held while nothing is to be done

    def _supervise(self, children):
        while not self.stop_requested:
            failure = self._dead_child(children)
            if failure:
                self.stderr.write(failure)
                return failure
            self._fail_runs_of_dead_workers()
            time.sleep(POLL_SECONDS)
        return None

    # --- stopping -------------------------------------------------------------------------------------

    def _stop(self, children):
        """SIGTERM every child's process group, then SIGKILL whatever is left of them and of all they started.

        Work-horses of rq and deploy steps run in process groups of their own, so they are found by walking
        the process tree while it is still intact."""
        started = [child for child in children if child.process is not None]
        if self.stop_requested:
            self.stdout.write("Stopping the portal (Ctrl-C again to stop at once)...")
            self.stdout.flush()
        leftovers = {p.pid: p for child in started for p in child.descendants()}
        for child in started:
            if child.running():
                child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while any(child.running() for child in started) and time.monotonic() < deadline and self.stop_requested < 2:
            leftovers.update({p.pid: p for child in started for p in child.descendants()})
            time.sleep(0.1)
        leftovers.update({p.pid: p for child in started for p in child.descendants()})
        for child in started:
            if child.running():
                self.stderr.write(f"The {child.name} process did not stop in time; killing it.")
            child.signal_group(signal.SIGKILL)
        for process in leftovers.values():
            try:
                process.kill()  # psutil checks the pid was not reused
            except psutil.NoSuchProcess:
                pass
        for child in started:
            child.process.wait()
        psutil.wait_procs(list(leftovers.values()), timeout=2)  # killed; their new parent reaps them


def worker_queues(workers):
    """The queues of each worker, in the order each takes them. Every worker takes drift checks last; with more
    than one worker, the last takes none, so a deployment never waits behind drift checks (a `terraform plan` of
    minutes) on every worker at once."""
    queues = ["git", "deploy", "checks"]
    return [queues + (["drift"] if n < workers or workers == 1 else []) for n in range(1, workers + 1)]

