"""API tokens and service accounts.

A token is shown once, when it is issued, and stored only as its SHA-256: the hash in the database is
not a token (presenting it hashes it again, which matches nothing). Tokens are random (256 bits), so a
fast hash is enough; a slow one would only slow every API request. Each token has scopes, an expiry,
and may be revoked; a revoked or expired token is refused on its next request.

A token's scopes never exceed what its holder may do: a scope its holder could not use is refused when the
token is issued (`scope_refusal`), and every request checks the holder's permissions as they are then
(api/permissions.py), so a holder who loses a permission loses that power of all their tokens at once."""

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from pipelines.models import AuditEvent
from pipelines.permissions import DEPLOY, REPORT_CHECKS

TOKEN_PREFIX = "gpt_"
# How often `last_used_at` is written at most: a write per request would make every read a write.
LAST_USED_PRECISION = timedelta(minutes=1)


class Scope(models.TextChoices):
    READ = "read", "read: see repositories, releases, deployments, change requests, the audit log"
    DEPLOY = "deploy", "deploy: poll, promote, cancel, retry, roll back, block and unblock"
    CHECKS_REPORT = "checks:report", "checks:report: report the result of an external check for a commit"
    APPROVE = "approve", "approve: approve or reject change requests (where the stage allows it through the API)"


# The Django permission each scope needs of its holder ("" for none), at issue and on every request. `read` needs
# only an active account; `approve` needs no permission but being an approver somewhere (`scope_refusal`),
# and each decision is then the stage's approval policy's (approvals.models.ChangeRequest).
SCOPE_PERMISSIONS = {
    Scope.READ: "",
    Scope.DEPLOY: DEPLOY,
    Scope.CHECKS_REPORT: REPORT_CHECKS,
    Scope.APPROVE: "",
}
PERMISSION_HOLDERS = {DEPLOY: "given to deployers", REPORT_CHECKS: "given to CI service accounts"}


def scope_refusal(user, scope):
    """Why `user` may not hold a token with `scope`, in words, or "" (they can do what it allows)."""
    username, scope = user.get_username(), Scope(scope).value
    permission = SCOPE_PERMISSIONS[scope]
    if permission and not user.has_perm(permission):
        return (f"{username} may not hold the scope {scope!r}: it needs the permission {permission!r} "
                f"({PERMISSION_HOLDERS[permission]}).")
    if scope == Scope.APPROVE:
        from approvals.models import StagePolicy  # the upper app, read only here: who approves is its policy

        if is_service_account(user):
            return (f"{username} may not hold the scope {scope!r}: it is a service account, and a service account "
                    f"never decides on a change.")
        if not StagePolicy.objects.filter(approver_group__user=user).exists():
            return (f"{username} may not hold the scope {scope!r}: {username} is in no stage's approver group, so "
                    f"there is nothing they could approve.")
    return ""


def hash_token(plaintext):
    return hashlib.sha256(plaintext.encode()).hexdigest()


class ServiceAccount(models.Model):
    """A user that is a program (a CI pipeline), made by an admin. It never counts as a distinct person for
    an approval, and it cannot sign in to the pages (its password is unusable)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="service_account")
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"service account {self.user.get_username()}"


def is_service_account(user):
    return ServiceAccount.objects.filter(user_id=user.pk).exists()


class ScopeRefused(ValueError):
    """A token was asked for with scopes beyond what its holder may do; `refusals` says why, one per scope."""

    def __init__(self, refusals):
        super().__init__(" ".join(refusals))
        self.refusals = refusals


class ApiTokenQuerySet(models.QuerySet):
    def issue(self, *, user, name, scopes, expires_at, by):
        """Create a token for `user` and return (token, plaintext); the plaintext exists only here."""
        unknown = set(scopes) - set(Scope.values)
        if unknown:
            raise ValueError(f"Unknown scopes: {', '.join(sorted(unknown))}; known: {', '.join(Scope.values)}.")
        if refusals := [refusal for scope in sorted(set(scopes)) if (refusal := scope_refusal(user, scope))]:
            raise ScopeRefused(refusals)
        if self.filter(user=user, name=name).exists():
            raise ValueError(f"{user.get_username()} already has a token named {name!r}; names tell them apart.")
        if expires_at <= timezone.now():
            raise ValueError("A token must expire in the future.")
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with transaction.atomic():
            token = self.create(user=user, name=name, scopes=sorted(set(scopes)), token_hash=hash_token(plaintext),
                                prefix=plaintext[:len(TOKEN_PREFIX) + 6], expires_at=expires_at, created_by=by)
            AuditEvent.objects.record(action="api_token.issued", actor=by, obj=token, details={
                "owner": user.get_username(), "name": name, "scopes": token.scopes, "expires_at": expires_at.isoformat()})
        return token, plaintext

    def usable(self, now=None):
        return self.filter(revoked_at=None, expires_at__gt=now or timezone.now())


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    scopes = models.JSONField(default=list)
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters of the token, to recognise it in a list (too short to guess the rest from).
    prefix = models.CharField(max_length=20)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="one_token_name_per_user")]

    def __str__(self):
        return f"token {self.name} of {self.user.get_username()}"

    @property
    def via(self):
        """How the audit log names a use of this token."""
        return f"token {self.name}"

    def refusal(self, now=None):
        """Why this token cannot be used now, in words, or None."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return f"The token {self.name!r} was revoked."
        if self.expires_at <= now:
            return f"The token {self.name!r} expired at {self.expires_at.isoformat()}."
        if not self.user.is_active:
            return f"The owner of the token {self.name!r} is deactivated."
        return None

    def has_scope(self, scope):
        return scope in self.scopes

    def touch(self, now=None):
        now = now or timezone.now()
        if self.last_used_at is None or now - self.last_used_at >= LAST_USED_PRECISION:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now

    def revoke(self, *, by):
        """Revoke it: the next request with it is refused. Returns False when it already was."""
        with transaction.atomic():
            if ApiToken.objects.filter(pk=self.pk, revoked_at=None).update(revoked_at=timezone.now()) != 1:
                return False
            AuditEvent.objects.record(action="api_token.revoked", actor=by, obj=self,
                                      details={"owner": self.user.get_username(), "name": self.name})
        self.refresh_from_db()
        return True
