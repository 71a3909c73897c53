"""pipelines.git against real repositories in tmp_path."""

import os
import stat
import time
from datetime import timezone as dt_timezone

import pytest

from pipelines import git
from pipelines.models import Repository
from tests.conftest import git as run_git


def test_it_lists_branches_and_tags_peeling_annotated_tags(repository, origin):
    head = origin.head()
    origin.tag("v1.0.0", annotated=True)
    origin.tag("v1.0.1")
    refs = git.ls_remote(repository)
    assert refs == {"refs/heads/main": head, "refs/tags/v1.0.0": head, "refs/tags/v1.0.1": head}


def test_it_explains_an_unreachable_repository_in_plain_words(db, tmp_path):
    missing = tmp_path / "gone"
    repository = Repository.objects.create(name="gone", url=str(missing))
    with pytest.raises(git.GitError) as caught:
        git.ls_remote(repository)
    assert str(caught.value) == f"Cannot reach repository {missing}: '{missing}' does not appear to be a git repository"


@pytest.mark.parametrize("url", [
    "ext::sh -c touch% {pwned}",
    "--upload-pack=touch {pwned}",
    "-uhelp",
    "fd::1",
    "ssh://-oProxyCommand=touch%20{pwned}/repo",
    "git@-oProxyCommand=x:repo",
    "https://[not-a-host/repo",
])
def test_it_refuses_unsafe_urls_that_bypassed_the_form(repository, tmp_path, url):
    pwned = tmp_path / "pwned"
    Repository.objects.filter(pk=repository.pk).update(url=url.format(pwned=pwned))
    repository.refresh_from_db()
    with pytest.raises(git.GitError, match="^Refusing repository shop"):
        git.ls_remote(repository)
    with pytest.raises(git.GitError, match="^Refusing repository shop"):
        git.sync_mirror(repository)
    assert not pwned.exists()


@pytest.mark.parametrize("credentials", ["deploy:s3cr3t-token", "s3cr3t-token", "x-access-token:s3cr3t-token"])
def test_it_hides_the_credentials_of_an_https_url_in_errors(db, credentials):
    repository = Repository.objects.create(name="private", url=f"https://{credentials}@127.0.0.1:9/shop.git")
    with pytest.raises(git.GitError) as caught:
        git.ls_remote(repository)
    assert "s3cr3t-token" not in str(caught.value)
    assert str(caught.value).startswith("Cannot reach repository https://***@127.0.0.1:9/shop.git: ")


def test_the_repository_page_never_shows_a_token_in_the_url(client, alice):
    Repository.objects.create(name="private", url="https://ghp_s3cr3t@github.example/org/shop.git")
    client.force_login(alice)
    html = client.get("/repos/private/").content.decode()
    assert "ghp_s3cr3t" not in html
    assert "https://***@github.example/org/shop.git" in html


def test_it_mirrors_branches_and_tags_and_prunes_deleted_ones(repository, origin):
    run_git(origin.path, "branch", "feature")
    origin.tag("v1.0.0", annotated=True)
    git.sync_mirror(repository)
    mirror = git.mirror_path(repository)
    assert run_git(mirror, "for-each-ref", "--format=%(refname)").split() == [
        "refs/heads/feature", "refs/heads/main", "refs/tags/v1.0.0"]

    run_git(origin.path, "branch", "-D", "feature")
    git.sync_mirror(repository)
    assert run_git(mirror, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/main", "refs/tags/v1.0.0"]


def test_it_reads_a_commit_message_author_and_time(repository, origin):
    sha = origin.commit("Fix checkout\n\nLonger explanation.", author_email="erin@example.com", author_name="Erin")
    git.sync_mirror(repository)
    commit = git.commit_info(repository, sha)
    assert (commit.sha, commit.message, commit.author_name, commit.author_email) == (
        sha, "Fix checkout\n\nLonger explanation.", "Erin", "erin@example.com")
    assert commit.committed_at.utcoffset() is not None
    assert abs(commit.committed_at.astimezone(dt_timezone.utc).timestamp() - time.time()) < 600


def test_it_reads_a_file_at_a_commit_and_none_when_it_is_absent(repository, origin):
    first = origin.head()
    origin.write(".gitops.yml", "environments: {}\n")
    origin.write("config/app.yml", "x: 1\n")
    second = origin.commit("change pipeline")
    git.sync_mirror(repository)
    assert git.read_file(repository, first, ".gitops.yml").startswith("environments:\n  staging:")
    assert git.read_file(repository, second, ".gitops.yml") == "environments: {}\n"
    assert git.read_file(repository, second, "config/app.yml") == "x: 1\n"
    assert git.read_file(repository, first, "config/app.yml") is None
    assert git.read_file(repository, second, "config") is None  # a directory is not a file


def test_it_lists_first_parent_commits_oldest_first_up_to_a_limit(repository, origin):
    start = origin.head()
    mine = [origin.commit(f"main {n}") for n in range(3)]
    run_git(origin.path, "checkout", "-q", "-b", "side", start)
    side = origin.commit("on a side branch")
    run_git(origin.path, "checkout", "-q", "main")
    run_git(origin.path, "merge", "-q", "--no-ff", "-m", "merge side", "side")
    merge = origin.head()
    git.sync_mirror(repository)

    shas = [c.sha for c in git.commits_between(repository, start, merge, limit=50)]
    assert shas == [*mine, merge]
    assert side not in shas
    assert [c.sha for c in git.commits_between(repository, start, merge, limit=2)] == [mine[2], merge]


def test_it_materialises_the_files_of_a_commit_with_their_executable_bits(repository, origin, tmp_path):
    origin.write("scripts/migrate.sh", "#!/bin/sh\n", executable=True)
    origin.write("docs/notes.txt", "hello\n")
    # export-ignore would make git archive drop the file: a deployment needs every file of the commit.
    origin.write(".gitattributes", "docs/notes.txt export-ignore\n")
    sha = origin.commit("add files")
    origin.write("later.txt", "not in this release\n")
    origin.commit("later")
    git.sync_mirror(repository)
    destination = tmp_path / "checkout"
    destination.mkdir()

    git.materialise(repository, sha, destination)

    files = sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())
    assert files == [".gitattributes", ".gitops.yml", "deploy.sh", "docs/notes.txt", "scripts/migrate.sh"]
    assert os.access(destination / "deploy.sh", os.X_OK)
    assert os.access(destination / "scripts/migrate.sh", os.X_OK)
    assert not (destination / "docs/notes.txt").stat().st_mode & stat.S_IXUSR
    assert (destination / "docs/notes.txt").read_text() == "hello\n"


def test_it_fetches_a_commit_missing_from_the_mirror_before_materialising(repository, origin, tmp_path):
    # A worker on another machine, or a fresh data dir: no mirror at all yet.
    assert not git.mirror_path(repository).exists()
    destination = tmp_path / "checkout"
    destination.mkdir()
    git.materialise(repository, origin.head(), destination)
    assert (destination / "deploy.sh").read_text().startswith("#!/usr/bin/env bash")


def test_it_says_so_when_a_commit_is_gone_from_the_repository(repository, tmp_path):
    destination = tmp_path / "checkout"
    destination.mkdir()
    with pytest.raises(git.GitError, match="^Commit 0123456789 is no longer in repository "):
        git.materialise(repository, "0123456789" * 4, destination)


@pytest.mark.parametrize("sha", ["HEAD", "main", "--output=/tmp/x", "abc123"])
def test_it_refuses_anything_but_a_full_sha(repository, tmp_path, sha):
    with pytest.raises(git.GitError, match="is not a full commit sha"):
        git.materialise(repository, sha, tmp_path)
    with pytest.raises(git.GitError, match="is not a full commit sha"):
        git.commit_info(repository, sha)


def test_it_materialises_two_thousand_files_in_a_fixed_number_of_git_calls(repository, origin, tmp_path, monkeypatch):
    for n in range(2000):
        origin.write(f"dir{n % 40}/file{n}.txt", f"content {n}\n")
    sha = origin.commit("many files")
    git.sync_mirror(repository)
    destination = tmp_path / "checkout"
    destination.mkdir()
    trace = tmp_path / "git-trace.log"
    monkeypatch.setenv("GIT_TRACE", str(trace))  # git itself logs every command it runs

    git.materialise(repository, sha, destination)

    assert sum(1 for p in destination.rglob("*.txt")) == 2000
    # One archive streamed into tar (about 60 ms on an idle machine, where tar alone takes as long):
    # the cost does not grow by a git call per file. Timing itself is left to benchmarks.
    commands = [line.split("built-in: ")[1] for line in trace.read_text().splitlines() if "built-in: git" in line]
    assert [command.split()[1:3] for command in commands] == [["archive", "--format=tar"]]


def test_it_fetches_a_commit_the_mirror_does_not_have_yet_and_then_writes_it(repository, origin, tmp_path):
    git.sync_mirror(repository)
    origin.write("late.txt", "pushed after the mirror was made\n")
    sha = origin.commit("late")
    destination = tmp_path / "checkout"
    destination.mkdir()

    git.materialise(repository, sha, destination)

    assert (destination / "late.txt").read_text() == "pushed after the mirror was made\n"


# --- a remote that accepts a connection and never answers ----------------------------------------------


def test_it_gives_up_on_a_silent_remote_after_the_overall_timeout(db, settings, silent_remote):
    url, accepted = silent_remote
    settings.GITOPS_GIT_TIMEOUT = 2
    repository = Repository.objects.create(name="silent", url=url)
    started = time.monotonic()
    with pytest.raises(git.GitError) as caught:
        git.ls_remote(repository)
    assert time.monotonic() - started < 8
    assert accepted, "git never connected to the listener"
    assert str(caught.value) == f"Cannot reach repository {url}: no answer within 2 s"


def test_it_gives_up_on_an_idle_http_remote_before_the_overall_timeout(db, settings, silent_remote):
    url, _ = silent_remote
    settings.GITOPS_GIT_TIMEOUT = 60
    settings.GITOPS_GIT_IDLE_TIMEOUT = 2
    repository = Repository.objects.create(name="silent", url=url)
    started = time.monotonic()
    with pytest.raises(git.GitError) as caught:
        git.ls_remote(repository)
    assert time.monotonic() - started < 15
    assert str(caught.value).startswith(f"Cannot reach repository {url}: ")
    assert "no answer within 60 s" not in str(caught.value)


# --- batched reads of many tags --------------------------------------------------------------------------


def test_it_peels_every_tag_in_one_listing(repository, origin):
    commit = origin.head()
    origin.tag("v1.0.0")
    origin.tag("v1.1.0", annotated=True)
    run_git(origin.path, "tag", "-a", "v1.2.0", "-m", "a tag of a tag", "v1.1.0")
    blob = run_git(origin.path, "hash-object", "-w", ".gitops.yml")
    run_git(origin.path, "tag", "v1.3.0", blob)
    git.sync_mirror(repository)

    targets = git.tag_targets(repository)

    assert targets == {
        "v1.0.0": git.TagTarget("commit", commit), "v1.1.0": git.TagTarget("commit", commit),
        "v1.2.0": git.TagTarget("commit", commit), "v1.3.0": git.TagTarget("blob", blob),
    }


def test_it_reads_commits_and_files_of_many_commits_at_once(repository, origin):
    first = origin.head()
    origin.write(".gitops.yml", "second version\n")
    second = origin.commit("Second\n\nwith a body")
    origin.path.joinpath(".gitops.yml").unlink()
    origin.write(".gitops.yml/inside", "a directory of that name is not the file\n")
    third = origin.commit("third")
    git.sync_mirror(repository)

    commits = git.commits_info(repository, [first, second, third, second])
    files = git.read_files(repository, [first, second, third], ".gitops.yml")

    assert sorted(commits) == sorted([first, second, third])
    assert (commits[second].message, commits[second].author_email) == ("Second\n\nwith a body", "dana@example.com")
    assert files[first] == git.read_file(repository, first, ".gitops.yml")
    assert files[second] == "second version\n"
    assert files[third] is None
    assert git.read_files(repository, [first], "missing.yml") == {first: None}
    with pytest.raises(git.GitError, match="not a full commit sha"):
        git.read_files(repository, ["--output=/tmp/x"], ".gitops.yml")


def test_ssh_gives_up_on_a_host_that_does_not_answer(monkeypatch, settings):
    monkeypatch.delenv("GIT_SSH", raising=False)
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    settings.GITOPS_GIT_IDLE_TIMEOUT = 15
    command = git._environment()["GIT_SSH_COMMAND"].split()
    assert command[0] == "ssh"
    options = dict(option.split("=", 1) for option in command[2::2])
    assert options == {"BatchMode": "yes", "ConnectTimeout": str(git.CONNECT_TIMEOUT), "ServerAliveInterval": "5",
                       "ServerAliveCountMax": "3"}
