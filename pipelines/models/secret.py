import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from pipelines import secrets

from .environment import Environment

_VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
# The portal sets these for every step; a secret must not silently replace them.
RESERVED_NAMES = {"PATH", "HOME", "LANG"}


def validate_secret_name(name):
    if not _VARIABLE_NAME.match(name or ""):
        raise ValidationError(
            f"{name!r} is not an environment variable name: use capital letters, digits and underscores, "
            f"not starting with a digit (e.g. DB_PASSWORD)."
        )
    if name.startswith("GITOPS_") or name in RESERVED_NAMES:
        raise ValidationError(f"{name} is set by the portal for every step; give the secret another name.")


def validate_secret_value(value):
    from pipelines.masking import MIN_SECRET_LENGTH

    if "\x00" in value:
        raise ValidationError("An environment variable cannot hold a NUL character.")
    if len(value) < MIN_SECRET_LENGTH:
        # Logs mask only values this long or longer (shorter ones would hide more log than secret).
        raise ValidationError(f"A secret of fewer than {MIN_SECRET_LENGTH} characters could not be masked in logs; "
                              f"use a longer value, or a pipeline file variable if it is not secret.")


class EnvironmentSecretQuerySet(models.QuerySet):
    def values_for(self, environment):
        """{name: plain value} of every secret of `environment`, in one query. Raises SecretUnreadable,
        naming the first secret that no key opens."""
        rows = self.filter(environment=environment).order_by("name").values_list("name", "ciphertext")
        return {name: secrets.decrypt(ciphertext, name=f"{name} of environment {environment.name}")
                for name, ciphertext in rows}


class EnvironmentSecret(models.Model):
    """A value given, as an environment variable, only to the deploy steps of its environment.

    Only the ciphertext is stored (see pipelines/secrets.py); nothing in the portal shows the value again."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=100, validators=[validate_secret_name],
                            help_text="The environment variable the deploy steps read it from.")
    ciphertext = models.TextField(editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", editable=False)

    objects = EnvironmentSecretQuerySet.as_manager()

    class Meta:
        ordering = ["environment", "name"]
        constraints = [models.UniqueConstraint(fields=["environment", "name"], name="one_secret_per_name")]

    def __str__(self):
        return self.name  # what audit events and admin messages show: never the value

    def set_value(self, value):
        """Encrypt `value` with the first key. Raises ValidationError for a value no step could be given or
        no log could mask, SecretsNotConfigured (saying what to set) without a key."""
        validate_secret_value(value)
        self.ciphertext = secrets.encrypt(value)

    def decrypt(self):
        # Not called `value`: the admin's form field is, and a read-only admin page would call a method of
        # that name to show it.
        return secrets.decrypt(self.ciphertext, name=f"{self.name} of environment {self.environment.name}")


class RepositorySecretQuerySet(models.QuerySet):
    def values_for(self, repository):
        """{name: plain value} of the check secrets of `repository`, in one query; SecretUnreadable names the
        first one no key opens."""
        rows = self.filter(repository=repository).order_by("name").values_list("name", "ciphertext")
        return {name: secrets.decrypt(ciphertext, name=f"{name} of the checks of {repository.name}")
                for name, ciphertext in rows}


class RepositorySecret(models.Model):
    """A value given only to the `checks:` steps of its repository (a registry token to pull a base image, say).

    Kept apart from environment secrets on purpose: a check runs code from any branch or pull request, so it
    must never hold what deploys somewhere. Encrypted and write-only like them."""

    repository = models.ForeignKey("pipelines.Repository", on_delete=models.CASCADE, related_name="check_secrets")
    name = models.CharField(max_length=100, validators=[validate_secret_name],
                            help_text="The environment variable the check steps read it from.")
    ciphertext = models.TextField(editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", editable=False)

    objects = RepositorySecretQuerySet.as_manager()

    class Meta:
        ordering = ["repository", "name"]
        constraints = [models.UniqueConstraint(fields=["repository", "name"], name="one_check_secret_per_name")]

    def __str__(self):
        return self.name

    def set_value(self, value):
        validate_secret_value(value)
        self.ciphertext = secrets.encrypt(value)
