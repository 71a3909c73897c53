"""Who may do what, in one place for the pages and the API (api/permissions.py maps each endpoint to these).

Signed in: read everything but artifacts. Deployer (`pipelines.deploy`): promote, retry, roll back, cancel, pause, block.
Check reporter (`pipelines.report_checks`, given to CI service accounts): report an external check result.
Artifacts: a build's and a preview's (a saved plan holds secrets in clear) are for deployers; a preview's
also for the approvers of its stage (asked of the upper layer through pipelines/hooks.py).
Deciding on a change request is not a permission: the approval policy of its stage says who may
(approvals.models.ChangeRequest.refusal_reason), for a click and an API call alike."""

from django.contrib.auth.decorators import permission_required

from pipelines import hooks
from pipelines.models.external_check import REPORT_CHECKS  # noqa: F401  (declared by its model; named here too)

DEPLOY = "pipelines.deploy"

deployer_required = permission_required(DEPLOY, raise_exception=True)


def can_deploy(user):
    return user.has_perm(DEPLOY)


def artifacts_refusal(user, run):
    """Why `user` may not see or download the artifacts of `run` (a Build, a Check or a Preview), in words; None
    when they may. A preview's `deployment` (with its environment) is read."""
    if can_deploy(user):
        return None
    if run._meta.model_name != "preview":
        return (f"Only people who may deploy may download a {run._meta.verbose_name}'s artifacts: they hold "
                f"whatever it packed.")
    deployment = run.deployment
    if hooks.may_approve(user, deployment):
        return None
    return (f"Only people who may deploy, or approve for {deployment.environment}, may download this "
            f"preview's artifacts: a saved plan holds sensitive values in clear.")
