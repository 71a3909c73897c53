"""Template context for every page: which environments are frozen now (the banner in base.html)."""

from django.utils import timezone
from django.utils.functional import SimpleLazyObject

from approvals.freeze import active_freezes


def request_freezes(request):
    """The freezes active now, read once per request: the banner and the dashboard's columns share them."""
    freezes = getattr(request, "_gitops_active_freezes", None)
    if freezes is None:
        freezes = request._gitops_active_freezes = active_freezes(timezone.now())
    return freezes


def freeze_notices(request):
    """For signed-in users, `freeze_notices`: a list of Freeze(environment, until, window), each with
    `.reason`, in promotion order. Two queries at most, however many windows there are, made only when a template reads it; none (and an
    empty list) when no one is signed in."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"freeze_notices": []}
    # Lazy: htmx polls render fragments that never show the banner, and then no query is made.
    return {"freeze_notices": SimpleLazyObject(lambda: request_freezes(request))}
