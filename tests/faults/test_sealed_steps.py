"""Sealed steps: a deploy step cannot reach the portal's secrets, its data directory or its queue.

A real `manage.py rqworker deploy` runs the step (in the worker's own process, as in production); the step tries
what an attacker who can push a tag would try, and the log shows every attempt refused."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
from rq import Queue

from pipelines import promotion, sandbox
from pipelines.models import Deployment
from pipelines.runs import kernel
from tests.conftest import PrivateRedis, child_env, kill_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent.parent
WORKER_SECRET_KEY = "sealed-steps-worker-secret-key-5f0c1e"
SECRET_FILE_TEXT = "contents-of-a-0600-secret-file"


@pytest.fixture
def data_dir():
    """A data directory nobody may traverse into (0711), outside pytest's root-only tmp_path, with a
    secret file of the portal's own (0600) in it."""
    directory = Path(tempfile.mkdtemp(prefix="gitops-sealed-"))
    directory.chmod(0o711)
    secret = directory / "secret.txt"
    secret.write_text(SECRET_FILE_TEXT)
    secret.chmod(0o600)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def guarded_redis(tmp_path):
    server = PrivateRedis(tmp_path / "guarded-redis", password="redis-pass-9d1f3a").start()
    yield server
    server.stop()


def run_in_a_real_worker(repository, staging, origin, make_release, data_dir, script, queue=None, **extra_env):
    """Start a worker, then deploy a release whose one step runs `script(worker_pid)`; the step's log.

    With `queue` (a PrivateRedis), the worker takes its jobs from that Redis instead of the shared one."""
    if queue is not None:
        extra_env["REDIS_URL"] = queue.url
    env = child_env(data_dir, SECRET_KEY=WORKER_SECRET_KEY, **extra_env)
    worker = subprocess.Popen([sys.executable, "manage.py", "rqworker", "deploy"], cwd=BASE_DIR, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pipeline = "environments:\n  staging:\n    variables: {SHOWN: " + WORKER_SECRET_KEY + "}\n    steps:\n" \
                   "      - name: probe\n        run: |\n" + "".join(f"          {line}\n" for line in script(worker.pid))
        origin.write(".gitops.yml", pipeline)
        release = make_release(repository, "v1", pipeline=pipeline, commit_sha=origin.commit("probe"))
        deployment = promotion.promote(release, staging, by=None)
        if queue is not None:  # the wake-up call went to the shared Redis; this worker listens on its own
            connection = redis.Redis.from_url(queue.url)
            Queue("deploy", connection=connection).enqueue("pipelines.runs.kernel.run", "deployment", deployment.pk,
                                                          job_id=deployment.job_id, job_timeout=-1)
        wait_for(lambda: Deployment.objects.get(pk=deployment.pk).is_finished, "the probe step to run", timeout=60)
    finally:
        kill_tree(worker.pid)
        worker.wait()
    deployment.refresh_from_db()
    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    return log, log.splitlines()


def environ_probes(worker_pid):
    # The name is spelt with a bracket so that the script itself (echoed in the log) does not contain it.
    return [
        f"cat /proc/{worker_pid}/environ >/dev/null 2>&1 && echo LEAK-WORKER-ENVIRON || echo worker-environ-refused",
        "for f in /proc/[0-9]*/environ; do if tr '\\0' '\\n' < $f 2>/dev/null | grep -q '^SECRET_KE[Y]='; then echo LEAK-ENVIRON-$f; fi; done",
        "echo environ-scan-done",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="running steps as another account needs a root worker")
@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_a_sealed_step_cannot_read_the_workers_environment_the_data_directory_or_use_the_queue(
        repository, staging, origin, make_release, data_dir, guarded_redis):
    def script(worker_pid):
        return [
            "id -un",
            *environ_probes(worker_pid),
            f"ls -la {data_dir} 2>&1 || true",
            f"cat {data_dir}/secret.txt 2>&1 && echo LEAK-DATA-FILE || echo data-file-refused",
            f"redis-cli -h 127.0.0.1 -p {guarded_redis.port} ping 2>&1 || true",
            f"redis-cli -h 127.0.0.1 -p {guarded_redis.port} lpush rq:queue:deploy x 2>&1 || true",
            'echo "shown=$SHOWN"',
        ]

    # Sealed mode needs a Redis with a password (a system check refuses to start without one): the
    # worker's own queue is that guarded Redis, which the step then tries without the password.
    log, lines = run_in_a_real_worker(repository, staging, origin, make_release, data_dir, script,
                                      queue=guarded_redis, GITOPS_STEP_USER="nobody")
    assert "nobody" in lines
    assert "worker-environ-refused" in lines and "LEAK-WORKER-ENVIRON" not in lines
    assert "environ-scan-done" in lines and not [line for line in lines if line.startswith("LEAK-ENVIRON")]
    assert "data-file-refused" in lines and "LEAK-DATA-FILE" not in lines
    assert SECRET_FILE_TEXT not in log and "secret.txt" not in log.replace(f"{data_dir}/secret.txt", "")
    assert sum("NOAUTH" in line for line in lines) == 2, log
    assert "PONG" not in lines
    assert WORKER_SECRET_KEY not in log and "shown=***" in lines


@pytest.mark.skipif(os.geteuid() == 0 and sandbox.bubblewrap_for(None) is None,
                    reason="without bubblewrap a step running as root reads any process's environment; "
                           "only the masking of the log protects it then")
def test_a_step_in_the_default_mode_does_not_see_the_workers_secrets(
        repository, staging, origin, make_release, data_dir):
    """No step account: the step runs as the worker's own user. Its parent, the process that started it and
    every process it can see hold no SECRET_KEY (a private PID namespace; the worker is not dumpable), the
    data directory is hidden, and a secret value it prints anyway is masked."""
    def script(worker_pid):
        return [
            "tr '\\0' '\\n' < /proc/$PPID/environ | grep -c '^SECRET_KE[Y]=' || true",
            "horse=$(ps -o ppid= -p $PPID | tr -d ' '); if [ -n \"$horse\" ] && [ \"$horse\" != 0 ]; then "
            "tr '\\0' '\\n' < /proc/$horse/environ 2>&1 | grep -c '^SECRET_KE[Y]=' || true; else echo no-horse-in-sight; fi",
            *environ_probes(worker_pid),
            f"cat {data_dir}/secret.txt 2>&1 && echo LEAK-DATA-FILE || echo data-file-refused",
            'echo "shown=$SHOWN"',
        ]

    log, lines = run_in_a_real_worker(repository, staging, origin, make_release, data_dir, script)
    assert "worker-environ-refused" in lines and "LEAK-WORKER-ENVIRON" not in lines
    assert "environ-scan-done" in lines and not [line for line in lines if line.startswith("LEAK-ENVIRON")]
    assert "SECRET_KEY=" not in log
    assert "data-file-refused" in lines and SECRET_FILE_TEXT not in log
    assert WORKER_SECRET_KEY not in log and "shown=***" in lines
