import shutil
import tempfile

from django.apps import AppConfig
from django.conf import settings


def execute(context):
    """The probe's run: its one step in a scratch folder, with nothing but the scrubbed environment."""
    from pipelines.pipeline_file import Step
    from pipelines.runs.steps import scrubbed_environment

    probe = context.run
    settings.GITOPS_WORK_DIR.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=f"probe-{probe.pk}-", dir=settings.GITOPS_WORK_DIR)
    try:
        environment = scrubbed_environment(workdir, variables={}, gitops={"PROBE_ID": str(probe.pk)})
        if not context.steps([Step(name="probe", run=probe.script, timeout=120)], workdir, environment, None):
            return
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    context.succeed()


class ProbeKindConfig(AppConfig):
    name = "tests.probe_kind"
    label = "probe_kind"

    def ready(self):
        from pipelines.queues import DEPLOY_QUEUE
        from pipelines.runs import registry

        from .models import Probe

        registry.register(registry.Kind(name="probe", model=Probe, queue=DEPLOY_QUEUE, execute=execute))
