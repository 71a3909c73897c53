"""Who approves for a stage, as pipelines asks it through settings.GITOPS_APPROVER_CHECKS (pipelines/hooks.py):
a preview's artifacts (a saved plan holds secrets in clear) are for the deployers and for these people."""

from approvals.models import ChangeRequest, StagePolicy
from pipelines.models import Stage


def approves_for(user, deployment):
    """Whether `user` is a member of the approver group of the stage `deployment` goes through: the stage its
    change request waits in, else the stage of its target in the repository's lifecycle now."""
    if not user.is_authenticated or not user.is_active:
        return False
    stage_id = ChangeRequest.objects.filter(deployment_id=deployment.pk).values_list("stage_id", flat=True).first()
    if stage_id is None:
        stage = Stage.objects.for_target(deployment.repository, deployment.environment)
        stage_id = stage.pk if stage is not None else None
    return stage_id is not None and StagePolicy.objects.filter(stage_id=stage_id, approver_group__user=user).exists()
