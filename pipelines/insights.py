"""How a team delivers: the four DORA keys over a period, computed in the database with a constant number of
queries whatever the size of the history (the insights page, pipelines/insights_views.py).

Definitions (also on the page and in the README):
- the *last stage* of a repository is the last stage of its lifecycle (or the environment filtered on);
- deployment frequency: successful deployments to the last stage in the period, per day and per week
  (rollbacks are not counted: they undo a change, they do not deliver one);
- lead time for changes: from the release's commit (`Release.committed_at`) to its first success in the
  last stage, for releases whose first success there falls in the period (median and p90);
- change failure rate: deployments to the last stage that failed, or succeeded and were later rolled back (a
  rollback deployment to the same target replaced their release), divided by all that ran there (succeeded
  or failed; rollbacks excluded);
- time to restore: from a failed deployment (its end) or a rollback (its request) in the last stage to the
  next success on that target (median); failures in a row before one success are one outage, measured from
  the first.

Lead time medians and p90 (nearest rank) are picked in the database with window functions; restore times and
approval waits, much fewer, over values lists bounded by the period and the filters. Both portable, as
`PERCENTILE_CONT` does not exist on SQLite."""

import math
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from django.db.models import (Case, Count, DurationField, Exists, ExpressionWrapper, F, IntegerField, OuterRef, Q, Subquery, Value,
                              When, Window)
from django.db.models.functions import RowNumber
from django.utils import timezone

from pipelines.models import Deployment, DriftCheck, Environment, Lifecycle, Repository, Stage

PERIODS = {"7d": 7, "30d": 30, "90d": 90, "365d": 365}
DEFAULT_PERIOD = "30d"
DAILY_UP_TO_DAYS = 14  # shorter periods get a bar per day, longer ones a bar per week
RAN = (Deployment.Status.SUCCEEDED, Deployment.Status.FAILED)


@dataclass
class Scope:
    """What the figures are about: a period [start, end) and optional repository, lifecycle, environment."""

    start: datetime
    end: datetime
    period: str = DEFAULT_PERIOD
    repository: Repository | None = None
    lifecycle: Lifecycle | None = None
    environment: Environment | None = None
    errors: list = field(default_factory=list)

    @property
    def days(self):
        return (self.end - self.start) / timedelta(days=1)

    @property
    def bucket_size(self):
        return timedelta(days=1) if self.days <= DAILY_UP_TO_DAYS else timedelta(days=7)

    def buckets(self):
        """[(start, end)] covering the period from its start; the last one may be shorter."""
        size, edges, moment = self.bucket_size, [], self.start
        while moment < self.end:
            edges.append((moment, min(moment + size, self.end)))
            moment += size
        return edges

    def bucket_of(self, moment):
        return int((moment - self.start) // self.bucket_size)

    def filters_q(self, prefix=""):
        """The repository, lifecycle and environment filters on a model that has (or reaches) them."""
        q = Q()
        if self.repository is not None:
            q &= Q(**{f"{prefix}repository": self.repository})
        if self.lifecycle is not None:
            q &= Q(**{f"{prefix}repository__lifecycle": self.lifecycle})
        if self.environment is not None:
            q &= Q(**{f"{prefix}environment": self.environment})
        return q


def scope_from(params, now=None):
    """A Scope from the page's GET parameters: `period` (7d, 30d, 90d, 365d) or `from`/`to` (dates,
    inclusive), `repository`, `lifecycle`, `environment` (names). What cannot be read is said in `errors`
    and left out."""
    now = now or timezone.now()
    errors = []
    start = end = None
    if params.get("from") or params.get("to"):
        try:
            first = datetime.strptime(params.get("from") or "", "%Y-%m-%d").date()
            last = datetime.strptime(params.get("to") or "", "%Y-%m-%d").date() if params.get("to") else now.date()
        except ValueError:
            errors.append("Dates are read as YYYY-MM-DD; both from and to are needed.")
        else:
            if last < first:
                errors.append("The period ends before it starts.")
            else:
                zone = timezone.get_current_timezone()
                start = datetime.combine(first, time.min, tzinfo=zone)
                end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone)
                period = "custom"
    if start is None:
        period = params.get("period") or DEFAULT_PERIOD
        if period not in PERIODS:
            errors.append(f"Unknown period {period!r}: choose one of {', '.join(PERIODS)}.")
            period = DEFAULT_PERIOD
        end, start = now, now - timedelta(days=PERIODS[period])
    scope = Scope(start=start, end=end, period=period, errors=errors)
    for name, model in (("repository", Repository), ("lifecycle", Lifecycle), ("environment", Environment)):
        value = params.get(name)
        if value:
            found = model.objects.filter(name=value).first()
            if found is None:
                errors.append(f"No {name} is named {value!r}.")
            setattr(scope, name, found)
    return scope


# --- the figures -----------------------------------------------------------------------------------------


@dataclass
class Bucket:
    start: datetime
    end: datetime
    deployments: int = 0
    failed: int = 0
    rolled_back: int = 0
    lead_count: int = 0
    lead_time_median: timedelta | None = None
    lead_time_p90: timedelta | None = None
    restore_times: list = field(default_factory=list)

    @property
    def change_failure_rate(self):
        return change_failure_rate(self.deployments, self.failed, self.rolled_back)

    @property
    def restore_median(self):
        return median(self.restore_times)


@dataclass
class Delivery:
    scope: Scope
    buckets: list
    open_outages: int = 0
    lead_count: int = 0
    lead_time_median: timedelta | None = None
    lead_time_p90: timedelta | None = None
    # Drift (pipelines/models/drift.py), in every stage: episodes found in the period, how long they took to be
    # back in sync (median), and how many are not yet.
    drift_events: int = 0
    drift_correct_median: timedelta | None = None
    drift_open: int = 0

    @property
    def deployments(self):
        return sum(b.deployments for b in self.buckets)

    @property
    def failed(self):
        return sum(b.failed for b in self.buckets)

    @property
    def rolled_back(self):
        return sum(b.rolled_back for b in self.buckets)

    @property
    def per_day(self):
        return self.deployments / self.scope.days if self.scope.days else 0.0

    @property
    def per_week(self):
        return self.per_day * 7

    @property
    def change_failure_rate(self):
        return change_failure_rate(self.deployments, self.failed, self.rolled_back)

    @property
    def restore_times(self):
        return [t for b in self.buckets for t in b.restore_times]

    @property
    def restore_median(self):
        return median(self.restore_times)


def change_failure_rate(succeeded, failed, rolled_back):
    """The share of deployments that failed or were rolled back, or None when none ran."""
    ran = succeeded + failed
    return (failed + rolled_back) / ran if ran else None


def percentile(values, p):
    """Nearest-rank percentile of a list of timedeltas (or numbers); None for an empty list."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def median(values):
    """The middle value (the mean of the two middle ones for an even count); None for an empty list."""
    if not values:
        return None
    ordered, middle = sorted(values), len(values) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def last_stage_q(scope):
    """Deployments to the last stage of their repository's lifecycle (or to the environment filtered on),
    within the scope's filters. One query for the stages, however many deployments there are."""
    q = scope.filters_q()
    if scope.environment is not None:
        return q
    stages = Stage.objects.order_by("lifecycle_id", "position").values_list("lifecycle_id", "environment_id")
    if scope.lifecycle is not None:
        stages = stages.filter(lifecycle=scope.lifecycle)
    last = dict(stages)  # ordered by position: the last one of each lifecycle wins
    pairs = Q(pk__in=[])
    for lifecycle_id, environment_id in last.items():
        pairs |= Q(repository__lifecycle_id=lifecycle_id, environment_id=environment_id)
    return q & pairs


def delivery(scope):
    """The DORA figures of `scope`, per bucket (day or week) and over the whole period, and its drift. Six queries."""
    in_scope = Deployment.objects.filter(last_stage_q(scope))
    buckets = [Bucket(start, end) for start, end in scope.buckets()]
    _count_deployments(scope, in_scope, buckets)
    lead_count, lead_median, lead_p90 = _add_lead_times(scope, in_scope, buckets)
    open_outages = _add_restore_times(scope, in_scope, buckets)
    drift_events, drift_correct_median, drift_open = _drift(scope)
    return Delivery(scope=scope, buckets=buckets, open_outages=open_outages, lead_count=lead_count,
                    lead_time_median=lead_median, lead_time_p90=lead_p90, drift_events=drift_events,
                    drift_correct_median=drift_correct_median, drift_open=drift_open)


def _episodes(rows):
    """{(repository id, environment id, when it ended or None): when it began} of rows (repository id, environment
    id, began, ended): the rows of one target that ended at the same moment are one episode, from the first."""
    episodes = {}
    for repository_id, environment_id, began_at, ended_at in rows:
        key = (repository_id, environment_id, ended_at)
        episodes[key] = min(began_at, episodes.get(key, began_at))
    return episodes


def _drift(scope):
    """(drift episodes found in the period, the median time from an episode's first drifted check to the next
    check in sync on its target, how many are not back in sync). Drifted checks in a row before one in sync are
    one episode, from the first. One query."""
    back_in_sync = Subquery(DriftCheck.objects.filter(
        repository=OuterRef("repository"), environment=OuterRef("environment"), status=DriftCheck.Status.IN_SYNC,
        finished_at__gt=OuterRef("finished_at")).order_by("finished_at").values("finished_at")[:1])
    drifted = (DriftCheck.objects.filter(scope.filters_q(), status=DriftCheck.Status.DRIFTED,
                                         finished_at__gte=scope.start, finished_at__lt=scope.end)
               .annotate(back_at=back_in_sync).order_by()
               .values_list("repository_id", "environment_id", "finished_at", "back_at"))
    episodes = _episodes(drifted)
    times = [back_at - found_at for (_, _, back_at), found_at in episodes.items() if back_at is not None]
    return len(episodes), median(times), sum(1 for (_, _, back_at) in episodes if back_at is None)


def _bucket_case(scope, field_name):
    whens = [When(**{f"{field_name}__gte": start}, then=Value(i)) for i, (start, _) in reversed(list(enumerate(scope.buckets())))]
    return Case(*whens, default=Value(-1), output_field=IntegerField())


def _count_deployments(scope, in_scope, buckets):
    """Succeeded and failed per bucket, then those of the succeeded that were rolled back. Two queries: the
    rollback test as a count's filter ran a subquery for each of the period's deployments (half the time of
    the page at 20,000 of them); as a WHERE, the database starts from the few rollbacks instead."""
    ran = (in_scope.filter(finished_at__gte=scope.start, finished_at__lt=scope.end)
           .exclude(trigger=Deployment.Trigger.ROLLBACK)
           .annotate(bucket=_bucket_case(scope, "finished_at")).order_by().values("bucket"))
    for row in ran.filter(status__in=RAN).annotate(succeeded=Count("pk", filter=Q(status=Deployment.Status.SUCCEEDED)),
                                                   failed=Count("pk", filter=Q(status=Deployment.Status.FAILED))):
        bucket = buckets[row["bucket"]]
        bucket.deployments, bucket.failed = row["succeeded"], row["failed"]
    rolled_back = Exists(Deployment.objects.filter(
        repository=OuterRef("repository"), environment=OuterRef("environment"), trigger=Deployment.Trigger.ROLLBACK,
        previous_release=OuterRef("release"), created_at__gt=OuterRef("finished_at")))
    for row in ran.filter(rolled_back, status=Deployment.Status.SUCCEEDED).annotate(rolled_back=Count("pk")):
        buckets[row["bucket"]].rolled_back = row["rolled_back"]


def _add_lead_times(scope, in_scope, buckets):
    """Median and p90 of the lead times per bucket and over the period, by ranking them in the database
    (ROW_NUMBER and COUNT windows) and fetching only the rows at the wanted ranks: a handful of rows however
    many releases there are. Window functions run on PostgreSQL and SQLite alike, unlike PERCENTILE_CONT."""
    earlier = Deployment.objects.filter(release=OuterRef("release"), environment=OuterRef("environment"),
                                        status=Deployment.Status.SUCCEEDED, finished_at__lt=OuterRef("finished_at"))
    by_lead = [F("lead").asc(), F("pk").asc()]
    ranked = (in_scope.filter(status=Deployment.Status.SUCCEEDED, finished_at__gte=scope.start, finished_at__lt=scope.end,
                              release__committed_at__isnull=False)
              .exclude(Exists(earlier))  # each release's first success there, and only that
              .annotate(lead=ExpressionWrapper(F("finished_at") - F("release__committed_at"), output_field=DurationField()),
                        bucket=_bucket_case(scope, "finished_at"))
              .annotate(rank=Window(RowNumber(), partition_by=[F("bucket")], order_by=by_lead),
                        count=Window(Count("pk"), partition_by=[F("bucket")]),
                        rank_all=Window(RowNumber(), order_by=by_lead), count_all=Window(Count("pk")))
              .order_by())
    wanted = ranked.filter(_at_wanted_rank("rank", "count") | _at_wanted_rank("rank_all", "count_all"))
    picked, scope_count = {}, 0  # (bucket, or None for the whole period, rank) → lead time
    for bucket, lead, rank, count, rank_all, count_all in wanted.values_list(
            "bucket", "lead", "rank", "count", "rank_all", "count_all"):
        picked[(bucket, rank)] = lead
        picked[(None, rank_all)] = lead
        buckets[bucket].lead_count = count
        scope_count = count_all
    for index, bucket in enumerate(buckets):
        bucket.lead_time_median, bucket.lead_time_p90 = _median_and_p90(picked, index, bucket.lead_count)
    return scope_count, *_median_and_p90(picked, None, scope_count)


def _at_wanted_rank(rank, count):
    """The ranks of the median (one or two middle ones) and of the p90 (nearest rank: ceil(0.9 n)), in
    integer arithmetic that both databases do alike."""
    n = F(count)
    return Q(**{rank: (n + 1) / 2}) | Q(**{rank: (n + 2) / 2}) | Q(**{rank: (n * 9 + 9) / 10})


def _median_and_p90(picked, key, count):
    if not count:
        return None, None
    middle = (picked[(key, (count + 1) // 2)] + picked[(key, (count + 2) // 2)]) / 2
    return middle, picked[(key, (count * 9 + 9) // 10)]


def _add_restore_times(scope, in_scope, buckets):
    """Each outage once: the failures (and rollbacks) followed by the same success are one outage, from the
    first of them. Returns how many outages that began in the period are not restored yet."""
    began = Case(When(trigger=Deployment.Trigger.ROLLBACK, then=F("created_at")), default=F("finished_at"))
    next_success = Subquery(Deployment.objects.filter(
        repository=OuterRef("repository"), environment=OuterRef("environment"), status=Deployment.Status.SUCCEEDED,
        finished_at__gt=OuterRef("began")).order_by("finished_at").values("finished_at")[:1])
    # Each kind with its own time in the period, so that the indexes bound the work to the period.
    failed = Q(status=Deployment.Status.FAILED, finished_at__gte=scope.start, finished_at__lt=scope.end)
    rollback = Q(trigger=Deployment.Trigger.ROLLBACK, created_at__gte=scope.start, created_at__lt=scope.end)
    incidents = (in_scope.filter(failed | rollback)
                 .exclude(status__in=[Deployment.Status.CANCELLED, Deployment.Status.REJECTED])
                 .annotate(began=began)
                 .annotate(restored_at=next_success).order_by()
                 .values_list("repository_id", "environment_id", "began", "restored_at"))
    outages = _episodes(incidents)
    open_outages = 0
    for (_, _, restored_at), began_at in outages.items():
        if restored_at is None:
            open_outages += 1
        else:
            buckets[scope.bucket_of(began_at)].restore_times.append(restored_at - began_at)
    return open_outages


def filter_choices():
    """The names offered in the filters: three small queries."""
    return {
        "repositories": list(Repository.objects.order_by("name").values_list("name", flat=True)),
        "lifecycles": list(Lifecycle.objects.order_by("name").values_list("name", flat=True)),
        "environments": list(Environment.objects.order_by("position", "name").values_list("name", flat=True)),
    }


def hours(value):
    """A timedelta as hours with two decimals, for tables and CSV; "" for None."""
    return "" if value is None else f"{value / timedelta(hours=1):.2f}"
