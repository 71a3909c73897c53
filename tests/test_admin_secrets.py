"""Environment secrets in the admin: write-only values, stored encrypted, audited by name only."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from pipelines.models import AuditEvent, EnvironmentSecret
from tests.conftest import environment_form

pytestmark = pytest.mark.django_db

VALUE = "admin-set-db-password-2e9c4f"


def change_url(environment):
    return reverse("admin:pipelines_environment_change", args=[environment.pk])


def add_secret(client, environment, name="DB_PASSWORD", value=VALUE):
    return client.post(change_url(environment), environment_form(environment, [{"name": name, "value": value}]))


def test_a_secret_added_in_the_admin_is_stored_encrypted_and_never_shown_again(client, alice, staging):
    client.force_login(alice)

    response = add_secret(client, staging)

    assert response.status_code == 302, response.content.decode()[:3000]
    secret = EnvironmentSecret.objects.get(environment=staging, name="DB_PASSWORD")
    assert secret.decrypt() == VALUE and VALUE not in secret.ciphertext
    assert secret.updated_by == alice
    html = client.get(change_url(staging)).content.decode()
    assert "DB_PASSWORD" in html and 'type="password" name="secrets-0-value"' in html
    assert VALUE not in html and secret.ciphertext not in html


def test_a_blank_value_keeps_the_stored_secret_and_a_new_one_replaces_it(client, alice, bob, staging, make_secret):
    secret = make_secret(staging, "DB_PASSWORD", VALUE, by=bob)
    client.force_login(alice)
    stored = {"id": secret.pk, "name": "DB_PASSWORD", "value": ""}

    response = client.post(change_url(staging), environment_form(staging, [stored]))

    assert response.status_code == 302, response.content.decode()[:3000]
    secret.refresh_from_db()
    assert secret.decrypt() == VALUE and secret.updated_by == bob, "left blank: neither value nor stamp changes"

    client.post(change_url(staging), environment_form(staging, [{**stored, "value": "a-new-password-7788"}]))
    secret.refresh_from_db()
    assert secret.decrypt() == "a-new-password-7788" and secret.updated_by == alice


def test_a_new_secret_needs_a_value(client, alice, staging):
    client.force_login(alice)

    response = add_secret(client, staging, value="")

    assert response.status_code == 200
    assert "Give the secret&#x27;s value." in response.content.decode()
    assert not EnvironmentSecret.objects.exists()


def test_without_a_key_the_admin_says_to_set_one_and_stores_nothing(client, alice, staging, settings):
    settings.GITOPS_SECRETS_KEYS = []
    client.force_login(alice)

    response = add_secret(client, staging)

    assert response.status_code == 200
    html = response.content.decode()
    assert "set GITOPS_SECRETS_KEYS" in html and VALUE not in html
    assert not EnvironmentSecret.objects.exists()


def test_a_bad_name_is_refused_with_the_reason(client, alice, staging):
    client.force_login(alice)

    response = add_secret(client, staging, name="GITOPS_VERSION")

    assert response.status_code == 200
    html = response.content.decode()
    assert "is set by the portal for every step" in html and VALUE not in html, "not even in the refused form"
    assert not EnvironmentSecret.objects.exists()


def test_the_audit_log_names_the_secret_but_never_its_value(client, alice, staging, make_secret):
    client.force_login(alice)
    add_secret(client, staging)
    secret = EnvironmentSecret.objects.get(name="DB_PASSWORD")
    replaced = {"id": secret.pk, "name": "DB_PASSWORD", "value": "a-new-password-7788"}
    client.post(change_url(staging), environment_form(staging, [replaced]))
    client.post(change_url(staging), environment_form(staging, [{**replaced, "value": "", "DELETE": "on"}]))

    events = list(AuditEvent.objects.filter(action="admin.change").order_by("seq"))
    assert [event.details["values"] for event in events] == [
        {"secrets": {"DB_PASSWORD": "set"}}, {"secrets": {"DB_PASSWORD": "changed"}},
        {"secrets": {"DB_PASSWORD": "deleted"}},
    ]
    for event in events:
        assert VALUE not in event.canonical_json() and "a-new-password-7788" not in event.canonical_json()
        assert event.actor == alice and (event.object_type, event.object_repr) == ("pipelines.environment", "staging")
    assert not EnvironmentSecret.objects.exists()
    assert AuditEvent.objects.first_broken() is None


def test_staff_who_may_only_view_environments_see_no_value(client, django_user_model, staging, make_secret):
    make_secret(staging, "DB_PASSWORD", VALUE)
    viewer = django_user_model.objects.create_user("dora", "dora@example.com", "password", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_environment", "view_environmentsecret"], content_type__app_label="pipelines"))
    client.force_login(viewer)

    html = client.get(change_url(staging)).content.decode()

    assert "DB_PASSWORD" in html, "the secret is listed by name"
    assert VALUE not in html
