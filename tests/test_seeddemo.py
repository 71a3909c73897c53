import os
import subprocess
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from pipelines.models import Environment, Repository, Stage
from pipelines.pipeline_file import parse_pipeline
from tests.conftest import add_stage, stage_of


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.GITOPS_DATA_DIR = tmp_path / "data"
    return settings.GITOPS_DATA_DIR


@pytest.fixture
def demo_repo(data_dir):
    return data_dir / "demo" / "shop"


def seed():
    out = StringIO()
    call_command("seeddemo", stdout=out)
    return out.getvalue()


def git(path, *args):
    return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout.strip()


def test_it_creates_the_repository_with_two_tagged_releases(db, demo_repo):
    output = seed()

    assert git(demo_repo, "tag", "--list").split() == ["v1.0.0", "v1.1.0"]
    first, second = (git(demo_repo, "rev-list", "-n", "1", tag) for tag in ("v1.0.0", "v1.1.0"))
    assert first != second
    assert git(demo_repo, "rev-parse", "HEAD") == second
    assert git(demo_repo, "branch", "--show-current") == "main"
    assert git(demo_repo, "status", "--porcelain") == ""
    repository = Repository.objects.get(name="shop")
    assert (repository.url, repository.branch, repository.poll_interval) == (str(demo_repo), "main", 10)
    assert repository.release_from == Repository.ReleaseFrom.TAGS and repository.tag_pattern == "v*"
    assert "Demo created" in output and str(demo_repo) in output


def test_it_creates_staging_following_git_and_production_waiting_for_approval(db, data_dir, django_user_model):
    admin = django_user_model.objects.create_superuser("admin", "admin@localhost", "password")

    output = seed()

    staging, production = Environment.objects.order_by("position")
    assert (staging.name, staging.position, production.name, production.position) == ("staging", 10, "production", 20)
    first, second = Stage.objects.filter(lifecycle__name="default").order_by("position")
    assert (first.environment, first.auto_deploy, first.requires_approval) == (staging, True, False)
    assert (second.environment, second.auto_deploy, second.requires_approval) == (production, True, True)
    assert second.approval_policy.approver_group.name == "approvers"
    assert list(second.approval_policy.approver_group.user_set.all()) == [admin]
    assert second.approval_policy.block_commit_authors
    assert "no e-mail address" not in output


def test_it_says_that_an_approver_without_an_address_cannot_approve_production(db, data_dir, django_user_model):
    django_user_model.objects.create_superuser("root", "", "password")

    output = seed()

    assert "Note: root has no e-mail address, so production refuses its approvals until one is set" in output


@pytest.mark.parametrize("tag", ["v1.0.0", "v1.1.0"])
def test_its_pipeline_file_parses_at_each_tag(db, demo_repo, tag):
    seed()

    spec = parse_pipeline(git(demo_repo, "show", f"{tag}:.gitops.yml"), known_environments={"staging", "production"})

    assert spec.names() == ["staging", "production"]
    assert all(step.run == "./deploy.sh" for env in spec.environments.values() for step in env.steps)
    mode = git(demo_repo, "ls-tree", tag, "deploy.sh").split()[0]
    assert mode == "100755"


def test_its_deploy_script_reports_the_version_and_environment(db, demo_repo, tmp_path):
    seed()
    fast = tmp_path / "bin"
    fast.mkdir()
    (fast / "sleep").write_text("#!/bin/sh\nexit 0\n")  # the demo sleeps so that the live log is visible
    (fast / "sleep").chmod(0o755)
    env = {"PATH": f"{fast}:{os.environ['PATH']}", "GITOPS_VERSION": "v1.1.0", "GITOPS_ENVIRONMENT": "staging",
           "GITOPS_COMMIT": "0" * 40, "REPLICAS": "1"}

    result = subprocess.run(["bash", "-eo", "pipefail", "-c", "./deploy.sh"], cwd=demo_repo, env=env,
                            capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stderr
    assert "Deploying shop v1.1.0 (commit 0000000000) to staging" in result.stdout
    assert "shop v1.1.0 is live in staging" in result.stdout


def test_it_is_idempotent(db, demo_repo):
    seed()
    head = git(demo_repo, "rev-parse", "HEAD")

    output = seed()

    assert "nothing changed" in output
    assert git(demo_repo, "rev-parse", "HEAD") == head
    assert Repository.objects.count() == 1
    assert Environment.objects.count() == 2
    assert Group.objects.filter(name="approvers").count() == 1


def test_it_keeps_what_an_admin_already_set_up(db, data_dir):
    staging = Environment.objects.create(name="staging", position=10)
    add_stage("default", staging, auto_deploy=False)
    Repository.objects.create(name="shop", url="https://git.example.com/shop.git")

    seed()

    assert stage_of(staging).auto_deploy is False
    assert Repository.objects.get(name="shop").url == "https://git.example.com/shop.git"
    assert Environment.objects.get(name="production").position == 20


def test_it_takes_a_free_position_when_the_usual_one_is_taken(db, data_dir):
    Environment.objects.create(name="qa", position=20)

    seed()

    assert Environment.objects.get(name="production").position == 30


def test_it_ignores_the_users_git_configuration(db, demo_repo, tmp_path, monkeypatch):
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tuseConfigOnly = true\n[commit]\n\tgpgsign = true\n[tag]\n\tgpgsign = true\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))

    seed()

    assert git(demo_repo, "log", "-1", "--format=%an <%ae>") == "Demo Developer <demo@example.com>"


def test_it_refuses_to_overwrite_a_directory_that_is_not_its_repository(db, demo_repo):
    demo_repo.mkdir(parents=True)
    (demo_repo / "notes.txt").write_text("mine")

    with pytest.raises(Exception, match="is not a git repository"):
        seed()

    assert (demo_repo / "notes.txt").read_text() == "mine"
