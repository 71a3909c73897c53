"""Template context for every page: which environments are frozen now (the banner in base.html)."""

from django.utils import timezone

from approvals.freeze import active_freezes


def freeze_notices(request):
    """For signed-in users, `freeze_notices`: a list of Freeze(environment, until, window), each with
    `.reason`, in promotion order. Two queries at most, however many windows there are; none (and an
    empty list) when no one is signed in."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"freeze_notices": []}
    return {"freeze_notices": active_freezes(timezone.now())}
