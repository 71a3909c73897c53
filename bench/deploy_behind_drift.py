"""How long a deployment waits to start while drift checks are queued, beside its floor, interleaved in one run
(floor, portal, floor, portal): the production path, `manage.py runportal --workers 2` (its scheduler and workers).

12 targets whose `drift:` step takes 3 s (a `terraform plan` of a real stack takes longer) are all asked to check
drift at once: 36 s of drift work queued. Then a no-op deployment of another repository is promoted and timed from
the promotion's commit to the moment a worker claims it (`started_at`). Floor: the same deployment with no drift
queued (idle workers), in the same run. Target (issue 20): it starts within 1 s. Drift checks are on their own
queue, taken last, and with 2 workers the second takes none (runportal.worker_queues)."""

import statistics
import time

from _common import make_origin, ms, portal, report, wait_for

TARGETS = 12
DRIFT_SECONDS = 3
ROUNDS = 2
TARGET_SECONDS = 1.0
SLOW = (f"environments:\n  staging:\n    steps:\n      - run: 'true'\n"
        f"    drift:\n      - run: sleep {DRIFT_SECONDS}\n")
FAST = "environments:\n  staging:\n    steps:\n      - run: 'true'\n"


def setup(data_dir):
    from pipelines import tracking
    from pipelines.models import Environment, Lifecycle, Repository, Stage, Target

    staging = Environment.objects.create(name="staging", position=10)
    Stage.objects.create(lifecycle=Lifecycle.objects.get_or_create(name="default")[0], environment=staging,
                         position=10, auto_deploy=False)
    slow_origin = make_origin(data_dir / "slow-origin", {".gitops.yml": SLOW}, tag="v1.0.0")
    fast_origin = make_origin(data_dir / "fast-origin", {".gitops.yml": FAST}, tag="v1.0.0")
    slow = []
    for n in range(TARGETS):
        repository = Repository.objects.create(name=f"infra-{n:02d}", url=str(slow_origin), poll_interval=3600)
        (release,) = tracking.poll_repository(repository)
        Target.objects.create(repository=repository, environment=staging, current_release=release)  # as deployed
        slow.append(repository)
    fast = Repository.objects.create(name="service", url=str(fast_origin), poll_interval=3600)
    (fast_release,) = tracking.poll_repository(fast)
    return staging, slow, fast_release


def queue_drift(staging, repositories):
    from pipelines.models import DriftCheck

    for repository in repositories:
        DriftCheck.objects.queue_for(repository, staging, reason="bench")


def drift_idle():
    from pipelines.models import DriftCheck

    return not DriftCheck.objects.filter(status__in=("queued", "running")).exists()


def drift_running():
    from pipelines.models import DriftCheck

    return DriftCheck.objects.filter(status="running").exists()


def cancel_drift():
    from pipelines.models import DriftCheck

    for check in DriftCheck.objects.filter(status="queued"):
        check.cancel(reason="bench: the round is over")


def time_a_deployment(staging, release):
    from django.db import transaction

    from pipelines.models import Deployment
    from pipelines.promotion import promote

    with transaction.atomic():
        deployment = promote(release, staging, by=None)
    asked = time.time()
    started = wait_for(lambda: Deployment.objects.filter(pk=deployment.pk, started_at__isnull=False)
                       .values_list("started_at", flat=True).first(), 120, "the deployment to start", interval=0.01)
    wait_for(lambda: Deployment.objects.get(pk=deployment.pk).is_finished, 60, "the deployment to finish")
    return started.timestamp() - asked


def main():
    with portal("deploy-behind-drift") as the_portal:
        staging, slow, release = setup(the_portal.data_dir)
        the_portal.start_runportal(workers=2)
        floors, behind = [], []
        for _ in range(ROUNDS):
            floors.append(time_a_deployment(staging, release))
            queue_drift(staging, slow)
            wait_for(drift_running, 30, "a drift check to run")  # a worker is busy with one when it promotes
            behind.append(time_a_deployment(staging, release))
            cancel_drift()
            wait_for(drift_idle, 60, "the running drift checks to end")
        rows = [
            ("floor: a deployment starts, no drift queued (median)", ms(statistics.median(floors)), None, None),
            (f"a deployment starts, {TARGETS} drift checks of {DRIFT_SECONDS} s queued (worst)", ms(max(behind)),
             f"≤ {ms(TARGET_SECONDS)}", max(behind) <= TARGET_SECONDS),
        ]
        notes = [f"round {n + 1}: floor {ms(floors[n])}, behind drift {ms(behind[n])}" for n in range(ROUNDS)]
        report("A deployment behind queued drift checks (runportal --workers 2)", rows, notes)


if __name__ == "__main__":
    main()
