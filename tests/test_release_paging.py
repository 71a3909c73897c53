"""Release lists are ordered by version (packaging.version, unreadable tags after, by detection) and paged in
the database: every page of a repository with thousands of releases costs the same queries."""

import hashlib
import re

from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from pipelines import tracking
from pipelines.models import Release, Repository, TagMove
from pipelines.versions import sortable_version, tags_in_version_order
from pipelines.views import RELEASES_ON_REPOSITORY_PAGE


def listed_versions(response):
    return re.findall(r'class="version">([^<]+)</a>', response.content.decode())


def test_it_orders_versions_as_packaging_does_and_unreadable_tags_last_newest_first(client, alice, repository, make_release):
    for version in ["nightly-x", "v1.9.0", "v1.10.0", "v2.0.0rc1", "v1.2.0", "release/candidate", "v2.0.0",
                    "v1.10.0.post1", "v1.2", "v2.0.0.dev3", "latest"]:
        make_release(repository, version)
    client.force_login(alice)

    response = client.get(reverse("repository_detail", args=["shop"]))

    assert listed_versions(response) == [
        "v2.0.0", "v2.0.0rc1", "v2.0.0.dev3", "v1.10.0.post1", "v1.10.0", "v1.9.0",
        "v1.2", "v1.2.0",  # the same version: the later detected first
        "latest", "release/candidate", "nightly-x",  # unreadable: the latest detected first
    ]


def test_a_poll_records_tags_oldest_version_first_and_those_that_tie_by_name():
    tags = ["v1.10.0", "v1.9.0", "v1.9.0-rc1", "v1.9.0-rc10", "v1.9.0-rc2", "v2.0.0-beta", "v2.0.0-alpha",
            "v1.9.0+build.7", "latest", "v0.9", "release-1.9.5", "v3.0.3.post1", "v3.0.3"]
    assert tags_in_version_order(tags) == [
        "latest", "release-1.9.5",  # no version: below every version
        "v0.9", "v1.9.0-rc1", "v1.9.0-rc2", "v1.9.0-rc10", "v1.9.0", "v1.9.0+build.7", "v1.10.0",
        "v2.0.0-alpha", "v2.0.0-beta", "v3.0.3", "v3.0.3.post1",
    ]


def test_it_stores_the_version_key_when_a_tag_is_recorded(db, make_git_repo):
    origin = make_git_repo()
    for tag in ["v1.9.0", "v1.10.0", "nightly-x"]:
        origin.tag(tag)
    repository = Repository.objects.create(name="shop", url=origin.url, tag_pattern="*")

    tracking.poll_repository(repository)

    keys = dict(repository.releases.values_list("version", "version_key"))
    assert keys == {version: sortable_version(version) for version in ["v1.9.0", "v1.10.0", "nightly-x"]}
    ordered = list(repository.releases.order_by("-version_key", "-id").values_list("version", flat=True))
    assert ordered == ["v1.10.0", "v1.9.0", "nightly-x"]


def test_commits_mode_lists_releases_in_the_order_they_were_detected(db, make_git_repo):
    origin = make_git_repo()
    origin.commit("1")  # a short sha of digits only would read as a version: not in commits mode
    repository = Repository.objects.create(name="infra", url=origin.url, release_from="commits")
    tracking.poll_repository(repository)
    origin.commit("2")
    tracking.poll_repository(repository)

    assert set(repository.releases.values_list("version_key", flat=True)) == {"0"}


def many_releases(repository, count):
    """`count` releases v1.0.0 … in one statement, detected in a shuffled order."""
    versions = [f"v{major}.{minor}.{patch}" for major in range(1, 31) for minor in range(10) for patch in range(10)][:count]
    shuffled = versions[::2] + versions[1::2]
    Release.objects.bulk_create([
        Release(repository=repository, version=version, commit_sha=hashlib.sha1(version.encode()).hexdigest(),
                version_key=sortable_version(version))
        for version in shuffled
    ])
    return sorted(versions, key=lambda version: tuple(int(n) for n in version[1:].split(".")), reverse=True)


def test_it_pages_three_thousand_releases_in_version_order_with_constant_queries(client, alice, repository):
    newest_first = many_releases(repository, 3000)
    client.force_login(alice)
    url = reverse("repository_detail", args=["shop"])

    with CaptureQueriesContext(connection) as first_page:
        first = client.get(url)
    with CaptureQueriesContext(connection) as page_30:
        thirtieth = client.get(url, {"page": 30})

    assert len(first_page) == len(page_30)
    per_page = RELEASES_ON_REPOSITORY_PAGE
    assert listed_versions(first) == newest_first[:per_page]
    assert listed_versions(thirtieth) == newest_first[29 * per_page:30 * per_page]
    pages = 3000 // per_page
    assert f"Page 30 of {pages}" in thirtieth.content.decode()
    assert '<span class="count-pill">3000</span>' in first.content.decode()
    # The pager's links lead to the neighbouring pages and to the oldest one.
    assert 'href="?page=31" rel="next"' in thirtieth.content.decode()
    assert 'href="?page=29" rel="prev"' in thirtieth.content.decode()
    assert f'href="?page={pages}"' in first.content.decode()
    last = client.get(url, {"page": pages})
    assert listed_versions(last)[-1] == "v1.0.0"
    assert 'rel="next"' not in last.content.decode()
    # A page past the end or not a number shows the nearest real page.
    assert listed_versions(client.get(url, {"page": 999})) == listed_versions(last)
    assert listed_versions(client.get(url, {"page": "x"})) == listed_versions(first)


def test_the_migration_fills_version_keys_and_the_first_move_of_tags_already_flagged(transactional_db):
    before = [("pipelines", "0012_insights_indexes")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    Repository = apps.get_model("pipelines", "Repository")
    OldRelease = apps.get_model("pipelines", "Release")
    tags = Repository.objects.create(name="tags", url="/tmp/tags")
    commits = Repository.objects.create(name="commits", url="/tmp/commits", release_from="commits")
    for version in ["v1.10.0", "v1.9.0", "nightly"]:
        OldRelease.objects.create(repository=tags, version=version, commit_sha="a" * 40)
    OldRelease.objects.filter(version="v1.9.0").update(tag_moved_to="c" * 40)  # flagged the old way
    OldRelease.objects.create(repository=commits, version="123456789012", commit_sha="b" * 40)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    keys = dict(Release.objects.values_list("version", "version_key"))
    assert keys == {"v1.10.0": sortable_version("v1.10.0"), "v1.9.0": sortable_version("v1.9.0"),
                    "nightly": "0", "123456789012": "0"}
    assert list(TagMove.objects.values_list("release__version", "kind", "from_sha", "to_sha")) == [
        ("v1.9.0", "moved", "a" * 40, "c" * 40)]
