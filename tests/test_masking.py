"""Known secret values are masked in deployment logs before they are stored."""

import os

import pytest

from pipelines import masking, promotion
from pipelines.models import Deployment
from pipelines.runs import kernel
from tests.conftest import new_secrets_key

SECRET_KEY = "masking-test-secret-key-0123456789"


@pytest.fixture
def portal_secrets(settings, monkeypatch):
    settings.SECRET_KEY = SECRET_KEY
    monkeypatch.setenv("DATABASE_URL", "postgres://portal:db-password-42@db.internal/portal")
    settings.REDIS_URL = "redis://:redis-password-43@127.0.0.1:6379/0"
    return settings


def test_it_masks_the_portals_own_secrets(portal_secrets):
    secrets = masking.usable(masking.portal_secrets())
    text = f"key={SECRET_KEY} db=db-password-42 redis=redis-password-43"
    assert masking.mask(text, secrets) == "key=*** db=*** redis=***"


def test_the_audit_key_and_the_mail_password_from_the_environment_are_masked(monkeypatch):
    monkeypatch.setenv("GITOPS_AUDIT_KEY", "audit-key-44")
    monkeypatch.setenv("GITOPS_AUDIT_KEY_FALLBACKS", "old-audit-key-45,older-audit-key-46")
    monkeypatch.setenv("EMAIL_HOST_PASSWORD", "smtp-password-47")
    secrets = masking.usable(masking.portal_secrets())
    text = "audit-key-44 old-audit-key-45 older-audit-key-46 smtp-password-47"
    assert masking.mask(text, secrets) == "*** *** *** ***"


def test_the_smtp_password_of_the_configured_mailer_is_masked(settings):
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                                    "OPTIONS": {"host": "smtp.example.com", "password": "smtp-password-48"}}}
    assert masking.mask("login smtp-password-48", masking.usable(masking.portal_secrets())) == "login ***"


def test_values_shorter_than_six_characters_are_left_alone():
    assert masking.mask("user admin logged in as root", masking.usable({"admin", "root"})) == "user admin logged in as root"
    assert masking.usable({"12345", "123456"}) == ("123456",)


def test_credentials_in_a_url_are_found_as_written_and_decoded():
    assert masking.url_secrets("https://deploy:t%40ken-123@git.example.com/shop.git") == {"t%40ken-123", "t@ken-123"}
    assert masking.url_secrets("https://ghp_abcdef123456@github.com/acme/shop.git") == {"ghp_abcdef123456"}
    assert masking.url_secrets("https://git.example.com/shop.git") == set()
    assert masking.url_secrets("/srv/git/shop") == set()


def test_variables_named_like_secrets_are_masked_and_others_are_not():
    declared = masking.declared_secrets({"API_TOKEN": "tok-123456", "DB_PASSWORD": "hunter2hunter2",
                                         "SIGNING_KEY": "k-abcdef", "REGION": "eu-west-1"})
    assert declared == {"tok-123456", "hunter2hunter2", "k-abcdef"}


def test_a_secret_split_across_two_chunks_is_masked():
    stream = masking.StreamMasker({SECRET_KEY})
    stored = stream.feed("the key is " + SECRET_KEY[:10])
    assert stored == "the key is ", "the possible start of the secret is held back"
    stored += stream.feed(SECRET_KEY[10:] + " and more\n")
    stored += stream.finish()
    assert stored == "the key is *** and more\n"


def test_text_that_only_looks_like_the_start_of_a_secret_is_released():
    stream = masking.StreamMasker({SECRET_KEY})
    assert stream.feed("line one\n") == "line one\n", "nothing held back that cannot begin a secret"
    assert stream.feed("masking-") == ""
    assert stream.feed("tape\n") == "masking-tape\n"
    assert stream.feed("masking-test") == ""
    assert stream.finish() == "masking-test", "the end of the output is stored whatever it looks like"


@pytest.mark.django_db
def test_the_stored_log_is_masked(portal_secrets, repository, staging, make_release):
    repository.url = "https://deploy:repo-token-77@git.example.com/shop.git"
    repository.webhook_secret = "webhook-secret-78"
    repository.save()
    pipeline = "environments:\n  staging:\n    variables: {DEPLOY_TOKEN: declared-79}\n    steps:\n      - run: ./deploy.sh\n"
    deployment = promotion.promote(make_release(repository, "v1", pipeline=pipeline), staging, by=None)
    deployment = Deployment.objects.get(pk=deployment.pk)
    deployment.append_log(f"{SECRET_KEY} repo-token-77 webhook-secret-78 declared-79 db-password-42\n")
    assert deployment.log_since(0)[0] == "*** *** *** *** ***\n"


@pytest.mark.django_db(transaction=True)
def test_a_step_that_prints_the_secret_key_has_it_masked_in_the_stored_log(portal_secrets, repository, staging, origin, make_release):
    """The value reaches the step through a variable (as a careless pipeline file would pass it), is
    printed whole, and split across two flushes of the log."""
    run = ('echo "whole: $SHOWN"; printf "split: %s" "${SHOWN:0:12}"; sleep 0.6; printf "%s\\n" "${SHOWN:12}"')
    pipeline = (f"environments:\n  staging:\n    variables: {{SHOWN: {SECRET_KEY}}}\n    steps:\n"
                f"      - name: deploy\n        run: '{run}'\n")
    origin.write(".gitops.yml", pipeline)
    release = make_release(repository, "v1", pipeline=pipeline, commit_sha=origin.commit("leaky"))
    deployment = promotion.promote(release, staging, by=None)

    kernel.run("deployment", deployment.pk)

    deployment.refresh_from_db()
    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    pieces = list(deployment.log_chunks.order_by("seq").values_list("text", flat=True))
    assert any(piece.endswith("split: ") for piece in pieces), f"the secret was split between two pieces: {pieces}"
    assert SECRET_KEY not in log
    assert "whole: ***\n" in log and "split: ***\n" in log


def test_the_keys_that_encrypt_environment_secrets_are_masked(settings, monkeypatch):
    settings.GITOPS_SECRETS_KEYS = [new_secrets_key()]
    monkeypatch.setenv("GITOPS_SECRETS_KEYS", f"{new_secrets_key()},{new_secrets_key()}")
    keys = [settings.GITOPS_SECRETS_KEYS[0], *os.environ["GITOPS_SECRETS_KEYS"].split(",")]
    assert masking.mask(" ".join(keys), masking.usable(masking.portal_secrets())) == "*** *** ***"


def test_each_line_of_a_multi_line_environment_secret_is_masked_too():
    values = masking.environment_secrets(["-----BEGIN-----\n  line-one-abcdef\nline-two-ghijkl\n"])
    assert {"line-one-abcdef", "line-two-ghijkl"} <= values
