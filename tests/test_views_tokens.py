"""The tokens page: a person issues their own token (shown once, stored hashed) and revokes it."""

from django.urls import reverse

from api.models import ApiToken
from tests.conftest import bearer


def test_a_person_issues_a_token_sees_it_once_and_it_works(client, bob):
    client.force_login(bob)
    page = client.post(reverse("api_tokens"), {"name": "laptop", "scopes": ["read", "deploy"], "days": "30"})
    assert page.status_code == 200
    plaintext = page.context["issued"][1]
    assert plaintext.startswith("gpt_") and plaintext in page.content.decode()
    token = ApiToken.objects.get(user=bob, name="laptop")
    assert token.scopes == ["deploy", "read"] and token.created_by == bob
    assert plaintext not in client.get(reverse("api_tokens")).content.decode()  # shown once
    client.logout()
    assert client.get("/api/v1/status", **bearer(plaintext)).status_code == 200


def test_it_refuses_a_token_without_scopes_and_says_so(client, bob):
    client.force_login(bob)
    page = client.post(reverse("api_tokens"), {"name": "laptop", "days": "30"})
    assert page.status_code == 400 and "Choose at least one scope." in page.content.decode()
    assert not ApiToken.objects.exists()


def test_revoking_on_the_page_refuses_the_next_request(client, bob, charlie, make_token):
    plaintext = make_token(bob, "read", name="laptop")
    token = ApiToken.objects.get(name="laptop")
    client.force_login(charlie)
    assert client.post(reverse("api_token_revoke", args=[token.pk])).status_code == 404  # not charlie's
    client.force_login(bob)
    client.post(reverse("api_token_revoke", args=[token.pk]))
    client.logout()
    assert client.get("/api/v1/status", **bearer(plaintext)).status_code == 401


def test_the_navigation_links_the_tokens_page(client, charlie):
    client.force_login(charlie)
    assert reverse("api_tokens") in client.get(reverse("dashboard")).content.decode()


def test_it_refuses_a_scope_beyond_what_the_person_may_do_and_says_which(client, charlie):
    client.force_login(charlie)
    page = client.post(reverse("api_tokens"), {"name": "ci", "scopes": ["read", "checks:report"], "days": "30"})
    assert page.status_code == 400
    assert ("charlie may not hold the scope &#x27;checks:report&#x27;: it needs the permission "
            "&#x27;pipelines.report_checks&#x27; (given to CI service accounts).") in page.content.decode()
    assert not ApiToken.objects.exists()


def test_the_page_says_which_scopes_the_person_cannot_have(client, charlie):
    client.force_login(charlie)
    html = client.get(reverse("api_tokens")).content.decode()
    assert 'value="read">' in html
    assert 'value="checks:report" disabled>' in html and "needs the permission" in html
