"""Settings for the test suite: the real ones, with a throwaway key and fast password hashing."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
# A fixed Fernet key (32 bytes, url-safe base64), so tests of secrets need no key file.
os.environ.setdefault("GITOPS_SECRETS_KEYS", "dGVzdC1vbmx5LXNlY3JldHMta2V5LTMyLWJ5dGVzISE=")

from gitops_portal.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# A kind of run that only tests know (tests/probe_kind): the kernel runs it with no change of its own.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.probe_kind"]  # noqa: F405
