"""Issue an API token and print it once (it is stored hashed): for a person, or with --service for a service
account, which this makes if missing (an admin's job: a CI pipeline's identity).

A token's scopes never exceed what its holder may do, so a scope whose permission the holder lacks is refused.
With --grant (service accounts only) the command first gives the account the permissions its scopes need,
audited: the README's CI recipe is then one command. A person's permissions stay a decision made in the admin."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from api.models import SCOPE_PERMISSIONS, ApiToken, Scope, ScopeRefused, ServiceAccount
from pipelines.models import AuditEvent


class Command(BaseCommand):
    help = "Issue an API token for USER with scopes and an expiry; prints the token once."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("name", help="What the token is for, e.g. ci-deploy (named in the audit log).")
        parser.add_argument("--scope", action="append", choices=Scope.values, required=True, dest="scopes",
                            help="Repeat for several.")
        parser.add_argument("--days", type=int, default=90, help="Expires after this many days (default 90).")
        parser.add_argument("--service", action="store_true",
                            help="USER is a service account (made, without a password, if it does not exist).")
        parser.add_argument("--grant", action="store_true",
                            help="Give the service account the permissions its scopes need (e.g. pipelines.deploy "
                                 "for deploy, pipelines.report_checks for checks:report); audited.")
        parser.add_argument("--by", default="", help="The admin issuing it, for the audit log.")

    def handle(self, *args, username, name, scopes, days, service, grant, by, **options):
        users = get_user_model().objects
        issuer = users.filter(username=by).first() if by else None
        if by and issuer is None:
            raise CommandError(f"No user {by!r}.")
        if days < 1:
            raise CommandError("--days must be at least 1.")
        if grant and not service:
            raise CommandError("--grant gives permissions to service accounts only (pass --service); a person's are "
                               "given in the admin.")
        # One transaction: a refusal leaves no service account, permission or token half made.
        with transaction.atomic():
            user = users.filter(username=username).first()
            if user is None and not service:
                raise CommandError(f"No user {username!r}; pass --service to make a service account.")
            if user is None:
                user = users.create_user(username)  # no password: unusable
                ServiceAccount.objects.create(user=user, created_by=issuer, description=f"made for the token {name}")
            elif service:
                ServiceAccount.objects.get_or_create(user=user, defaults={"created_by": issuer})
            if grant:
                user = grant_permissions(user, scopes, why=f"the scopes of the token {name!r}", by=issuer)
            try:
                _, plaintext = ApiToken.objects.issue(user=user, name=name, scopes=scopes, by=issuer,
                                                      expires_at=timezone.now() + timedelta(days=days))
            except ScopeRefused as exc:
                lacking = any(permission and not user.has_perm(permission)
                              for permission in map(SCOPE_PERMISSIONS.get, scopes))
                hint = " Grant it in the admin, or pass --grant for a service account." if lacking else ""
                raise CommandError(f"{exc}{hint}") from None
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(plaintext)


def grant_permissions(user, scopes, *, why, by):
    """Give `user` the permissions `scopes` need that it lacks, with one audit event; returns the user re-read
    (Django caches a user's permissions on the object)."""
    needed = sorted({SCOPE_PERMISSIONS[scope] for scope in scopes} - {""})
    missing = [permission for permission in needed if not user.has_perm(permission)]
    if not missing:
        return user
    for permission in missing:
        app_label, codename = permission.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    AuditEvent.objects.record(action="user.permissions_granted", actor=by, obj=user,
                              details={"user": user.get_username(), "permissions": missing, "why": why})
    return get_user_model().objects.get(pk=user.pk)
