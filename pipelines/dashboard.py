"""The dashboard's rows: per repository and stage the version, its sha, the state and what it waits for.

A page shows DASHBOARD_PAGE_SIZE repositories, those that need someone first (a deployment waiting for
approval or failed, a paused stage, a repository that cannot be reached, a newest release that is invalid),
then the rest by lifecycle and name. Filters (search, state, lifecycle) and the page number live in the URL.
A fixed number of queries however many repositories there are: the stages, the summary counts, one page of
repositories (with their newest release annotated), their targets, and what the upper layer's notes need."""

from dataclasses import dataclass, field
from functools import lru_cache
from itertools import groupby

from django.db.models import Case, Count, Exists, IntegerField, OuterRef, Q, Subquery, Value, When
from django.utils import timezone

from pipelines import hooks
from pipelines.hooks import Note
from pipelines.models import Deployment, Lifecycle, Release, Repository, Stage, Target
from pipelines.pipeline_file import PipelineFileError, parse_pipeline
from pipelines.templatetags.portal import age, duration

DASHBOARD_PAGE_SIZE = 50
Status = Deployment.Status
NEEDS_SOMEONE = [Status.AWAITING_APPROVAL, Status.FAILED]

# ?state=…: the word in the URL, what the select shows, and which repositories it keeps.
STATE_FILTERS = {
    "attention": "needs attention",
    "awaiting_approval": "awaiting approval",
    "failed": "failed",
    "running": "running",
    "queued": "queued",
    "paused": "paused",
    "unreachable": "cannot reach the repository",
}

NOT_YET_DEPLOYED = "not yet deployed"
NOT_IN_PIPELINE = "not in this pipeline"
NO_RELEASE = "no release matches"


@dataclass
class Filters:
    """What the viewer asked for in the URL; unknown values are ignored rather than refused."""

    q: str = ""
    state: str = ""
    lifecycle: str = ""
    page: int = 1

    @classmethod
    def from_query(cls, query):
        state = query.get("state", "")
        try:
            page = max(1, int(query.get("page", 1)))
        except ValueError:
            page = 1
        return cls(q=query.get("q", "").strip()[:100], state=state if state in STATE_FILTERS else "",
                   lifecycle=query.get("lifecycle", "").strip()[:100], page=page)

    @property
    def active(self):
        return bool(self.q or self.state or self.lifecycle)

    def query_string(self, page):
        from urllib.parse import urlencode

        pairs = [(k, v) for k, v in (("q", self.q), ("state", self.state), ("lifecycle", self.lifecycle)) if v]
        if page > 1:
            pairs.append(("page", page))
        return "?" + urlencode(pairs) if pairs else "?"


@dataclass
class Cell:
    stage: Stage
    version: str = ""  # what runs there now; "" when nothing does
    sha: str = ""
    absent: str = ""  # when nothing runs: NOT_YET_DEPLOYED, NOT_IN_PIPELINE or NO_RELEASE
    last: Deployment | None = None  # the last deployment, when it is not simply what runs
    waits: Note | None = None  # what it waits for, and where to act
    paused: Note | None = None  # automatic deployments stopped here, and where to resume them
    paused_reason: str = ""
    deployment_url: str = ""
    when: dict | None = None  # {"iso", "text", "age"} of the last deployment
    took: str = ""
    attention: bool = False


@dataclass
class Row:
    repository: Repository
    cells: list
    problems: list = field(default_factory=list)  # Notes about the whole repository
    polled: dict | None = None


@dataclass
class Group:
    lifecycle: Lifecycle
    stages: list
    rows: list
    attention: bool


def moment(when):
    """A time as the page shows it: ISO for the browser to localise, the portal's time zone and relative."""
    if when is None:
        return None
    local = timezone.localtime(when)
    return {"iso": when.isoformat(), "text": local.strftime("%Y-%m-%d %H:%M %Z"), "age": age(when)}


@lru_cache(maxsize=1024)
def environments_named(pipeline_text):
    """The environment names a pipeline file deploys to; None when it does not parse. Cached by text:
    repositories share few distinct files, and the poll re-reads the same ones every five seconds."""
    try:
        return frozenset(parse_pipeline(pipeline_text).names())
    except PipelineFileError:
        return None


def _repositories(filters):
    newest = Release.objects.filter(repository=OuterRef("pk")).order_by("-detected_at", "-id")
    held = Target.objects.filter(repository=OuterRef("pk"))
    repositories = Repository.objects.select_related("lifecycle").annotate(
        newest_version=Subquery(newest.values("version")[:1]),
        newest_error=Subquery(newest.values("error")[:1]),
        newest_pipeline=Subquery(newest.values("pipeline_text")[:1]),
    )
    needs_someone = (
        Exists(held.filter(Q(last_deployment__status__in=NEEDS_SOMEONE) | Q(auto_deploy_paused=True)))
        | ~Q(last_error="") | Q(newest_error__gt="")
    )
    repositories = repositories.annotate(attention=Case(When(needs_someone, then=Value(1)), default=Value(0),
                                                        output_field=IntegerField()))
    if filters.q:
        repositories = repositories.filter(name__icontains=filters.q)
    if filters.lifecycle:
        repositories = repositories.filter(lifecycle__name=filters.lifecycle)
    if filters.state == "attention":
        repositories = repositories.filter(attention=1)
    elif filters.state == "paused":
        repositories = repositories.filter(Exists(held.filter(auto_deploy_paused=True)))
    elif filters.state == "unreachable":
        repositories = repositories.exclude(last_error="")
    elif filters.state:
        repositories = repositories.filter(Exists(held.filter(last_deployment__status=filters.state)))
    start = (filters.page - 1) * DASHBOARD_PAGE_SIZE
    # One row more than the page tells whether there is a next page, without counting them all.
    return list(repositories.order_by("-attention", "lifecycle__name", "name")[start:start + DASHBOARD_PAGE_SIZE + 1])


def summary():
    """{state: how many stages are in it}, over every repository: the strip at the top of the page."""
    counts = Target.objects.aggregate(
        **{status: Count("pk", filter=Q(last_deployment__status=status))
           for status in (Status.AWAITING_APPROVAL, Status.FAILED, Status.RUNNING, Status.QUEUED)},
        paused=Count("pk", filter=Q(auto_deploy_paused=True)),
    )
    return counts


def _cell(stage, target, repository, notes):
    cell = Cell(stage=stage)
    release = target.current_release if target else None
    if release is not None:
        cell.version, cell.sha = release.version, release.short_sha
    elif repository.newest_version is None:
        cell.absent = NO_RELEASE
    else:
        names = environments_named(repository.newest_pipeline or "")
        cell.absent = NOT_IN_PIPELINE if names is not None and stage.environment.name not in names else NOT_YET_DEPLOYED
    deployment = target.last_deployment if target else None
    if deployment is not None:
        if deployment.status != Status.SUCCEEDED or deployment.release_id != (release.pk if release else None):
            cell.last = deployment
        cell.when = moment(deployment.finished_at or deployment.created_at)
        cell.deployment_url = deployment.get_absolute_url()
        if deployment.started_at and deployment.finished_at:
            cell.took = duration(deployment.finished_at - deployment.started_at)
        note = notes.deployments.get(deployment.pk)
        if note is not None:
            cell.waits = note
        elif deployment.status == Status.AWAITING_APPROVAL:
            cell.waits = Note("waits for approval", deployment.get_absolute_url())
        elif deployment.status == Status.FAILED:
            cell.waits = Note(f"{deployment.release.version} failed: see its log", deployment.get_absolute_url())
        elif deployment.status == Status.QUEUED and stage.environment_id in notes.environments:
            cell.waits = notes.environments[stage.environment_id]
        cell.attention = deployment.status in NEEDS_SOMEONE
    if target is not None and target.auto_deploy_paused:
        # A rollback pauses its stage so that the next release does not undo it: say so in those words.
        reason = target.paused_reason
        text = "paused after rollback" if reason.startswith("Rollback") else "auto-deploy paused"
        cell.paused, cell.paused_reason = Note(text, repository.get_absolute_url()), reason
        cell.attention = True
    return cell


def _problems(repository):
    problems = []
    if repository.last_error:
        problems.append(Note("cannot reach the repository", repository.get_absolute_url()))
    if repository.newest_error:
        from django.urls import reverse

        url = reverse("release_detail", args=[repository.name, repository.newest_version])
        problems.append(Note(f"newest release {repository.newest_version} is invalid", url))
    return problems


def dashboard_page(request, filters):
    """The context of the dashboard for these filters."""
    stages_of = {}
    for stage in Stage.objects.select_related("environment", "lifecycle").order_by("lifecycle__name", "position"):
        stages_of.setdefault(stage.lifecycle_id, []).append(stage)
    repositories = _repositories(filters)
    has_next = len(repositories) > DASHBOARD_PAGE_SIZE
    repositories = repositories[:DASHBOARD_PAGE_SIZE]
    targets = Target.objects.filter(repository__in=[r.pk for r in repositories]).select_related(
        "current_release", "last_deployment", "last_deployment__release")
    by_pair = {(t.repository_id, t.environment_id): t for t in targets}
    notes = hooks.dashboard_notes(request, [t.last_deployment for t in by_pair.values() if t.last_deployment])
    rows = []
    for repository in repositories:
        stages = stages_of.get(repository.lifecycle_id, [])
        cells = [_cell(s, by_pair.get((repository.pk, s.environment_id)), repository, notes) for s in stages]
        rows.append(Row(repository, cells, _problems(repository), moment(repository.last_polled_at)))
    groups = [
        Group(lifecycle=rows_of[0].repository.lifecycle, stages=stages_of.get(lifecycle_id, []), rows=rows_of,
              attention=bool(attention))
        for (attention, lifecycle_id), rows_of in (
            (key, list(group)) for key, group in groupby(rows, key=lambda r: (r.repository.attention, r.repository.lifecycle_id)))
    ]
    return {
        "groups": groups,
        "filters": filters,
        "state_filters": STATE_FILTERS,
        "lifecycles": sorted({s.lifecycle.name for stages in stages_of.values() for s in stages}),
        "summary": summary(),
        "column_notes": notes.environments,
        "page": filters.page,
        "previous_url": filters.query_string(filters.page - 1) if filters.page > 1 else "",
        "next_url": filters.query_string(filters.page + 1) if has_next else "",
    }
