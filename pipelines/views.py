"""The signed-in pages: what runs where, each repository, release and deployment; live through htmx polling.

Reading pages make a fixed number of queries and build their grids in Python; templates never query.
Mutating views are short: guard, model method, message, redirect."""

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import DatabaseError, connection, transaction
from django.http import Http404, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from pipelines import cancelling, check_views, commit_status, environment_page, jobs, release_page, run_log, stage_gate
from pipelines.dashboard import Filters, dashboard_page
from pipelines.models import (Build, Deployment, DeploymentStateError, DriftCheck, Environment, Release, Repository,
                              Stage, Target)
from pipelines.models import drift as drift_states
from pipelines.permissions import can_deploy, deployer_required
from pipelines.promotion import PromotionError, promote, retry, rollback, stage_for
from pipelines.tag_history import tag_history
from pipelines.versions import NEWEST_FIRST

RELEASES_ON_REPOSITORY_PAGE = 50
DEPLOYMENTS_ON_ENVIRONMENT_PAGE = 50
# A longer log shows its last lines (with every step's section); the raw download has all of it.
LOG_LINES_ON_PAGE = 2000


@dataclass
class ReleaseRow:
    release: Release
    deployments: list  # the latest Deployment or None per environment, in environment order
    build: Build | None = None


@dataclass
class TargetRow:
    stage: Stage
    target: Target | None

    @property
    def environment(self):
        return self.stage.environment


def _get_repository_or_404(name):
    return get_object_or_404(Repository.objects.select_related("lifecycle"), name=name)


def _get_release_or_404(name, version):
    return get_object_or_404(Release.objects.select_related("repository"), repository__name=name, version=version)


def _get_deployment_or_404(pk):
    related = ("release__repository", "environment", "repository", "triggered_by", "previous_release")
    return get_object_or_404(Deployment.objects.select_related(*related), pk=pk)


def _latest_deployments(releases):
    """{(release id, environment id): its latest deployment} for these releases, in one query."""
    latest = {}
    deployments = Deployment.objects.filter(release__in=releases).order_by("created_at", "id")
    for deployment in deployments.only("id", "release_id", "environment_id", "status", "created_at", "finished_at"):
        latest[deployment.release_id, deployment.environment_id] = deployment
    return latest


# --- reading -----------------------------------------------------------------------------------------


def health(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        return HttpResponse("database unavailable", status=503, content_type="text/plain")
    return HttpResponse("ok", content_type="text/plain")


@login_required
def dashboard(request):
    """Per repository and stage: what runs, what it waits for and where to act; those that need someone
    first, a page at a time, filtered through the URL. A fixed number of queries (see pipelines/dashboard.py)."""
    context = dashboard_page(request, Filters.from_query(request.GET))
    template = "pipelines/dashboard.html#grid" if request.htmx else "pipelines/dashboard.html"
    return render(request, template, context)


@login_required
def repository_detail(request, name):
    repository = _get_repository_or_404(name)
    stages = list(Stage.objects.of(repository))
    environments = [stage.environment for stage in stages]
    targets = {
        t.environment_id: t
        for t in repository.targets.select_related("current_release", "last_deployment__release", "paused_by")
    }
    # Newest version first (pipelines/versions.py), unreadable tags after, by detection: an ORDER BY on an
    # index, so any page costs the same few queries.
    ordered = repository.releases.order_by(*NEWEST_FIRST)
    page = Paginator(ordered, RELEASES_ON_REPOSITORY_PAGE).get_page(request.GET.get("page"))
    releases = list(page)
    latest = _latest_deployments(releases)
    builds = {build.release_id: build for build in Build.objects.filter(release__in=releases)
              .only("id", "release_id", "status", "error")}
    context = {
        "repository": repository,
        "page": page,
        "environments": environments,
        "target_rows": [TargetRow(stage=stage, target=targets.get(stage.environment_id)) for stage in stages],
        "release_rows": [
            ReleaseRow(release=release, deployments=[latest.get((release.id, env.id)) for env in environments],
                       build=builds.get(release.id))
            for release in releases
        ],
        "can_deploy": can_deploy(request.user),
        "commit_status_trouble": commit_status.reporting_trouble(repository),
        **check_views.branches_context(repository),
    }
    return render(request, "pipelines/repository_detail.html", context)


@login_required
def release_detail(request, name, version):
    release = _get_release_or_404(name, version)
    deployments = list(release.deployments.select_related("environment", "triggered_by").order_by(
        "environment__position", "-created_at", "-id"
    ))
    targets = Target.objects.filter(repository=release.repository).select_related("current_release")
    steps = release_page.stage_steps(release, release.stages(), deployments, targets)
    context = {
        "release": release,
        "repository": release.repository,
        "commit_url": release.repository.commit_url(release.commit_sha),
        "tag": tag_history(release),
        "tag_commit_url": release.repository.commit_url(release.tag_moved_to) if release.tag_moved_to else "",
        "deployments": deployments,
        "stage_steps": steps,
        "late_tag_refusal": release_page.not_promoted_when_recorded(release),
        "deploy_steps": [step for step in steps if not step.stage.requires_approval],
        "can_deploy": can_deploy(request.user),
        **_build_context(release),
        **check_views.release_checks_context(release),
    }
    return render(request, "pipelines/release_detail.html", context)


def _build_context(release):
    """The release's build (None without one) and its log so far, for the page and its poll."""
    build = Build.objects.filter(release=release).first()
    return {
        "build": build,
        "build_log": build.log_since(0)[0] if build is not None else "",
        "needs_build": build is None and _has_build_section(release),
    }


def _has_build_section(release):
    return release.pipeline is not None and release.pipeline.build is not None


@login_required
def release_build(request, pk):
    """The build section of the release page, polled every 2 s until the build has finished."""
    release = get_object_or_404(Release.objects.select_related("repository"), pk=pk)
    context = {"release": release, "can_deploy": can_deploy(request.user), **_build_context(release)}
    return render(request, "pipelines/release_detail.html#build", context)


@require_POST
@login_required
@deployer_required
def release_build_start(request, pk):
    """Build a release that was not built when recorded (a poll builds only the release it promotes)."""
    release = get_object_or_404(Release.objects.select_related("repository"), pk=pk)
    if release.error or not _has_build_section(release):
        messages.error(request, f"{release.version} has no build section to run; nothing was started.")
        return redirect(release)
    with transaction.atomic():
        build = Build.objects.queue_for(release, by=request.user)
    messages.success(request, f"Build #{build.pk} of {release.version} is {build.get_status_display().lower()}.")
    warn_if_queue_was_unreachable(request)
    return redirect(release)


@login_required
def deployment_detail(request, pk):
    deployment = _get_deployment_or_404(pk)
    context = {"deployment": deployment, "can_deploy": can_deploy(request.user)}
    if request.htmx:
        return render(request, "pipelines/deployment_detail.html#status", context)
    # The status is read before the log: a deployment seen finished has all of its log already.
    shown, hidden, unmarked = deployment.log_tail(LOG_LINES_ON_PAGE)
    sections = run_log.sections(run_log.lines_of(shown), finished=deployment.is_finished, unmarked=unmarked)
    context.update(sections=sections, last_seq=shown[-1][0] if shown else 0, current_step=sections[-1].number,
                   hidden_lines=hidden, lines_on_page=LOG_LINES_ON_PAGE)
    return render(request, "pipelines/deployment_detail.html", context)


@login_required
def deployment_log(request, pk):
    """Only the log after chunk `after`, for the page that shows step `step` last: its new lines go to the end
    of that step's section, its end updates the section's state, new steps come as new sections; the poller
    for the next request comes along (all swapped out of band but the new sections).

    Once the deployment has finished, the last text comes with status 286 and an inert poller: polling stops."""
    try:
        after, step = int(request.GET.get("after", "0")), int(request.GET.get("step", "0"))
    except ValueError:
        return HttpResponseBadRequest("after and step must be numbers")
    deployment = get_object_or_404(Deployment, pk=pk)
    chunks = deployment.log_chunks_since(after)
    current = run_log.StepSection(step, 0, "", status="running" if step else "succeeded")
    sections = run_log.sections(run_log.lines_of(chunks), current=current, finished=deployment.is_finished)
    context = {
        "deployment": deployment, "continued": sections[0], "sections": sections[1:], "oob": True,
        "last_seq": chunks[-1][0] if chunks else after, "current_step": sections[-1].number,
    }
    content = render_to_string("pipelines/deployment_detail.html#log_update", context, request)
    if deployment.is_finished:
        return HttpResponseStopPolling(content)
    return HttpResponse(content)


@login_required
def deployment_log_text(request, pk):
    """The whole log as plain text, streamed chunk by chunk from the database."""
    deployment = get_object_or_404(Deployment.objects.select_related("repository", "environment", "release"), pk=pk)

    def pieces():
        for text in deployment.log_chunks.order_by("seq").values_list("text", flat=True).iterator(chunk_size=200):
            yield run_log.plain(text)

    response = StreamingHttpResponse(pieces(), content_type="text/plain; charset=utf-8")
    filename = (f"{deployment.repository.name}-{deployment.release.version}-{deployment.environment.name}-"
                f"{deployment.pk}.log")
    disposition = "inline" if request.GET.get("view") else "attachment"
    response["Content-Disposition"] = f'{disposition}; filename="{filename.replace("/", "-")}"'
    return response


@login_required
def environment_detail(request, name):
    """What runs in an environment, per repository (version, commit, since when, by whom), and its history,
    newest first and paged, with a Rollback on each past success that is not what runs there now.
    A fixed number of queries whatever the page holds."""
    environment = get_object_or_404(Environment, name=name)
    targets = list(environment.targets.select_related(
        "repository", "current_release", "last_deployment__triggered_by", "last_deployment__release")
        .order_by("repository__name"))
    history = Paginator(environment.deployments.select_related("release", "repository", "triggered_by")
                        .order_by("-created_at", "-id"), DEPLOYMENTS_ON_ENVIRONMENT_PAGE)
    page = history.get_page(request.GET.get("page"))
    since = _current_since(environment, targets)
    busy = set(environment.deployments.active().values_list("repository_id", flat=True))
    running = {target.repository_id: target.current_release_id for target in targets}
    drift = DriftCheck.objects.latest_outcomes(targets)
    drift_waiting = set(DriftCheck.objects.filter(environment=environment, status__in=drift_states.ACTIVE)
                        .values_list("repository_id", flat=True))
    context = {
        "environment": environment,
        "current_rows": [environment_page.CurrentRow(
            target, since.get(target.repository_id), check, target.repository_id in drift_waiting,
            DriftCheck.objects.drifted_since(check) if check and check.status == DriftCheck.Status.DRIFTED else None)
            for target, check in ((t, drift.get((t.repository_id, environment.pk))) for t in targets)],
        "page": page,
        "history_rows": [environment_page.HistoryRow(deployment, running.get(deployment.repository_id),
                                                     deployment.repository_id in busy) for deployment in page],
        "can_deploy": request.user.has_perm("pipelines.deploy"),
    }
    return render(request, "pipelines/environment_detail.html", context)


def _current_since(environment, targets):
    """{repository id: the deployment that put what runs there now in place}: the latest success of the
    current release of each target, in one query."""
    wanted = {(t.repository_id, t.current_release_id) for t in targets if t.current_release_id}
    if not wanted:
        return {}
    found = {}
    successes = environment.deployments.filter(status=Deployment.Status.SUCCEEDED,
                                               release_id__in={release for _, release in wanted})
    for deployment in successes.select_related("triggered_by").order_by("finished_at", "id"):
        if (deployment.repository_id, deployment.release_id) in wanted:
            found[deployment.repository_id] = deployment
    return found


# --- changing ----------------------------------------------------------------------------------------


@require_POST
@login_required
@deployer_required
def release_deploy(request, pk):
    release = get_object_or_404(Release.objects.select_related("repository"), pk=pk)
    environment = get_object_or_404(Environment, name=request.POST.get("environment", ""))
    try:
        stage = stage_for(release, environment)
    except PromotionError as exc:
        messages.error(request, str(exc))
        return redirect(release)
    if stage.requires_approval:
        # Change control (approvals) owns these: its Promote checks the pre-production gate first.
        messages.error(request, f"{environment} requires approval: use Promote, which checks the release passed the stage before.")
        return redirect(release)

    def deploy():
        stage_gate.check(release, environment)  # every manual deployment passes the pre-production gate
        return promote(release, environment, by=request.user, trigger=Deployment.Trigger.MANUAL)

    return redirect_after_promotion(request, release, environment, deploy)


def redirect_after_promotion(request, release, environment, start):
    """Run `start()`, a promotion: go to the new deployment, or back to the release saying why not."""
    try:
        deployment = start()
    except PromotionError as exc:
        messages.error(request, str(exc))
        return redirect(release)
    status = deployment.get_status_display().lower()
    messages.success(request, f"{release.version} to {environment}: deployment #{deployment.pk} is {status}.")
    warn_if_queue_was_unreachable(request)
    return redirect(deployment)


def warn_if_queue_was_unreachable(request):
    """Say so when the action is recorded but its job could not be queued (Redis away): it starts later."""
    if jobs.queue_was_unreachable():
        messages.warning(request, "The work queue is unreachable right now: this is recorded and starts by itself "
                                  "as soon as the queue is back.")


@require_POST
@login_required
@deployer_required
def run_cancel(request, kind, pk):
    """Cancel a run of any kind (pipelines/cancelling.py), then back to the page the button was on."""
    run = cancelling.find_run(kind, pk)
    if run is None:
        raise Http404(f"No {kind} #{pk}.")
    try:
        said = cancelling.cancel_run(run, by=request.user, reason=f"Cancelled by {request.user.get_username()}.")
    except DeploymentStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, said)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = cancelling.page_of(run)
    return redirect(back)


@require_POST
@login_required
@deployer_required
def deployment_retry(request, pk):
    deployment = _get_deployment_or_404(pk)
    try:
        # A retry is a manual deployment too: what failed the stage before does not get here again by it.
        stage_gate.check(deployment.release, deployment.environment)
        retried = retry(deployment, by=request.user)
    except PromotionError as exc:
        messages.error(request, str(exc))
        return redirect(deployment)
    messages.success(request, f"Retrying as deployment #{retried.pk}.")
    warn_if_queue_was_unreachable(request)
    return redirect(retried)


@require_POST
@login_required
@deployer_required
def repository_poll(request, name):
    repository = _get_repository_or_404(name)
    if repository.is_archived or not repository.enabled:
        messages.error(request, f"{repository} is {'archived' if repository.is_archived else 'disabled'}; it is not polled.")
        return redirect(repository)
    repository.request_poll(by=request.user)
    warn_if_queue_was_unreachable(request)
    messages.success(request, f"Polling {repository} now; new releases show here.")
    return redirect(repository)


@require_POST
@login_required
@deployer_required
def deployment_rollback(request, pk):
    """Roll the deployment's environment back to its release (a past success there), under the same policy
    as any promotion: where the stage holds deployments for approval, the rollback waits for one."""
    deployment = _get_deployment_or_404(pk)
    release, environment = deployment.release, deployment.environment
    reason = (request.POST.get("reason", "").strip()
              or f"Rollback from the history of {environment} (deployment #{deployment.pk}).")
    return redirect_after_promotion(request, release, environment,
                                    lambda: rollback(release, environment, by=request.user, reason=reason))


@require_POST
@login_required
@deployer_required
def target_pause(request, name, environment):
    repository = _get_repository_or_404(name)
    environment = get_object_or_404(Environment, name=environment)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(request, "Give a reason for pausing automatic deployment; nothing was changed.")
        return redirect(repository)
    Target.objects.for_pair(repository, environment).pause(by=request.user, reason=reason)
    messages.success(request, f"Automatic deployment of {repository} to {environment} is paused.")
    return redirect(repository)


@require_POST
@login_required
@deployer_required
def target_resume(request, name, environment):
    repository = _get_repository_or_404(name)
    target = get_object_or_404(Target, repository=repository, environment__name=environment)
    target.resume(by=request.user)
    messages.success(request, f"Automatic deployment of {repository} to {target.environment} is resumed.")
    return redirect(repository)
