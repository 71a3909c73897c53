"""Masking known secret values in deployment logs before they are stored.

Every signed-in user may read a deployment's log, so whatever a step prints that is one of the portal's
own secrets (SECRET_KEY, the passwords of DATABASE_URL and REDIS_URL), a credential of the repository
(a token in its URL, its webhook secret, its API token) or a value the pipeline file declares secret (a variable whose
name says SECRET, TOKEN, PASSWORD or KEY) is replaced by `***`; so are the values of the environment's
secrets, which the runner loads once per run and adds (`LogWriter.mask_also`). Values shorter than
MIN_SECRET_LENGTH are left alone: masking "admin" or "1234" everywhere would hide more log than secret
(environment secrets that short are refused when they are set).

Output arrives in chunks; `StreamMasker` holds back the end of a chunk while it could be the start of a
secret, so a secret split across two chunks is still masked."""

import os
import re
from urllib.parse import unquote, urlsplit

from django.conf import settings

MASK = "***"
MIN_SECRET_LENGTH = 6
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|KEY", re.IGNORECASE)


def url_secrets(url):
    """The credential embedded in a URL (`scheme://user:password@host`): the password, or the user name
    when it stands alone (`https://<token>@github.com/...`). Both as written and percent-decoded."""
    if not url or "@" not in url:
        return set()
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return set()
    secret = password if password else username
    return {secret, unquote(secret)} if secret else set()


def portal_secrets():
    """The portal's own secrets, wherever a step could have found them."""
    values = {settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])}
    for database in settings.DATABASES.values():
        values.add(database.get("PASSWORD") or "")
    for url in (settings.REDIS_URL, os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")):
        values |= url_secrets(url)
    for queue in getattr(settings, "RQ_QUEUES", {}).values():
        values |= url_secrets(queue.get("URL", ""))
        values.add(queue.get("PASSWORD") or "")
    for mailer in getattr(settings, "MAILERS", {}).values():  # the SMTP password lives in the mailer's options
        values.add(str((mailer.get("OPTIONS") or {}).get("password") or ""))
    for name in ("GITOPS_AUDIT_KEY", "GITOPS_AUDIT_KEY_FALLBACKS", "GITOPS_SECRETS_KEYS", "EMAIL_HOST_PASSWORD"):
        value = getattr(settings, name, "")
        values |= set(value) if isinstance(value, (list, tuple)) else {value}
    # As the environment gives them, whatever settings made of them (comma-separated lists included).
    for name in ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "GITOPS_AUDIT_KEY", "GITOPS_AUDIT_KEY_FALLBACKS",
                 "GITOPS_SECRETS_KEYS", "EMAIL_HOST_PASSWORD"):
        value = os.environ.get(name, "")
        values |= {value, *value.split(",")}
    return values


def declared_secrets(variables):
    """Values of the pipeline file's variables whose names say they are secret."""
    return {str(value) for name, value in (variables or {}).items() if SECRET_NAME.search(name) and value is not None}


def environment_secrets(values):
    """The values of an environment's secrets, and each line of a multi-line one (a PEM key printed line by
    line is masked too)."""
    found = set()
    for value in values:
        found |= {value, *(line.strip() for line in value.splitlines())}
    return found


def repository_secrets(repository):
    """The repository's credentials: a token in its URL, its webhook secret, its API token for the git host."""
    from pipelines.secrets import SecretUnreadable

    values = url_secrets(repository.url) | {repository.webhook_secret or ""}
    try:
        values.add(repository.api_token())
    except SecretUnreadable:
        pass  # no key opens it, so no step could have been given it either
    return values


def secrets_for(deployment):
    """Every value masked in this deployment's log (or a drift check's: the same repository, release and
    environment)."""
    repository = deployment.repository
    values = portal_secrets() | repository_secrets(repository)
    pipeline = deployment.release.pipeline
    spec = pipeline.environments.get(deployment.environment.name) if pipeline is not None else None
    if spec is not None:
        values |= declared_secrets(spec.variables)
    return usable(values)


def usable(values):
    """Longest first, so that a secret containing another is masked whole."""
    kept = {value for value in values if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH}
    return tuple(sorted(kept, key=len, reverse=True))


def mask(text, secrets):
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _held_back_length(text, secrets):
    """Length of the longest end of `text` that is the beginning of a secret (it may go on next chunk)."""
    longest = 0
    for secret in secrets:
        for length in range(min(len(secret) - 1, len(text)), longest, -1):
            if text.endswith(secret[:length]):
                longest = length
                break
    return longest


class StreamMasker:
    """Masks a stream given in chunks: `feed()` returns what can be stored now, `finish()` the rest."""

    def __init__(self, secrets):
        self.secrets = usable(secrets)
        self._held = ""

    def feed(self, text):
        text = mask(self._held + text, self.secrets)
        keep = _held_back_length(text, self.secrets)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def finish(self):
        rest, self._held = self._held, ""
        return mask(rest, self.secrets)
