"""`manage.py runportal` for real: subprocesses, a temporary data directory, the embedded SQLite and Redis, the
real web server, workers and scheduler. Waits are polls against a deadline, never fixed sleeps."""

import http.cookiejar
import os
import re
import signal
import socket
import stat
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings as django_settings

BASE_DIR = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 90


def portal_env(data_dir, **extra):
    """The environment of a developer's `make run`: no DATABASE_URL, no REDIS_URL, a data directory of its own."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(
        GITOPS_DATA_DIR=str(data_dir),
        SECRET_KEY="runportal-test-secret-key-" + "x" * 30,
        DJANGO_SETTINGS_MODULE="gitops_portal.settings",
        GITOPS_SCHEDULER_TICK="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(env, *args):
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def free_port():
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Portal:
    """A running `manage.py runportal`, its output in a file, and every process it was seen to start."""

    def __init__(self, env, data_dir, port, *args):
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}/"
        self.log = data_dir.parent / "runportal.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runportal", "--port", str(port), *args],
                cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.seen = {}

    def output(self):
        return self.log.read_text(errors="replace")

    def track(self):
        """Remember the processes of the portal now: its descendants and the embedded redis-server (a daemon)."""
        try:
            found = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        wanted = f"unixsocket:{self.data_dir / 'redis' / 'redis.sock'}"
        found += [p for p in psutil.process_iter(["cmdline"]) if wanted in " ".join(p.info["cmdline"] or [])]
        for process in found:
            if process.pid not in self.seen:
                try:
                    self.seen[process.pid] = (process, " ".join(process.cmdline()))
                except psutil.Error:
                    continue

    def seen_commands(self):
        return [command for _, command in self.seen.values()]

    def wait_for(self, what, condition):
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            self.track()
            result = condition()
            if result:
                return result
            if self.process.poll() is not None:
                pytest.fail(f"runportal exited ({self.process.returncode}) while waiting for {what}:\n{self.output()}")
            time.sleep(0.25)  # poll interval
        pytest.fail(f"no {what} within {DEADLINE_SECONDS} s; runportal said:\n{self.output()}")

    def leftovers(self):
        """Processes of the portal still alive, including any that carry its data directory in their environment."""
        deadline = time.monotonic() + 10  # killed processes may take a moment to go
        while (alive := {p.pid: p for p, _ in self.seen.values() if _running(p)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        for process in psutil.process_iter(["pid"]):
            try:
                if process.environ().get("GITOPS_DATA_DIR") == str(self.data_dir):
                    alive[process.pid] = process
            except psutil.Error:
                continue
        left = []
        for process in alive.values():
            try:
                if _running(process):
                    left.append(f"{process.pid} {' '.join(process.cmdline())}")
            except psutil.NoSuchProcess:
                continue
        return left

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for process, _ in list(self.seen.values()):
            try:
                process.kill()
            except psutil.Error:
                pass


def _running(process):
    """Alive and not a zombie (a zombie has exited and only waits for its new parent to reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def portal_dirs(tmp_path):
    # Short paths: the embedded Redis listens on a unix socket in the data directory (at most 107 bytes).
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return data_dir


@pytest.fixture
def start_portal():
    portals = []

    def start(env, data_dir, *args):
        portal = Portal(env, data_dir, free_port(), *args)
        portals.append(portal)
        return portal

    yield start
    for portal in portals:
        portal.kill()


def get(opener, url):
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.geturl(), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, url, ""
    except OSError:
        return None, url, ""


def staging_succeeded(data_dir):
    try:
        with closing(sqlite3.connect(data_dir / "portal.sqlite3", timeout=5)) as db:
            rows = db.execute(
                "SELECT r.version FROM pipelines_deployment d JOIN pipelines_environment e ON e.id = d.environment_id "
                "JOIN pipelines_release r ON r.id = d.release_id WHERE e.name = 'staging' AND d.status = 'succeeded'"
            ).fetchall()
    except sqlite3.OperationalError:  # busy for longer than the timeout
        return []
    return [version for (version,) in rows]


def repository_id(data_dir, name):
    with closing(sqlite3.connect(data_dir / "portal.sqlite3", timeout=5)) as db:
        return db.execute("SELECT id FROM pipelines_repository WHERE name = ?", (name,)).fetchone()[0]


def mail_link_in(environment):
    """The link a change-request mail carries, as settings compute it in a process with this environment."""
    code = ("from approvals.notifications import change_request_url; from approvals.models import ChangeRequest; "
            "print(change_request_url(ChangeRequest(pk=3)))")
    result = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c", code], cwd=BASE_DIR, env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sign_in(opener, base_url, password):
    status, _, page = get(opener, base_url + "login/")
    assert status == 200, f"the login page answered {status}"
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": "admin", "password": password, "csrfmiddlewaretoken": token, "next": "/"})
    request = urllib.request.Request(base_url + "login/", data=form.encode(), headers={"Referer": base_url + "login/"})
    with opener.open(request, timeout=10) as response:
        return response.status, response.geturl(), response.read().decode()


def test_make_run_starts_the_portal_deploys_the_demo_to_staging_and_stops_cleanly_on_ctrl_c(portal_dirs, start_portal):
    data_dir = portal_dirs
    env = portal_env(data_dir)
    manage(env, "migrate", "--noinput", "-v", "0")
    admin_output = manage(env, "ensureadmin")
    # Before runportal has chosen its address, no URL is named: the default port would be a wrong one.
    password = re.search(r"^Sign in as admin / (\S+) at the address the portal prints when it starts\.$", admin_output,
                         re.MULTILINE).group(1)
    assert "8000" not in admin_output
    assert "Demo created" in manage(env, "seeddemo")

    portal = start_portal(env, data_dir)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    portal.wait_for("answer from /healthz", lambda: get(opener, portal.url + "healthz")[0] == 200)
    output = portal.output()
    assert f"GitOps Portal is running at {portal.url}" in output
    assert f"Sign in at {portal.url} as admin / {password}" in output
    assert (data_dir / "redis" / "redis.sock").is_socket()
    # Sealed: the socket in a directory only the portal's account enters, and a password required.
    assert stat.S_IMODE((data_dir / "redis").stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "redis" / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o711
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(unix_socket_path=str(data_dir / "redis" / "redis.sock")).ping()

    versions = portal.wait_for("succeeded staging deployment of the demo", lambda: staging_succeeded(data_dir))
    assert set(versions) <= {"v1.0.0", "v1.1.0"}

    status, landed, dashboard = sign_in(opener, portal.url, password)
    assert status == 200 and urllib.parse.urlparse(landed).path == "/", f"signing in landed on {landed}"
    # What runs in staging shows as its version (a plain success needs no badge on the dashboard).
    assert "shop" in dashboard and any(f">{version}<" in dashboard for version in versions), dashboard[-3000:]
    # The links test: started with --port and no GITOPS_BASE_URL, the admin's webhook help and the mail
    # (sent by the workers, with the environment runportal gave them) name the served port.
    assert "GITOPS_BASE_URL" not in env
    status, _, repository_page = get(opener, portal.url + f"admin/pipelines/repository/{repository_id(data_dir, 'shop')}/change/")
    assert status == 200
    assert f"http://127.0.0.1:{portal.port}/hooks/shop" in repository_page and ":8000/" not in repository_page
    worker = next(process for process, command in portal.seen.values()
                  if "rqworker" in command and process.ppid() == portal.process.pid)
    assert worker.environ()["GITOPS_BASE_URL"] == f"http://127.0.0.1:{portal.port}"
    assert mail_link_in(worker.environ()) == f"http://127.0.0.1:{portal.port}/approvals/3/"

    portal.track()
    commands = portal.seen_commands()
    for part in ("gunicorn", "rqworker", "pollrepos", "redis-server"):
        assert any(part in command for command in commands), f"no {part} among the portal's processes: {commands}"
    portal.process.send_signal(signal.SIGINT)
    try:
        returncode = portal.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runportal did not stop within 60 s of Ctrl-C:\n{portal.output()}")

    assert returncode == 0, portal.output()
    assert "The portal has stopped." in portal.output()
    assert portal.leftovers() == []
    assert not (data_dir / "redis" / "redis.sock").exists()
    assert (data_dir / "redis" / "redis.rdb").stat().st_size > 0  # the embedded Redis saved its data on the way out


def test_when_the_web_server_dies_the_portal_stops_the_others_and_fails(portal_dirs, start_portal):
    """A dead worker is started again (tests/faults/test_supervision.py); without its web server the portal
    is no portal, so that one stops everything."""
    data_dir = portal_dirs
    # With REDIS_URL set, the portal uses that Redis (here the test suite's own) and starts none of its own.
    env = portal_env(data_dir, REDIS_URL=django_settings.REDIS_URL)
    manage(env, "migrate", "--noinput", "-v", "0")
    portal = start_portal(env, data_dir)
    portal.wait_for("web server", lambda: get(urllib.request.build_opener(), portal.url + "healthz")[0] == 200)

    def web_server():
        return [process for process, command in portal.seen.values()
                if "gunicorn" in command and process.ppid() == portal.process.pid]  # the arbiter, not its worker

    portal.wait_for("rq worker", lambda: any("rqworker" in command for command in portal.seen_commands()))
    web_server()[0].kill()
    try:
        returncode = portal.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"runportal did not stop after its web server died:\n{portal.output()}")

    assert returncode == 1
    assert re.search(r"The web process \(pid \d+\) exited unexpectedly with signal 9 \(SIGKILL\)", portal.output())
    assert portal.leftovers() == []
    assert not (data_dir / "redis" / "redis.sock").exists()
    assert not any("redis-server" in command for command in portal.seen_commands())


def test_a_busy_port_is_refused_before_anything_starts(portal_dirs):
    data_dir = portal_dirs
    env = portal_env(data_dir)
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "manage.py", "runportal", "--port", str(port)], cwd=BASE_DIR, env=env,
                                capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (data_dir / "redis" / "redis.sock").exists()


def test_with_two_workers_or_more_one_takes_no_drift_checks_so_deployments_never_wait_behind_them():
    from pipelines.management.commands.runportal import worker_queues

    assert worker_queues(1) == [["git", "deploy", "checks", "drift"]]
    assert worker_queues(2) == [["git", "deploy", "checks", "drift"], ["git", "deploy", "checks"]]
    assert all(queues.index("deploy") < queues.index("drift") for queues in worker_queues(3)[:-1])
