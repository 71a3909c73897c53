"""Carrying out follow-ups (see pipelines/models/followup.py for what they are and why).

The kinds `pipelines` knows are below; an upper layer adds its own through
settings.GITOPS_FOLLOW_UP_HANDLERS ({kind: dotted path}), the same way it adds guards and reconcile hooks
(pipelines/hooks.py). A handler takes the FollowUp and raises to be retried later."""

import logging

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from django.utils.module_loading import import_string

from pipelines.models import FollowUp
from pipelines.models.followup import (  # noqa: F401 (kinds models schedule)
    DEPLOYMENTS_STOPPED,
    PROMOTE_AFTER_SUCCESS,
    PROMOTE_NEW_RELEASE,
    PROMOTE_REEVALUATE,
    ROLLBACK_AFTER_FAILURE,
    CORRECT_DRIFT,
)

logger = logging.getLogger(__name__)

DEPLOYMENT_HELD = "deployment.held"


def _promote_new_release(follow_up):
    from pipelines import promotion

    promotion.on_release_recorded(follow_up.release, since=follow_up.created_at)


def _promote_after_success(follow_up):
    from pipelines import promotion

    promotion.after_success(follow_up)  # after the soak time of the deployment's stage, if it has one


def _promote_reevaluate(follow_up):
    from pipelines import promotion

    environment = follow_up.payload.get("environment")
    promotion.reevaluate(follow_up.repository, environment_ids=[environment] if environment else None,
                         since=follow_up.created_at)


def _rollback_after_failure(follow_up):
    from pipelines import rollback

    rollback.after_failure(follow_up)


def _correct_drift(follow_up):
    from pipelines import drift_schedule

    drift_schedule.correct(follow_up)


_BUILT_IN = {
    PROMOTE_NEW_RELEASE: _promote_new_release,
    PROMOTE_AFTER_SUCCESS: _promote_after_success,
    PROMOTE_REEVALUATE: _promote_reevaluate,
    ROLLBACK_AFTER_FAILURE: _rollback_after_failure,
    CORRECT_DRIFT: _correct_drift,
}


def handler_for(kind):
    if kind in _BUILT_IN:
        return _BUILT_IN[kind]
    path = settings.GITOPS_FOLLOW_UP_HANDLERS.get(kind)
    return import_string(path) if path else None


def carry_out(follow_up_id, now=None, *, before_due=False):
    """One attempt at one follow-up. True when it is done (now or before).

    `before_due`: the process that recorded it carries it out at once, before the reconciler would."""
    follow_up = FollowUp.objects.select_related("deployment", "release", "repository").filter(pk=follow_up_id).first()
    if follow_up is None or follow_up.done_at is not None:
        return True
    if not follow_up.claim(now, before_due=before_due):
        return False  # not due yet, or another attempt holds it
    handler = handler_for(follow_up.kind)
    if handler is None:
        logger.warning("no handler for follow-up kind %r; marking #%s done", follow_up.kind, follow_up.pk)
        follow_up.complete()
        return True
    try:
        handler(follow_up)
    except Exception as exc:
        logger.exception("follow-up #%s (%s) failed; it will be retried", follow_up.pk, follow_up.kind)
        if not connection.in_atomic_block:
            close_old_connections()  # the failure may have been a dropped connection
        follow_up.retry_later(exc)
        return False
    follow_up.complete()
    return True


def redrive(now=None, limit=500):
    """Enqueue a job for each due follow-up (the reconciler calls this): one query, however many wait."""
    from pipelines import jobs

    now = now or timezone.now()
    due = list(FollowUp.objects.due(now).order_by("due_at", "id").values_list("pk", flat=True)[:limit])
    for follow_up_id in due:
        jobs.enqueue_follow_up_now(follow_up_id)
    return len(due)


def install_wakeups():
    """A run's runner carries out the follow-up recorded with its success at once (pipelines/runs/kernel.py),
    through this handler: the runs sit below the services and do not import them."""
    from pipelines.models import wakeups

    wakeups.install("carry_out_follow_up", lambda follow_up_id: carry_out(follow_up_id, before_due=True))
