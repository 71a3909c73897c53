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
