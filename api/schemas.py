"""What the API answers with. Times are ISO 8601; users are named by their username."""

from datetime import datetime
from typing import Literal

from ninja import Schema


class Error(Schema):
    error: str
    detail: str


class DeploymentBrief(Schema):
    id: int
    status: str
    version: str
    environment: str
    created_at: datetime
    finished_at: datetime | None


class TargetState(Schema):
    environment: str
    stage_position: int
    auto_deploy: bool
    requires_approval: bool
    current_version: str | None
    paused: bool
    paused_reason: str
    last_deployment: DeploymentBrief | None
    # Git and reality: the newest drift check that answered ("in_sync", "drifted", "failed"), None: never checked.
    sync_state: str | None = None
    drift_check_id: int | None = None
    drift_checked_at: datetime | None = None


class RepositoryStatus(Schema):
    name: str
    lifecycle: str
    enabled: bool
    last_polled_at: datetime | None
    last_error: str
    targets: list[TargetState]


class Repository(Schema):
    name: str
    url: str
    branch: str
    release_from: str
    tag_pattern: str
    pipeline_path: str
    poll_interval: int
    enabled: bool
    lifecycle: str
    last_polled_at: datetime | None
    last_error: str


class Stage(Schema):
    environment: str
    position: int
    auto_deploy: bool
    requires_approval: bool
    take_prereleases: bool  # promoted here automatically (a person may still deploy one)
    version_constraint: str  # PEP 440; "" takes every version
    required_approvals: int | None
    approver_group: str | None
    allow_api_approval: bool


class Lifecycle(Schema):
    name: str
    description: str
    stages: list[Stage]


class Environment(Schema):
    name: str
    position: int


class Build(Schema):
    id: int
    status: str
    error: str
    outputs: dict[str, str]


class Release(Schema):
    id: int
    repository: str
    version: str
    commit_sha: str
    message: str
    author_name: str
    author_email: str
    committed_at: datetime | None
    detected_at: datetime
    error: str
    blocked: bool
    blocked_reason: str
    environments: list[str]  # the stages its pipeline file names, in lifecycle order


class CheckResult(Schema):
    """One check of a commit: the portal's own run (`source` "portal", one per branch or pull request it ran
    for, state queued/running/succeeded/failed/cancelled) or a result reported by CI (`source` "external",
    state pending/success/failure/error)."""
    name: str
    source: Literal["portal", "external"]
    state: str
    passed: bool
    url: str
    description: str
    ref: str | None  # the branch or pull request a portal check ran for
    reported_by: str | None
    updated_at: datetime
    finished_at: datetime | None


class CommitChecks(Schema):
    repository: str
    commit_sha: str
    checks: list[CheckResult]


class CheckReportIn(Schema):
    name: str
    state: Literal["pending", "success", "failure", "error"]
    url: str = ""
    description: str = ""


class ReleaseDetail(Release):
    build: Build | None
    deployments: list[DeploymentBrief]
    checks: list[CheckResult]  # of its commit, on any branch or pull request, and reported by CI


class InsightsBucket(Schema):
    start: datetime
    end: datetime
    deployments: int
    failed: int
    rolled_back: int
    change_failure_rate: float | None
    lead_time_median_seconds: float | None
    lead_time_p90_seconds: float | None
    time_to_restore_median_seconds: float | None


class Insights(Schema):
    """The DORA keys, as on the insights page (definitions in pipelines/insights.py and the README)."""
    period: str
    start: datetime
    end: datetime
    repository: str | None
    lifecycle: str | None
    environment: str | None
    deployments: int
    deployments_per_day: float
    deployments_per_week: float
    failed: int
    rolled_back: int
    change_failure_rate: float | None
    lead_time_count: int
    lead_time_median_seconds: float | None
    lead_time_p90_seconds: float | None
    time_to_restore_median_seconds: float | None
    open_outages: int
    buckets: list[InsightsBucket]


class Step(Schema):
    name: str
    run: str
    timeout: int | None


class Deployment(Schema):
    id: int
    repository: str
    environment: str
    release_id: int
    version: str
    commit_sha: str
    status: str
    trigger: str
    triggered_by: str | None
    reason: str
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None  # set while the runner stops a running one
    exit_code: int | None
    error: str
    is_finished: bool
    change_request_id: int | None


class DeploymentDetail(Deployment):
    steps: list[Step]


class Run(Schema):
    """A run of any kind (a build, a preview, a check) as its cancel answers it."""
    kind: str
    id: int
    status: str
    is_finished: bool
    cancel_requested_at: datetime | None  # set while the runner stops a running one
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class LogChunk(Schema):
    text: str
    last_seq: int  # pass as ?after= for what comes next
    status: str
    is_finished: bool


class Decision(Schema):
    user: str
    verdict: str
    comment: str
    decided_at: datetime
    preview_number: int


class ChangeRequest(Schema):
    id: int
    deployment_id: int
    repository: str
    environment: str
    version: str
    status: str
    requested_by: str | None
    required_approvals: int
    opened_at: datetime
    expires_at: datetime | None
    decided_at: datetime | None
    status_reason: str


class ChangeRequestDetail(ChangeRequest):
    decisions: list[Decision]
    commits: list[dict]
    files: list[dict]


class FreezeWindow(Schema):
    id: int
    name: str
    environments: list[str]
    reason: str
    starts_at: datetime | None
    ends_at: datetime | None
    cron: str
    duration_seconds: float | None
    time_zone: str
    enabled: bool


class AuditEvent(Schema):
    seq: int
    created_at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    object_repr: str
    repository: str | None
    environment: str | None
    details: dict


class Accepted(Schema):
    detail: str


class PromoteIn(Schema):
    environment: str
    override_reason: str = ""


class RollbackIn(Schema):
    environment: str
    reason: str = ""


class ReasonIn(Schema):
    reason: str


class CommentIn(Schema):
    comment: str = ""
