"""The build on the release page (status, log, outputs, artifacts to download) and on the change request."""

import hashlib

import pytest
from django.db import transaction
from django.urls import reverse

from pipelines import promotion
from pipelines.models import AuditEvent, Build
from pipelines.runs import kernel

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = """\
build:
  steps:
    - name: image
      run: |
        echo "image=ami-0abc123" >> "$GITOPS_OUTPUTS"
        echo "the image" > "$GITOPS_ARTIFACTS/image.raw"
environments:
  staging:
    steps: [{run: echo "deploying $GITOPS_OUTPUT_IMAGE"}]
  production:
    steps: [{run: echo "deploying $GITOPS_OUTPUT_IMAGE"}]
"""


@pytest.fixture
def release_built(repository, origin, make_release, environments):
    """A release with `pipeline`, built for real (its build queued as tracking does, then run)."""

    def make(pipeline=PIPELINE, version="v1.0.0"):
        origin.write(".gitops.yml", pipeline)
        release = make_release(repository, version, pipeline=pipeline, commit_sha=origin.commit(version))
        with transaction.atomic():
            build = Build.objects.queue_for(release)
        kernel.run("build", build.pk)
        build.refresh_from_db()
        return release, build

    return make


def test_the_release_page_shows_the_build_its_outputs_and_its_artifacts(client, alice, release_built):
    release, build = release_built()
    client.force_login(alice)

    page = client.get(release.get_absolute_url()).content.decode()

    assert build.status == "succeeded"
    assert "ami-0abc123" in page
    assert build.artifact_sha256 in page
    assert f"({build.artifact_size} bytes)" in page
    assert reverse("release_artifacts", args=[release.pk]) in page
    assert "==&gt; output image=ami-0abc123" in page, "the log"
    assert 'hx-trigger="every 2s"' not in page.split('id="build"')[1].split("</section>")[0], "finished: no poll"


def test_the_artifacts_download_is_exactly_what_the_build_stored(client, bob, release_built):
    release, build = release_built()
    client.force_login(bob)  # a deployer (who else may: tests/test_artifact_access.py)

    response = client.get(reverse("release_artifacts", args=[release.pk]))

    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == build.artifact_sha256
    assert len(body) == build.artifact_size
    assert response["Content-Disposition"] == 'attachment; filename="shop-v1.0.0-artifacts.tar.gz"'


def test_the_artifacts_download_needs_a_signed_in_user(client, release_built):
    release, _ = release_built()

    response = client.get(reverse("release_artifacts", args=[release.pk]))

    assert response.status_code == 302 and "/login" in response["Location"]


def test_a_release_whose_build_failed_says_why_on_its_page_and_offers_no_download(client, alice, release_built):
    release, build = release_built(PIPELINE.replace('echo "image=ami-0abc123"', "echo 'packer: boom'; exit 2; echo"))
    client.force_login(alice)

    page = client.get(release.get_absolute_url()).content.decode()

    assert build.status == "failed"
    assert "This release deploys nowhere: its build failed." in page
    assert "Build step &#x27;image&#x27; exited with status 2." in page
    assert "packer: boom" in page
    assert client.get(reverse("release_artifacts", args=[release.pk])).status_code == 404


def test_the_build_section_polls_while_the_build_is_queued(client, alice, repository, origin, make_release, environments):
    release = make_release(repository, "v2.0.0", pipeline=PIPELINE, commit_sha=origin.head())
    with transaction.atomic():
        Build.objects.queue_for(release)
    client.force_login(alice)

    part = client.get(reverse("release_build", args=[release.pk]), headers={"HX-Request": "true"}).content.decode()

    assert 'hx-trigger="every 2s"' in part
    assert "This release deploys once its build has succeeded." in part


def test_the_change_request_shows_what_was_built(client, alice, release_built, production):
    from approvals.opening import open_change_request

    release, build = release_built()
    change_request = open_change_request(promotion.promote(release, production, by=alice))
    client.force_login(alice)

    page = client.get(reverse("change_request_detail", args=[change_request.pk])).content.decode()

    assert "What was built" in page
    assert "ami-0abc123" in page
    assert build.artifact_sha256 in page


def test_a_release_that_was_not_built_can_be_built_by_a_deployer_and_then_deploys(
    client, alice, charlie, repository, origin, make_release, environments, run_workers
):
    staging, _ = environments
    release = make_release(repository, "v0.9.0", pipeline=PIPELINE, commit_sha=origin.head())
    with pytest.raises(promotion.PromotionError, match="it has not been built"):
        promotion.promote(release, staging, by=alice)
    client.force_login(charlie)
    assert "Not built." in client.get(release.get_absolute_url()).content.decode()
    assert client.post(reverse("release_build_start", args=[release.pk])).status_code == 403
    client.force_login(alice)

    client.post(reverse("release_build_start", args=[release.pk]))
    client.post(reverse("release_build_start", args=[release.pk]))  # a second click: still one build
    run_workers()

    build = Build.objects.get(release=release)
    assert build.status == "succeeded" and build.outputs == {"image": "ami-0abc123"}
    assert AuditEvent.objects.get(action="build.queued").actor == alice
    assert release.deployments.get(environment=staging).status == "succeeded", "promoted once built"


def test_the_repository_page_marks_releases_whose_build_failed(client, alice, release_built):
    release, build = release_built(PIPELINE.replace('echo "image=ami-0abc123"', "exit 1; echo"))
    client.force_login(alice)

    page = client.get(reverse("repository_detail", args=[release.repository.name])).content.decode()

    assert build.status == "failed"
    assert ">build failed</span>" in page
    assert "Build step &#x27;image&#x27; exited with status 1." in page


def test_the_admin_lists_builds_read_only(client, alice, release_built):
    _, build = release_built()
    client.force_login(alice)

    listing = client.get(reverse("admin:pipelines_build_changelist"))
    detail = client.get(reverse("admin:pipelines_build_change", args=[build.pk]))

    assert listing.status_code == 200 and detail.status_code == 200
    assert "ami-0abc123" in detail.content.decode()
    assert client.post(reverse("admin:pipelines_build_delete", args=[build.pk])).status_code == 403


def test_deploying_by_hand_a_release_whose_build_failed_is_refused_with_the_reason(client, alice, release_built):
    release, build = release_built(PIPELINE.replace('echo "image=ami-0abc123"', "exit 4; echo"))
    client.force_login(alice)

    response = client.post(reverse("release_deploy", args=[release.pk]), {"environment": "staging"}, follow=True)

    assert build.status == "failed"
    assert not release.deployments.exists()
    assert "its build failed: Build step &#x27;image&#x27; exited with status 4." in response.content.decode()
