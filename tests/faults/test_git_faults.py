"""Git remotes and tags that misbehave: the scheduler never waits on them, and one bad tag never stops a repository.

(a) A remote that accepts the TCP connection and never answers, beside two healthy repositories: the real
    scheduler (`pollrepos --loop`) and real rq workers keep polling the others, and a lost worker is still
    failed by the reconciler on time.
(b) A tag on a blob and a pipeline file nested 3,000 levels deep: later tags are still released."""

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from pipelines import promotion
from pipelines.models import Deployment, Release, Repository, Target
from tests.conftest import PIPELINE, child_env, kill_tree, wait_for
from tests.conftest import git as run_git


@pytest.fixture
def processes():
    started = []

    def start(*args, env):
        process = subprocess.Popen([sys.executable, str(settings.BASE_DIR / "manage.py"), *args], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        return process

    yield start
    for process in started:
        kill_tree(process.pid)
        process.wait(timeout=10)


def lost_deployment(repository, staging, alice, make_release):
    """A deployment whose worker vanished: promoted and claimed through the state machine, then its
    heartbeat and its target's lease left to age (as if the worker host lost power)."""
    release = make_release(repository, "v0.9.0")
    deployment = promotion.promote(release, staging, by=alice)
    deployment.claim(worker_name="vanished-host:4242", runner_host="vanished-host", runner_pid=4242)
    long_ago = timezone.now() - timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER * 3)
    Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=long_ago)
    Target.objects.filter(lease_holder=deployment).update(lease_expires_at=long_ago)
    return deployment


@pytest.mark.django_db(transaction=True)
def test_a_silent_remote_delays_neither_the_other_repositories_nor_worker_lost_detection(
        make_git_repo, environments, alice, make_release, silent_remote, processes, tmp_path):
    staging, _ = environments
    url, accepted = silent_remote
    silent = Repository.objects.create(name="silent", url=url)
    healthy = []
    for name in ("billing", "catalog"):
        origin = make_git_repo(name)
        origin.tag("v1.0.0")
        # Due, but after the never-polled silent one: its poll job is the first in the queue.
        healthy.append(Repository.objects.create(name=name, url=origin.url,
                                                 last_polled_at=timezone.now() - timedelta(days=1)))
    lost = lost_deployment(healthy[0], staging, alice, make_release)
    env = child_env(tmp_path / "children", GITOPS_SCHEDULER_TICK=1)

    started = time.monotonic()
    processes("pollrepos", "--loop", env=env)
    for _ in range(2):
        processes("rqworker", "git", "deploy", env=env)

    # The reconciler runs on its own tick: the lost worker is failed within a couple of ticks, although
    # a poll of the silent remote is hanging in a worker all that time (git gives up on it after 30 s).
    wait_for(lambda: Deployment.objects.get(pk=lost.pk).status == Deployment.Status.FAILED, "the lost worker to be failed",
             timeout=15)
    assert Deployment.objects.get(pk=lost.pk).error.startswith("Worker lost")
    # The healthy repositories are polled meanwhile by the other worker, while the silent poll hangs.
    wait_for(lambda: accepted, "git to connect to the silent remote", timeout=15)
    wait_for(lambda: Release.objects.filter(repository__in=healthy, version="v1.0.0").count() == 2,
             "both healthy repositories to be polled", timeout=20)
    assert time.monotonic() - started < 25
    silent.refresh_from_db()
    assert accepted, "the silent remote was never asked"
    assert silent.last_error == ""  # still hanging: no answer and no timeout yet
    assert not silent.releases.exists()


@pytest.mark.django_db(transaction=True)
def test_a_tag_on_a_blob_and_a_deeply_nested_pipeline_file_never_stop_later_releases(
        repository, origin, environments, run_workers, client, alice):
    staging, _ = environments
    origin.tag("v1.0.0")
    blob = run_git(origin.path, "hash-object", "-w", "deploy.sh")
    run_git(origin.path, "tag", "v1.1.0", blob)
    origin.write(".gitops.yml", "environments: " + "[" * 3000 + "]" * 3000 + "\n")
    origin.commit("nest the pipeline 3,000 levels deep")
    origin.tag("v1.2.0")
    origin.write(".gitops.yml", PIPELINE)
    origin.commit("a sane pipeline again")
    origin.tag("v1.3.0")

    call_command("pollrepos")

    releases = {r.version: r for r in Release.objects.filter(repository=repository)}
    assert sorted(releases) == ["v1.0.0", "v1.2.0", "v1.3.0"]
    assert releases["v1.2.0"].error == ".gitops.yml line 1: the file is nested too deeply (more than 50 levels)"
    assert releases["v1.0.0"].error == releases["v1.3.0"].error == ""
    repository.refresh_from_db()
    assert repository.last_error == ""
    assert repository.skipped_tags == [{"tag": "v1.1.0", "reason": "it points to a blob, not a commit"}]
    client.force_login(alice)
    page = client.get(repository.get_absolute_url()).content.decode()
    assert "Skipped tags" in page and "<code>v1.1.0</code>: it points to a blob, not a commit" in page

    # Polls go on: the next tag is recorded and the newest release deploys to staging.
    origin.commit("more")
    origin.tag("v1.4.0")
    Repository.objects.filter(pk=repository.pk).update(last_polled_at=None)
    call_command("pollrepos")
    run_workers()

    assert Release.objects.get(repository=repository, version="v1.4.0").error == ""
    deployed = Deployment.objects.filter(repository=repository, environment=staging).values_list("release__version", flat=True)
    assert "v1.4.0" in deployed
    assert not Deployment.objects.filter(release__version__in=["v1.1.0", "v1.2.0"]).exists()
