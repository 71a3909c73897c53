"""The checks of a commit: read them, and report an external one (a GitHub Actions or GitLab CI job) so that
it counts for a stage that requires passing checks like the portal's own.

Reporting needs the `checks:report` scope and its owner's `pipelines.report_checks` permission (a CI service
account's): a result opens a stage that requires passing checks. It is the reporter's own result: it replaces
only that reporter's earlier one of the same name (ExternalCheck.objects.report). The commit need not be
fetched yet (CI often finishes before the next poll)."""

import re

from ninja import Router, Status

from api import schemas
from api.endpoints.pipelines import _repository, checks_of, external_check_out
from api.errors import ApiError
from pipelines.models import Check, ExternalCheck

router = Router(tags=["checks"])
FULL_SHA = re.compile(r"[0-9a-f]{40}")


def _sha(sha):
    sha = sha.lower()
    if not FULL_SHA.fullmatch(sha):
        raise ApiError(422, "invalid", f"{sha!r} is not a full commit sha (40 hexadecimal digits).")
    return sha


@router.get("/repositories/{name}/commits/{sha}/checks", response=schemas.CommitChecks,
            url_name="api_commit_checks_report", summary="The checks of a commit: the portal's and CI's")
def commit_checks(request, name: str, sha: str):
    repository = _repository(name)
    sha = _sha(sha)
    return {"repository": repository.name, "commit_sha": sha, "checks": checks_of(repository, sha)}


@router.post("/repositories/{name}/commits/{sha}/checks", response={200: schemas.CheckResult, 201: schemas.CheckResult},
             url_name="api_commit_checks_report",
             summary="Report an external check result for a commit (201 new, 200 an update of your own of that name)")
def commit_check_report(request, name: str, sha: str, body: schemas.CheckReportIn):
    repository = _repository(name)
    sha = _sha(sha)
    check_name = body.name.strip()
    if not check_name or len(check_name) > 200:
        raise ApiError(422, "invalid", "Name the check (1 to 200 characters), e.g. 'ci/tests'.")
    if check_name == Check.HOST_CONTEXT:
        raise ApiError(422, "invalid", f"{Check.HOST_CONTEXT!r} is the portal's own checks; report under another name.")
    url = body.url.strip()
    if url and not url.startswith(("https://", "http://")):
        raise ApiError(422, "invalid", "The url must be an http(s) address (the CI job's page).")
    if len(url) > 1000:
        raise ApiError(422, "invalid", "The url is longer than 1000 characters.")
    check, created = ExternalCheck.objects.report(repository, commit_sha=sha, name=check_name, state=body.state,
                                                  target_url=url, description=body.description.strip()[:500],
                                                  by=request.user)
    return Status(201 if created else 200, external_check_out(check))
