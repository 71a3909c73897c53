"""What the approvals app shows inside pages of pipelines (through their slots)."""

from django import template
from django.db.models import Prefetch

from approvals.models import ChangeRequest, Decision

register = template.Library()


@register.simple_tag
def change_request_of(deployment):
    """The deployment's change request with its decisions and who gave them, or None: two queries, for the
    one deployment a page is about."""
    decisions = Decision.objects.select_related("user").order_by("decided_at", "id")
    return (ChangeRequest.objects.filter(deployment_id=deployment.pk)
            .prefetch_related(Prefetch("decisions", queryset=decisions)).first())


@register.simple_tag(takes_context=True)
def change_request_in_list(context, deployment):
    """The change request of one deployment in a list of a release's deployments (the release page): the
    requests of all of that release's deployments are read once per page (two queries), not once per row."""
    request = context.get("request")
    cache = getattr(request, "_change_requests_by_release", None) if request is not None else None
    if cache is None:
        cache = {}
        if request is not None:
            request._change_requests_by_release = cache
    if deployment.release_id not in cache:
        decisions = Decision.objects.select_related("user").order_by("decided_at", "id")
        requests = (ChangeRequest.objects.filter(deployment__release_id=deployment.release_id)
                    .prefetch_related(Prefetch("decisions", queryset=decisions)))
        cache[deployment.release_id] = {change_request.deployment_id: change_request for change_request in requests}
    return cache[deployment.release_id].get(deployment.pk)
