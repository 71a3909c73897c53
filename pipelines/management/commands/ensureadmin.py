"""Make sure someone can sign in: without any superuser, create `admin` with a random password.

The password is written to $GITOPS_DATA_DIR/admin-password.txt (readable by the owner only) and printed once.
An existing superuser is kept as it is. `--email` gives the new admin an address: a stage that blocks commit
authors refuses approvals from anyone without one (it could not tell them from the authors), so `make run`
passes one, and the demo's first change can be approved."""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.db import transaction

PASSWORD_FILE = "admin-password.txt"


class Command(BaseCommand):
    help = "Create the superuser 'admin' with a random password unless a superuser exists."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        # None by default: a made-up address in production would have mail sent to nobody (and retried).
        parser.add_argument("--email", default="", help="The new superuser's e-mail address (default: none).")

    def handle(self, *args, username, email, **options):
        User = get_user_model()
        email = email.strip()
        if email:
            try:
                validate_email(email)
            except ValidationError:
                raise CommandError(f"{email!r} is not an e-mail address; nothing was created.") from None
        password_file = settings.GITOPS_DATA_DIR / PASSWORD_FILE
        existing = User.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            where = f"; its initial password is in {password_file}" if password_file.exists() else ""
            self.stdout.write(f"Superuser {existing.get_username()!r} exists and is kept{where}.")
            if not existing.email:
                self.stdout.write(f"It has no e-mail address, so stages that block commit authors refuse its "
                                  f"approvals; set one in the admin (Users → {existing.get_username()}).")
            return
        if User.objects.filter(username=username).exists():
            raise CommandError(
                f"A user {username!r} exists but is not a superuser. Make it one in the admin or with "
                "`manage.py createsuperuser --username <another name>`."
            )
        password = secrets.token_urlsafe(12)
        url = settings.GITOPS_BASE_URL.rstrip("/") + "/"
        with transaction.atomic():
            User.objects.create_superuser(username=username, email=email, password=password)
        self._write_private(password_file, password + "\n")
        self.stdout.write(self.style.SUCCESS(f"Created the superuser {username!r}; its password is in {password_file}."))
        if settings.GITOPS_BASE_URL_IS_SET:
            self.stdout.write(f"Sign in at {url} as {username} / {password}")
        else:
            # `make run` calls this before `runportal` has chosen its address: naming the default port
            # here would be wrong for `--port 8101`. runportal prints the address with this password.
            self.stdout.write(f"Sign in as {username} / {password} at the address the portal prints when it starts.")

    @staticmethod
    def _write_private(path, text):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)  # an older file with wider permissions is narrowed too
            handle.write(text)
