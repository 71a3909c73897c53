"""The 404, 403 and 500 pages keep the navigation (or, for 500, a way back) and the favicon is never a 404."""

import pytest
from django.test import Client
from django.urls import reverse


def test_a_missing_page_is_a_404_with_the_navigation(client, charlie):
    client.force_login(charlie)
    response = client.get("/no/such/page/")
    html = response.content.decode()
    assert response.status_code == 404
    assert "<h1>Not found</h1>" in html and "/no/such/page/" in html
    assert 'aria-label="Main"' in html and f'href="{reverse("dashboard")}"' in html
    assert 'class="skip-link"' in html


def test_a_refusal_is_a_403_that_says_why_with_the_navigation(client, charlie, repository):
    client.force_login(charlie)  # no deploy permission
    response = client.post(reverse("repository_poll", args=[repository.name]))
    html = response.content.decode()
    assert response.status_code == 403
    assert "<h1>Not allowed</h1>" in html and 'aria-label="Main"' in html


@pytest.mark.urls("tests.urls_that_fail")
def test_a_server_error_is_a_500_page_with_a_way_back(db):
    client = Client(raise_request_exception=False)
    response = client.get("/boom/")
    html = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong" in html and 'href="/"' in html


def test_the_favicon_is_found(client, db):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response.url.endswith("favicon.svg")
