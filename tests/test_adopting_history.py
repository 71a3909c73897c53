"""Adopting a repository with history: tags made before `.gitops.yml` existed deploy with the release branch's
file, when the repository says so ("Pipeline from the branch for older releases"), on real git and real workers."""

import pytest
from django.urls import reverse

from pipelines import promotion, tracking
from pipelines.models import AuditEvent, Deployment, Release, Repository

pytestmark = pytest.mark.django_db(transaction=True)

# The step reads a file that only the old tags hold: it proves the checkout is the old tag's, not the branch's.
BRANCH_PIPELINE = """\
environments:
  staging:
    steps:
      - name: deploy
        run: echo "deploying $GITOPS_VERSION"; cat legacy.txt
"""
CHANGED_PIPELINE = BRANCH_PIPELINE.replace("deploying", "rolling out")


@pytest.fixture
def history(make_git_repo):
    """Two tags from before adoption (no pipeline file, a legacy.txt), then the file added on main."""
    origin = make_git_repo(pipeline=None, deploy_script=None)
    origin.write("legacy.txt", "legacy build 0.1\n")
    origin.commit("0.1")
    origin.tag("v0.1.0")
    origin.write("legacy.txt", "legacy build 0.2\n")
    origin.commit("0.2")
    origin.tag("v0.2.0", annotated=True)
    (origin.path / "legacy.txt").unlink()
    origin.write(".gitops.yml", BRANCH_PIPELINE)
    origin.commit("adopt the portal")
    return origin


def shop(origin, **fields):
    repository = Repository(name="shop", url=origin.url, **fields)
    repository.full_clean()
    repository.save()
    return repository


def test_without_the_setting_tags_that_predate_the_file_are_invalid(history, staging):
    repository = shop(history)
    tracking.poll_repository(repository)

    old = Release.objects.get(version="v0.1.0")
    assert old.error == f".gitops.yml not found at commit {old.commit_sha[:10]}"
    assert old.pipeline_text == "" and old.pipeline_commit_sha == ""


def test_an_old_tag_deploys_with_the_branch_file_as_it_was_when_recorded(history, staging, alice, client, run_workers):
    repository = shop(history, pipeline_from_branch=True)
    branch_head = history.head()
    tracking.poll_repository(repository)

    old = Release.objects.get(version="v0.1.0")
    assert old.error == ""
    assert old.pipeline_text == BRANCH_PIPELINE
    assert (old.pipeline_commit_sha, old.pipeline_branch) == (branch_head, "main")

    # The file changes on the branch and a new tag is recorded: the old release keeps the file it was recorded with.
    history.write(".gitops.yml", CHANGED_PIPELINE)
    history.commit("reword the step")
    history.tag("v1.0.0")
    tracking.poll_repository(repository)
    old.refresh_from_db()
    assert old.pipeline_text == BRANCH_PIPELINE and old.pipeline_commit_sha == branch_head
    newest = Release.objects.get(version="v1.0.0")
    assert newest.pipeline_text == CHANGED_PIPELINE and newest.pipeline_commit_sha == ""  # its own commit's file

    client.force_login(alice)
    page = client.get(reverse("release_detail", args=["shop", "v0.1.0"])).content.decode()
    assert f"comes from main at <code>{branch_head[:10]}</code>" in page
    assert "since its own commit has none" in page
    own = client.get(reverse("release_detail", args=["shop", "v1.0.0"])).content.decode()
    assert "since its own commit has none" not in own

    run_workers()  # v1.0.0, the newest, went to staging on its own
    deployment = promotion.promote(old, staging, by=alice, reason="roll back to before adoption")
    run_workers()
    deployment.refresh_from_db()
    log = deployment.log_since(0)[0]
    assert deployment.status == Deployment.Status.SUCCEEDED, log
    assert "deploying v0.1.0" in log  # the branch file as recorded, not the reworded one
    assert "legacy build 0.1" in log  # the old tag's checkout


def test_turning_the_setting_on_adopts_the_old_tags_already_recorded_invalid(history, staging):
    repository = shop(history)
    tracking.poll_repository(repository)
    assert set(Release.objects.exclude(error="").values_list("version", flat=True)) == {"v0.1.0", "v0.2.0"}

    repository.pipeline_from_branch = True
    repository.save()
    branch_head = history.head()
    tracking.poll_repository(repository)  # nothing moved in git, yet the setting makes it look again

    adopted = Release.objects.filter(repository=repository).order_by("version")
    assert [(r.version, r.error, r.pipeline_commit_sha) for r in adopted] == [
        ("v0.1.0", "", branch_head), ("v0.2.0", "", branch_head)]
    assert all(r.pipeline_text == BRANCH_PIPELINE for r in adopted)
    event = AuditEvent.objects.get(action="release.pipeline_adopted", object_id=str(adopted[0].pk))
    assert event.details["pipeline_commit"] == branch_head
    assert not Deployment.objects.exists()  # old releases are made deployable, not deployed

    # Polled again after a new tag, nothing is adopted twice.
    history.tag("v1.0.0")
    tracking.poll_repository(repository)
    assert AuditEvent.objects.filter(action="release.pipeline_adopted").count() == 2


def test_a_branch_without_the_file_leaves_the_old_tags_invalid_with_the_reason(make_git_repo, staging):
    origin = make_git_repo(pipeline=None)
    origin.tag("v0.1.0")
    repository = shop(origin, pipeline_from_branch=True)
    tracking.poll_repository(repository)

    old = Release.objects.get(version="v0.1.0")
    assert old.error == (f".gitops.yml not found at commit {old.commit_sha[:10]}, nor at the head of the branch "
                         f"main ({origin.head()[:10]})")

    # The file arrives on the branch later, with no new tag: the next poll gives it to the old release.
    origin.write(".gitops.yml", BRANCH_PIPELINE)
    origin.commit("adopt the portal")
    tracking.poll_repository(repository)
    old.refresh_from_db()
    assert (old.error, old.pipeline_text, old.pipeline_commit_sha) == ("", BRANCH_PIPELINE, origin.head())


def test_an_invalid_file_on_the_branch_makes_the_old_tag_invalid_and_says_where_it_came_from(make_git_repo, staging):
    origin = make_git_repo(pipeline=None)
    origin.tag("v0.1.0")
    origin.write(".gitops.yml", "environments:\n  staging: {}\n")
    origin.commit("a broken file")
    repository = shop(origin, pipeline_from_branch=True)
    tracking.poll_repository(repository)

    old = Release.objects.get(version="v0.1.0")
    assert old.error.startswith(".gitops.yml")
    assert f"(taken from the head of the branch main, {origin.head()[:10]})" in old.error
    assert old.pipeline_commit_sha == origin.head()


def test_the_admin_offers_the_setting_under_what_becomes_a_release(history, alice, client):
    repository = shop(history)
    client.force_login(alice)
    page = client.get(reverse("admin:pipelines_repository_change", args=[repository.pk])).content.decode()
    assert "Pipeline from the branch for older releases" in page
    assert page.index("Pipeline file") < page.index("Pipeline from the branch for older releases") < page.index(
        "Change detection")
