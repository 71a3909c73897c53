from .audit import AuditEvent, AuditHead, AuditVerification
from .build import Build, BuildLogChunk
from .deployment import Deployment, DeploymentLogChunk, DeploymentStateError, InvalidTransition, StaleStatus, TargetBusy
from .environment import Environment, Target
from .followup import FollowUp
from .release import Release
from .repository import Repository, WebhookDelivery

__all__ = [
    "AuditEvent",
    "AuditHead",
    "AuditVerification",
    "Build",
    "BuildLogChunk",
    "Deployment",
    "DeploymentLogChunk",
    "DeploymentStateError",
    "Environment",
    "FollowUp",
    "InvalidTransition",
    "Release",
    "Repository",
    "StaleStatus",
    "Target",
    "TargetBusy",
    "WebhookDelivery",
]
