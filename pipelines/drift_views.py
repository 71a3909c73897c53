"""Drift on the pages: a drift check's own page (its log is the drift report), and "Check drift now" for a target
of the environment page. What runs the checks is pipelines/runs/drift.py; when, pipelines/drift_schedule.py."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pipelines import run_log
from pipelines.models import DriftCheck, Environment, Repository
from pipelines.permissions import deployer_required


@login_required
def drift_check_detail(request, pk):
    check = get_object_or_404(DriftCheck.objects.select_related("repository", "environment", "release"), pk=pk)
    text, _ = check.log_since(0)
    return render(request, "pipelines/drift_check_detail.html", {"check": check, "log": run_log.plain(text)})


@require_POST
@login_required
@deployer_required
def check_drift_now(request, name, repository):
    """Queue a drift check of what runs for `repository` in environment `name` (or say why there is none)."""
    environment = get_object_or_404(Environment, name=name)
    repository = get_object_or_404(Repository, name=repository)
    check = DriftCheck.objects.queue_for(repository, environment, by=request.user,
                                         reason=f"asked for by {request.user.get_username()}")
    if check is None:
        messages.error(request, f"Nothing to check: what runs for {repository} in {environment} has no drift steps "
                                f"there (or nothing runs there). Nothing was changed.")
    else:  # queued now, or the one already waiting or running
        messages.success(request, f"{check.__str__().capitalize()} is {check.get_status_display().lower()}; its "
                                  f"answer shows here.")
    return redirect("environment_detail", name=environment.name)
