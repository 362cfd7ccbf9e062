"""sandgate: sandboxes whose network egress is enforced in the kernel.

>>> from sandgate import Sandgate, CreateSandboxFromSnapshotParams
>>> sandgate = Sandgate()          # SANDGATE_API_URL, SANDGATE_API_KEY
>>> sandbox = sandgate.create(CreateSandboxFromSnapshotParams(
...     network_allow_list="192.0.2.0/24", domain_allow_list="*.example.com"))
>>> sandbox.process.exec("echo hello").stdout
'hello\\n'
"""

from .aio import AsyncSandbox, AsyncSandgate, AsyncSecrets, AsyncSnapshots
from .client import (
    AccessRequest,
    CreateSandboxBaseParams,
    CreateSandboxFromSnapshotParams,
    ExecuteResponse,
    Explanation,
    Flow,
    FlowLog,
    Grant,
    HttpRule,
    NetworkEvent,
    NetworkTestResult,
    NetworkTestRow,
    Sandbox,
    Sandgate,
    Secret,
    Secrets,
    Snapshot,
    Snapshots,
    TransferUsage,
)
from .errors import (
    APIConnectionError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    SandgateError,
    ServerError,
    ValidationError,
)

__all__ = [
    "APIConnectionError",
    "AccessRequest",
    "AsyncSandbox",
    "AsyncSandgate",
    "AsyncSecrets",
    "AsyncSnapshots",
    "AuthenticationError",
    "ConflictError",
    "CreateSandboxBaseParams",
    "CreateSandboxFromSnapshotParams",
    "ExecuteResponse",
    "Explanation",
    "Flow",
    "FlowLog",
    "Grant",
    "HttpRule",
    "NetworkEvent",
    "NetworkTestResult",
    "NetworkTestRow",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "Sandbox",
    "Sandgate",
    "SandgateError",
    "Secret",
    "Secrets",
    "ServerError",
    "Snapshot",
    "Snapshots",
    "TransferUsage",
    "ValidationError",
]
