"""Production settings from the environment: `check --deploy` is clean under exactly what the README's
Production section documents, and the SMTP options reach the mailer (whose failures are not swallowed).

Each case runs in a fresh interpreter with only the variables given, like a real deployment."""

import json
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

BASE_DIR = Path(__file__).resolve().parent.parent


def documented_environment():
    """The variables of the README's production example (the block between the production-env markers)."""
    readme = (BASE_DIR / "README.md").read_text()
    block = re.search(r"<!-- production-env -->\s*```\w*\n(.*?)```", readme, re.S)
    assert block, "the README's Production section has an example environment between <!-- production-env --> markers"
    env = {}
    for line in block.group(1).splitlines():
        match = re.match(r"^(?:export )?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            name, value = match.groups()
            value = value.split(" #", 1)[0].strip().strip("'\"")
            # A value the README tells the operator to generate ($(...)) is generated here the same way.
            if value.startswith("$("):
                value = Fernet.generate_key().decode() if "Fernet" in value else secrets.token_urlsafe(50)
            env[name] = value
    return env


def run(code_or_args, tmp_path, env):
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env, "GITOPS_DATA_DIR": str(tmp_path / "data")}
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    return subprocess.run([sys.executable, *args], cwd=BASE_DIR, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_check_deploy_is_clean_under_the_documented_production_settings(tmp_path):
    env = documented_environment()
    for name in ("SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL", "EMAIL_HOST", "SECURE_HSTS_SECONDS",
                 "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "GITOPS_STEP_USER",
                 "GITOPS_SECRETS_KEYS"):
        assert name in env, f"the README's production example sets {name}"

    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path, env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_without_them(tmp_path):
    """So that the test above could fail: the same command on the defaults names what is missing."""
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path,
                 {"SECRET_KEY": secrets.token_urlsafe(50)})
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016", "mail.E001"):
        assert warning in result.stderr


SETTINGS_REPORT = """
import json
from gitops_portal import settings as s
print(json.dumps({name: getattr(s, name, None) for name in (
    "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER", "MAILERS")}))
"""


def test_https_settings_come_from_the_environment(tmp_path):
    result = run(SETTINGS_REPORT, tmp_path, {
        "SECRET_KEY": "k" * 50, "SECURE_SSL_REDIRECT": "1", "SESSION_COOKIE_SECURE": "true", "CSRF_COOKIE_SECURE": "yes",
        "SECURE_HSTS_SECONDS": "63072000", "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1", "SECURE_HSTS_PRELOAD": "1",
        "GITOPS_BEHIND_TLS_PROXY": "1",
    })
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["SECURE_SSL_REDIRECT"] and loaded["SESSION_COOKIE_SECURE"] and loaded["CSRF_COOKIE_SECURE"]
    assert loaded["SECURE_HSTS_SECONDS"] == 63072000
    assert loaded["SECURE_HSTS_INCLUDE_SUBDOMAINS"] and loaded["SECURE_HSTS_PRELOAD"]
    assert loaded["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_the_defaults_serve_plain_http_for_make_run(tmp_path):
    result = run(SETTINGS_REPORT, tmp_path, {"SECRET_KEY": "k" * 50})
    loaded = json.loads(result.stdout)
    assert not loaded["SECURE_SSL_REDIRECT"] and not loaded["SESSION_COOKIE_SECURE"]
    assert loaded["SECURE_HSTS_SECONDS"] == 0 and loaded["SECURE_PROXY_SSL_HEADER"] is None
    assert loaded["MAILERS"] == {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}


MAILER_REPORT = """
import json, django
django.setup()
from django.core.mail import mailers
mailer = mailers["default"]
print(json.dumps({"class": type(mailer).__module__ + "." + type(mailer).__name__, "host": mailer.host,
                  "port": mailer.port, "username": mailer.username, "password": mailer.password,
                  "use_tls": mailer.use_tls, "use_ssl": mailer.use_ssl, "timeout": mailer.timeout}))
"""


def test_the_smtp_options_reach_the_mailer(tmp_path):
    result = run(MAILER_REPORT, tmp_path, {
        "SECRET_KEY": "k" * 50, "DJANGO_SETTINGS_MODULE": "gitops_portal.settings",
        "EMAIL_HOST": "smtp.example.com", "EMAIL_PORT": "2525", "EMAIL_HOST_USER": "portal",
        "EMAIL_HOST_PASSWORD": "s3cret", "EMAIL_USE_TLS": "1", "EMAIL_TIMEOUT": "7",
    })
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "class": "django.core.mail.backends.smtp.EmailBackend", "host": "smtp.example.com", "port": 2525,
        "username": "portal", "password": "s3cret", "use_tls": True, "use_ssl": False, "timeout": 7,
    }


def test_implicit_tls_defaults_to_port_465(tmp_path):
    result = run(MAILER_REPORT, tmp_path, {
        "SECRET_KEY": "k" * 50, "DJANGO_SETTINGS_MODULE": "gitops_portal.settings",
        "EMAIL_HOST": "smtp.example.com", "EMAIL_USE_SSL": "1",
    })
    loaded = json.loads(result.stdout)
    assert (loaded["port"], loaded["use_ssl"], loaded["use_tls"], loaded["timeout"]) == (465, True, False, 10)


@pytest.fixture
def refusing_port():
    """A port on which nothing listens: a mail server that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_mail_server_that_is_down_raises_instead_of_being_swallowed(tmp_path, refusing_port):
    code = """
import django
django.setup()
from django.core.mail import send_mail
try:
    send_mail("subject", "body", None, ["bob@example.com"])
except OSError as exc:
    print("RAISED", type(exc).__name__)
else:
    print("SWALLOWED")
"""
    result = run(code, tmp_path, {
        "SECRET_KEY": "k" * 50, "DJANGO_SETTINGS_MODULE": "gitops_portal.settings",
        "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(refusing_port), "EMAIL_TIMEOUT": "5",
    })
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "RAISED ConnectionRefusedError"


# --- the system check for sealed steps (pipelines/system_checks.py) ------------------------------------


@pytest.mark.parametrize(("step_user", "redis_url", "refused"), [
    ("gitops-step", "redis://redis.internal:6379/0", True),
    ("gitops-step", "rediss://portal@redis.internal:6380/0", True),  # a user name is no password
    ("gitops-step", "redis://:s3cret@redis.internal:6379/0", False),
    ("gitops-step", "rediss://portal:s3cret@redis.internal:6380/0", False),
    ("gitops-step", "unix:///run/redis/redis.sock?password=s3cret", False),
    ("", "redis://redis.internal:6379/0", False),  # steps not sealed: they could read the URL anyway
])
def test_a_redis_without_a_password_is_refused_while_steps_are_sealed(settings, step_user, redis_url, refused):
    from pipelines.system_checks import check_redis_password_when_steps_are_sealed

    settings.GITOPS_STEP_USER, settings.REDIS_URL = step_user, redis_url
    errors = check_redis_password_when_steps_are_sealed(None)
    assert [error.id for error in errors] == (["pipelines.E001"] if refused else [])
    if refused:
        assert "REDIS_URL has no password while deploy steps run sealed as 'gitops-step'" in errors[0].msg


def test_the_embedded_redis_passes_the_check_before_its_password_exists(settings, tmp_path):
    """runportal's own Redis always requires the password it generates; the check must not stop runportal
    from starting it."""
    from pipelines.system_checks import check_redis_password_when_steps_are_sealed

    settings.GITOPS_STEP_USER, settings.GITOPS_DATA_DIR = "gitops-step", tmp_path
    settings.REDIS_URL = f"unix://{tmp_path / 'redis' / 'redis.sock'}"
    assert check_redis_password_when_steps_are_sealed(None) == []
    settings.REDIS_URL = f"unix://{tmp_path / 'elsewhere.sock'}"
    assert len(check_redis_password_when_steps_are_sealed(None)) == 1
