"""Machine images: a commit on `main` is built once (a tarball image, tested), and the next stage publishes
exactly that image on another worker, one with a data directory of its own, i.e. through the artifact store.
A failing image test publishes nothing.

Real git, real `manage.py rqworker` processes (two "machines": different GITOPS_DATA_DIR, one shared
GITOPS_ARTIFACT_DIR), real steps."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from pipelines import promotion
from pipelines.models import Build, Deployment, Release, Repository
from tests.conftest import child_env

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent

PIPELINE = """\
build:
  steps:
    - name: image
      run: ./build-image.sh
    - name: test image
      run: ./test-image.sh
environments:
  staging:
    steps:
      - name: publish
        run: ./publish.sh
"""

BUILD_IMAGE = """\
#!/usr/bin/env bash
set -eo pipefail
mkdir -p rootfs/etc
cp os-release rootfs/etc/os-release
echo "$GITOPS_COMMIT" > rootfs/etc/image-commit
image="shop-image-$GITOPS_VERSION.tar.gz"
tar -C rootfs --sort=name --mtime=@0 --owner=0 --group=0 -czf "$GITOPS_ARTIFACTS/$image" .
echo "image=$image" >> "$GITOPS_OUTPUTS"
echo "sha256=$(sha256sum "$GITOPS_ARTIFACTS/$image" | cut -d' ' -f1)" >> "$GITOPS_OUTPUTS"
echo "built $image"
"""

TEST_IMAGE = """\
#!/usr/bin/env bash
set -eo pipefail
image="$(sed -n 's/^image=//p' "$GITOPS_OUTPUTS")"
tar -xzOf "$GITOPS_ARTIFACTS/$image" ./etc/os-release | grep -q '^ID=shop-os$' || { echo "image test failed: not shop-os"; exit 1; }
echo "image test passed"
"""

PUBLISH = """\
#!/usr/bin/env bash
set -eo pipefail
image="$GITOPS_ARTIFACTS/$GITOPS_OUTPUT_IMAGE"
test "$(sha256sum "$image" | cut -d' ' -f1)" = "$GITOPS_OUTPUT_SHA256" || { echo "not the image that was built"; exit 1; }
cp "$image" "{registry}/$GITOPS_OUTPUT_IMAGE"
echo "published $GITOPS_OUTPUT_IMAGE from $(hostname) without building it"
"""


def run_worker(data_dir, artifact_dir, *, max_jobs=None):
    """A real `rqworker --burst deploy` as on a machine of its own; returns when the queue is drained (or it
    ran `max_jobs`), with its pid and output."""
    command = [sys.executable, "manage.py", "rqworker", "--burst", "deploy"]
    if max_jobs:
        command += ["--max-jobs", str(max_jobs)]
    result = subprocess.run(command, cwd=BASE_DIR, env=child_env(data_dir, GITOPS_ARTIFACT_DIR=artifact_dir),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_commit_on_main_is_built_once_and_the_next_stage_publishes_exactly_that_image_from_another_worker(
    origin, staging, tmp_path
):
    registry = tmp_path / "registry"
    registry.mkdir()
    shared_store = tmp_path / "artifact-store"  # e.g. an S3 bucket in production
    builder_data, publisher_data = tmp_path / "builder", tmp_path / "publisher"
    repository = Repository.objects.create(name="shop", url=origin.url, release_from=Repository.ReleaseFrom.COMMITS)
    origin.write(".gitops.yml", PIPELINE)
    origin.write("os-release", "ID=shop-os\nVERSION_ID=1\n")
    origin.write("build-image.sh", BUILD_IMAGE, executable=True)
    origin.write("test-image.sh", TEST_IMAGE, executable=True)
    origin.write("publish.sh", PUBLISH.replace("{registry}", str(registry)), executable=True)
    sha = origin.commit("an image")

    call_command("pollrepos")
    release = Release.objects.get(repository=repository, commit_sha=sha)
    assert release.build.status == "queued" and not Deployment.objects.exists()

    # The builder machine takes the build, and only it.
    run_worker(builder_data, shared_store, max_jobs=1)
    build = Build.objects.get(release=release)
    log = build.log_since(0)[0]
    assert build.status == "succeeded", log
    assert "image test passed" in log
    image = f"shop-image-{release.version}.tar.gz"
    assert build.outputs["image"] == image
    assert (shared_store / build.artifact_name).is_file()
    staged = Deployment.objects.get(release=release, environment=staging)
    assert staged.status == "queued", "the build's success promoted the release to the next stage"

    # Another machine: no mirror, no checkout, nothing of the builder's; the image comes from the store.
    run_worker(publisher_data, shared_store)
    staged.refresh_from_db()
    publish_log = staged.log_since(0)[0]
    assert staged.status == "succeeded", publish_log
    assert staged.runner_pid != build.runner_pid
    assert not any(publisher_data.rglob("shop-image-*")), "the publisher kept nothing of the image"
    published = registry / image
    assert hashlib.sha256(published.read_bytes()).hexdigest() == build.outputs["sha256"]
    assert build.log_chunks.filter(text__contains="==> step 1/2:").count() == 1, "built once"

    # The next commit breaks the image: its test fails, nothing is published, and it cannot be deployed.
    origin.write("os-release", "ID=other-os\n")
    broken_sha = origin.commit("a broken image")
    call_command("pollrepos", "--repository", "shop")
    run_worker(builder_data, shared_store)

    broken = Release.objects.get(repository=repository, commit_sha=broken_sha)
    broken_build = Build.objects.get(release=broken)
    assert broken_build.status == "failed"
    assert broken_build.error == "Build step 'test image' exited with status 1."
    assert "image test failed: not shop-os" in broken_build.log_since(0)[0]
    assert broken_build.artifact_name == "" and broken_build.outputs == {}
    assert not Deployment.objects.filter(release=broken).exists()
    assert sorted(path.name for path in registry.iterdir()) == [image]
    with pytest.raises(promotion.PromotionError, match="its build failed: Build step 'test image' exited with status 1"):
        promotion.promote(broken, staging, by=None)
