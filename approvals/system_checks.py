"""System checks of approvals' part of the lifecycles."""

from django.core import checks


def stages_without_an_approval_policy():
    """A stage that holds its deployments for approval but says nobody who may give it: its deployments
    would wait for ever (the change request says so too). One warning per such stage."""
    from pipelines.models import Stage

    unapprovable = Stage.objects.filter(requires_approval=True, approval_policy__isnull=True).select_related(
        "lifecycle", "environment")
    return [
        checks.Warning(
            f"The stage {stage} requires approval but has no approval policy, so nobody may approve its deployments.",
            hint="Add a stage policy with an approver group in the admin (Approvals › Stage policies).",
            obj=stage, id="approvals.W001",
        )
        for stage in unapprovable
    ]


@checks.register(checks.Tags.database)
def check_stage_policies(app_configs, databases=None, **kwargs):
    if not databases:
        return []  # asked only when the database is (migrate, `check --database default`)
    try:
        return stages_without_an_approval_policy()
    except Exception:  # the tables may not exist yet
        return []
