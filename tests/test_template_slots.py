"""pipelines' pages name nothing of approvals: approvals fills the slots they offer (GITOPS_TEMPLATE_SLOTS)."""

import re
from pathlib import Path

from django.urls import resolve, reverse


TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
URL_NAMES = re.compile(r"{%\s*url\s+['\"]([\w:-]+)['\"]")


def test_pipelines_templates_and_the_base_page_name_no_url_of_approvals():
    for template in [*sorted((TEMPLATES / "pipelines").glob("*.html")), TEMPLATES / "base.html"]:
        for name in URL_NAMES.findall(template.read_text()):
            if name.startswith("admin:"):
                continue
            path = reverse(name, args=[1] * _arguments_of(name))
            assert not resolve(path).func.__module__.startswith("approvals"), f"{template.name} names {name}"


def _arguments_of(name):
    for count in range(3):
        try:
            reverse(name, args=[1] * count)
            return count
        except Exception:
            continue
    raise AssertionError(f"cannot reverse {name}")


def test_approvals_fills_the_slots_of_the_deployment_and_release_pages(client, alice, repository, production, make_release):
    from pipelines import promotion

    held = promotion.promote(make_release(repository, "v1.0.0"), production, by=alice)
    client.force_login(alice)
    deployment_page = client.get(reverse("deployment_detail", args=[held.pk])).content.decode()
    assert reverse("deployment_change_request", args=[held.pk]) in deployment_page
    assert reverse("approvals_inbox") in deployment_page, "the navigation slot"
    release_page = client.get(held.release.get_absolute_url()).content.decode()
    assert reverse("release_actions", args=[held.release.pk]) in release_page
    assert reverse("deployment_change_request", args=[held.pk]) in release_page


def test_without_approvals_slots_the_pages_still_render(client, alice, repository, production, make_release, settings):
    from pipelines import promotion

    settings.GITOPS_TEMPLATE_SLOTS = {}
    held = promotion.promote(make_release(repository, "v1.0.0"), production, by=alice)
    client.force_login(alice)
    page = client.get(reverse("deployment_detail", args=[held.pk]))
    assert page.status_code == 200
    assert reverse("deployment_change_request", args=[held.pk]) not in page.content.decode()
