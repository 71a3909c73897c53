from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"

    def ready(self):
        # The one documented hook from pipelines (pipelines/signals.py). The reconciler
        # (approvals/reconcile.py) opens any request this misses, so none is ever lost.
        from approvals import opening
        from pipelines.signals import deployment_held

        deployment_held.connect(opening.on_deployment_held, dispatch_uid="approvals.open_change_request")
