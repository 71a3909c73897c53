"""A token in a repository URL is on no page, in no export, in no audit event and in no log line.

alice, a superuser, adds a repository whose URL carries a token through the admin form, then changes it
to another URL with a token (a closed port on this machine, so the poll fails for real and quickly), and
the repository is polled. Then every place a person can read is searched for the token."""

import logging

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from pipelines import tracking
from pipelines.models import AuditEvent, Repository
from tests.conftest import free_port
from pipelines.models.lifecycle import default_lifecycle_id

pytestmark = pytest.mark.django_db

TOKEN = "s3cr3t-token"
URL = f"https://user:{TOKEN}@git.example.com/org/repo.git"


def repository_form(url, **overrides):
    return {
        "name": "shop", "url": url, "web_url": "", "enabled": "on", "branch": "main", "release_from": "tags",
        "tag_pattern": "v*", "pipeline_path": ".gitops.yml", "poll_interval": 60, "webhook_secret": "",
        "lifecycle": default_lifecycle_id(), "_save": "Save",
        # The hosts here do not exist: the admin's check of the remote fails, and the form says so (redacted).
        "save_anyway": "on",
        "check_secrets-TOTAL_FORMS": 0, "check_secrets-INITIAL_FORMS": 0, "check_secrets-MIN_NUM_FORMS": 0,
        "check_secrets-MAX_NUM_FORMS": 1000,
        **overrides,
    }


@pytest.fixture
def tokened_repository(client, alice, caplog):
    caplog.set_level(logging.DEBUG)
    client.force_login(alice)
    response = client.post(reverse("admin:pipelines_repository_add"), repository_form(URL))
    assert response.status_code == 302, response.content.decode()[:2000]
    repository = Repository.objects.get(name="shop")
    assert repository.url == URL  # the portal keeps the real value to fetch with

    unreachable = f"https://user:{TOKEN}@127.0.0.1:{free_port()}/org/repo.git"
    response = client.post(reverse("admin:pipelines_repository_change", args=[repository.pk]),
                           repository_form(unreachable, branch="release"))
    assert response.status_code == 302, response.content.decode()[:2000]
    repository.refresh_from_db()
    assert repository.url == unreachable

    tracking.poll_repository(repository)  # fails: nothing listens on that port
    repository.refresh_from_db()
    assert repository.last_error and "127.0.0.1" in repository.last_error
    return repository


@pytest.mark.django_db(transaction=True)  # the poll runs in a forked work-horse, which sees only committed rows
def test_poll_now_in_the_admin_reports_the_failure_without_the_token(client, tokened_repository, run_workers):
    response = client.post(reverse("admin:pipelines_repository_changelist"), {
        "action": "poll_now", ACTION_CHECKBOX_NAME: [tokened_repository.pk],
    }, follow=True)
    assert "Polling shop now" in response.content.decode()
    run_workers()  # the poll itself runs in a worker, and fails
    html = client.get(reverse("admin:pipelines_repository_changelist")).content.decode()
    assert "127.0.0.1" in html
    assert TOKEN not in html and TOKEN not in response.content.decode()


def test_the_token_is_on_no_page(client, tokened_repository):
    repository = tokened_repository
    pages = {
        "audit log": reverse("audit_log"),
        "repository page": reverse("repository_detail", args=[repository.name]),
        "dashboard": reverse("dashboard"),
        "admin list": reverse("admin:pipelines_repository_changelist"),
        "admin history": reverse("admin:pipelines_repository_history", args=[repository.pk]),
        "admin audit list": reverse("admin:pipelines_auditevent_changelist"),
    }
    pages.update({f"admin audit event #{event.seq}": reverse("admin:pipelines_auditevent_change", args=[event.pk])
                  for event in AuditEvent.objects.all()})
    for name, url in pages.items():
        response = client.get(url)
        assert response.status_code == 200, name
        assert TOKEN not in response.content.decode(), f"the token is shown on the {name}"

    assert "https://***@git.example.com/org/repo.git" in client.get(pages["audit log"]).content.decode()
    assert "https://***@127.0.0.1:" in client.get(pages["repository page"]).content.decode()
    assert "https://***@127.0.0.1:" in client.get(pages["admin list"]).content.decode()


def test_the_token_is_in_no_export(client, tokened_repository):
    for name in ("audit_export_csv", "audit_export_json"):
        response = client.get(reverse(name))
        text = b"".join(response.streaming_content).decode()
        assert "admin.change" in text and TOKEN not in text, name


def test_the_token_is_in_no_audit_event_and_the_change_is_recorded_redacted(tokened_repository):
    events = list(AuditEvent.objects.order_by("seq"))
    assert [e.action for e in events] == ["audit.genesis", "admin.add", "admin.change", "repository.poll_failed"]
    for event in events:
        assert TOKEN not in event.canonical_json(), event.action
    change = events[2].details["values"]
    assert change["url"][0] == "https://***@git.example.com/org/repo.git"
    assert change["url"][1].startswith("https://***@127.0.0.1:")
    assert change["branch"] == ["main", "release"]
    assert AuditEvent.objects.first_broken() is None


def test_the_token_is_in_no_error_and_no_log_line(tokened_repository, caplog):
    assert TOKEN not in tokened_repository.last_error
    records = caplog.get_records("setup") + caplog.get_records("call")
    assert records, "the admin requests and the failed poll log at least at DEBUG level"
    for record in records:
        assert TOKEN not in record.getMessage(), record.name
        assert TOKEN not in (record.exc_text or ""), record.name


def test_the_admin_form_keeps_the_real_value_only_in_its_input_for_staff(client, tokened_repository):
    html = client.get(reverse("admin:pipelines_repository_change", args=[tokened_repository.pk])).content.decode()
    assert html.count(TOKEN) == 1 and f'value="{tokened_repository.url}"' in html


def test_view_only_staff_never_see_the_token(client, django_user_model, tokened_repository):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("vera", "vera@example.com", "password", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_repository"))
    client.force_login(viewer)
    for url in (reverse("admin:pipelines_repository_change", args=[tokened_repository.pk]),
                reverse("admin:pipelines_repository_changelist")):
        response = client.get(url)
        assert response.status_code == 200
        assert TOKEN not in response.content.decode()
