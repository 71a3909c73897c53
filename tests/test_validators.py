"""What an admin may type into a repository: nothing that git could read as an option or a command."""

import pytest
from django.core.exceptions import ValidationError

from pipelines.models import Repository
from pipelines.validators import (
    validate_git_ref_name,
    validate_relative_path,
    validate_repository_url,
    validate_tag_pattern,
)

DANGEROUS_URLS = [
    "ext::sh -c touch% /tmp/pwned",  # the ext remote helper runs any command
    "EXT::sh -c id",
    "-uhelp",  # read by git as an option
    "--upload-pack=touch /tmp/pwned",
    "--upload-pack=x",
    "fd::1",
    "fd::17/foo",
    "not a url",
    "ftp://example.com/repo.git",
    "relative/path",
    "",
    " https://example.com/repo.git",
    "https://example.com/repo.git\n--upload-pack=x",
]
GOOD_URLS = [
    "https://github.com/example/shop.git",
    "http://git.internal/shop.git",
    "ssh://git@github.com/example/shop.git",
    "git@github.com:example/shop.git",
    "git://git.internal/shop.git",
    "file:///srv/git/shop.git",
    "/srv/git/shop.git",
]


@pytest.mark.parametrize("url", DANGEROUS_URLS)
def test_it_refuses_urls_git_could_run_or_misread(url):
    with pytest.raises(ValidationError):
        validate_repository_url(url)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_it_accepts_https_ssh_scp_like_and_absolute_paths(url):
    validate_repository_url(url)


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/pwned", "-uhelp", "--upload-pack=x", "fd::1", "garbage"])
def test_it_refuses_dangerous_urls_in_the_admin_form_validation(db, url):
    repository = Repository(name="shop", url=url)
    with pytest.raises(ValidationError) as caught:
        repository.full_clean()
    assert set(caught.value.message_dict) == {"url"}


@pytest.mark.parametrize("url", GOOD_URLS)
def test_it_saves_a_repository_with_a_good_url(db, url):
    Repository(name="shop", url=url).full_clean()


@pytest.mark.parametrize("branch", ["-evil", "--upload-pack=x", "a..b", "main branch", "feat~1", "topic/", "x.lock",
                                    ""])
def test_it_refuses_branch_names_git_would_not_accept(branch):
    with pytest.raises(ValidationError):
        validate_git_ref_name(branch)


@pytest.mark.parametrize("branch", ["main", "release/2.x", "feature-1"])
def test_it_accepts_ordinary_branch_names(branch):
    validate_git_ref_name(branch)


@pytest.mark.parametrize("pattern", ["-v*", "v* x", "", "v^1"])
def test_it_refuses_tag_patterns_that_are_not_plain_globs(pattern):
    with pytest.raises(ValidationError):
        validate_tag_pattern(pattern)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.yml", "deploy/../../x", "-x", ""])
def test_it_refuses_pipeline_paths_outside_the_repository(path):
    with pytest.raises(ValidationError):
        validate_relative_path(path)


def test_it_reports_each_bad_field_of_a_repository(db):
    repository = Repository(name="shop", url="/srv/git/shop.git", branch="-evil", tag_pattern="-v*",
                            pipeline_path="../x")
    with pytest.raises(ValidationError) as caught:
        repository.full_clean()
    assert set(caught.value.message_dict) == {"branch", "tag_pattern", "pipeline_path"}


@pytest.mark.parametrize("url", ["ssh://-oProxyCommand=touch%20x/repo", "git@-oFoo:repo", "https://[bad"])
def test_it_refuses_hosts_that_ssh_would_read_as_options_and_malformed_urls(url):
    with pytest.raises(ValidationError):
        validate_repository_url(url)
