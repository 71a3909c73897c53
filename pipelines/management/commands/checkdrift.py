"""Queue drift checks (pipelines/models/drift.py): those due by their stage's drift interval, or with --now every
target's, optionally of one repository and/or environment. The workers run them (the `drift` queue)."""

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from pipelines import drift_schedule
from pipelines.models import Environment, Repository


class Command(BaseCommand):
    help = "Queue drift checks: those due by their stage's drift interval, or with --now all of them."

    def add_arguments(self, parser):
        parser.add_argument("--repository", help="Only this repository (its name).")
        parser.add_argument("--environment", help="Only this environment (its name).")
        parser.add_argument("--now", action="store_true", help="Check now, whatever the interval says.")

    def handle(self, *args, repository=None, environment=None, now=False, **options):
        repository = self._get(Repository, repository, "repository")
        environment = self._get(Environment, environment, "environment")
        if now:
            checks = drift_schedule.queue_now(repository, environment, reason="manage.py checkdrift --now")
        else:
            checks = drift_schedule.queue_due(timezone.now(), repository, environment)
        for check in checks:
            self.stdout.write(f"queued {check} ({check.release.version})")
        self.stdout.write(f"{len(checks)} drift check(s) queued." if checks else
                          "Nothing to check: no target with drift steps is due (--now checks them all).")

    @staticmethod
    def _get(model, name, what):
        if name is None:
            return None
        found = model.objects.filter(name=name).first()
        if found is None:
            raise CommandError(f"There is no {what} named {name!r}.")
        return found
