from .audit import AuditEvent, AuditHead
from .deployment import Deployment, DeploymentLogChunk, DeploymentStateError, InvalidTransition, StaleStatus, TargetBusy
from .environment import Environment, Target
from .release import Release
from .repository import Repository, WebhookDelivery

__all__ = [
    "AuditEvent",
    "AuditHead",
    "Deployment",
    "DeploymentLogChunk",
    "DeploymentStateError",
    "Environment",
    "InvalidTransition",
    "Release",
    "Repository",
    "StaleStatus",
    "Target",
    "TargetBusy",
    "WebhookDelivery",
]
