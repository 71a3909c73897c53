import re
import stat
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.GITOPS_DATA_DIR = tmp_path / "data"
    settings.GITOPS_BASE_URL = "http://127.0.0.1:8000"
    settings.GITOPS_BASE_URL_IS_SET = True
    return settings.GITOPS_DATA_DIR


def ensureadmin():
    out = StringIO()
    call_command("ensureadmin", stdout=out)
    return out.getvalue()


def test_it_creates_admin_with_a_random_password_kept_in_a_private_file(db, data_dir, django_user_model):
    output = ensureadmin()

    printed = re.search(r"^Sign in at http://127\.0\.0\.1:8000/ as admin / (\S+)$", output, re.MULTILINE).group(1)
    password_file = data_dir / "admin-password.txt"
    assert password_file.read_text().strip() == printed
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password(printed)
    assert len(printed) >= 16


def test_each_portal_gets_its_own_password(db, data_dir, django_user_model, tmp_path, settings):
    ensureadmin()
    first = (data_dir / "admin-password.txt").read_text()
    django_user_model.objects.all().delete()
    settings.GITOPS_DATA_DIR = tmp_path / "other"

    ensureadmin()

    assert (tmp_path / "other" / "admin-password.txt").read_text() != first


def test_it_keeps_an_existing_superuser_and_its_password(db, data_dir, django_user_model):
    ensureadmin()
    password = (data_dir / "admin-password.txt").read_text().strip()

    output = ensureadmin()

    assert "'admin' exists and is kept" in output and str(data_dir / "admin-password.txt") in output
    assert django_user_model.objects.count() == 1
    assert django_user_model.objects.get().check_password(password)


def test_it_creates_nobody_when_another_superuser_exists(db, data_dir, django_user_model):
    django_user_model.objects.create_superuser("alice", "alice@example.com", "password")

    output = ensureadmin()

    assert "Superuser 'alice' exists and is kept." in output
    assert not django_user_model.objects.filter(username="admin").exists()
    assert not (data_dir / "admin-password.txt").exists()


def test_it_refuses_to_take_over_an_ordinary_user_named_admin(db, data_dir, django_user_model):
    django_user_model.objects.create_user("admin", "", "password")

    with pytest.raises(CommandError, match="exists but is not a superuser"):
        ensureadmin()

    assert not django_user_model.objects.get(username="admin").is_superuser


def test_it_names_no_address_when_none_was_chosen(db, data_dir, settings):
    # `make run` calls it before runportal picks its port: the default URL could name the wrong one.
    settings.GITOPS_BASE_URL_IS_SET = False

    output = ensureadmin()

    assert re.search(r"^Sign in as admin / \S+ at the address the portal prints when it starts\.$", output, re.MULTILINE)
    assert "http" not in output


def test_it_gives_the_admin_the_address_it_is_told(db, data_dir, django_user_model):
    call_command("ensureadmin", "--email", "admin@localhost", stdout=StringIO())

    assert django_user_model.objects.get(username="admin").email == "admin@localhost"


def test_it_refuses_an_address_that_is_none_and_creates_nobody(db, data_dir, django_user_model):
    with pytest.raises(CommandError, match="'not an address' is not an e-mail address; nothing was created"):
        call_command("ensureadmin", "--email", "not an address", stdout=StringIO())

    assert not django_user_model.objects.exists()


def test_it_says_when_the_superuser_it_keeps_has_no_address(db, data_dir, django_user_model):
    # Created by an earlier `make run`: the commit-author rule refuses its approvals until it has one.
    django_user_model.objects.create_superuser("admin", "", "password")

    output = ensureadmin()

    assert "It has no e-mail address, so stages that block commit authors refuse its approvals" in output
