"""What goes through change control: promote (through the pre-production gate), roll back, change requests
and their decisions, freeze windows.

Approving through the API is the page's `ChangeRequest.approve()` under the same policy, and more: the
token needs the `approve` scope, the stage must allow decisions through the API (StagePolicy.
allow_api_approval, off by default), and a service account never decides (it is not a person)."""

from django.db.models import Prefetch
from ninja import Router, Status

from api import schemas
from api.endpoints.pipelines import _deployment, _environment, _release, already_on_its_way, deployment_out
from api.errors import ApiError, conflict, not_found
from api.models import is_service_account
from api.pagination import Page, paginate
from approvals.gate_override import promote_through_gate
from approvals.models import ChangeRequest, Decision, DecisionRefused, FreezeWindow
from pipelines.models import DeploymentStateError
from pipelines.promotion import PromotionError, rollback

router = Router(tags=["change control"])


@router.post("/releases/{int:pk}/promote", response={201: schemas.Deployment}, url_name="api_release_promote",
             summary="Promote through the pre-production gate (held for approval where the stage requires it)")
def release_promote(request, pk: int, body: schemas.PromoteIn):
    release = _release(pk)
    environment = _environment(body.environment)
    already_on_its_way(release, environment)
    try:
        deployment = promote_through_gate(release, environment, by=request.user,
                                          override_reason=body.override_reason.strip())
    except PromotionError as exc:
        raise conflict(str(exc)) from None
    return Status(201, deployment_out(_deployment(deployment.pk)))


@router.post("/releases/{int:pk}/rollback", response={201: schemas.Deployment}, url_name="api_release_rollback",
             summary="Deploy again a release that succeeded there before; pauses automatic deployment")
def release_rollback(request, pk: int, body: schemas.RollbackIn):
    release = _release(pk)
    environment = _environment(body.environment)
    already_on_its_way(release, environment)
    try:
        deployment = rollback(release, environment, by=request.user, reason=body.reason.strip())
    except PromotionError as exc:
        raise conflict(str(exc)) from None
    return Status(201, deployment_out(_deployment(deployment.pk)))


CHANGE_REQUEST_RELATED = ("deployment__release", "repository", "environment", "requested_by")


def change_request_out(change_request):
    return {"id": change_request.pk, "deployment_id": change_request.deployment_id,
            "repository": change_request.repository.name, "environment": change_request.environment.name,
            "version": change_request.deployment.release.version, "status": change_request.status,
            "requested_by": change_request.requested_by.get_username() if change_request.requested_by else None,
            "required_approvals": change_request.required_approvals, "opened_at": change_request.opened_at,
            "expires_at": change_request.expires_at, "decided_at": change_request.decided_at,
            "status_reason": change_request.status_reason}


def _change_request(pk):
    decisions = Prefetch("decisions", queryset=Decision.objects.select_related("user"))
    change_request = (ChangeRequest.objects.select_related(*CHANGE_REQUEST_RELATED, "stage__approval_policy")
                      .prefetch_related(decisions).filter(pk=pk).first())
    if change_request is None:
        raise not_found(f"change request #{pk}")
    return change_request


def change_request_detail_out(change_request):
    summary = change_request.summary or {}
    return {**change_request_out(change_request),
            "decisions": [{"user": d.user.get_username(), "verdict": d.verdict, "comment": d.comment,
                           "decided_at": d.decided_at, "preview_number": d.preview_number}
                          for d in change_request.decisions.all()],
            "commits": summary.get("commits", []), "files": summary.get("files", [])}


@router.get("/change-requests", response=Page[schemas.ChangeRequest], url_name="api_change_requests")
def change_requests(request, status: str | None = None, repository: str | None = None, environment: str | None = None,
                    cursor: str | None = None, limit: int = 50):
    queryset = ChangeRequest.objects.select_related(*CHANGE_REQUEST_RELATED)
    if status:
        queryset = queryset.filter(status=status)
    if repository:
        queryset = queryset.filter(repository__name=repository)
    if environment:
        queryset = queryset.filter(environment__name=environment)
    return paginate(queryset, cursor=cursor, limit=limit, serialize=change_request_out)


@router.get("/change-requests/{int:pk}", response=schemas.ChangeRequestDetail, url_name="api_change_request")
def change_request(request, pk: int):
    return change_request_detail_out(_change_request(pk))


def _decide(request, pk, decide):
    change_request = _change_request(pk)
    policy = change_request.policy
    if policy is None or not policy.allow_api_approval:
        raise ApiError(403, "api_approval_disabled",
                       f"Changes to {change_request.environment} in the lifecycle {change_request.stage.lifecycle} are "
                       "decided on the change-request page only; an admin may allow API decisions on its stage policy.")
    if is_service_account(request.user):
        raise ApiError(403, "service_account", "A service account is not a person: it may not decide on a change.")
    try:
        decide(change_request)
    except DecisionRefused as exc:
        raise ApiError(403, "refused", f"{exc} Nothing was changed.") from None
    except DeploymentStateError as exc:
        raise conflict(f"{exc} Nothing was changed.") from None
    return change_request_detail_out(_change_request(pk))


@router.post("/change-requests/{int:pk}/approve", response=schemas.ChangeRequestDetail,
             url_name="api_change_request_approve")
def change_request_approve(request, pk: int, body: schemas.CommentIn):
    return _decide(request, pk, lambda change_request: change_request.approve(request.user, body.comment.strip()))


@router.post("/change-requests/{int:pk}/reject", response=schemas.ChangeRequestDetail,
             url_name="api_change_request_reject")
def change_request_reject(request, pk: int, body: schemas.CommentIn):
    return _decide(request, pk, lambda change_request: change_request.reject(request.user, body.comment.strip()))


@router.get("/freeze-windows", response=list[schemas.FreezeWindow], url_name="api_freeze_windows")
def freeze_windows(request):
    windows = FreezeWindow.objects.prefetch_related("environments").order_by("name")
    return [{"id": w.pk, "name": w.name, "environments": sorted(e.name for e in w.environments.all()),
             "reason": w.reason, "starts_at": w.starts_at, "ends_at": w.ends_at, "cron": w.cron,
             "duration_seconds": w.duration.total_seconds() if w.duration else None, "time_zone": w.time_zone,
             "enabled": w.enabled} for w in windows]
