"""Artifacts follow their secrets: a preview's saved plan holds sensitive values in clear, a build's archive
whatever the build packed. They are listed and downloaded only by people who may deploy (builds and
previews) or approve for the preview's stage; anyone else is told why (403). A stored archive that this web
server cannot find or read is said in words (410 / 404), never a 500.

Real builds and previews run by the real job functions on real git repositories; the pages through the
test client."""

import hashlib
import os
import shutil

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.urls import get_resolver, reverse

from approvals.opening import open_change_request
from pipelines import promotion
from pipelines.artifacts import artifact_storage
from pipelines.models import Build, Preview
from pipelines.runs import kernel

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = """\
build:
  steps:
    - name: image
      run: echo "the image" > "$GITOPS_ARTIFACTS/image.raw"
environments:
  staging:
    steps: [{run: echo staged}]
  production:
    preview:
      - name: plan
        run: echo "db_password = hunter2" | tee "$GITOPS_ARTIFACTS/plan.txt"
    steps: [{run: cat "$GITOPS_ARTIFACTS/plan.txt"}]
"""


@pytest.fixture
def dave(django_user_model):
    """A deployer who approves nothing."""
    user = django_user_model.objects.create_user("dave", "dave@example.com", "password")
    user.user_permissions.add(Permission.objects.get(codename="deploy", content_type__app_label="pipelines"))
    return user


@pytest.fixture
def erin(django_user_model, approvers):
    """An approver of production who may not deploy."""
    user = django_user_model.objects.create_user("erin", "erin@example.com", "password")
    user.groups.add(approvers)
    return user


@pytest.fixture
def held(repository, production, origin, make_release, alice):
    """A release built for real, promoted to production, held with its preview run: (change request, build, preview)."""
    origin.write(".gitops.yml", PIPELINE)
    release = make_release(repository, "v1.0.0", pipeline=PIPELINE, commit_sha=origin.commit("v1"))
    with transaction.atomic():
        build = Build.objects.queue_for(release)
    kernel.run("build", build.pk)
    build.refresh_from_db()
    change = open_change_request(promotion.promote(release, production, by=alice))
    preview = Preview.objects.latest_for(change.deployment)
    kernel.run("preview", preview.pk)
    preview.refresh_from_db()
    assert build.artifact_name and preview.artifact_name, (build.error, preview.error)
    return change, build, preview


def preview_url(preview):
    return reverse("preview_artifacts", args=[preview.pk])


def build_url(build):
    return reverse("release_artifacts", args=[build.release_id])


def get(client, user, url):
    client.force_login(user)
    return client.get(url)


def test_a_signed_in_user_without_rights_may_not_download_a_previews_plan_and_is_told_why(client, charlie, held):
    _, _, preview = held

    response = get(client, charlie, preview_url(preview))

    assert response.status_code == 403
    page = response.content.decode()
    assert "Only people who may deploy, or approve for production, may download this preview&#x27;s artifacts" in page
    assert "hunter2" not in page


def test_a_signed_in_user_without_rights_may_not_download_a_builds_artifacts(client, charlie, held):
    _, build, _ = held

    response = get(client, charlie, build_url(build))

    assert response.status_code == 403
    assert "Only people who may deploy may download a build&#x27;s artifacts" in response.content.decode()


def test_the_change_request_lists_no_artifacts_to_a_user_without_rights(client, charlie, held):
    change, build, preview = held

    page = get(client, charlie, change.get_absolute_url()).content.decode()

    assert preview_url(preview) not in page and build_url(build) not in page
    assert ("Kept. Only people who may deploy, or approve for production, may download this preview&#x27;s artifacts"
            in page)
    assert "Artifacts: kept. Only people who may deploy may download a build&#x27;s artifacts" in page


def test_the_release_page_lists_no_artifacts_to_a_user_without_rights(client, charlie, held):
    _, build, _ = held

    page = get(client, charlie, build.release.get_absolute_url()).content.decode()
    part = get(client, charlie, reverse("release_build", args=[build.release_id])).content.decode()

    for html in (page, part):
        assert build_url(build) not in html
        assert "Kept. Only people who may deploy may download a build's artifacts" in html


def test_a_deployer_sees_and_downloads_both(client, dave, held):
    change, build, preview = held

    page = get(client, dave, change.get_absolute_url()).content.decode()
    assert preview_url(preview) in page and build_url(build) in page
    assert build_url(build) in get(client, dave, build.release.get_absolute_url()).content.decode()
    for url, run in ((preview_url(preview), preview), (build_url(build), build)):
        response = client.get(url)
        assert response.status_code == 200
        assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == run.artifact_sha256


def test_an_approver_of_the_stage_downloads_the_previews_plan_but_not_the_build(client, erin, held):
    change, build, preview = held

    page = get(client, erin, change.get_absolute_url()).content.decode()
    response = client.get(preview_url(preview))

    assert preview_url(preview) in page and build_url(build) not in page
    assert response.status_code == 200
    assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == preview.artifact_sha256
    assert client.get(build_url(build)).status_code == 403


def test_an_approver_of_another_group_may_not_download_the_previews_plan(client, django_user_model, held):
    _, _, preview = held
    outsider = django_user_model.objects.create_user("frank", "frank@example.com", "password")
    outsider.groups.add(Group.objects.create(name="qa-approvers"))

    assert get(client, outsider, preview_url(preview)).status_code == 403


def test_an_archive_missing_from_the_storage_is_said_gone_not_a_server_error(client, dave, held):
    _, build, preview = held
    artifact_storage().delete(preview.artifact_name)

    response = get(client, dave, preview_url(preview))

    assert response.status_code == 410
    page = response.content.decode()
    assert f"The artifacts of preview #{preview.number} ({preview.artifact_name}) are not in the artifact storage" in page
    assert "GITOPS_ARTIFACT_DIR" in page
    assert client.get(build_url(build)).status_code == 200, "the build's are still there"


def test_an_archive_this_web_server_cannot_read_is_said_so_not_a_server_error(client, dave, held):
    # What sealed workers cause: the workers (root) keep archives the web's account may not read. Tests run
    # as root, which reads anything; a folder where the archive should be fails open() the same way (an
    # OSError that is not "missing").
    _, build, _ = held
    path = artifact_storage().path(build.artifact_name)
    shutil.move(path, path + ".moved")
    os.mkdir(path)

    response = get(client, dave, build_url(build))

    assert response.status_code == 404
    page = response.content.decode()
    assert f"this web server cannot read them ({build.artifact_name}:" in page
    assert "Sealed workers" in page


def test_every_artifact_download_refuses_a_user_without_rights(client, charlie, held, repository, tmp_path):
    """Whatever URL serves artifacts, now or later, guards them: a check's too (its steps had the check secrets)."""
    from pipelines.artifacts import pack_and_store
    from pipelines.models import Check

    _, build, preview = held
    (tmp_path / "left").mkdir()
    (tmp_path / "left" / "plan.txt").write_text("registry_token = s3cret\n")
    check = Check.objects.queue_for(repository, commit_sha=build.release.commit_sha, ref_name="feature/x")
    check.claim(worker_name="test-worker")
    check.succeed(artifact=pack_and_store(tmp_path / "left", prefix=f"checks/{check.pk}"))
    client.force_login(charlie)
    names = sorted(name for name in get_resolver().reverse_dict if isinstance(name, str) and "artifact" in name)

    assert names == ["check_artifacts", "preview_artifacts", "release_artifacts"]
    assert client.get(reverse("preview_artifacts", args=[preview.pk])).status_code == 403
    assert client.get(reverse("release_artifacts", args=[build.release_id])).status_code == 403
    refused = client.get(reverse("check_artifacts", args=[check.pk]))
    assert refused.status_code == 403 and "may download a check" in refused.content.decode()
