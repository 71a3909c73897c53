"""Re-encrypt every environment secret, and every repository's API token, with the first key of GITOPS_SECRETS_KEYS."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from pipelines import secrets
from pipelines.models import AuditEvent, EnvironmentSecret, Repository


class Command(BaseCommand):
    help = (
        "Re-encrypt every environment secret and repository API token with the first key of GITOPS_SECRETS_KEYS. To rotate: put a new key "
        "first, run this, then remove the old key. Exit 1 naming any secret that no key opens (the others are "
        "re-encrypted all the same)."
    )

    def handle(self, *args, **options):
        try:
            secrets.check_keys()
        except secrets.SecretsNotConfigured as exc:
            raise CommandError(str(exc)) from None
        rotated, unreadable = [], []
        with transaction.atomic():
            # Locked, so a value set in the admin meanwhile is not overwritten with its older ciphertext.
            for row in EnvironmentSecret.objects.select_for_update(of=("self",)).select_related("environment"):
                try:
                    row.ciphertext = secrets.reencrypt(row.ciphertext, name=row.name)
                    rotated.append(row)
                except secrets.SecretUnreadable:
                    unreadable.append(f"{row.name} of environment {row.environment.name}")
            EnvironmentSecret.objects.bulk_update(rotated, ["ciphertext"])
            tokens = []
            for repository in Repository.objects.select_for_update().exclude(api_token_ciphertext=""):
                name = f"API token of repository {repository.name}"
                try:
                    repository.api_token_ciphertext = secrets.reencrypt(repository.api_token_ciphertext, name=name)
                    tokens.append(repository)
                except secrets.SecretUnreadable:
                    unreadable.append(name)
            Repository.objects.bulk_update(tokens, ["api_token_ciphertext"])
            rotated += tokens
            AuditEvent.objects.record(action="secrets.rotated",
                                      details={"re-encrypted": len(rotated), "unreadable": unreadable})
        if unreadable:
            raise CommandError(f"{len(unreadable)} secret(s) could not be decrypted with any key and were left as "
                               f"they are: {', '.join(unreadable)}. Restore their key, or set them again.")
        self.stdout.write(f"Re-encrypted {len(rotated)} secret(s) with the first key of GITOPS_SECRETS_KEYS.")
