"""Environment secrets at rest: encrypted with GITOPS_SECRETS_KEYS, names checked, keys rotated, keys checked."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection

from pipelines import secrets, system_checks
from pipelines.models import AuditEvent, EnvironmentSecret
from tests.conftest import new_secrets_key

pytestmark = pytest.mark.django_db

VALUE = "db-password-value-3f8e21"


def test_the_value_is_stored_encrypted_never_in_plaintext(staging, make_secret, settings):
    secret = make_secret(staging, "DB_PASSWORD", VALUE)

    with connection.cursor() as cursor:  # the row as anyone with a copy of the database reads it
        cursor.execute(f"SELECT * FROM {EnvironmentSecret._meta.db_table} WHERE id = %s", [secret.pk])
        row = cursor.fetchone()
    assert not [column for column in row if VALUE in str(column)]
    assert Fernet(settings.GITOPS_SECRETS_KEYS[0]).decrypt(secret.ciphertext.encode()).decode() == VALUE
    assert EnvironmentSecret.objects.get(pk=secret.pk).decrypt() == VALUE


@pytest.mark.parametrize("name", ["db_password", "1TOKEN", "API-TOKEN", "API TOKEN", ""])
def test_a_name_must_be_an_environment_variable_name(staging, name):
    secret = EnvironmentSecret(environment=staging, name=name)
    secret.set_value(VALUE)
    with pytest.raises(ValidationError) as refused:
        secret.full_clean()
    assert "name" in refused.value.message_dict


@pytest.mark.parametrize("name", ["GITOPS_COMMIT", "GITOPS_TOKEN", "PATH", "HOME", "LANG"])
def test_a_name_the_portal_sets_for_every_step_is_refused(staging, name):
    secret = EnvironmentSecret(environment=staging, name=name)
    secret.set_value(VALUE)
    with pytest.raises(ValidationError, match="set by the portal for every step"):
        secret.full_clean()


def test_a_name_is_unique_within_its_environment_only(staging, production, make_secret):
    make_secret(staging, "DB_PASSWORD", VALUE)
    make_secret(production, "DB_PASSWORD", "another-value-1234")
    with pytest.raises(ValidationError):
        make_secret(staging, "DB_PASSWORD", "third-value-5678")


def test_a_value_too_short_to_be_masked_in_logs_is_refused(staging):
    with pytest.raises(ValidationError, match="could not be masked in logs"):
        EnvironmentSecret(environment=staging, name="PIN").set_value("1234")


def test_without_a_key_storing_a_secret_says_what_to_set(staging, settings):
    settings.GITOPS_SECRETS_KEYS = []
    with pytest.raises(secrets.SecretsNotConfigured, match="set GITOPS_SECRETS_KEYS"):
        EnvironmentSecret(environment=staging, name="DB_PASSWORD").set_value(VALUE)


def test_an_environments_secrets_are_loaded_in_one_query(staging, production, make_secret, django_assert_num_queries):
    make_secret(staging, "DB_PASSWORD", VALUE)
    make_secret(staging, "API_TOKEN", "api-token-value-77")
    make_secret(production, "DB_PASSWORD", "production-value-88")
    with django_assert_num_queries(1):
        values = EnvironmentSecret.objects.values_for(staging)
    assert values == {"API_TOKEN": "api-token-value-77", "DB_PASSWORD": VALUE}


# --- rotation ----------------------------------------------------------------------------------------


def test_rotation_re_encrypts_with_the_new_key_so_the_old_one_can_go(staging, make_secret, settings):
    old, new = new_secrets_key(), new_secrets_key()
    settings.GITOPS_SECRETS_KEYS = [old]
    secret = make_secret(staging, "DB_PASSWORD", VALUE)

    settings.GITOPS_SECRETS_KEYS = [new, old]
    output = io.StringIO()
    call_command("rotatesecrets", stdout=output)
    assert "Re-encrypted 1 secret(s)" in output.getvalue()
    settings.GITOPS_SECRETS_KEYS = [new]

    secret.refresh_from_db()
    assert secret.decrypt() == VALUE
    assert Fernet(new).decrypt(secret.ciphertext.encode()).decode() == VALUE
    event = AuditEvent.objects.get(action="secrets.rotated")
    assert event.details == {"re-encrypted": 1, "unreadable": []}


def test_rotation_names_a_secret_no_key_opens_and_rotates_the_others(staging, production, make_secret, settings):
    lost, kept, new = new_secrets_key(), new_secrets_key(), new_secrets_key()
    settings.GITOPS_SECRETS_KEYS = [lost]
    make_secret(staging, "LOST_TOKEN", "lost-token-value-11")
    settings.GITOPS_SECRETS_KEYS = [kept]
    readable = make_secret(production, "DB_PASSWORD", VALUE)

    settings.GITOPS_SECRETS_KEYS = [new, kept]
    with pytest.raises(CommandError, match="LOST_TOKEN of environment staging") as refused:
        call_command("rotatesecrets")
    assert "lost-token-value-11" not in str(refused.value)

    settings.GITOPS_SECRETS_KEYS = [new]
    readable.refresh_from_db()
    assert readable.decrypt() == VALUE


# --- system checks -----------------------------------------------------------------------------------


def test_no_key_is_fine_while_no_secret_is_stored(settings):
    settings.GITOPS_SECRETS_KEYS = []
    assert system_checks.check_secrets_keys(None) == []


def test_no_key_is_an_error_once_secrets_are_stored(staging, make_secret, settings):
    make_secret(staging, "DB_PASSWORD", VALUE)
    settings.GITOPS_SECRETS_KEYS = []
    assert [error.id for error in system_checks.check_secrets_keys(None)] == ["pipelines.E003"]


def test_a_key_that_is_not_a_fernet_key_is_an_error_that_does_not_show_it(settings):
    settings.GITOPS_SECRETS_KEYS = [new_secrets_key(), "not-a-fernet-key-42"]
    errors = system_checks.check_secrets_keys(None)
    assert [error.id for error in errors] == ["pipelines.E002"]
    assert "number 2" in errors[0].msg and "not-a-fernet-key-42" not in errors[0].msg
