"""The scheduler of the portal.

    python manage.py pollrepos                    # one sweep over the repositories that are due, then exit
    python manage.py pollrepos --repository shop  # poll that one now, whatever its interval
    python manage.py pollrepos --loop             # every GITOPS_SCHEDULER_TICK s: ask workers to poll what is due,
                                                  # and run the reconciler
The one-shot forms poll here (several repositories at once). The loop never waits on git: it enqueues one
poll job per due repository on the "git" queue for the workers, and the reconciler runs in a thread of its
own, so a remote that never answers delays neither "worker lost" detection nor the other repositories.
"""

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, connections

from pipelines import reconciler, tracking
from pipelines.models import Repository

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = ("Poll the git repositories that are due for new releases (--loop: every tick, ask the workers to poll "
            "what is due, and run the reconciler).")

    def add_arguments(self, parser):
        parser.add_argument("--repository", metavar="NAME", help="Poll this repository now, whatever its interval.")
        parser.add_argument("--loop", action="store_true", help="Keep going: every GITOPS_SCHEDULER_TICK seconds, enqueue a poll job per due repository "
                                 "(the workers of the 'git' queue poll) and run the reconciler in its own thread.")

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
        if repository.is_archived:
            raise CommandError(f"Repository {name!r} is archived; restore it in the admin first.")
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
        reconciling = threading.Thread(target=_every_tick, args=(stop, tick, "reconciler", reconciler.reconcile),
                                       name="reconciler", daemon=True)
        reconciling.start()
        _every_tick(stop, tick, "poll sweep", self._ask_for_polls)
        reconciling.join(timeout=60)
        self.stdout.write("Scheduler stopped.")

    def _ask_for_polls(self):
        summary = tracking.enqueue_due_polls()
        if summary["unreachable"]:  # quiet while all is well
            self.stdout.write(f"Could not ask for {summary['unreachable']} poll(s): the queue does not answer; "
                              "trying again next tick.")
            self.stdout.flush()


def _every_tick(stop, tick, what, work):
    """Run `work` every `tick` seconds until `stop` is set, on this thread's own database connection."""
    while not stop.is_set():
        # A long-lived thread: drop a connection the database closed (restart, idle timeout).
        close_old_connections()
        try:
            work()
        except Exception:
            # One bad tick (database or Redis briefly away) must not stop the scheduler.
            logger.exception("%s tick failed", what)
        stop.wait(tick)
    connections.close_all()


def _describe(summary):
    polled, releases, failed = summary["polled"], summary["releases"], summary["failed"]
    line = (f"Polled {polled} repositor{'ies' if polled != 1 else 'y'}: "
            f"{releases} new release{'s' * (releases != 1)}, {len(failed)} failed")
    return line + (f" ({', '.join(failed)})." if failed else ".")
