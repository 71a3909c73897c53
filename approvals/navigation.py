"""Context for the navigation bar: how many change requests wait on the signed-in user, meaning the ones
they may decide now (not their own, not with their commits, not decided by them already)."""

from functools import cache

from approvals.models import ChangeRequest


def pending_approvals(request):
    """{"approvals_waiting_count": N} for a signed-in user, N from one query (ChangeRequest.objects.decidable_ids).

    The count is computed only when a template reads it: the navigation badge's own fragment
    (approvals.views.navigation_badge), which pages ask for once loaded, so no page waits for it."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}

    @cache
    def approvals_waiting_count():
        return len(ChangeRequest.objects.decidable_ids(user))

    return {"approvals_waiting_count": approvals_waiting_count}
