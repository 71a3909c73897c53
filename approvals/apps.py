from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"
    # approvals takes part in the engine through settings hooks only (GITOPS_DEPLOY_GUARDS,
    # GITOPS_RECONCILE_HOOKS, GITOPS_FOLLOW_UP_HANDLERS: see pipelines/hooks.py and pipelines/followups.py).

    def ready(self):
        from approvals import system_checks  # noqa: F401  (registers the system checks)
