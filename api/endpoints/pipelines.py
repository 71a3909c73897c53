"""Repositories, lifecycles, environments, releases and deployments: reading, and the deployer's actions.

Each action is the page's own path (the same model methods and promotion functions, the same refusals,
said as `409 {"error": "refused", "detail": …}`); who may call it is decided before, in api/auth.py."""

from django.db.models import Subquery
from django.http import JsonResponse
from ninja import Router, Status
from ninja.responses import NinjaJSONEncoder

from api import schemas
from api.errors import ApiError, conflict, not_found
from api.pagination import Page, paginate, paginate_releases
from pipelines import cancelling, commit_status, jobs, stage_gate
from pipelines.models import (Build, Check, Deployment, DeploymentStateError, DriftCheck, Environment, ExternalCheck,
                              Lifecycle, Release, Repository, Stage, Target)
from pipelines.promotion import PromotionError, retry

router = Router(tags=["pipelines"])

# --- serialising ----------------------------------------------------------------------------------------


def deployment_brief(deployment):
    if deployment is None:
        return None
    return {"id": deployment.pk, "status": deployment.status, "version": deployment.release.version,
            "environment": deployment.environment.name, "created_at": deployment.created_at,
            "finished_at": deployment.finished_at}


def repository_out(repository):
    return {"name": repository.name, "url": repository.display_url,  # credentials in the URL are hidden
            "branch": repository.branch, "release_from": repository.release_from, "tag_pattern": repository.tag_pattern,
            "pipeline_path": repository.pipeline_path, "poll_interval": repository.poll_interval,
            "enabled": repository.enabled, "lifecycle": repository.lifecycle.name,
            "last_polled_at": repository.last_polled_at, "last_error": repository.last_error}


def release_out(release, environments=None):
    if environments is None:
        environments = [stage.environment.name for stage in release.stages()]
    return {"id": release.pk, "repository": release.repository.name, "version": release.version,
            "commit_sha": release.commit_sha, "message": release.message, "author_name": release.author_name,
            "author_email": release.author_email, "committed_at": release.committed_at,
            "detected_at": release.detected_at, "error": release.error, "blocked": release.blocked,
            "blocked_reason": release.blocked_reason, "environments": environments}


def deployment_out(deployment, change_request_id=None):
    return {"id": deployment.pk, "repository": deployment.repository.name, "environment": deployment.environment.name,
            "release_id": deployment.release_id, "version": deployment.release.version,
            "commit_sha": deployment.release.commit_sha, "status": deployment.status, "trigger": deployment.trigger,
            "triggered_by": deployment.triggered_by.get_username() if deployment.triggered_by else None,
            "reason": deployment.reason, "created_at": deployment.created_at, "queued_at": deployment.queued_at,
            "started_at": deployment.started_at, "finished_at": deployment.finished_at,
            "cancel_requested_at": deployment.cancel_requested_at, "exit_code": deployment.exit_code,
            "error": deployment.error, "is_finished": deployment.is_finished, "change_request_id": change_request_id}


def portal_check_out(check):
    return {"name": Check.HOST_CONTEXT, "source": "portal", "state": check.status,
            "passed": check.status == Check.Status.SUCCEEDED,
            "url": commit_status.portal_url(check.get_absolute_url()), "description": check.error,
            "ref": check.ref_name, "reported_by": None, "updated_at": check.finished_at or check.started_at or check.created_at,
            "finished_at": check.finished_at}


def external_check_out(check):
    return {"name": check.name, "source": "external", "state": check.state, "passed": check.passed,
            "url": check.target_url, "description": check.description, "ref": None,
            "reported_by": check.reported_by.get_username() if check.reported_by else None,
            "updated_at": check.updated_at, "finished_at": check.finished_at}


def checks_of(repository, commit_sha):
    """The portal's runs (newest first), then the external results by name."""
    portal = Check.objects.for_commit(repository, commit_sha)
    external = ExternalCheck.objects.for_commit(repository, commit_sha).select_related("reported_by")
    return [portal_check_out(check) for check in portal] + [external_check_out(check) for check in external]


DEPLOYMENT_RELATED = ("release__repository", "environment", "repository", "triggered_by")


def _repository(name):
    repository = Repository.objects.select_related("lifecycle").filter(name=name).first()
    if repository is None:
        raise not_found(f"repository {name!r}")
    return repository


def _release(pk):
    release = Release.objects.select_related("repository").filter(pk=pk).first()
    if release is None:
        raise not_found(f"release #{pk}")
    return release


def _deployment(pk):
    deployment = Deployment.objects.select_related(*DEPLOYMENT_RELATED).filter(pk=pk).first()
    if deployment is None:
        raise not_found(f"deployment #{pk}")
    return deployment


def _environment(name):
    environment = Environment.objects.filter(name=name).first()
    if environment is None:
        raise not_found(f"environment {name!r}")
    return environment


def _change_request_id(deployment):
    # approvals is an upper layer: read through the reverse accessor it adds, when it is installed.
    change_request = getattr(deployment, "change_request", None)
    return change_request.pk if change_request is not None else None


# --- reading --------------------------------------------------------------------------------------------


@router.get("/status", response=list[schemas.RepositoryStatus], url_name="api_status",
            summary="What runs where: every repository with each stage of its lifecycle")
def status(request, repository: str | None = None):
    """Three queries however many repositories there are (like the dashboard), reading values rather than
    model instances: at 500 repositories building 4,000 model objects was most of the time (bench/api.py)."""
    stages_of = {}
    for stage in (Stage.objects.order_by("lifecycle_id", "position")
                  .values("lifecycle_id", "environment_id", "environment__name", "position", "auto_deploy",
                          "requires_approval")):
        stages_of.setdefault(stage["lifecycle_id"], []).append(stage)
    repositories = Repository.objects.order_by("name").values("id", "name", "lifecycle_id", "lifecycle__name", "enabled",
                                                              "last_polled_at", "last_error")
    answered = DriftCheck.objects.newest_answer()
    targets = Target.objects.annotate(
        sync_state=Subquery(answered.values("status")[:1]), drift_check_id=Subquery(answered.values("pk")[:1]),
        drift_checked_at=Subquery(answered.values("finished_at")[:1]),
    ).values(
        "repository_id", "environment_id", "current_release__version", "auto_deploy_paused", "paused_reason",
        "last_deployment_id", "last_deployment__status", "last_deployment__release__version",
        "last_deployment__environment__name", "last_deployment__created_at", "last_deployment__finished_at",
        "sync_state", "drift_check_id", "drift_checked_at")
    if repository:
        repositories = repositories.filter(name=repository)
        targets = targets.filter(repository__name=repository)
    by_pair = {(t["repository_id"], t["environment_id"]): t for t in targets}
    rows = []
    for repo in repositories:
        row_targets = []
        for stage in stages_of.get(repo["lifecycle_id"], []):
            target = by_pair.get((repo["id"], stage["environment_id"])) or {}
            last = None
            if target.get("last_deployment_id"):
                last = {"id": target["last_deployment_id"], "status": target["last_deployment__status"],
                        "version": target["last_deployment__release__version"],
                        "environment": target["last_deployment__environment__name"],
                        "created_at": target["last_deployment__created_at"],
                        "finished_at": target["last_deployment__finished_at"]}
            row_targets.append({
                "environment": stage["environment__name"], "stage_position": stage["position"],
                "auto_deploy": stage["auto_deploy"], "requires_approval": stage["requires_approval"],
                "current_version": target.get("current_release__version"),
                "paused": bool(target.get("auto_deploy_paused")), "paused_reason": target.get("paused_reason", ""),
                "last_deployment": last, "sync_state": target.get("sync_state"),
                "drift_check_id": target.get("drift_check_id"), "drift_checked_at": target.get("drift_checked_at"),
            })
        rows.append({"name": repo["name"], "lifecycle": repo["lifecycle__name"], "enabled": repo["enabled"],
                     "last_polled_at": repo["last_polled_at"], "last_error": repo["last_error"], "targets": row_targets})
    if repository and not rows:
        raise not_found(f"repository {repository!r}")
    # Answered as built: the rows are plain values already, and validating 1,000 targets against the schema
    # on every poll of a dashboard or CI would cost more than the queries (bench/api.py).
    return JsonResponse(rows, safe=False, encoder=NinjaJSONEncoder)


@router.get("/repositories", response=Page[schemas.Repository], url_name="api_repositories")
def repositories(request, lifecycle: str | None = None, cursor: str | None = None, limit: int = 50):
    queryset = Repository.objects.select_related("lifecycle")
    if lifecycle:
        queryset = queryset.filter(lifecycle__name=lifecycle)
    return paginate(queryset, cursor=cursor, limit=limit, serialize=repository_out)


@router.get("/repositories/{name}", response=schemas.Repository, url_name="api_repository")
def repository(request, name: str):
    return repository_out(_repository(name))


@router.post("/repositories/{name}/poll", response={202: schemas.Accepted}, url_name="api_repository_poll",
             summary="Look for new releases now")
def repository_poll(request, name: str):
    repository = _repository(name)
    outcome = jobs.enqueue_poll_unless_pending(repository.pk)
    if outcome == "unreachable":
        raise ApiError(503, "queue_unreachable", "The work queue is unreachable; the scheduler polls when it is back.")
    said = "A poll of it was already waiting or running." if outcome == "pending" else "A poll is queued."
    return Status(202, {"detail": f"{repository.name}: {said}"})


@router.post("/repositories/{name}/environments/{environment}/check-drift", response={202: schemas.Accepted},
             url_name="api_check_drift", summary="Check now that what runs there is what git says (its drift: steps)")
def check_drift(request, name: str, environment: str):
    repository = _repository(name)
    place = Environment.objects.filter(name=environment).first()
    if place is None:
        raise not_found(f"environment {environment!r}")
    check = DriftCheck.objects.queue_for(repository, place, by=request.user,
                                         reason=f"asked for by {request.user.get_username()} through the API")
    if check is None:
        raise conflict(f"Nothing to check: what runs for {repository.name} in {place.name} has no drift steps there "
                       f"(or nothing runs there).")
    return Status(202, {"detail": f"{check.__str__().capitalize()} is {check.get_status_display().lower()}; "
                                  f"/api/v1/status shows its answer."})


@router.get("/repositories/{name}/releases", response=Page[schemas.Release], url_name="api_repository_releases")
def repository_releases(request, name: str, version: str | None = None, blocked: bool | None = None,
                        cursor: str | None = None, limit: int = 50):
    repository = _repository(name)
    queryset = Release.objects.filter(repository=repository).select_related("repository")
    if version is not None:
        queryset = queryset.filter(version=version)
    if blocked is not None:
        queryset = queryset.filter(blocked=blocked)
    names = {stage.environment.name: stage for stage in Stage.objects.of(repository)}

    def serialize(release):
        on_road = [name for name in names if release.pipeline and name in release.pipeline.environments]
        return release_out(release, on_road)

    return paginate_releases(queryset, cursor=cursor, limit=limit, serialize=serialize)


@router.get("/lifecycles", response=list[schemas.Lifecycle], url_name="api_lifecycles")
def lifecycles(request):
    stages = Stage.objects.select_related("environment", "approval_policy__approver_group").order_by("position")
    by_lifecycle = {}
    for stage in stages:
        policy = getattr(stage, "approval_policy", None)
        by_lifecycle.setdefault(stage.lifecycle_id, []).append({
            "environment": stage.environment.name, "position": stage.position, "auto_deploy": stage.auto_deploy,
            "requires_approval": stage.requires_approval,
            "take_prereleases": stage.take_prereleases, "version_constraint": stage.version_constraint,
            "required_approvals": policy.required_approvals if policy else None,
            "approver_group": policy.approver_group.name if policy else None,
            "allow_api_approval": bool(policy and policy.allow_api_approval),
        })
    return [{"name": lifecycle.name, "description": lifecycle.description, "stages": by_lifecycle.get(lifecycle.pk, [])}
            for lifecycle in Lifecycle.objects.order_by("name")]


@router.get("/environments", response=list[schemas.Environment], url_name="api_environments")
def environments(request):
    return [{"name": env.name, "position": env.position} for env in Environment.objects.order_by("position")]


@router.get("/releases/{int:pk}", response=schemas.ReleaseDetail, url_name="api_release",
            summary="A release with its build outputs, the checks of its commit and its deployments")
def release(request, pk: int):
    release = _release(pk)
    build = Build.objects.filter(release=release).first()
    deployments = release.deployments.select_related("release", "environment").order_by("-created_at", "-id")
    return {**release_out(release),
            "build": {"id": build.pk, "status": build.status, "error": build.error,
                      "outputs": {str(k): str(v) for k, v in build.outputs.items()}} if build else None,
            "checks": checks_of(release.repository, release.commit_sha),
            "deployments": [deployment_brief(d) for d in deployments]}


@router.get("/deployments", response=Page[schemas.Deployment], url_name="api_deployments")
def deployments(request, repository: str | None = None, environment: str | None = None, status: str | None = None,
                release: int | None = None, cursor: str | None = None, limit: int = 50):
    queryset = Deployment.objects.select_related(*DEPLOYMENT_RELATED)
    if repository:
        queryset = queryset.filter(repository__name=repository)
    if environment:
        queryset = queryset.filter(environment__name=environment)
    if status:
        queryset = queryset.filter(status=status)
    if release is not None:
        queryset = queryset.filter(release_id=release)
    return paginate(queryset, cursor=cursor, limit=limit, serialize=deployment_out)


@router.get("/deployments/{int:pk}", response=schemas.DeploymentDetail, url_name="api_deployment",
            summary="A deployment: status and the steps it runs")
def deployment(request, pk: int):
    deployment = _deployment(pk)
    pipeline = deployment.release.pipeline
    spec = pipeline.environments.get(deployment.environment.name) if pipeline else None
    steps = [{"name": step.name, "run": step.run, "timeout": step.timeout} for step in (spec.steps if spec else ())]
    return {**deployment_out(deployment, _change_request_id(deployment)), "steps": steps}


@router.get("/deployments/{int:pk}/log", response=schemas.LogChunk, url_name="api_deployment_log",
            summary="The log after chunk `after`; poll with the returned last_seq until is_finished")
def deployment_log(request, pk: int, after: int = 0):
    deployment = Deployment.objects.filter(pk=pk).only("id", "status").first()
    if deployment is None:
        raise not_found(f"deployment #{pk}")
    # The status is read before the log: a deployment seen finished has all of its log already.
    text, last_seq = deployment.log_since(after)
    return {"text": text, "last_seq": last_seq, "status": deployment.status, "is_finished": deployment.is_finished}


# --- changing -------------------------------------------------------------------------------------------


@router.post("/deployments/{int:pk}/cancel", response=schemas.Deployment, url_name="api_deployment_cancel")
def deployment_cancel(request, pk: int):
    deployment = _deployment(pk)
    try:  # as every kind of run is cancelled (api/endpoints/runs.py), with the same refusals
        cancelling.cancel_run(deployment, by=request.user,
                              reason=f"Cancelled by {request.user.get_username()} through the API.")
    except DeploymentStateError as exc:
        raise conflict(str(exc)) from None
    return deployment_out(_deployment(pk))


@router.post("/deployments/{int:pk}/retry", response={201: schemas.Deployment}, url_name="api_deployment_retry")
def deployment_retry(request, pk: int):
    deployment = _deployment(pk)
    try:
        stage_gate.check(deployment.release, deployment.environment)
        retried = retry(deployment, by=request.user)
    except PromotionError as exc:
        raise conflict(str(exc)) from None
    return Status(201, deployment_out(_deployment(retried.pk)))


@router.post("/releases/{int:pk}/block", response=schemas.Release, url_name="api_release_block")
def release_block(request, pk: int, body: schemas.ReasonIn):
    release = _release(pk)
    if not body.reason.strip():
        raise ApiError(422, "invalid", "Give a reason for blocking the release; nothing was changed.")
    if release.blocked:
        raise conflict(f"{release.version} is already blocked ({release.blocked_reason}); nothing was changed.")
    release.block(by=request.user, reason=body.reason.strip())
    return release_out(release)


@router.post("/releases/{int:pk}/unblock", response=schemas.Release, url_name="api_release_unblock")
def release_unblock(request, pk: int):
    release = _release(pk)
    if not release.blocked:
        raise conflict(f"{release.version} is not blocked; nothing was changed.")
    release.unblock(by=request.user)
    return release_out(release)


def already_on_its_way(release, environment):
    """The page refuses a second Promote of a release already waiting or running there; so does the API."""
    deployment = Deployment.objects.filter(release=release, environment=environment).active().first()
    if deployment is not None:
        raise ApiError(409, "already_on_its_way",
                       f"{release.version} is already on its way to {environment}: deployment #{deployment.pk} is "
                       f"{deployment.get_status_display().lower()}. Nothing was changed.", deployment=deployment.pk)

