"""quorate: a Python client for the quorate distributed limiter.

Concurrency slots (at most N executions in flight per key, held by leases that expire
if the holder dies) and rate limits (R requests per period per user, IP or scope),
decided by a three-node Raft cluster so two app workers can never both take the last
slot::

    import quorate

    with quorate.Client(["http://127.0.0.1:7101", "http://127.0.0.1:7102"]) as client:
        with client.slot(["org:acme", "global"], ttl=30) as slot:
            run_job(fencing_token=slot.fencing_token)
        with client.slot(["org:acme"], ttl=30, wait=10) as slot:  # full: wait its turn
            run_job(fencing_token=slot.fencing_token)
        decision = client.check("user:42", "user", tier="authenticated")
        if not decision.allowed:
            print("retry in", decision.retry_after, "s")

``AsyncClient`` has the same surface for asyncio. Framework integrations live in
``quorate.contrib`` (Django middleware, DRF throttles, Channels, pure ASGI) and
``quorate.work`` (slots handed from a request to a background job).
"""

from .client import AsyncClient, Client
from .errors import (
    ApiError,
    ConfigError,
    DecodeError,
    Forbidden,
    InternalError,
    InvalidRequest,
    LeaseConflict,
    LeaseLost,
    LeaseNotFound,
    LimitExceeded,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PolicyNotFound,
    QuorateError,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from .failure import FailurePolicy, Failures
from .slot import AsyncSlot, AsyncSlotBackend, Slot, SlotBackend
from .types import (
    AllowChange,
    AllowEntry,
    Allowlist,
    AuditRecord,
    AuditTrail,
    ClusterInfo,
    ConcurrencyPolicy,
    Counter,
    Lease,
    LeaseInfo,
    LimitInfo,
    LimitList,
    Member,
    Policies,
    PolicyEntry,
    QueueInfo,
    RateCheck,
    RateDecision,
    RatePolicy,
    RateResult,
    Renewal,
    SlotsInfo,
    SlotUsage,
    Tier,
    Waiter,
)

__version__ = "0.1.0"

__all__ = [
    "AllowChange",
    "AllowEntry",
    "Allowlist",
    "ApiError",
    "AsyncClient",
    "AsyncSlot",
    "AsyncSlotBackend",
    "AuditRecord",
    "AuditTrail",
    "Client",
    "ClusterInfo",
    "ConcurrencyPolicy",
    "ConfigError",
    "Counter",
    "DecodeError",
    "FailurePolicy",
    "Failures",
    "Forbidden",
    "InternalError",
    "InvalidRequest",
    "Lease",
    "LeaseConflict",
    "LeaseInfo",
    "LeaseLost",
    "LeaseNotFound",
    "LimitExceeded",
    "LimitInfo",
    "LimitList",
    "Member",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "Policies",
    "PolicyEntry",
    "PolicyNotFound",
    "QueueInfo",
    "QuorateError",
    "RateCheck",
    "RateDecision",
    "RateLimited",
    "RatePolicy",
    "RateResult",
    "Renewal",
    "Slot",
    "SlotBackend",
    "SlotUsage",
    "SlotsInfo",
    "Tier",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "Waiter",
    "__version__",
]
