"""The reconciler runs every few seconds: its cost must not grow with the number of deployments that wait."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals.models import FreezeWindow
from pipelines import promotion, reconciler
from pipelines.models import Deployment, Repository
from pipelines.runs import registry

pytestmark = pytest.mark.django_db

DURING = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def frozen_staging(staging):
    FreezeWindow.objects.create(
        name="Year end", reason="Nobody on call.", starts_at=DURING - timedelta(hours=1), ends_at=DURING + timedelta(hours=1)
    ).environments.add(staging)
    return staging


def queued_behind_a_freeze(staging, make_release, count):
    first = Repository.objects.count()
    for number in range(first, first + count):
        repository = Repository.objects.create(name=f"service-{number}", url=f"/srv/git/service-{number}")
        promotion.promote(make_release(repository, "v1.0.0"), staging, by=None)


def reconcile_queries(now):
    with CaptureQueriesContext(connection) as queries:
        report = reconciler.reconcile(now=now)
    return len(queries), report


@pytest.mark.parametrize("count", [200])
def test_a_tick_makes_the_same_few_queries_however_many_deployments_a_freeze_holds(frozen_staging, make_release, count):
    staging = frozen_staging
    reconciler.reconcile(now=DURING)  # the first tick of the hour also queues an audit verification
    queued_behind_a_freeze(staging, make_release, 5)
    few, report = reconcile_queries(DURING)
    assert report["deployments_requeued"] == 0

    queued_behind_a_freeze(staging, make_release, count - 5)
    many, report = reconcile_queries(DURING)

    assert Deployment.objects.filter(status="queued").count() == count
    assert report["deployments_requeued"] == 0, "the freeze still holds them all"
    assert many == few, f"{few} queries for 5 held deployments, {many} for {count}"
    # A few of its own, and per kind of run two (its lost runs, its queued ones without a job): the tests know
    # one kind more than production (tests/probe_kind).
    assert many <= 12 + 2 * len(registry.kinds())
