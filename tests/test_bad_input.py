"""Bad bytes are bad input: text PostgreSQL cannot hold is refused at the edge with a 400 that names the field,
a tag the file system cannot hold is skipped with its reason, and an oversized pipeline file makes its release
invalid. None of them is a 500 or a stuck repository."""

from pipelines import tracking
from pipelines.models import Release
from tests.conftest import PIPELINE, git


# --- what git brings ------------------------------------------------------------------------------------------


def _add_tag_the_file_system_cannot_hold(origin, name):
    """A tag git cannot write as a file (a name part over 255 bytes) can still exist in packed-refs, as on a
    server with another ref storage; written there directly, the way `git pack-refs` would."""
    git(origin.path, "pack-refs", "--all")
    with open(origin.path / ".git" / "packed-refs", "a") as packed:
        packed.write(f"{origin.head()} refs/tags/{name}\n")
    git(origin.path, "pack-refs", "--all")  # sorted again


def test_a_tag_the_file_system_cannot_hold_is_skipped_with_its_reason_and_later_tags_are_still_recorded(repository,
                                                                                                        origin):
    origin.tag("v1.0.0")
    long_tag = "v2-" + "é" * 150  # 153 characters, 303 bytes: short enough for a version, too long for a file name
    _add_tag_the_file_system_cannot_hold(origin, long_tag)
    assert long_tag in git(origin.path, "tag", "--list")

    recorded = tracking.poll_repository(repository)

    repository.refresh_from_db()
    assert repository.last_error == ""
    assert [release.version for release in recorded] == ["v1.0.0"]
    (skipped,) = repository.skipped_tags
    assert skipped["tag"].startswith("v2-éé")
    assert "255 bytes" in skipped["reason"]
    # Later polls keep working: a new tag is recorded, the long one is still reported.
    origin.commit("next")
    origin.tag("v1.1.0")
    assert [release.version for release in tracking.poll_repository(repository)] == ["v1.1.0"]
    repository.refresh_from_db()
    assert repository.last_error == ""
    assert [entry["tag"] for entry in repository.skipped_tags] == [skipped["tag"]]


def test_a_pipeline_file_over_the_cap_makes_its_release_invalid_saying_so(repository, origin, environments, settings):
    settings.GITOPS_PIPELINE_FILE_MAX_BYTES = 4096
    padding = "# " + "x" * 100 + "\n"
    origin.write(".gitops.yml", PIPELINE + padding * 50)  # about 5 KiB of valid YAML
    origin.commit("a long comment")
    origin.tag("v1.0.0")
    origin.write(".gitops.yml", PIPELINE)
    origin.commit("short again")
    origin.tag("v1.0.1")

    big, small = tracking.poll_repository(repository)

    size = len((PIPELINE + padding * 50).encode())
    assert big.version == "v1.0.0" and not big.is_valid
    assert big.error == (f".gitops.yml is {size:,} bytes, more than the 4,096 bytes a pipeline file may have "
                         "(GITOPS_PIPELINE_FILE_MAX_BYTES)")
    assert Release.objects.get(pk=big.pk).pipeline_text == ""  # not stored whole, nor at all
    assert small.is_valid and small.pipeline_text == PIPELINE
