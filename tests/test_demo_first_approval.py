"""`make run`'s first approval: the admin it creates approves the demo's production change, as the README says.

The demo's production stage keeps the commit-author rule on, which tells authors by e-mail and refuses an
approver without one; so the admin gets an address of its own, never the demo's commit author's."""

import re
import shlex
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from approvals.models import ChangeRequest, DecisionRefused
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def make_run_arguments(command):
    """The arguments `make run` passes to `manage.py <command>`, read from the Makefile itself."""
    line = re.search(rf"^\s*\$\(PY\) manage\.py {command}\b(.*?);?\s*\\?$", MAKEFILE.read_text(), re.MULTILINE)
    assert line, f"make run no longer calls manage.py {command}"
    return shlex.split(line.group(1).strip().rstrip(";"))


@pytest.fixture
def demo(settings, tmp_path, run_workers, run_follow_ups):
    """ensureadmin and seeddemo as `make run` calls them, then the demo's workers until production holds the
    newest release for approval. Returns (the admin, its open change request)."""
    settings.GITOPS_DATA_DIR = tmp_path / "data"
    settings.GITOPS_BASE_URL_IS_SET = False
    call_command("ensureadmin", *make_run_arguments("ensureadmin"))
    call_command("seeddemo", *make_run_arguments("seeddemo"))
    call_command("pollrepos")

    def production_change():
        run_workers()
        run_follow_ups()
        return ChangeRequest.objects.filter(environment__name="production", status="pending").first()

    change_request = wait_for(production_change, "the demo's production change request", timeout=60)
    return get_user_model().objects.get(username="admin"), change_request


def test_make_runs_admin_has_an_address_that_is_not_the_demos_commit_author(demo):
    admin, change_request = demo

    assert admin.email == "admin@localhost"
    assert change_request.policy.block_commit_authors, "the rule stays on in the demo"
    assert change_request.author_emails == ["demo@example.com"]
    assert change_request.refusal_reason(admin) is None


def test_the_admin_approves_the_demo_through_the_model(demo):
    admin, change_request = demo

    change_request.approve(admin, "looks good")

    change_request.refresh_from_db()
    assert change_request.status == "approved"
    assert change_request.deployment.status in ("queued", "running", "succeeded")


def test_the_admin_approves_the_demo_on_its_page(demo):
    admin, change_request = demo
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    page = client.get(reverse("change_request_detail", args=[change_request.pk])).content.decode()
    assert "no e-mail address" not in page and 'action="/approvals/' in page

    response = client.post(reverse("change_request_approve", args=[change_request.pk]),
                           {"comment": "ok", "csrfmiddlewaretoken": client.cookies["csrftoken"].value}, follow=True)

    assert f"You approved change request #{change_request.pk}" in response.content.decode()
    change_request.refresh_from_db()
    assert change_request.status == "approved"


def test_the_demos_commit_author_may_still_not_approve_it(demo, django_user_model):
    _, change_request = demo
    author = django_user_model.objects.create_user("demo", "Demo@Example.com", "password")
    author.groups.add(change_request.policy.approver_group)

    with pytest.raises(DecisionRefused, match="You authored or committed a commit in this change"):
        change_request.approve(author)

    change_request.refresh_from_db()
    assert change_request.status == "pending"
