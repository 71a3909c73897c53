"""Builds: a release's `build:` steps run once, before the first environment; their outputs and artifacts are
kept with the release and handed to every later step; a release whose build failed deploys nowhere.

Real git repositories, real steps in the runner's sandbox, real rq jobs drained in this process."""

import hashlib
import io
import tarfile
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from pipelines import artifacts, promotion, queues, reconciler
from pipelines.models import AuditEvent, Build, Deployment, Release, Repository
from pipelines.pipeline_file import PipelineFileError, parse_pipeline
from pipelines.runs import kernel

pytestmark = pytest.mark.django_db(transaction=True)

BUILD_AND_DEPLOY = """\
build:
  variables: {ARCH: amd64}
  steps:
    - name: image
      run: |
        echo "building for $ARCH"
        echo "image=registry.example/shop:$GITOPS_VERSION" >> "$GITOPS_OUTPUTS"
        echo "digest=sha256:abc" >> "$GITOPS_OUTPUTS"
        mkdir -p "$GITOPS_ARTIFACTS/docs" && echo "release notes of $GITOPS_VERSION" > "$GITOPS_ARTIFACTS/docs/notes.txt"
environments:
  staging:
    steps:
      - run: |
          echo "deploying $GITOPS_OUTPUT_IMAGE ($GITOPS_OUTPUT_DIGEST)"
          cat "$GITOPS_ARTIFACTS/docs/notes.txt"
  production:
    steps:
      - run: echo "production gets $GITOPS_OUTPUT_IMAGE"
"""


def pipeline_building(run, deploy="echo deployed"):
    return ("build:\n  steps:\n    - name: build\n      run: |\n" + "".join(f"        {line}\n" for line in run.splitlines())
            + f"environments:\n  staging:\n    steps:\n      - run: {deploy}\n")


@pytest.fixture
def queued_build(repository, origin, make_release, environments):
    """A release of the origin's current commit with `pipeline`, and its build queued (as tracking does)."""

    def make(pipeline, version="v1.0.0"):
        origin.write(".gitops.yml", pipeline)
        release = make_release(repository, version, pipeline=pipeline, commit_sha=origin.commit(version))
        with transaction.atomic():
            return Build.objects.queue_for(release)

    return make


def built(build):
    kernel.run("build", build.pk)
    build.refresh_from_db()
    return build


# --- the pipeline file ------------------------------------------------------------------------------------


def test_the_build_section_is_parsed_with_its_steps_and_variables():
    spec = parse_pipeline(BUILD_AND_DEPLOY)
    assert [step.name for step in spec.build.steps] == ["image"]
    assert spec.build.variables == {"ARCH": "amd64"}
    assert spec.names() == ["staging", "production"]
    assert parse_pipeline("environments:\n  staging:\n    steps: [{run: x}]\n").build is None


@pytest.mark.parametrize(("text", "message"), [
    ("build:\n  steps:\n    - nmae: x\n      run: y\nenvironments:\n  s:\n    steps: [{run: x}]\n",
     "line 3: unknown key 'nmae' in step 1 of 'build'"),
    ("build:\n  steps: []\nenvironments:\n  s:\n    steps: [{run: x}]\n",
     "line 2: 'steps' of the 'build' section must be a non-empty list"),
    ("build:\n  variables: {GITOPS_OUTPUT_IMAGE: x}\n  steps: [{run: y}]\nenvironments:\n  s:\n    steps: [{run: x}]\n",
     "line 2: 'GITOPS_OUTPUT_IMAGE' cannot be used as a variable name"),
    ("build:\n  script: make\nenvironments:\n  s:\n    steps: [{run: x}]\n",
     "line 2: unknown key 'script' in the 'build' section"),
])
def test_a_bad_build_section_is_refused_with_its_line(text, message):
    with pytest.raises(PipelineFileError) as refused:
        parse_pipeline(text)
    assert str(refused.value).startswith(message)


# --- once per release, before the first environment ---------------------------------------------------------


def test_a_new_release_is_built_once_then_deployed_with_its_outputs_and_artifacts(origin, environments, run_workers):
    staging, production = environments
    repository = Repository.objects.create(name="shop", url=origin.url)
    origin.write(".gitops.yml", BUILD_AND_DEPLOY)
    origin.commit("build an image")
    origin.tag("v1.0.0")

    call_command("pollrepos")
    release = Release.objects.get(repository=repository, version="v1.0.0")
    assert release.build.status == "queued"
    assert not Deployment.objects.exists(), "nothing deploys before the build succeeded"

    run_workers()

    build = Build.objects.get(release=release)
    assert build.status == "succeeded", build.log_since(0)[0]
    assert build.outputs == {"image": "registry.example/shop:v1.0.0", "digest": "sha256:abc"}
    assert "building for amd64" in build.log_since(0)[0]
    assert build.artifact_size > 0 and len(build.artifact_sha256) == 64
    with artifacts.artifact_storage().open(build.artifact_name) as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == build.artifact_sha256
    staged = Deployment.objects.get(release=release, environment=staging)
    log = staged.log_since(0)[0]
    assert staged.status == "succeeded", log
    assert "deploying registry.example/shop:v1.0.0 (sha256:abc)" in log
    assert "release notes of v1.0.0" in log
    assert Deployment.objects.get(release=release, environment=production).status == "awaiting_approval"


def test_a_second_wake_up_of_a_build_does_nothing(queued_build, tmp_path, run_workers):
    runs = tmp_path / "build-runs"
    build = queued_build(pipeline_building(f"echo ran >> {runs}"))
    # Two more wake-ups for the same build: a duplicate job, and the job run by hand after it finished.
    queues.enqueue(queues.DEPLOY_QUEUE, kernel.JOB_FUNCTION, "build", build.pk, job_id="build-again")

    run_workers()
    chunks = build.log_chunks.count()
    kernel.run("build", build.pk)

    build.refresh_from_db()
    assert build.status == "succeeded"
    assert runs.read_text() == "ran\n"
    assert build.log_chunks.count() == chunks
    assert AuditEvent.objects.filter(action="build.running", object_id=str(build.pk)).count() == 1
    assert Build.objects.queue_for(build.release) == build, "a release has one build"


def test_build_steps_get_no_environment_variables_and_none_of_the_portals_secrets(queued_build, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "portal-secret-value")
    monkeypatch.setenv("DATABASE_URL", "postgres://portal:hunter2@db/portal")
    build = built(queued_build(pipeline_building("env | sort")))

    log = build.log_since(0)[0]
    assert build.status == "succeeded", log
    assert f"GITOPS_BUILD_ID={build.pk}" in log
    assert "GITOPS_VERSION=v1.0.0" in log
    assert "GITOPS_ENVIRONMENT" not in log and "GITOPS_DEPLOYMENT_ID" not in log
    assert "portal-secret-value" not in log and "hunter2" not in log and "DATABASE_URL" not in log


def test_the_outputs_file_and_the_artifacts_folder_are_outside_the_checkout(queued_build):
    build = built(queued_build(pipeline_building('echo "paths: $GITOPS_OUTPUTS $GITOPS_ARTIFACTS $PWD"')))

    log = build.log_since(0)[0]
    assert build.status == "succeeded", log
    line = next(line for line in log.splitlines() if line.startswith("paths: "))
    outputs, artifacts_dir, checkout = line.removeprefix("paths: ").split()
    assert not outputs.startswith(checkout + "/") and not artifacts_dir.startswith(checkout + "/")


# --- outputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "problem"), [
    ("no equals sign here", "Line 2 of $GITOPS_OUTPUTS is not key=value"),
    ("bad-key=1", "Line 2 of $GITOPS_OUTPUTS is not key=value"),
    ("9lives=1", "Line 2 of $GITOPS_OUTPUTS is not key=value"),
])
def test_a_bad_output_line_fails_the_build_quoting_the_line(queued_build, line, problem):
    build = built(queued_build(pipeline_building(f'echo image=ok >> "$GITOPS_OUTPUTS"; echo "{line}" >> "$GITOPS_OUTPUTS"')))

    assert build.status == "failed"
    assert build.error.startswith(problem)
    assert repr(line) in build.error
    assert build.outputs == {} and build.artifact_name == ""


def test_two_outputs_that_would_be_the_same_variable_fail_the_build(queued_build):
    build = built(queued_build(pipeline_building('printf "image=a\\nIMAGE=b\\n" >> "$GITOPS_OUTPUTS"')))

    assert build.status == "failed"
    assert build.error == ("Outputs 'image' and 'IMAGE' (line 2 of $GITOPS_OUTPUTS) would both be "
                           "GITOPS_OUTPUT_IMAGE.")


def test_a_build_step_that_runs_too_long_is_killed_and_fails_the_build(repository, origin, make_release, environments):
    pipeline = "build:\n  steps:\n    - name: slow\n      run: sleep 60\n      timeout: 1\nenvironments:\n  staging:\n    steps: [{run: 'true'}]\n"
    origin.write(".gitops.yml", pipeline)
    release = make_release(repository, "v1.0.0", pipeline=pipeline, commit_sha=origin.commit("slow"))
    with transaction.atomic():
        build = Build.objects.queue_for(release)

    assert built(build).status == "failed"
    assert build.error == "Build step 'slow' timed out after 1 s."


def test_outputs_larger_than_the_cap_fail_the_build(queued_build):
    build = built(queued_build(pipeline_building('head -c 70000 /dev/zero | tr "\\0" a | sed "s/^/big=/" >> "$GITOPS_OUTPUTS"')))

    assert build.status == "failed"
    assert "outputs may hold at most 65536" in build.error


@pytest.mark.parametrize("replace", [
    'rm "$GITOPS_OUTPUTS"; ln -s /etc/hostname "$GITOPS_OUTPUTS"',
    'rm -r "$GITOPS_ARTIFACTS"; ln -s /etc "$GITOPS_ARTIFACTS"',
])
def test_a_step_cannot_have_a_file_outside_its_run_published_by_replacing_its_folders_with_links(queued_build, replace):
    build = built(queued_build(pipeline_building(replace)))

    assert build.status == "failed"
    assert "is not a plain file any more" in build.error or "is not a folder any more" in build.error
    assert build.outputs == {} and build.artifact_name == ""


def test_outputs_are_upper_cased_into_gitops_output_variables():
    assert artifacts.output_variables({"image": "a", "AMI_id": "b"}) == {"GITOPS_OUTPUT_IMAGE": "a", "GITOPS_OUTPUT_AMI_ID": "b"}


# --- artifacts ----------------------------------------------------------------------------------------------


def test_artifacts_over_the_size_limit_fail_the_build_saying_the_size_and_the_limit(queued_build, settings):
    settings.GITOPS_ARTIFACT_MAX_BYTES = 1000
    build = built(queued_build(pipeline_building('head -c 1500 /dev/urandom > "$GITOPS_ARTIFACTS/image.raw"')))

    assert build.status == "failed"
    assert build.error == "The artifacts are 1500 bytes; the limit (GITOPS_ARTIFACT_MAX_BYTES) is 1000 bytes."
    assert not list((settings.GITOPS_ARTIFACT_DIR).rglob("*.tar.gz")), "nothing was stored"
    assert promotion.build_refusal(build.release).startswith("its build failed: The artifacts are 1500 bytes")


def test_a_link_out_of_the_artifacts_folder_fails_the_build(queued_build):
    build = built(queued_build(pipeline_building('ln -s /etc/passwd "$GITOPS_ARTIFACTS/passwd"')))

    assert build.status == "failed"
    assert "$GITOPS_ARTIFACTS/passwd is a link to '/etc/passwd'" in build.error


def _stored_archive(members):
    """A tar.gz in the artifact storage holding `members` [(TarInfo, bytes or None)]; returns (name, sha256)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    content = buffer.getvalue()
    name = artifacts.artifact_storage().save("tests/crafted.tar.gz", ContentFile(content))
    return name, hashlib.sha256(content).hexdigest()


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize(("member", "refusal"), [
    ((tarfile.TarInfo("/tmp/evil"), b"x"), "an absolute path, '/tmp/evil'"),
    ((tarfile.TarInfo("../evil"), b"x"), "a path leading out, '../evil'"),
    ((tarfile.TarInfo("docs/../../evil"), b"x"), "a path leading out, 'docs/../../evil'"),
    (_link("passwd", "/etc/passwd"), "a link out, 'passwd' → '/etc/passwd'"),
    (_link("docs/up", "../../outside"), "a link out, 'docs/up' → '../../outside'"),
    (_link("hard", "../outside", tarfile.LNKTYPE), "a link out, 'hard' → '../outside'"),
    (_link("fifo", "", tarfile.FIFOTYPE), "'fifo', which is neither a file, a folder nor a link"),
])
def test_unsafe_archive_members_are_refused_and_nothing_is_unpacked(tmp_path, member, refusal):
    name, sha256 = _stored_archive([(tarfile.TarInfo("fine.txt"), b"fine"), member])
    destination = tmp_path / "unpacked"
    destination.mkdir()

    with pytest.raises(artifacts.ArtifactError) as refused:
        artifacts.unpack(name, destination, sha256=sha256)

    assert refusal in str(refused.value)
    assert list(destination.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()


def test_artifacts_over_the_member_count_fail_the_build_however_small_they_are(queued_build, settings):
    settings.GITOPS_ARTIFACT_MAX_MEMBERS = 50
    build = built(queued_build(pipeline_building('for i in $(seq 60); do : > "$GITOPS_ARTIFACTS/empty-$i"; done')))

    assert build.status == "failed"
    assert "$GITOPS_ARTIFACTS holds more than 50 files and folders" in build.error
    assert build.artifact_name == ""


def test_an_archive_with_more_members_than_the_cap_is_not_unpacked(tmp_path, settings):
    settings.GITOPS_ARTIFACT_MAX_MEMBERS = 5
    name, sha256 = _stored_archive([(tarfile.TarInfo(f"empty-{n}"), b"") for n in range(6)])
    destination = tmp_path / "unpacked"
    destination.mkdir()

    with pytest.raises(artifacts.ArtifactError, match="holds more than 5 members"):
        artifacts.unpack(name, destination, sha256=sha256)
    assert list(destination.iterdir()) == []


def test_links_between_artifacts_are_kept(tmp_path):
    name, sha256 = _stored_archive([(tarfile.TarInfo("docs/notes.txt"), b"notes"), _link("latest", "docs/notes.txt")])
    destination = tmp_path / "unpacked"
    destination.mkdir()

    artifacts.unpack(name, destination, sha256=sha256)

    assert (destination / "latest").read_text() == "notes"


def test_an_altered_archive_is_not_unpacked(tmp_path):
    name, sha256 = _stored_archive([(tarfile.TarInfo("image.raw"), b"the image as built")])
    destination = tmp_path / "unpacked"
    destination.mkdir()

    with pytest.raises(artifacts.ArtifactError, match="were altered and are not used"):
        artifacts.unpack(name, destination, sha256="0" * 64)
    assert list(destination.iterdir()) == []


# --- a failed build deploys nowhere -------------------------------------------------------------------------


def test_a_release_whose_build_failed_deploys_nowhere_and_promote_says_why(queued_build, staging, alice, run_follow_ups):
    build = built(queued_build(pipeline_building("echo 'image test failed' && exit 3")))
    run_follow_ups()

    assert build.status == "failed" and build.exit_code == 3
    assert build.error == "Build step 'build' exited with status 3."
    assert not Deployment.objects.exists()
    with pytest.raises(promotion.PromotionError) as refused:
        promotion.promote(build.release, staging, by=alice)
    assert str(refused.value) == "shop v1.0.0 cannot be deployed: its build failed: Build step 'build' exited with status 3.."


def test_a_release_is_not_deployed_while_its_build_is_queued(queued_build, staging, alice):
    build = queued_build(pipeline_building("true"))

    with pytest.raises(promotion.PromotionError, match="its build is queued; it deploys once the build succeeded"):
        promotion.promote(build.release, staging, by=alice)


def test_a_build_succeeding_after_a_newer_release_was_built_does_not_promote_it(queued_build):
    build = queued_build(pipeline_building("true"))
    newer = queued_build(pipeline_building("true"), version="v1.1.0")

    assert built(build).status == "succeeded"
    assert not Deployment.objects.filter(release=build.release).exists(), "it would replace the newer one"
    assert built(newer).status == "succeeded"
    assert Deployment.objects.get().release == newer.release


def test_a_late_old_tag_recorded_during_the_build_does_not_stop_its_promotion(queued_build, make_release, repository):
    build = queued_build(pipeline_building("true"), version="v2.0.0")
    make_release(repository, "v1.5.0")  # recorded, never promoted (older than what runs)

    assert built(build).status == "succeeded"
    assert Deployment.objects.get().release == build.release


# --- the reconciler -----------------------------------------------------------------------------------------


def test_the_reconciler_fails_a_build_whose_runner_stopped_beating(queued_build):
    build = queued_build(pipeline_building("true"))
    build.claim(worker_name="host-9:4242", runner_host="another-host", runner_pid=4242)

    assert reconciler.reconcile()["builds_lost"] == 0, "a fresh heartbeat is left alone"
    later = timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)
    assert reconciler.reconcile(now=later)["builds_lost"] == 1

    build.refresh_from_db()
    assert build.status == "failed"
    assert build.error.startswith("Worker lost: no heartbeat from host-9:4242 since ")
    assert promotion.build_refusal(build.release).startswith("its build failed: Worker lost")


def test_the_reconciler_enqueues_again_a_queued_build_whose_job_was_lost(queued_build, run_workers):
    import django_rq

    build = queued_build(pipeline_building('echo image=rebuilt >> "$GITOPS_OUTPUTS"'))
    django_rq.get_connection("deploy").flushdb()

    assert reconciler.reconcile()["builds_requeued"] == 1
    assert reconciler.reconcile()["builds_requeued"] == 0, "its new job is live"
    run_workers()

    build.refresh_from_db()
    assert build.status == "succeeded" and build.outputs == {"image": "rebuilt"}


def test_a_deployment_of_a_release_whose_build_did_not_succeed_fails_saying_why(queued_build, staging, make_release):
    build = queued_build(pipeline_building("true"))
    # Created before promote() learnt to refuse it, say: the runner refuses too.
    deployment = Deployment.objects.create(release=build.release, environment=staging, repository=build.release.repository,
                                           status="queued", trigger="manual")

    kernel.run("deployment", deployment.pk)

    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert "its build is queued" in deployment.error


def test_a_build_whose_worker_was_killed_fails_saying_so_and_its_release_deploys_nowhere(queued_build, tmp_path):
    """A real `rqworker deploy` is killed (SIGKILL, with its step) in the middle of a build step."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import child_env, kill_tree, wait_for

    started = tmp_path / "build.started"  # outside the worker's data directory, which steps do not see
    build = queued_build(pipeline_building(f"echo started > {started}; sleep 300"))
    worker = subprocess.Popen([sys.executable, "manage.py", "rqworker", "deploy"], cwd=Path(__file__).resolve().parent.parent,
                              env=child_env(tmp_path / "data"), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: started.exists(), "the build step to start in the worker")
        kill_tree(worker.pid)
        worker.wait()
    finally:
        kill_tree(worker.pid)
    build.refresh_from_db()
    assert build.status == "running" and build.runner_pid == worker.pid

    assert reconciler.reconcile()["builds_lost"] == 0, "its heartbeat is fresh: it may still run"
    later = timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)
    assert reconciler.reconcile(now=later)["builds_lost"] == 1

    build.refresh_from_db()
    assert build.status == "failed"
    assert build.error.startswith(f"Worker lost: the worker process {worker.pid} on ")
    assert promotion.build_refusal(build.release) == f"its build failed: {build.error}"
    assert not Deployment.objects.exists()


def test_settings_without_the_artifact_storage_fail_the_system_checks(settings):
    from pipelines.system_checks import check_artifact_storage

    assert check_artifact_storage(None) == []
    settings.STORAGES = {name: config for name, config in settings.STORAGES.items() if name != "gitops_artifacts"}
    assert [error.id for error in check_artifact_storage(None)] == ["pipelines.E004"]
