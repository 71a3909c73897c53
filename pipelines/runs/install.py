"""Start-up of the run kernel (PipelinesConfig.ready): the four kinds of run in the registry, and the handlers
through which the models wake a run's worker and stop its step (pipelines/models/wakeups.py)."""

from django.db import transaction

from pipelines.models import wakeups

from . import build, check, deploy, drift, kernel, preview, registry


def install():
    for kind in (deploy.KIND, build.KIND, preview.KIND, check.KIND, drift.KIND):
        registry.register(kind)
    wakeups.install("enqueue_run", kernel.enqueue)
    wakeups.install("stop_run", lambda run: transaction.on_commit(lambda: kernel.send_stop(run)))
