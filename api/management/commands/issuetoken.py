"""Issue an API token and print it once (it is stored hashed): for a person, or with --service for a service
account, which this makes if missing (an admin's job: a CI pipeline's identity)."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from api.models import ApiToken, Scope, ServiceAccount


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
        parser.add_argument("--by", default="", help="The admin issuing it, for the audit log.")

    def handle(self, *args, username, name, scopes, days, service, by, **options):
        users = get_user_model().objects
        issuer = users.filter(username=by).first() if by else None
        if by and issuer is None:
            raise CommandError(f"No user {by!r}.")
        if days < 1:
            raise CommandError("--days must be at least 1.")
        with transaction.atomic():
            user = users.filter(username=username).first()
            if user is None and not service:
                raise CommandError(f"No user {username!r}; pass --service to make a service account.")
            if user is None:
                user = users.create_user(username)  # no password: unusable
                ServiceAccount.objects.create(user=user, created_by=issuer, description=f"made for the token {name}")
            elif service:
                ServiceAccount.objects.get_or_create(user=user, defaults={"created_by": issuer})
            try:
                _, plaintext = ApiToken.objects.issue(user=user, name=name, scopes=scopes, by=issuer,
                                                      expires_at=timezone.now() + timedelta(days=days))
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(plaintext)
