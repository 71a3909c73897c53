"""Walk the audit log's keyed hash chain and report the first altered, forged or missing event."""

from django.core.management.base import BaseCommand, CommandError

from pipelines.models.audit import run_verification


class Command(BaseCommand):
    help = (
        "Verify the audit log: every event's hash, link and MAC, anchored on the signed head. Exit 0 when "
        "intact, 1 naming the first altered, forged or missing event. The outcome is recorded like the "
        "periodic verification's, so the audit page shows it too."
    )

    def handle(self, *args, **options):
        verification = run_verification()
        if not verification.intact:
            raise CommandError(f"Audit log {verification.message}")
        self.stdout.write(f"Audit log {verification.message}.")
