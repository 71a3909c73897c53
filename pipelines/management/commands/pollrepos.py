"""The scheduler of the portal.

    python manage.py pollrepos                    # one sweep over the repositories that are due, then exit
    python manage.py pollrepos --repository shop  # poll that one now, whatever its interval
    python manage.py pollrepos --loop             # every GITOPS_SCHEDULER_TICK s: a sweep and the reconciler
"""

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from pipelines import reconciler, tracking
from pipelines.models import Repository

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Poll the git repositories that are due for new releases (--loop: keep going, and run the reconciler)."

    def add_arguments(self, parser):
        parser.add_argument("--repository", metavar="NAME", help="Poll this repository now, whatever its interval.")
        parser.add_argument("--loop", action="store_true", help="Keep polling every GITOPS_SCHEDULER_TICK seconds.")

    def handle(self, *args, repository=None, loop=False, **options):
        if repository and loop:
            raise CommandError("--repository and --loop cannot be combined.")
        if repository:
            self._poll_one(repository)
        elif loop:
            self._loop()
        else:
            self.stdout.write(_describe(tracking.poll_due_repositories()))

    def _poll_one(self, name):
        repository = Repository.objects.filter(name=name).first()
        if repository is None:
            raise CommandError(f"There is no repository named {name!r}.")
        if not repository.enabled:
            raise CommandError(f"Repository {name!r} is disabled; enable it in the admin first.")
        releases = tracking.poll_repository(repository)
        if repository.last_error:
            raise CommandError(f"Polling {name} failed: {repository.last_error}")
        versions = ", ".join(release.version for release in releases) or "none"
        self.stdout.write(f"Polled {name}: {len(releases)} new release{'s' * (len(releases) != 1)} ({versions}).")

    def _loop(self):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        tick = settings.GITOPS_SCHEDULER_TICK
        self.stdout.write(f"Polling repositories and reconciling every {tick} s; stop with SIGTERM or Ctrl-C.")
        self.stdout.flush()
        while not stop.is_set():
            # A long-lived process: drop a connection the database closed (restart, idle timeout).
            close_old_connections()
            try:
                summary = tracking.poll_due_repositories()
                if summary["releases"] or summary["failed"]:  # quiet while nothing happens
                    self.stdout.write(_describe(summary))
                    self.stdout.flush()
                reconciler.reconcile()
            except Exception:
                # One bad tick (database briefly away) must not stop the scheduler.
                logger.exception("scheduler tick failed")
            stop.wait(tick)
        close_old_connections()
        self.stdout.write("Scheduler stopped.")


def _describe(summary):
    polled, releases, failed = summary["polled"], summary["releases"], summary["failed"]
    line = (f"Polled {polled} repositor{'ies' if polled != 1 else 'y'}: "
            f"{releases} new release{'s' * (releases != 1)}, {len(failed)} failed")
    return line + (f" ({', '.join(failed)})." if failed else ".")
