from .audit import AuditEvent, AuditHead, AuditVerification
from .build import Build, BuildLogChunk
from .check import Check, CheckLogChunk, CheckRef
from .commit_status import ReportedCommitStatus
from .deployment import Deployment, DeploymentLogChunk
from .drift import DriftCheck, DriftCheckLogChunk
from .run import DeploymentStateError, InvalidTransition, StaleStatus, TargetBusy
from .environment import Environment, Target
from .external_check import ExternalCheck
from .followup import FollowUp
from .lifecycle import Lifecycle, Stage
from .preview import Preview, PreviewLogChunk
from .release import Release
from .repository import Repository, WebhookDelivery
from .secret import EnvironmentSecret, RepositorySecret
from .tag_move import TagMove

__all__ = [
    "AuditEvent",
    "AuditHead",
    "AuditVerification",
    "Build",
    "BuildLogChunk",
    "Check",
    "CheckLogChunk",
    "CheckRef",
    "Deployment",
    "DeploymentLogChunk",
    "DeploymentStateError",
    "DriftCheck",
    "DriftCheckLogChunk",
    "Environment",
    "ExternalCheck",
    "EnvironmentSecret",
    "FollowUp",
    "InvalidTransition",
    "Lifecycle",
    "Preview",
    "PreviewLogChunk",
    "Release",
    "ReportedCommitStatus",
    "Repository",
    "RepositorySecret",
    "Stage",
    "StaleStatus",
    "TagMove",
    "Target",
    "TargetBusy",
    "WebhookDelivery",
]
