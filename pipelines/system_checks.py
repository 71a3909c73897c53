"""System checks for promises that a setting alone could break (E002: builds need their artifact storage).

Sealed steps (GITOPS_STEP_USER) keep a deploy step away from the portal's secrets, but not from the network:
a Redis that takes no password lets a step push a job that the worker then runs as its own account. So
while steps are sealed, a REDIS_URL without a password is an error, and no portal process starts.

Environment secrets: GITOPS_SECRETS_KEYS must hold Fernet keys, and may be empty only while no secret is stored."""

from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.checks import Warning as CheckWarning


def _password_of(url):
    parts = urlsplit(url)
    return parts.password or (parse_qs(parts.query).get("password") or [""])[0]


def _is_embedded(url):
    """The embedded Redis of runportal: a socket in the data directory's sealed Redis directory, whose server
    always requires the password runportal generated (pipelines/embedded.py)."""
    if not url.startswith("unix://"):
        return False
    return urlsplit(url).path == str(settings.GITOPS_DATA_DIR / "redis" / "redis.sock")


@register(Tags.security)
def check_redis_password_when_steps_are_sealed(app_configs, **kwargs):
    url = settings.REDIS_URL
    if not settings.GITOPS_STEP_USER or _password_of(url) or _is_embedded(url):
        return []
    return [
        Error(
            f"REDIS_URL has no password while deploy steps run sealed as {settings.GITOPS_STEP_USER!r}: any step "
            "could then push a job into Redis that a worker would run with the portal's rights.",
            hint="Set a password on the Redis server (requirepass, or an ACL user) and put it in REDIS_URL, "
            "e.g. redis://:PASSWORD@redis.internal:6379/0 or rediss://portal:PASSWORD@redis.internal:6380/0.",
            id="pipelines.E001",
        )
    ]


@register(Tags.security)
def check_secrets_keys(app_configs, **kwargs):
    """A key that is not a Fernet key is always an error; no key at all only once secrets are stored (they
    could not be given to any step). Without the table (before migrate) or the database, nothing to say."""
    from django.db import DatabaseError

    from pipelines import secrets
    from pipelines.models import EnvironmentSecret

    try:
        secrets.check_keys()
        return []
    except secrets.SecretsNotConfigured as exc:
        problem = str(exc)
    if settings.GITOPS_SECRETS_KEYS:
        return [Error(problem, id="pipelines.E002")]
    try:
        stored = EnvironmentSecret.objects.exists()
    except DatabaseError:
        return []
    if not stored:
        return []
    return [
        Error(
            "Environment secrets are stored but GITOPS_SECRETS_KEYS is empty: no deployment of an environment "
            "with secrets could run.",
            hint="Set GITOPS_SECRETS_KEYS to the keys they were encrypted with (the first key encrypts).",
            id="pipelines.E003",
        )
    ]


@register()
def check_artifact_storage(app_configs, **kwargs):
    """Builds keep their artifacts in STORAGES["gitops_artifacts"]; settings that replace STORAGES must keep it."""
    if "gitops_artifacts" in settings.STORAGES:
        return []
    return [
        Error(
            'STORAGES has no "gitops_artifacts": builds could not keep their artifacts, and their releases '
            "would deploy nowhere.",
            hint='Add it, e.g. {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": '
            '"/var/lib/gitops/artifacts"}}, or any django-storages backend shared by all workers.',
            id="pipelines.E004",
        )
    ]


@register(Tags.security, deploy=True)
def check_unsealed_steps_are_not_allowed(app_configs, **kwargs):
    """GITOPS_ALLOW_UNSEALED_STEPS is a throwaway demo's setting (pipelines/sandbox.py): `check --deploy` says so."""
    if not settings.GITOPS_ALLOW_UNSEALED_STEPS:
        return []
    return [
        CheckWarning(
            "GITOPS_ALLOW_UNSEALED_STEPS is on: where no sandbox works, any step can read the portal's keys, its "
            "database and every environment's secrets.",
            hint="Unset it, and install bubblewrap on the workers or run them on a kernel with Landlock.",
            id="pipelines.W001",
        )
    ]
