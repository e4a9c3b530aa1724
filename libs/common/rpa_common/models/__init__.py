"""Every ORM model of the domain; importing this package registers them all on ``Base.metadata``."""

from rpa_common.models.audit import AuditChain, AuditRecord
from rpa_common.models.base import Base, new_id, utcnow
from rpa_common.models.blobs import BlobDeletion
from rpa_common.models.events import EventOutbox, EventTicket
from rpa_common.models.identity import (
    AccessFolder,
    Account,
    ApiKey,
    ExternalApp,
    IdentityProvider,
    LoginThrottle,
    OidcLogin,
    RateLimitWindow,
    RefreshToken,
    Role,
    RoleFolder,
    RolePermission,
    User,
    UserRole,
)
from rpa_common.models.jobs import Job, JobEvent
from rpa_common.models.licenses import License, LicenseAssignment
from rpa_common.models.logs import RobotMessage, Screenshot
from rpa_common.models.processes import Process, ProcessPackageChunk, ProcessVersion
from rpa_common.models.queues import Queue, Task, TaskEvent
from rpa_common.models.resources import MasterKeyCheck, Resource, ResourceGroup, ResourceValue
from rpa_common.models.robots import (
    Robot,
    RobotGroup,
    RobotGroupMember,
    TerminalServer,
    TerminalSession,
    UnattendedAccount,
)
from rpa_common.models.stats import (
    JobRollup,
    JobRollupState,
    QueueRollup,
    RobotRollup,
    RobotStatusInterval,
)
from rpa_common.models.triggers import Calendar, CalendarDay, Trigger, TriggerFire
from rpa_common.models.webhooks import WebhookDelivery, WebhookSubscription

__all__ = [
    "AccessFolder",
    "Account",
    "ApiKey",
    "AuditChain",
    "AuditRecord",
    "Base",
    "BlobDeletion",
    "Calendar",
    "CalendarDay",
    "EventOutbox",
    "EventTicket",
    "ExternalApp",
    "IdentityProvider",
    "Job",
    "JobEvent",
    "JobRollup",
    "JobRollupState",
    "License",
    "LicenseAssignment",
    "LoginThrottle",
    "MasterKeyCheck",
    "OidcLogin",
    "Process",
    "ProcessPackageChunk",
    "ProcessVersion",
    "Queue",
    "QueueRollup",
    "RateLimitWindow",
    "RefreshToken",
    "Resource",
    "ResourceGroup",
    "ResourceValue",
    "Robot",
    "RobotGroup",
    "RobotGroupMember",
    "RobotMessage",
    "RobotRollup",
    "RobotStatusInterval",
    "Role",
    "RoleFolder",
    "RolePermission",
    "Screenshot",
    "Task",
    "TaskEvent",
    "TerminalServer",
    "TerminalSession",
    "Trigger",
    "TriggerFire",
    "UnattendedAccount",
    "User",
    "UserRole",
    "WebhookDelivery",
    "WebhookSubscription",
    "new_id",
    "utcnow",
]
