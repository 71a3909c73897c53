"""Cancel a build, a preview or a check as its page's Cancel does (pipelines/cancelling.py): the same model
method, the same refusals (`409 {"error": "refused", …}` for a run that has finished or is being stopped).

One endpoint per kind of run in the run kernel's registry, `POST /<kind>s/{id}/cancel` as for deployments
(whose own endpoint, in pipelines.py, answers with the whole deployment): a new kind gets its endpoint here
and its rule in api/permissions.py without a line of its own."""

from django.utils.text import slugify
from ninja import Router

from api import schemas
from api.errors import conflict, not_found
from pipelines import cancelling
from pipelines.models import DeploymentStateError

router = Router(tags=["runs"])
HAS_ITS_OWN = {"deployment"}  # api/endpoints/pipelines.py


def run_out(run):
    return {"kind": run._meta.model_name, "id": run.pk, "status": run.status, "is_finished": run.is_finished,
            "cancel_requested_at": run.cancel_requested_at, "error": run.error, "created_at": run.created_at,
            "started_at": run.started_at, "finished_at": run.finished_at}


def cancel(request, kind, pk):
    """Cancel the run for the token's owner; the run as it is now (`running` with `cancel_requested_at` set
    while its runner stops it)."""
    run = cancelling.find_run(kind, pk)
    if run is None:
        raise not_found(f"{kind} #{pk}")
    try:
        cancelling.cancel_run(run, by=request.user, reason=f"Cancelled by {request.user.get_username()} through the API.")
    except DeploymentStateError as exc:
        raise conflict(str(exc)) from None
    run.refresh_from_db()
    return run_out(run)


def _add_cancel(kind, model):
    def cancel_this_kind(request, pk: int):
        return cancel(request, kind, pk)

    # A slug of the plural: "deployments", "drift-checks".
    router.post(f"/{slugify(model._meta.verbose_name_plural)}/{{int:pk}}/cancel", response=schemas.Run,
                url_name=f"api_{kind}_cancel", operation_id=f"{kind}_cancel",
                summary=f"Cancel a {model._meta.verbose_name}: one not started yet is cancelled; a running one's "
                        f"runner is asked to stop its step")(cancel_this_kind)


for _kind, _model in cancelling.kinds().items():
    if _kind not in HAS_ITS_OWN:
        _add_cancel(_kind, _model)
