"""A build step never receives an environment secret.

A release's build runs once, before its first stage, and its outputs and artifacts go on to every
environment: nothing of one environment may reach it. Here a secret is set on staging; the same script
runs as the build step and as the staging step and reports whether the secret's variable is set (and its
sha256 if so), then prints its whole environment. The build finds it unset, staging finds the right value,
and the value itself is stored in no log: the build never had it, staging's log has it masked.

Real git repository, `pollrepos`, a real rq worker draining the queues, real steps."""

import hashlib

import pytest
from django.core.management import call_command

from pipelines.models import Build, BuildLogChunk, Deployment, DeploymentLogChunk, Release

pytestmark = pytest.mark.django_db(transaction=True)

VALUE = "staging-db-password-e41f07"

PIPELINE = """\
build:
  steps:
    - name: report
      run: ./report.sh
environments:
  staging:
    steps:
      - name: report
        run: ./report.sh
"""

# `${DB_PASSWORD+set}` tells unset from set-but-empty. The environment dump would show the value in the
# build's log if a build step ever got it: the build's log masks only what it knows to be secret, and an
# environment's secrets are not among that.
REPORT = """\
#!/usr/bin/env bash
set -eo pipefail
if [ -n "${DB_PASSWORD+set}" ]; then
  echo "DB_PASSWORD is set, sha256 $(printf %s "$DB_PASSWORD" | sha256sum | cut -d' ' -f1)"
else
  echo "DB_PASSWORD is unset"
fi
env | sort
"""


def test_a_build_step_never_receives_an_environment_secret(origin, repository, staging, make_secret, run_workers):
    make_secret(staging, "DB_PASSWORD", VALUE)
    origin.write(".gitops.yml", PIPELINE)
    origin.write("report.sh", REPORT, executable=True)
    origin.commit("report whether the secret is there")
    origin.tag("v1.0.0")

    call_command("pollrepos")
    release = Release.objects.get(repository=repository, version="v1.0.0")
    assert release.build.status == "queued" and not Deployment.objects.exists()
    run_workers()  # the build, then the staging deployment its success promotes

    build = Build.objects.get(release=release)
    build_log = build.log_since(0)[0]
    assert build.status == "succeeded", build_log
    assert "DB_PASSWORD is unset" in build_log.splitlines()
    assert "DB_PASSWORD is set" not in build_log and "DB_PASSWORD=" not in build_log

    staged = Deployment.objects.get(release=release, environment=staging)
    staged_log = staged.log_since(0)[0]
    assert staged.status == "succeeded", staged_log
    assert f"DB_PASSWORD is set, sha256 {hashlib.sha256(VALUE.encode()).hexdigest()}" in staged_log.splitlines()
    assert "DB_PASSWORD=***" in staged_log.splitlines(), "the step printed the value and the log masked it"

    stored = [*BuildLogChunk.objects.values_list("text", flat=True),
              *DeploymentLogChunk.objects.values_list("text", flat=True)]
    assert stored and not [text for text in stored if VALUE in text]
