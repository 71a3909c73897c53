"""Who may do what, in one place for the pages and the API (api/permissions.py maps each endpoint to these).

Signed in: read everything. Deployer (`pipelines.deploy`): promote, retry, roll back, cancel, pause, block.
Deciding on a change request is not a permission: the approval policy of its stage says who may
(approvals.models.ChangeRequest.refusal_reason), for a click and an API call alike."""

from django.contrib.auth.decorators import permission_required

DEPLOY = "pipelines.deploy"

deployer_required = permission_required(DEPLOY, raise_exception=True)


def can_deploy(user):
    return user.has_perm(DEPLOY)
