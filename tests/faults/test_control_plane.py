"""The control plane, tried as a step and as a staff member would: the embedded Redis behind a 0700 socket
directory and a password, a sealed worker refusing an unauthenticated Redis, and the rq dashboard in the
admin for superusers only, its stop going through the portal's audited cancel.

Real processes throughout: a real embedded redis-server, a step account's process trying the socket and the
files, a real `manage.py rqworker` running a silent step that is stopped from the dashboard."""

import os
import re
import stat
import subprocess
import sys

import django_rq
import pytest
import redis
from django.conf import settings
from django.contrib import admin
from django.urls import reverse
from django_rq.models import Dashboard

from pipelines import embedded, promotion
from pipelines.models import AuditEvent, Deployment
from tests.conftest import child_env, kill_tree, wait_for

STEP_USER = "nobody"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="trying another account's access needs root to become it")


# --- the embedded Redis ---------------------------------------------------------------------------------


@pytest.fixture
def embedded_redis():
    """runportal's embedded Redis in a data directory of its own (short path: unix sockets allow 107 bytes)."""
    import tempfile

    data_dir = tempfile.mkdtemp(prefix="gitops-cp-", dir="/tmp")
    os.chmod(data_dir, 0o755)  # as an operator might have left it: embedded.start() tightens it
    socket_path = os.path.join(data_dir, "redis", "redis.sock")
    server = embedded.start(data_dir, socket_path)
    yield data_dir, socket_path, server
    embedded.stop(server)
    subprocess.run(["rm", "-rf", data_dir], check=False)


def run_as_step_user(code):
    """Run Python `code` as the step account, the way a step would run; its stdout. (The system's python:
    the portal's virtualenv may live where the step account cannot go.)"""
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
    if python is None:
        pytest.skip("no system python for the step account to run")
    result = subprocess.run([python, "-c", code], user=STEP_USER, group="nogroup" if _has_group("nogroup") else None,
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _has_group(name):
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_the_embedded_redis_requires_its_password_and_listens_on_no_port(embedded_redis):
    data_dir, socket_path, server = embedded_redis

    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(unix_socket_path=socket_path).ping()
    password = embedded.password_file(data_dir).read_text().strip()
    assert len(password) == 64
    assert redis.Redis(unix_socket_path=socket_path, password=password).ping()
    import psutil

    pid = embedded._server_pid(socket_path)
    assert pid and psutil.Process(pid).net_connections(kind="inet") == [], "no TCP listener"


def test_the_secrets_in_the_data_directory_are_the_portals_alone(embedded_redis):
    data_dir, socket_path, _ = embedded_redis

    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o711, "traversable, not listable"
    assert stat.S_IMODE(os.stat(embedded.redis_dir(data_dir)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(embedded.password_file(data_dir)).st_mode) == 0o600


@as_root
def test_a_step_account_can_open_neither_the_socket_nor_the_password_nor_list_the_data_directory(embedded_redis):
    data_dir, socket_path, _ = embedded_redis
    password_file = embedded.password_file(data_dir)
    code = f"""
import os, socket
def attempt(what, action):
    try:
        action()
        print(what, "OPEN")
    except PermissionError:
        print(what, "refused")
client = socket.socket(socket.AF_UNIX)
attempt("socket", lambda: client.connect({socket_path!r}))
attempt("password", lambda: open({str(password_file)!r}).read())
attempt("listing", lambda: os.listdir({data_dir!r}))
"""
    assert run_as_step_user(code).splitlines() == ["socket refused", "password refused", "listing refused"]


@pytest.mark.django_db
def test_a_sealed_worker_refuses_a_redis_without_a_password(tmp_path):
    """GITOPS_STEP_USER set and REDIS_URL without a password: rqworker does not start, and says why."""
    env = child_env(tmp_path / "worker-data", GITOPS_STEP_USER=STEP_USER, REDIS_URL="redis://127.0.0.1:6379/5")
    result = subprocess.run([sys.executable, str(settings.BASE_DIR / "manage.py"), "rqworker", "--burst", "git"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "pipelines.E001" in result.stderr and "REDIS_URL has no password" in result.stderr

    with_password = {**env, "REDIS_URL": "redis://:a-password@127.0.0.1:6379/5"}
    checked = subprocess.run([sys.executable, str(settings.BASE_DIR / "manage.py"), "check", "--tag", "security"],
                             env=with_password, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "pipelines.E001" not in checked.stderr, checked.stderr


# --- the rq dashboard -----------------------------------------------------------------------------------

SAMPLES = {"int": "0", "str": "deployment-1", "path": "1"}


def dashboard_urls():
    """Every URL django_rq registers in the admin, with sample arguments, plus the app's own index."""
    urls = ["/admin/django_rq/"]
    for pattern in admin.site._registry[Dashboard].get_urls():
        route = str(pattern.pattern)
        route = re.sub(r"<(\w+):\w+>", lambda m: SAMPLES[m.group(1)], route)
        route = re.sub(r"\(\?P<\w+>[^)]*\)\??", "sometoken", route).replace("^", "").replace("$", "").replace("/?", "/")
        urls.append(f"/admin/django_rq/dashboard/{route}")
    return sorted(set(urls))


@pytest.fixture
def staff(django_user_model):
    """A staff member with every django_rq and pipelines permission, but not a superuser."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("sam", "sam@example.com", "password", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label__in=["django_rq", "pipelines"]))
    return user


@pytest.mark.django_db
def test_every_dashboard_url_is_forbidden_to_staff_who_are_not_superusers(client, staff):
    urls = dashboard_urls()
    assert len(urls) > 25, urls  # the whole dashboard, API included
    client.force_login(staff)
    for url in urls:
        for method in (client.get, client.post):
            assert method(url).status_code == 403, f"{method.__name__.upper()} {url}"


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_sign_in(client):
    for url in ("/admin/django_rq/dashboard/", "/admin/django_rq/dashboard/stats.json/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_superusers_still_read_the_dashboard(client, alice):
    client.force_login(alice)
    assert client.get("/admin/django_rq/dashboard/").status_code == 200
    assert client.get("/admin/django_rq/dashboard/queues/0/").status_code == 200
    assert client.get("/admin/django_rq/dashboard/stats.json/").status_code == 200


def deploy_queue_index():
    from django_rq.settings import get_queues_list

    return [queue["name"] for queue in get_queues_list()].index("deploy")


@pytest.mark.django_db
def test_stopping_a_running_deployments_job_requests_the_portals_cancel(client, alice, repository, staging, make_release):
    deployment = promotion.promote(make_release(repository, "v1.0.0"), staging, by=alice)
    deployment.claim(worker_name="w")
    client.force_login(alice)

    url = f"/admin/django_rq/dashboard/queues/{deploy_queue_index()}/deployment-{deployment.pk}/stop/"
    response = client.post(url, follow=True)

    assert response.status_code == 200
    assert "asked the runner to stop" in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.cancel_requested_at is not None
    event = AuditEvent.objects.get(action="deployment.cancel_requested", object_id=str(deployment.pk))
    assert event.actor == alice
    assert event.details["reason"] == "Stopped from the rq dashboard by alice."


@pytest.mark.django_db
def test_deleting_a_queued_deployments_job_cancels_the_deployment(client, alice, repository, staging, make_release):
    deployment = promotion.promote(make_release(repository, "v1.0.0"), staging, by=alice)
    client.force_login(alice)
    index = deploy_queue_index()
    response = client.post(reverse("admin:django_rq_actions", args=[index]),
                           {"action": "delete", "job_ids": [f"deployment-{deployment.pk}"]})
    assert response.status_code == 302
    assert Deployment.objects.get(pk=deployment.pk).status == "cancelled"
    assert AuditEvent.objects.filter(action="deployment.cancelled", actor=alice).exists()


@pytest.mark.django_db
def test_emptying_a_queue_and_requeueing_are_refused(client, alice):
    from django_rq.settings import get_queues_list
    from rq import Queue

    queue = Queue("git", connection=django_rq.get_connection("git"))  # not deferred to a commit that never comes
    job = queue.enqueue("os.getcwd", job_id="poll-999")
    index = [q["name"] for q in get_queues_list()].index("git")
    client.force_login(alice)

    response = client.post(f"/admin/django_rq/dashboard/queues/{index}/empty/", follow=True)
    assert "Emptying a queue is refused" in response.content.decode()
    response = client.post(f"/admin/django_rq/dashboard/queues/{index}/poll-999/stop/", follow=True)
    assert "Only the job of a run (a deployment, build, preview or check) can be stopped here" in response.content.decode()
    response = client.post(f"/admin/django_rq/dashboard/queues/{index}/poll-999/requeue/", follow=True)
    assert "Jobs are not requeued by hand here" in response.content.decode()
    assert queue.job_ids == [job.id], "the job is still queued"


SILENT = """\
environments:
  staging:
    steps:
      - run: touch {marker}/started && sleep 120 && touch {marker}/finished
"""


@pytest.mark.django_db(transaction=True)
def test_stop_in_the_dashboard_stops_the_step_through_the_runner_and_the_worker_lives_on(
    client, alice, repository, staging, origin, make_release, tmp_path
):
    marker = tmp_path / "marker"
    marker.mkdir()
    pipeline = SILENT.format(marker=marker)
    origin.write(".gitops.yml", pipeline)
    release = make_release(repository, "v1.0.0", commit_sha=origin.commit("silent step"), pipeline=pipeline)
    deployment = promotion.promote(release, staging, by=alice)
    worker = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "rqworker", "deploy"],
        env=child_env(tmp_path / "worker-data", GITOPS_HEARTBEAT_SECONDS=1),
        stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: (marker / "started").exists(), "the silent step to start", timeout=60)
        client.force_login(alice)
        response = client.post(
            f"/admin/django_rq/dashboard/queues/{deploy_queue_index()}/deployment-{deployment.pk}/stop/"
        )
        assert response.status_code == 302

        wait_for(lambda: Deployment.objects.get(pk=deployment.pk).status == "cancelled", "the cancel", timeout=30)
        assert not (marker / "finished").exists()
        assert worker.poll() is None, "the worker was not killed: the portal's cancel stopped only the step"
        events = AuditEvent.objects.filter(object_id=str(deployment.pk)).values_list("action", "actor__username")
        assert ("deployment.cancel_requested", "alice") in list(events)
    finally:
        kill_tree(worker.pid)
        worker.wait(timeout=10)
