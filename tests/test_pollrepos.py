"""`manage.py pollrepos`: one sweep, one repository on demand, or the scheduler loop."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from urllib.parse import quote

import django_rq
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from pipelines.models import Release, Repository

pytestmark = pytest.mark.usefixtures("environments")


def pollrepos(*args):
    out = StringIO()
    call_command("pollrepos", *args, stdout=out)
    return out.getvalue().strip()


def test_it_sweeps_the_due_repositories_once_and_prints_a_summary(repository, origin, tmp_path):
    origin.tag("v1.0.0")
    Repository.objects.create(name="broken", url=str(tmp_path / "deleted"))

    assert pollrepos() == "Polled 2 repositories: 1 new release, 1 failed (broken)."

    assert Release.objects.get().version == "v1.0.0"
    # Both were just polled: nothing is due on the next sweep.
    assert pollrepos() == "Polled 0 repositories: 0 new releases, 0 failed."


def test_it_polls_a_named_repository_now_whatever_its_interval(repository, origin):
    Repository.objects.filter(pk=repository.pk).update(last_polled_at=timezone.now(), poll_interval=3600)
    origin.tag("v1.0.0")
    origin.commit("more")
    origin.tag("v1.1.0")

    assert pollrepos("--repository", "shop") == "Polled shop: 2 new releases (v1.0.0, v1.1.0)."

    assert pollrepos("--repository", "shop") == "Polled shop: 0 new releases (none)."


def test_it_fails_loudly_for_a_named_repository_it_cannot_poll(repository, tmp_path):
    Repository.objects.filter(pk=repository.pk).update(url=str(tmp_path / "deleted"))
    with pytest.raises(CommandError, match="^Polling shop failed: Cannot reach repository "):
        pollrepos("--repository", "shop")


def test_it_refuses_an_unknown_or_disabled_repository(repository):
    with pytest.raises(CommandError, match="no repository named 'nonesuch'"):
        pollrepos("--repository", "nonesuch")
    Repository.objects.filter(pk=repository.pk).update(enabled=False)
    with pytest.raises(CommandError, match="is disabled"):
        pollrepos("--repository", "shop")


def _database_url():
    """The test database, as a URL the subprocess's settings understand."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "") + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_it_loops_until_it_is_told_to_stop(repository, origin, tmp_path, stop_signal, run_workers):
    origin.tag("v1.0.0")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gitops_portal.test_settings",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "GITOPS_DATA_DIR": str(tmp_path / "scheduler-data"),
        "GITOPS_SCHEDULER_TICK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    scheduler = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "pollrepos", "--loop"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # The loop asks a worker to poll; it never polls itself.
        _wait_for(lambda: _poll_job_queued(repository), scheduler)
        assert not Release.objects.exists()
        run_workers()
        assert Release.objects.filter(version="v1.0.0").exists()
        # A later tick asks again once the repository is due after its interval.
        origin.commit("next")
        origin.tag("v1.1.0")
        Repository.objects.filter(pk=repository.pk).update(last_polled_at=timezone.now() - timedelta(hours=1))
        _wait_for(lambda: _poll_job_queued(repository), scheduler)
        run_workers()
        assert Release.objects.filter(version="v1.1.0").exists()
    finally:
        scheduler.send_signal(stop_signal)
        out, err = scheduler.communicate(timeout=30)

    assert scheduler.returncode == 0, err
    assert out.splitlines()[0] == "Polling repositories and reconciling every 1 s; stop with SIGTERM or Ctrl-C."
    assert out.splitlines()[-1] == "Scheduler stopped."


def _poll_job_queued(repository):
    return f"poll-{repository.pk}" in django_rq.get_queue("git").job_ids


@pytest.mark.django_db(transaction=True)
def test_a_one_shot_sweep_polls_several_repositories_at_once(make_git_repo, environments):
    for n in range(6):
        origin = make_git_repo(f"origin-{n}")
        origin.tag("v1.0.0")
        Repository.objects.create(name=f"repo-{n}", url=origin.url)

    assert pollrepos() == "Polled 6 repositories: 6 new releases, 0 failed."

    assert Release.objects.count() == 6
    assert pollrepos() == "Polled 0 repositories: 0 new releases, 0 failed."
    # Unchanged repositories are recorded as polled together, after the sweep: none is due again.
    Repository.objects.update(last_polled_at=None)
    assert pollrepos() == "Polled 6 repositories: 0 new releases, 0 failed."
    assert not Repository.objects.filter(last_polled_at=None).exists()
    assert pollrepos() == "Polled 0 repositories: 0 new releases, 0 failed."


def _wait_for(check, process, timeout=30):
    """Poll for the effect with a deadline; fail at once, with its stderr, if the process died."""
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None:
            pytest.fail(f"pollrepos --loop exited with status {process.returncode}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"pollrepos --loop did not do it within {timeout} s")
        time.sleep(0.05)
