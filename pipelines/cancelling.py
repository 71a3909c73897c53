"""Cancel a run of any kind, named by its kind and id: the one path behind the Cancel buttons, the API's
`POST /<kind>s/{id}/cancel` and rq's stop-job in the dashboard.

The kinds are the run kernel's (pipelines/runs/registry.py), named as their models are (`build`, `check`…);
each model's `cancel(by=, reason=)` (pipelines/models/run.py) does the work: a run that has not started is
cancelled, one that runs is asked to stop (its runner stops the step), both audited. So a new kind of run is
cancellable on its page, in the API, the command line and the dashboard with no new view."""

from django.urls import reverse

from pipelines.models import InvalidTransition
from pipelines.models.run import RUNNING
from pipelines.runs import registry


class NothingToCancel(InvalidTransition):
    """The run has finished already."""


def kinds():
    """{kind name: model} of every kind of run."""
    return {kind.name: kind.model for kind in registry.kinds()}


def find_run(kind, pk):
    """The run of that kind and id; None when there is no such kind or run."""
    model = kinds().get(kind)
    return None if model is None else model.objects.filter(pk=pk).first()


def run_of_job(job_id):
    """(kind name, run id) of an rq job id (`build-7`); None for a job that is not a run's (a poll, a follow-up)."""
    found = registry.for_job_id(job_id)
    return None if found is None else (found[0].name, found[1])


def label(run):
    """How messages name a run: its own words where they start with its kind ("build #3 of shop v1.0.0",
    "preview #2 of deployment #9", whose number is the one its page shows), else its kind and id."""
    noun, words = run._meta.verbose_name, str(run)
    return words if words.lower().startswith(f"{noun} #") else f"{noun} #{run.pk}"


def cancel_run(run, *, by, reason):
    """Cancel `run` for `by`; what happened, in words. Raises DeploymentStateError saying why not (NothingToCancel
    for a finished run, StaleStatus when it changed meanwhile or a cancel was already asked for)."""
    named = label(run)
    if run.is_finished:
        raise NothingToCancel(f"{_capitalised(named)} has finished ({run.get_status_display().lower()}); there is "
                              f"nothing to cancel.")
    was_running = run.status == RUNNING
    run.cancel(by=by, reason=reason)
    if was_running:
        return f"Asked the runner to stop {named}: its step is stopped within seconds."
    return f"{_capitalised(named)} was cancelled."


def _capitalised(words):
    return words[:1].upper() + words[1:]


# Kinds without a page of their own are a section of another's page. (A preview is shown on its change
# request, which belongs to the upper layer: its Cancel button sends people back there itself.)
SHOWN_ON = {
    "build": lambda build: build.release.get_absolute_url() + "#build",
    "preview": lambda preview: preview.deployment.get_absolute_url(),
}


def page_of(run):
    """Where a run is shown: its own page, the page of which it is a section, or (a kind with neither yet)
    the dashboard."""
    shown_on = SHOWN_ON.get(run._meta.model_name)
    if shown_on is not None:
        return shown_on(run)
    return run.get_absolute_url() if hasattr(run, "get_absolute_url") else reverse("dashboard")
