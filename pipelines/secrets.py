"""Encryption of environment secrets at rest, with keys that can be rotated.

The keys are Fernet keys (AES-128-CBC with an HMAC-SHA256, from the `cryptography` package) listed in
settings.GITOPS_SECRETS_KEYS: the first encrypts, every one decrypts. To rotate, put a new key first, run
`manage.py rotatesecrets` (every secret is re-encrypted with it), then drop the old key. The keys live in
the portal's environment (or the embedded portal's data directory), never in the database, so a copy of
the database alone reveals no secret."""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

NO_KEY = ("No key for environment secrets: set GITOPS_SECRETS_KEYS to one or more Fernet keys, comma-separated "
          "(make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())').")


class SecretsNotConfigured(ImproperlyConfigured):
    """GITOPS_SECRETS_KEYS is empty or holds something that is not a Fernet key."""


class SecretUnreadable(Exception):
    """A stored secret that no key of GITOPS_SECRETS_KEYS opens. The message names it, never its value."""


def _fernet():
    keys = list(getattr(settings, "GITOPS_SECRETS_KEYS", []))
    if not keys:
        raise SecretsNotConfigured(NO_KEY)
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            # The key itself stays out of the message: it may be one character off a real one.
            raise SecretsNotConfigured(
                f"Key number {position} of GITOPS_SECRETS_KEYS is not a Fernet key (32 bytes in url-safe base64)."
            ) from None
    return MultiFernet(fernets)


def check_keys():
    """Raise SecretsNotConfigured when secrets cannot be encrypted now; the message says what to set."""
    _fernet()


def encrypt(value):
    return _fernet().encrypt(value.encode()).decode("ascii")


def decrypt(token, *, name):
    """The plain value of the secret called `name` (named in the error when no key opens it)."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except SecretsNotConfigured as exc:
        raise SecretUnreadable(f"The secret {name} cannot be decrypted: {exc}") from None
    except (InvalidToken, UnicodeError):
        raise SecretUnreadable(
            f"The secret {name} cannot be decrypted with any key of GITOPS_SECRETS_KEYS: the key it was "
            f"encrypted with was removed, or the stored value was altered. Restore that key, or set the secret again."
        ) from None


def reencrypt(token, *, name):
    """The same value encrypted with the first key (MultiFernet.rotate); SecretUnreadable if no key opens it."""
    try:
        return _fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError):
        raise SecretUnreadable(f"The secret {name} cannot be decrypted with any key of GITOPS_SECRETS_KEYS.") from None
