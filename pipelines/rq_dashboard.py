"""The rq dashboard that django_rq adds to the admin (/admin/django_rq/…), fenced for the portal.

django_rq lets any staff member stop a running job (which kills its work-horse, leaving the step and the
deployment to fend for themselves), delete or requeue jobs and empty whole queues, none of it audited. Here:

- every URL under /admin/django_rq/ (the API ones too) is for active superusers only: 403 for anyone else;
- stopping or deleting the job of a run (`deployment-<id>`, `build-<id>`, `preview-<id>`, `check-<id>`: any
  kind of the run kernel's) cancels the run through the portal instead (pipelines/cancelling.py, audited):
  the runner stops its step, the lease is let go, the run's page says so;
- requeueing or enqueueing jobs by hand, and emptying a queue, are refused: the database is the truth and
  the reconciler re-enqueues what should run (Retry is on the deployment page);
- everything else (reading, clearing the failed-job registry) is django_rq's own view.

gitops_portal/urls.py puts these patterns ahead of `admin.site.urls`."""

from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.urls import Resolver404, URLResolver, path, re_path, reverse
from django.urls.resolvers import RegexPattern

from pipelines import cancelling
from pipelines.models import DeploymentStateError

REFUSED_REQUEUE = (
    "Jobs are not requeued by hand here: the database says what should run, and the portal's reconciler "
    "enqueues it again. To run a deployment again, use Retry on its page."
)


def superusers_only(view):
    def guarded(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not (request.user.is_active and request.user.is_superuser):
            raise PermissionDenied("The rq dashboard is for superusers only.")
        return view(request, *args, **kwargs)

    guarded.__name__ = guarded.__qualname__ = f"superusers_only({getattr(view, '__name__', 'view')})"
    return guarded


def _job_detail(queue_index, job_id):
    return redirect("admin:django_rq_job_detail", queue_index, job_id)


def _jobs(queue_index):
    return redirect("admin:django_rq_jobs", queue_index)


def _cancel_run_job(request, job_id, *, verb):
    """Cancel the run behind `job_id` for the user and say what happened; return the page that shows the run
    (None for a job that is not a run's: a poll, a follow-up)."""
    found = cancelling.run_of_job(job_id)
    if found is None:
        return None
    run = cancelling.find_run(*found)
    if run is None:
        raise Http404(f"Job {job_id} belongs to no {found[0]} the portal knows; nothing was changed.")
    reason = f"{verb.capitalize()} from the rq dashboard by {request.user.get_username()}."
    try:
        said = cancelling.cancel_run(run, by=request.user, reason=reason)
    except DeploymentStateError as exc:
        messages.error(request, f"{exc} Nothing was changed.")
    else:
        # Killing its work-horse would leave the step running and the run to the reconciler, unaudited.
        messages.success(request, f"Job {job_id} was not killed: {said[:1].lower()}{said[1:]} Recorded in the audit log.")
    return cancelling.page_of(run)


def _refuse_other_job(request, job_id, verb):
    messages.error(request, f"Only the job of a run (a deployment, build, preview or check) can be {verb} here, and "
                            f"only through the portal's cancel; job {job_id} was left alone.")


def stop_job(request, queue_index, job_id):
    if request.method != "POST":
        return _job_detail(queue_index, job_id)
    if (page := _cancel_run_job(request, job_id, verb="stopped")) is not None:
        return redirect(page)  # the portal's page shows the run stopping
    _refuse_other_job(request, job_id, "stopped")
    return _job_detail(queue_index, job_id)


def delete_job(request, queue_index, job_id):
    if request.method != "POST":
        return _delegate(request)  # django_rq's confirmation page
    if (page := _cancel_run_job(request, job_id, verb="deleted")) is not None:
        return redirect(page)
    _refuse_other_job(request, job_id, "deleted")
    return _jobs(queue_index)


def requeue_job(request, queue_index, job_id):
    messages.error(request, REFUSED_REQUEUE)
    return _job_detail(queue_index, job_id)


def requeue_all(request, queue_index):
    messages.error(request, REFUSED_REQUEUE)
    return _jobs(queue_index)


def empty_queue(request, queue_index):
    messages.error(request, "Emptying a queue is refused: it would drop work the portal promised without a trace. "
                            "Cancel runs on their pages; the reconciler re-enqueues what should run.")
    return _jobs(queue_index)


def bulk_actions(request, queue_index):
    """The job list's bulk actions: stop and delete go through the portal's cancel; requeue is refused."""
    if request.method != "POST" or not request.POST.get("action"):
        return _jobs(queue_index)
    action = request.POST["action"]
    job_ids = request.POST.getlist("job_ids")
    if action == "requeue":
        messages.error(request, REFUSED_REQUEUE)
    elif action in ("stop", "delete"):
        verb = "stopped" if action == "stop" else "deleted"
        for job_id in job_ids:
            if _cancel_run_job(request, job_id, verb=verb) is None:
                _refuse_other_job(request, job_id, verb)
    else:
        messages.error(request, f"Unknown action {action!r}; nothing was changed.")
    return redirect(request.POST.get("next_url") or reverse("admin:django_rq_jobs", args=[queue_index]))


# Everything else under /admin/django_rq/ is django_rq's own view, reached through the admin's own URLs (a
# resolver of its own: the project's would lead back here).
_admin_resolver = URLResolver(RegexPattern(r"^/"), [path("admin/", admin.site.urls)])


def _delegate(request, *args, **kwargs):
    try:
        match = _admin_resolver.resolve(request.path_info)
    except Resolver404 as exc:
        raise Http404("No such page in the rq dashboard.") from exc
    return match.func(request, *match.args, **match.kwargs)


urlpatterns = [
    path("dashboard/queues/<int:queue_index>/<str:job_id>/stop/", superusers_only(stop_job)),
    path("dashboard/queues/<int:queue_index>/<str:job_id>/delete/", superusers_only(delete_job)),
    path("dashboard/queues/<int:queue_index>/<str:job_id>/requeue/", superusers_only(requeue_job)),
    path("dashboard/queues/<int:queue_index>/<str:job_id>/enqueue/", superusers_only(requeue_job)),
    path("dashboard/queues/<int:queue_index>/requeue-all/", superusers_only(requeue_all)),
    path("dashboard/queues/<int:queue_index>/empty/", superusers_only(empty_queue)),
    path("dashboard/queues/actions/<int:queue_index>/", superusers_only(bulk_actions)),
    re_path(r"", superusers_only(_delegate)),
]
