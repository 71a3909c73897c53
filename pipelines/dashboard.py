"""The dashboard's rows: per repository and stage the version, its sha, the state and what it waits for.

A page shows DASHBOARD_PAGE_SIZE repositories, those that need someone first (a deployment waiting for
approval or failed, a paused stage, a repository that cannot be reached, a newest release that is invalid),
then the rest by lifecycle and name. Filters (search, state, lifecycle) and the page number live in the URL.
A fixed number of queries however many repositories there are: the stages, the states (what the summary
counts and what needs someone), one page of repositories (with their newest release annotated), their
targets, and what the upper layer's notes need."""

import json
from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from itertools import groupby
from urllib.parse import quote, urlencode

from django.db import connection
from django.db.models import Exists, OuterRef, Q, Subquery, Value
from django.urls import reverse
from django.utils import timezone
from django.utils.http import RFC3986_SUBDELIMS
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from pipelines import hooks
from pipelines.hooks import Note
from pipelines.models import Deployment, DriftCheck, Lifecycle, Release, Repository, Stage, Target
from pipelines.models.drift import DriftStatus
from pipelines.pipeline_file import PipelineFileError, parse_pipeline
from pipelines.templatetags.portal import age, duration
from pipelines.url_patterns import url_pattern

# The short texts of a page's cells (versions, URLs, labels, ages) repeat from cell to cell and from poll
# to poll: escaping each once, rather than a thousand times a page, was a tenth of the page's time.
_e = lru_cache(maxsize=4096)(escape)

DASHBOARD_PAGE_SIZE = 25  # repositories; 125 cells at 5 stages render in a few ms
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
        pairs = [(k, v) for k, v in (("q", self.q), ("state", self.state), ("lifecycle", self.lifecycle)) if v]
        if page > 1:
            pairs.append(("page", page))
        return "?" + urlencode(pairs) if pairs else "?"


@dataclass
class Cell:
    """One stage of one repository. Rendered to HTML here (`html`) rather than in the template: a page has
    hundreds of cells, and the template engine would spend most of the page's time on them."""

    stage: Stage
    version: str = ""  # what runs there now; "" when nothing does
    sha: str = ""
    absent: str = ""  # when nothing runs: NOT_YET_DEPLOYED, NOT_IN_PIPELINE or NO_RELEASE
    last: dict | None = None  # {"status", "label", "version", "url"} of the last deployment, unless it simply runs
    waits: Note | None = None  # what it waits for, and where to act
    paused: Note | None = None  # automatic deployments stopped here, and where to resume them
    paused_reason: str = ""
    deployment_url: str = ""
    when: dict | None = None  # {"iso", "text", "age"} of the last deployment
    took: str = ""
    attention: bool = False
    release_url: str = ""
    drift: Note | None = None  # the target's sync state when it is not plainly in sync (drifted, check failed)
    synced: str = ""  # the last drift check's page when it found the target in sync

    @property
    def html(self):
        """The cell's markup, a plain str for Row.html to join. Plain f-strings with html.escape:
        format_html() for each piece of hundreds of cells costs more than the rest of the page."""
        parts = [f'<td class="target-cell{" attention" if self.attention else ""}">']
        if self.version:
            parts.append(f'<a class="version" href="{_e(self.release_url)}">{_e(self.version)}</a> '
                         f'<code class="sha small">{_e(self.sha)}</code>')
        else:
            parts.append(f'<span class="version none">{self.absent}</span>')
        if self.last:
            other = f' <span class="small">{_e(self.last["version"])}</span>' if self.last["version"] != self.version else ""
            parts.append(f'<div class="last"><a href="{_e(self.deployment_url)}"><span class="badge status-{_e(self.last["status"])}">'
                         f'{_e(self.last["label"])}</span></a>{other}</div>')
        if self.waits:
            text = _e(self.waits.text)
            parts.append(f'<div class="waits"><a href="{_e(self.waits.url)}">{text}</a></div>' if self.waits.url
                         else f'<div class="waits">{text}</div>')
        if self.paused:
            parts.append(f'<div class="waits"><a class="tag warn-tag" href="{_e(self.paused.url)}" title="{escape(self.paused_reason)}">'
                         f'{_e(self.paused.text)}</a> <span class="small muted">{escape(Truncator(self.paused_reason).chars(80))}</span></div>')
        if self.drift:
            parts.append(f'<div class="waits"><a class="tag warn-tag" href="{_e(self.drift.url)}">{_e(self.drift.text)}</a></div>')
        elif self.synced:
            parts.append(f'<div class="small"><a class="muted" href="{_e(self.synced)}">in sync with git</a></div>')
        if self.when:
            took = f" · took {_e(self.took)}" if self.took else ""
            parts.append(f'<div class="small muted"><a class="muted" href="{_e(self.deployment_url)}"><time datetime="{self.when["iso"]}">'
                         f'{_e(self.when["text"])} · {_e(self.when["age"])}</time></a>{took}</div>')
        parts.append("</td>")
        return "".join(parts)


@dataclass
class Row:
    repository: Repository
    cells: list
    problems: list = field(default_factory=list)  # Notes about the whole repository
    polled: dict | None = None
    url: str = ""  # the repository's page

    @property
    def html(self):
        """The whole row, its cells included: built here for the reason Cell.html gives."""
        repository = self.repository
        parts = [f'<tr><th scope="row" class="repo-cell"><a href="{_e(self.url)}" class="repo-name">{_e(repository.name)}</a>']
        if not repository.enabled:
            parts.append('<span class="tag muted-tag">disabled</span>')
        parts += [f'<div class="waits bad"><a href="{_e(problem.url)}">{_e(problem.text)}</a></div>' for problem in self.problems]
        if repository.last_error:
            parts.append(f'<div class="error-text small" title="{escape(repository.last_error)}">'
                         f'{escape(Truncator(repository.last_error).chars(160))}</div>')
        if self.polled:
            parts.append(f'<div class="small muted">polled <time datetime="{self.polled["iso"]}">'
                         f'{_e(self.polled["text"])} · {_e(self.polled["age"])}</time></div>')
        parts.append("</th>")
        parts += [cell.html for cell in self.cells]
        parts.append("</tr>")
        return SafeString("".join(parts))  # every piece escaped above; SafeString skips mark_safe's checks


@dataclass
class Group:
    lifecycle: Lifecycle
    stages: list
    rows: list
    attention: bool


def moment(when, zone=None, now=None):
    """A time as the page shows it: ISO for the browser to localise, the portal's time zone and relative.
    `zone` and `now`: the current time zone and time, when the caller asks for them once for a page's
    hundred moments."""
    if when is None:
        return None
    local = when.astimezone(zone or timezone.get_current_timezone())
    # Formatted by hand: strftime() with %Z took a third of the time of a page's 150 moments.
    text = f"{local.year:04}-{local.month:02}-{local.day:02} {local.hour:02}:{local.minute:02} {local.tzname()}"
    return {"iso": when.isoformat(), "text": text, "age": age(when, now)}


@lru_cache(maxsize=1024)
def environments_named(pipeline_text):
    """The environment names a pipeline file deploys to; None when it does not parse. Cached by text:
    repositories share few distinct files, and the poll re-reads the same ones every five seconds."""
    try:
        return frozenset(parse_pipeline(pipeline_text).names())
    except PipelineFileError:
        return None


SUMMARY_STATES = [Status.AWAITING_APPROVAL, Status.FAILED, Status.RUNNING, Status.QUEUED]
# What puts a repository first: a stage whose last deployment waits for approval or failed, a paused stage,
# a repository the portal cannot reach, a newest release that is invalid.
ATTENTION_STATES = [*NEEDS_SOMEONE, "paused", "unreachable", "invalid"]


def _states_query():
    """(repository id, state) of every stage whose last deployment is in one of SUMMARY_STATES, of every
    paused stage, of every repository that cannot be reached or whose newest release is invalid: what the
    summary strip counts, what "needs someone" and the state filters mean. Each part is read by an index,
    so this is a few hundred rows however many repositories there are. Compiled once (_states_sql)."""
    newer = Release.objects.filter(repository=OuterRef("repository")).filter(
        Q(detected_at__gt=OuterRef("detected_at")) | Q(detected_at=OuterRef("detected_at"), pk__gt=OuterRef("pk")))
    last = Target.objects.filter(last_deployment__status__in=SUMMARY_STATES).values_list(
        "repository_id", "last_deployment__status")
    paused = Target.objects.filter(auto_deploy_paused=True).annotate(state=Value("paused")).values_list(
        "repository_id", "state")
    unreachable = Repository.objects.exclude(last_error="").annotate(state=Value("unreachable")).values_list(
        "pk", "state")
    invalid = (Release.objects.filter(error__gt="").exclude(Exists(newer)).annotate(state=Value("invalid"))
               .values_list("repository_id", "state"))
    # No ORDER BY in the parts (SQLite refuses one inside a UNION): models with a default ordering get none.
    return last.order_by().union(paused.order_by(), unreachable.order_by(), invalid.order_by(), all=True)


@lru_cache(maxsize=1)
def _states_sql():
    """(SQL, params) of _states_query(), compiled once per process: it holds no value of a request, and
    compiling its four parts took as long as the database took to run them."""
    return _states_query().query.sql_with_params()


@dataclass
class States:
    """The rows of _states_query(): {state: the ids of the repositories in it} and the summary's counts."""

    repositories: dict
    counts: dict

    @classmethod
    def read(cls):
        repositories, counts = {}, dict.fromkeys([*SUMMARY_STATES, "paused"], 0)
        with connection.cursor() as cursor:
            cursor.execute(*_states_sql())
            rows = cursor.fetchall()
        for repository_id, state in rows:
            repositories.setdefault(state, set()).add(repository_id)
            if state in counts:
                counts[state] += 1  # a row per stage: the strip counts stages
        return cls(repositories, counts)

    def of(self, *states):
        return set().union(*(self.repositories.get(state, ()) for state in states))


# The page of repositories, written as SQL rather than built with the ORM: compiling the ORM's version
# (a page chosen in a subquery, three annotations of the newest release) took as long as the database
# took to run it, a third of the rows' time. The text is fixed for each combination of filters, and a
# list of ids is one parameter (an array on PostgreSQL, JSON on SQLite), however many it holds.
_PAGE_SQL = """
SELECT {repository_columns}, lifecycle.name AS lifecycle_name, lifecycle.description AS lifecycle_description,
  page.attention,
  (SELECT version FROM pipelines_release WHERE repository_id = repository.id ORDER BY detected_at DESC, id DESC LIMIT 1) AS newest_version,
  (SELECT error FROM pipelines_release WHERE repository_id = repository.id ORDER BY detected_at DESC, id DESC LIMIT 1) AS newest_error,
  (SELECT pipeline_text FROM pipelines_release WHERE repository_id = repository.id ORDER BY detected_at DESC, id DESC LIMIT 1) AS newest_pipeline
FROM (
  SELECT chosen.id, CASE WHEN {attention} THEN 1 ELSE 0 END AS attention
  FROM pipelines_repository chosen JOIN pipelines_lifecycle chosen_lifecycle ON chosen_lifecycle.id = chosen.lifecycle_id
  WHERE chosen.archived_at IS NULL{filters}
  ORDER BY attention DESC, chosen_lifecycle.name, chosen.name LIMIT %s OFFSET %s
) page
JOIN pipelines_repository repository ON repository.id = page.id
JOIN pipelines_lifecycle lifecycle ON lifecycle.id = repository.lifecycle_id
ORDER BY page.attention DESC, lifecycle.name, repository.name"""


def _id_in(column):
    """SQL that `column` is among a list of ids given as one parameter (see _ids)."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::bigint[])"
    return f"{column} IN (SELECT value FROM json_each(%s))"


def _ids(ids):
    return sorted(ids) if connection.vendor == "postgresql" else json.dumps(sorted(ids))


@lru_cache(maxsize=16)
def _page_sql(vendor, search, lifecycle, state):
    """The page's SQL for this combination of filters (whether each is set), made once per process."""
    filters = ""
    if search:  # names are ASCII slugs: UPPER() is a case-insensitive match on both databases
        filters += "\n    AND UPPER(chosen.name) LIKE UPPER(%s) ESCAPE '\\'"
    if lifecycle:
        filters += "\n    AND chosen_lifecycle.name = %s"
    if state:
        filters += "\n    AND " + _id_in("chosen.id")
    columns = ", ".join(f"repository.{connection.ops.quote_name(f.column)}" for f in Repository._meta.concrete_fields)
    return _PAGE_SQL.format(repository_columns=columns, attention=_id_in("chosen.id"), filters=filters)


def _repositories(filters, states):
    """One page of repositories (and one more, which tells whether a next page exists), those that need
    someone first, then by lifecycle and name, each with its lifecycle and its newest release's `newest_version`,
    `newest_error` and `newest_pipeline` (None without a release). One query.

    The page is chosen in a subquery that orders every visible repository (archived ones are off the
    dashboard) on whether it is among the few that need someone (a list of ids from `states`, not a
    subquery per repository); only the rows it chose are read in full, so a deep page costs no more than
    the first."""
    attention_ids = states.of(*ATTENTION_STATES)
    params = [_ids(attention_ids)]
    if filters.q:
        params.append(f"%{connection.ops.prep_for_like_query(filters.q)}%")
    if filters.lifecycle:
        params.append(filters.lifecycle)
    if filters.state:
        params.append(_ids(attention_ids if filters.state == "attention" else states.of(filters.state)))
    start = (filters.page - 1) * DASHBOARD_PAGE_SIZE
    params += [DASHBOARD_PAGE_SIZE + 1, start]
    sql = _page_sql(connection.vendor, bool(filters.q), bool(filters.lifecycle), bool(filters.state))
    # raw() converts each column as its field does (SQLite's times are text until then); the columns after
    # the model's become attributes of the same name.
    lifecycles, repositories = {}, []
    for repository in Repository.objects.raw(sql, params):
        if repository.lifecycle_id not in lifecycles:
            lifecycles[repository.lifecycle_id] = Lifecycle(
                id=repository.lifecycle_id, name=repository.lifecycle_name, description=repository.lifecycle_description)
        repository.lifecycle = lifecycles[repository.lifecycle_id]
        repositories.append(repository)
    return repositories


# What a release URL's version is quoted with, as reverse() quotes path arguments (pipelines/url_patterns.py).
_SAFE = RFC3986_SUBDELIMS + "/~:@"


class _Links:
    """What every cell of a page needs the same of: URL patterns, the current time zone and time."""

    def __init__(self):
        self.zone = timezone.get_current_timezone()
        self.now = timezone.now()
        self.deployment = url_pattern("deployment_detail", 987654321)
        self.release = url_pattern("release_detail", "repo-slug", "v-version")
        self.repository = url_pattern("repository_detail", "repo-slug")

    # Repository names are ASCII slugs (Repository.name), safe in a path as they are.
    def release_of(self, repository, version):
        return self.release.format(repository, _quoted(version))

    def repository_of(self, name):
        return self.repository.format(name)


@lru_cache(maxsize=4096)
def _quoted(version):
    return quote(version, safe=_SAFE)  # a page shows each version in several cells


TARGET_FIELDS = [
    "repository_id", "environment_id", "auto_deploy_paused", "paused_reason", "current_release__version",
    "current_release__commit_sha", "last_deployment_id", "last_deployment__status", "last_deployment__release__version",
    "last_deployment__release_id", "current_release_id", "last_deployment__created_at",
    "last_deployment__started_at", "last_deployment__finished_at",
]
STATUS_LABELS = dict(Status.choices)


@lru_cache(maxsize=1)
def _targets_with_fields():
    # The sync state is the newest drift check that answered (pipelines/models/drift.py), in the same query.
    answered = DriftCheck.objects.newest_answer()
    return Target.objects.annotate(drift_status=Subquery(answered.values("status")[:1]),
                                   drift_check_id=Subquery(answered.values("pk")[:1])
                                   ).values(*TARGET_FIELDS, "drift_status", "drift_check_id")  # built once


def _cell(stage, target, repository, notes, links):
    cell = Cell(stage=stage)
    if target is not None and target["current_release__version"] is not None:
        cell.version, cell.sha = target["current_release__version"], target["current_release__commit_sha"][:10]
        cell.release_url = links.release_of(repository.name, cell.version)
    elif repository.newest_version is None:
        cell.absent = NO_RELEASE
    else:
        names = environments_named(repository.newest_pipeline or "")
        cell.absent = NOT_IN_PIPELINE if names is not None and stage.environment.name not in names else NOT_YET_DEPLOYED
    deployment_id = target["last_deployment_id"] if target else None
    if deployment_id is not None:
        status, version = target["last_deployment__status"], target["last_deployment__release__version"]
        url = cell.deployment_url = links.deployment.format(deployment_id)
        if status != Status.SUCCEEDED or target["last_deployment__release_id"] != target["current_release_id"]:
            cell.last = {"status": status, "label": STATUS_LABELS.get(status, status), "version": version}
        started, finished = target["last_deployment__started_at"], target["last_deployment__finished_at"]
        cell.when = moment(finished or target["last_deployment__created_at"], links.zone, links.now)
        if started and finished:
            cell.took = duration(finished - started)
        note = notes.deployments.get(deployment_id)
        if note is not None:
            cell.waits = note
        elif status == Status.AWAITING_APPROVAL:
            cell.waits = Note("waits for approval", url)
        elif status == Status.FAILED:
            cell.waits = Note(f"{version} failed: see its log", url)
        elif status == Status.QUEUED and stage.environment_id in notes.environments:
            cell.waits = notes.environments[stage.environment_id]
        elif status == Status.SUCCEEDED and stage.soak_time and finished and finished + stage.soak_time > links.now:
            # The stage's soak time (pipelines/promotion.py): the next stage takes the release once it is over.
            cell.waits = Note(f"soaking: {duration(finished + stage.soak_time - links.now)} left", url)
        cell.attention = status in NEEDS_SOMEONE
    if target is not None and target["drift_status"] is not None:
        url = reverse("drift_check_detail", args=[target["drift_check_id"]])
        if target["drift_status"] == DriftStatus.IN_SYNC:
            cell.synced = url
        else:
            text = "drifted: see the report" if target["drift_status"] == DriftStatus.DRIFTED else "drift check failed"
            cell.drift = Note(text, url)
            cell.attention = True
    if target is not None and target["auto_deploy_paused"]:
        # A rollback pauses its stage so that the next release does not undo it: say so in those words, and for
        # one the portal made after a failure, why (the failed deployment, in the reason shown beside it).
        reason = target["paused_reason"]
        text = ("rolled back automatically" if reason.startswith(Deployment.AUTOMATIC_ROLLBACK)
                else "paused after rollback" if reason.startswith("Rollback") else "auto-deploy paused")
        cell.paused, cell.paused_reason = Note(text, links.repository_of(repository.name)), reason
        cell.attention = True
    return cell


def _problems(repository):
    problems = []
    if repository.last_error:
        problems.append(Note("cannot reach the repository", repository.get_absolute_url()))
    if repository.newest_error:
        url = reverse("release_detail", args=[repository.name, repository.newest_version])
        problems.append(Note(f"newest release {repository.newest_version} is invalid", url))
    return problems


def dashboard_page(request, filters):
    """The context of the dashboard for these filters."""
    stages_of = {}
    for stage in Stage.objects.select_related("environment", "lifecycle").order_by("lifecycle__name", "position"):
        stages_of.setdefault(stage.lifecycle_id, []).append(stage)
    states = States.read()
    repositories = _repositories(filters, states)
    has_next = len(repositories) > DASHBOARD_PAGE_SIZE
    repositories = repositories[:DASHBOARD_PAGE_SIZE]
    targets = _targets_with_fields().filter(repository__in=[r.pk for r in repositories])
    by_pair = {(t["repository_id"], t["environment_id"]): t for t in targets}
    notes = hooks.dashboard_notes(request, [
        hooks.DeploymentState(t["last_deployment_id"], t["last_deployment__status"], t["environment_id"], t["repository_id"])
        for t in by_pair.values() if t["last_deployment_id"] is not None
    ])
    links, rows = _Links(), []
    for repository in repositories:
        stages = stages_of.get(repository.lifecycle_id, [])
        cells = [_cell(s, by_pair.get((repository.pk, s.environment_id)), repository, notes, links) for s in stages]
        rows.append(Row(repository, cells, _problems(repository), moment(repository.last_polled_at, links.zone, links.now),
                        links.repository_of(repository.name)))
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
        "summary": states.counts,
        "column_notes": notes.environments,
        "page": filters.page,
        "previous_url": filters.query_string(filters.page - 1) if filters.page > 1 else "",
        "next_url": filters.query_string(filters.page + 1) if has_next else "",
    }
