"""The reconciler's tick (the scheduler runs it every GITOPS_SCHEDULER_TICK s) with 2,000 targets whose stage
checks drift every 5 minutes, beside its floor, interleaved in one run (floor, portal, floor, portal).

- Steady: every target was checked a minute ago, nothing is due: the tick reads and decides.
- Burst: every target is due at once (the first tick after they were deployed together): the tick queues the most
  overdue DUE_PER_TICK (pipelines/drift_schedule.py) in a few statements; the rest at the next ticks.
- Floor: what a tick cannot do without, the same database and Redis: one read of the 2,000 targets with the
  time of their last check.
Target (issue 20): the tick under 100 ms. A deployment's latency behind queued drift checks is not measured here:
workers take the `drift` queue last (pipelines/queues.py), so a deployment waits at most for the one check a
worker is running."""

import statistics
import time
from datetime import timedelta

from _common import ms, portal, report

TARGETS = 2000
ROUNDS = 3
TARGET_SECONDS = 0.1
PIPELINE = ("environments:\n  staging:\n    steps:\n      - run: 'true'\n"
            "    drift:\n      - run: 'true'\n")


def make_targets():
    from pipelines.models import Environment, Lifecycle, Release, Repository, Stage, Target

    staging = Environment.objects.create(name="staging", position=10)
    Stage.objects.create(lifecycle=Lifecycle.objects.get_or_create(name="default")[0], environment=staging,
                         position=10, auto_deploy=False, drift_interval=timedelta(minutes=5))
    repositories = Repository.objects.bulk_create(
        [Repository(name=f"service-{n:04d}", url=f"/srv/git/service-{n:04d}") for n in range(TARGETS)])
    releases = Release.objects.bulk_create(
        [Release(repository=r, version="v1.0.0", commit_sha=f"{n:040x}", pipeline_text=PIPELINE)
         for n, r in enumerate(repositories)])
    Target.objects.bulk_create([Target(repository=r, environment=staging, current_release=release)
                                for r, release in zip(repositories, releases)])
    return staging, repositories, releases


def answered_all(staging, repositories, releases, when):
    """Every target checked (in sync) at `when`, as workers would have left them."""
    from pipelines.models import DriftCheck

    DriftCheck.objects.bulk_create([DriftCheck(repository=r, environment=staging, release=release, status="in_sync",
                                               created_at=when, finished_at=when, reason="bench")
                                    for r, release in zip(repositories, releases)])


def floor():
    from django.db.models import Max

    from pipelines.models import Target

    started = time.perf_counter()
    list(Target.objects.filter(current_release__isnull=False).annotate(last=Max("repository__drift_checks__created_at"))
         .values_list("repository_id", "environment_id", "last"))
    return time.perf_counter() - started


def tick(now):
    from pipelines import reconciler

    started = time.perf_counter()
    queued = reconciler.reconcile(now=now)["drift_checks_queued"]
    return time.perf_counter() - started, queued


def settle(now):
    """Every check queued so far is answered (no worker here: marked in sync as a worker would)."""
    from django.utils import timezone

    from pipelines.models import DriftCheck

    DriftCheck.objects.filter(status="queued").update(status="in_sync", finished_at=timezone.now(), created_at=now)


def main():
    from django.utils import timezone

    with portal("drift-tick"):
        targets = make_targets()
        now = timezone.now()
        floors, steady, bursts = [], [], []
        for round_ in range(ROUNDS):
            when = now + timedelta(minutes=6 * round_)
            answered_all(*targets, when)
            floors.append(floor())
            elapsed, queued = tick(when + timedelta(minutes=1))  # every target checked a minute ago: steady
            assert queued == 0, queued
            steady.append(elapsed)
            floors.append(floor())
            elapsed, queued = tick(when + timedelta(minutes=6))  # every target due: a burst
            bursts.append((elapsed, queued))
            settle(when + timedelta(minutes=6))
        burst_times = [b for b, _ in bursts]
        rows = [
            ("floor: read 2,000 targets and their last check (median)", ms(statistics.median(floors)), None, None),
            ("tick, nothing due (median)", ms(statistics.median(steady)), f"≤ {ms(TARGET_SECONDS)}",
             statistics.median(steady) <= TARGET_SECONDS),
            ("tick, all 2,000 due: queues the most overdue (median)", ms(statistics.median(burst_times)),
             f"≤ {ms(TARGET_SECONDS)}", statistics.median(burst_times) <= TARGET_SECONDS),
            ("checks queued by a burst tick", str(bursts[0][1]), None, None),
        ]
        notes = [f"round {n + 1}: floor {ms(floors[2 * n])}, steady {ms(steady[n])}, floor {ms(floors[2 * n + 1])}, "
                 f"burst {ms(burst_times[n])} ({bursts[n][1]} queued)" for n in range(ROUNDS)]
        report(f"Reconciler tick with {TARGETS} targets checking drift every 5 minutes", rows, notes)


if __name__ == "__main__":
    main()
