"""Every API endpoint's rule, in one table: the token scope it needs and the permission its owner must hold.

The key is (URL name, HTTP method), as Django resolved it, so the check (api/auth.py) needs nothing from the
endpoint; an endpoint missing here is refused to everyone (fail closed), and tests/test_api_permissions.py,
generated from the URL configuration, fails for it. The Django permissions are the pages' own
(pipelines/permissions.py): a token never lets its owner do more than they could by clicking. Deciding on
a change request needs no permission here: the stage's approval policy says who may (ChangeRequest).
Reporting an external check result needs `pipelines.report_checks` (CI service accounts): a check result
opens a stage that requires passing checks, so it is not everyone's to give. Each permission is the one its
scope needs at issue (api.models.SCOPE_PERMISSIONS), checked again on every request against the owner's
permissions as they are then."""

from dataclasses import dataclass

from api.models import SCOPE_PERMISSIONS, Scope
from pipelines import cancelling


@dataclass(frozen=True)
class Rule:
    scope: str | None  # None: public, no token needed
    permission: str = ""  # a Django permission the token's owner must also hold


PUBLIC = Rule(scope=None)
READ = Rule(Scope.READ)
DEPLOYER = Rule(Scope.DEPLOY, permission=SCOPE_PERMISSIONS[Scope.DEPLOY])
APPROVER = Rule(Scope.APPROVE)
CHECK_REPORTER = Rule(Scope.CHECKS_REPORT, permission=SCOPE_PERMISSIONS[Scope.CHECKS_REPORT])

RULES = {
    # django-ninja's own: the root (answers 404; there to reverse URLs from), the schema and its docs page.
    ("api-root", "GET"): PUBLIC,
    ("openapi-json", "GET"): PUBLIC,
    ("openapi-view", "GET"): PUBLIC,
    ("api_status", "GET"): READ,
    ("api_repositories", "GET"): READ,
    ("api_repository", "GET"): READ,
    ("api_repository_poll", "POST"): DEPLOYER,
    ("api_check_drift", "POST"): DEPLOYER,
    ("api_repository_releases", "GET"): READ,
    ("api_lifecycles", "GET"): READ,
    ("api_environments", "GET"): READ,
    ("api_release", "GET"): READ,
    ("api_release_promote", "POST"): DEPLOYER,
    ("api_release_rollback", "POST"): DEPLOYER,
    ("api_release_block", "POST"): DEPLOYER,
    ("api_release_unblock", "POST"): DEPLOYER,
    ("api_deployments", "GET"): READ,
    ("api_deployment", "GET"): READ,
    ("api_deployment_log", "GET"): READ,
    ("api_deployment_retry", "POST"): DEPLOYER,
    ("api_change_requests", "GET"): READ,
    ("api_change_request", "GET"): READ,
    ("api_change_request_approve", "POST"): APPROVER,
    ("api_change_request_reject", "POST"): APPROVER,
    ("api_freeze_windows", "GET"): READ,
    ("api_audit_events", "GET"): READ,
    # One path, two methods: reading a commit's checks, and reporting one from CI.
    ("api_commit_checks_report", "GET"): READ,
    ("api_commit_checks_report", "POST"): CHECK_REPORTER,
    ("api_insights", "GET"): READ,
    # Cancelling a run of any kind is the deployer's, as on the pages: a check too (reporting one is CI's).
    **{(f"api_{kind}_cancel", "POST"): DEPLOYER for kind in cancelling.kinds()},
}


def rule_for(url_name, method):
    return RULES.get((url_name, method))
