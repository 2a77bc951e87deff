"""Typed results and request pieces of the quorate API.

One frozen dataclass per JSON shape of ``proto/src/lib.rs`` (the wire contract). Field
names follow the wire (``retry_after_ms``, ``expires_at_ms``) so nothing is lost or
renamed; where a caller usually wants seconds there is a property as well
(``RateDecision.retry_after``, ``RateDecision.reset``, ``RatePolicy.period``).

Durations the caller *passes in* are seconds (``ttl=60``, ``period=60.0``), the Python
convention (httpx, asyncio, time.sleep); the client converts them to the wire's
milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ClusterInfo",
    "ConcurrencyPolicy",
    "Counter",
    "Lease",
    "LeaseInfo",
    "LimitInfo",
    "LimitList",
    "Member",
    "Policies",
    "Policy",
    "PolicyEntry",
    "QueueInfo",
    "RateCheck",
    "RateDecision",
    "RatePolicy",
    "RateResult",
    "Renewal",
    "SlotUsage",
    "SlotsInfo",
    "Tier",
    "Waiter",
]

Json = Mapping[str, Any]


def to_ms(seconds: float) -> int:
    """Seconds to whole milliseconds, rounded up (a 0.0001 s TTL is 1 ms, not 0)."""
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {seconds!r}")
    return math.ceil(seconds * 1000)


@dataclass(frozen=True)
class SlotUsage:
    """One key's occupancy at the moment of a decision."""

    key: str
    used: int
    limit: int

    @classmethod
    def from_json(cls, d: Json) -> SlotUsage:
        return cls(key=str(d["key"]), used=int(d["used"]), limit=int(d["limit"]))


@dataclass(frozen=True)
class Lease:
    """A granted acquire: one slot on every requested key."""

    lease_id: str
    #: Strictly increasing across the cluster's grants: hand it to downstream systems so
    #: they can reject a stale holder.
    fencing_token: int
    expires_at_ms: int
    slots: tuple[SlotUsage, ...]
    #: Milliseconds the acquire waited in the queue before its grant (``wait=``); 0
    #: when it was granted at once (the wire leaves the field out then).
    waited_ms: int = 0

    @property
    def waited(self) -> float:
        """Seconds the acquire waited in the queue (0.0: granted at once)."""
        return self.waited_ms / 1000.0

    @classmethod
    def from_json(cls, d: Json) -> Lease:
        return cls(
            lease_id=str(d["lease_id"]),
            fencing_token=int(d["fencing_token"]),
            expires_at_ms=int(d["expires_at_ms"]),
            slots=tuple(SlotUsage.from_json(s) for s in d.get("slots", ())),
            waited_ms=int(d.get("waited_ms", 0)),
        )


@dataclass(frozen=True)
class Renewal:
    """A successful renew: the lease now expires at ``expires_at_ms`` (cluster time)."""

    lease_id: str
    expires_at_ms: int

    @classmethod
    def from_json(cls, d: Json) -> Renewal:
        return cls(lease_id=str(d["lease_id"]), expires_at_ms=int(d["expires_at_ms"]))


@dataclass(frozen=True)
class LeaseInfo:
    """One live lease on a key, as listed by ``slots(key)``."""

    lease_id: str
    holder: str
    fencing_token: int
    expires_at_ms: int

    @classmethod
    def from_json(cls, d: Json) -> LeaseInfo:
        return cls(
            lease_id=str(d["lease_id"]),
            holder=str(d.get("holder", "")),
            fencing_token=int(d["fencing_token"]),
            expires_at_ms=int(d["expires_at_ms"]),
        )


@dataclass(frozen=True)
class Waiter:
    """One acquire waiting for a slot on a key, as listed by ``slots(key).queue``."""

    #: 1-based place on this key: 1 is granted first when a slot frees.
    position: int
    holder: str
    #: Cluster time (ms since the epoch) at which it leaves the queue ungranted.
    deadline_ms: int
    #: Every key the waiter needs (it is granted on all of them at once, or none).
    keys: tuple[str, ...]
    #: The waiter's lease id: shown only for waiters queued with the caller's own token
    #: (every waiter when the cluster has no tokens), else ``None``.
    lease_id: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> Waiter:
        lid = d.get("lease_id")
        return cls(
            position=int(d["position"]),
            holder=str(d.get("holder", "")),
            deadline_ms=int(d["deadline_ms"]),
            keys=tuple(str(k) for k in d.get("keys", ())),
            lease_id=None if lid is None else str(lid),
        )


@dataclass(frozen=True)
class QueueInfo:
    """The FIFO queue of waiting acquires on one key, first first."""

    length: int = 0
    waiters: tuple[Waiter, ...] = ()

    @classmethod
    def from_json(cls, d: Json) -> QueueInfo:
        return cls(
            length=int(d.get("length", 0)),
            waiters=tuple(Waiter.from_json(w) for w in d.get("waiters", ())),
        )


@dataclass(frozen=True)
class SlotsInfo:
    """``GET /v1/slots/{key}``: usage, limit, live leases and the queue of waiting
    acquires (linearizable)."""

    key: str
    used: int
    limit: int
    leases: tuple[LeaseInfo, ...]
    #: Acquires waiting for a slot on this key (empty from a server without queues).
    queue: QueueInfo = field(default_factory=QueueInfo)

    @classmethod
    def from_json(cls, d: Json) -> SlotsInfo:
        q = d.get("queue")
        return cls(
            key=str(d["key"]),
            used=int(d["used"]),
            limit=int(d["limit"]),
            leases=tuple(LeaseInfo.from_json(x) for x in d.get("leases", ())),
            queue=QueueInfo() if q is None else QueueInfo.from_json(q),
        )


@dataclass(frozen=True)
class LimitInfo:
    """A key's effective concurrency limit, where it came from, and its usage."""

    key: str
    limit: int
    source: Literal["override", "policy", "default"]
    used: int
    #: The matching policy's name when ``source == "policy"``.
    policy: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> LimitInfo:
        return cls(
            key=str(d["key"]),
            limit=int(d["limit"]),
            source=d["source"],
            used=int(d.get("used", 0)),
            policy=d.get("policy"),
        )


@dataclass(frozen=True)
class Counter:
    """A counter with an expiry in cluster time (``/v1/counters/{key}``): the fixed
    window of the ``limits`` storage. ``value`` is 0 and ``expires_at_ms`` ``None``
    when the key has no live counter."""

    key: str
    value: int
    expires_at_ms: int | None
    #: Milliseconds left as of the answer (0 when there is no live counter): add it to
    #: the local clock rather than comparing ``expires_at_ms`` with it (clock skew).
    ttl_ms: int

    @classmethod
    def from_json(cls, d: Json) -> Counter:
        at = d.get("expires_at_ms")
        return cls(
            key=str(d["key"]),
            value=int(d["value"]),
            expires_at_ms=None if at is None else int(at),
            ttl_ms=int(d.get("ttl_ms", 0)),
        )


@dataclass(frozen=True)
class LimitList:
    """``GET /v1/limits?prefix=``: overrides and keys in use under a prefix."""

    limits: tuple[LimitInfo, ...]
    #: More rows matched than ``max`` allowed.
    truncated: bool = False

    @classmethod
    def from_json(cls, d: Json) -> LimitList:
        return cls(
            limits=tuple(LimitInfo.from_json(x) for x in d.get("limits", ())),
            truncated=bool(d.get("truncated", False)),
        )


@dataclass(frozen=True)
class RateCheck:
    """One rate check: a named ``policy`` (optionally with a ``tier``), or inline
    ``limit`` per ``period`` seconds with an optional ``burst``. ``cost`` defaults to 1.
    """

    key: str
    policy: str | None = None
    tier: str | None = None
    cost: int | None = None
    limit: int | None = None
    period: float | None = None
    burst: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key}
        if self.policy is not None:
            out["policy"] = self.policy
        if self.tier is not None:
            out["tier"] = self.tier
        if self.cost is not None:
            out["cost"] = self.cost
        if self.limit is not None:
            out["limit"] = self.limit
        if self.period is not None:
            out["period_ms"] = to_ms(self.period)
        if self.burst is not None:
            out["burst"] = self.burst
        return out


@dataclass(frozen=True)
class RateResult:
    """The decision for one key of a rate check."""

    key: str
    allowed: bool
    #: Requests per period after tier multipliers.
    limit: int
    period_ms: int
    burst: int
    #: Requests (of cost 1) still allowed right now.
    remaining: int
    #: Until the bucket is full again.
    reset_after_ms: int
    #: 0 when allowed; otherwise when this check would be allowed.
    retry_after_ms: int
    #: True when an allowlist entry exempted this check (allowed, not charged).
    allowlisted: bool = False

    @classmethod
    def from_json(cls, d: Json) -> RateResult:
        return cls(
            key=str(d["key"]),
            allowed=bool(d["allowed"]),
            limit=int(d["limit"]),
            period_ms=int(d["period_ms"]),
            burst=int(d["burst"]),
            remaining=int(d["remaining"]),
            reset_after_ms=int(d["reset_after_ms"]),
            retry_after_ms=int(d["retry_after_ms"]),
            allowlisted=bool(d.get("allowlisted", False)),
        )


@dataclass(frozen=True)
class RateDecision:
    """The answer to a rate check (single or all-or-none multi-check).

    The top-level numbers describe the most restrictive result; ``results`` has one
    entry per check in request order. When ``allowed`` is false nothing was charged.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int
    results: tuple[RateResult, ...] = ()
    error: str | None = None
    message: str | None = None
    #: The node's rate-limit headers (``RateLimit-Policy``, ``RateLimit``,
    #: ``X-RateLimit-*``, ``Retry-After``), lower-cased, ready to copy onto a response.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: True when the decision was made by the fail-open policy, not the cluster.
    degraded: bool = False
    #: True when an allowlist entry exempted some check (``results[i].allowlisted``).
    allowlisted: bool = False

    @property
    def retry_after(self) -> float:
        """Seconds until the request would be allowed (0.0 when allowed)."""
        return self.retry_after_ms / 1000.0

    @property
    def reset(self) -> float:
        """Seconds until the bucket is full again."""
        return self.reset_after_ms / 1000.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds rounded up, at least 1 when limited."""
        if self.allowed:
            return "0"
        return str(max(1, math.ceil(self.retry_after_ms / 1000)))

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def from_json(cls, d: Json, headers: Mapping[str, str] | None = None) -> RateDecision:
        return cls(
            allowed=bool(d["allowed"]),
            limit=int(d["limit"]),
            remaining=int(d["remaining"]),
            reset_after_ms=int(d["reset_after_ms"]),
            retry_after_ms=int(d["retry_after_ms"]),
            results=tuple(RateResult.from_json(r) for r in d.get("results", ())),
            error=d.get("error"),
            message=d.get("message"),
            headers=dict(headers or {}),
            allowlisted=bool(d.get("allowlisted", False)),
        )

    @classmethod
    def fail_open(cls, why: str) -> RateDecision:
        """An allowing decision made locally because the cluster could not decide."""
        return cls(
            allowed=True,
            limit=0,
            remaining=0,
            reset_after_ms=0,
            retry_after_ms=0,
            message=f"allowed by fail-open policy: {why}",
            degraded=True,
        )


@dataclass(frozen=True)
class ConcurrencyPolicy:
    """At most ``limit`` live leases on each key matching ``pattern`` (exact key,
    prefix ending in ``*`` such as ``org:*``, or ``*``)."""

    pattern: str
    limit: int
    kind: Literal["concurrency"] = "concurrency"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "concurrency", "pattern": self.pattern, "limit": self.limit}


@dataclass(frozen=True)
class RatePolicy:
    """``limit`` requests per ``period_ms`` with bursts up to ``burst`` (defaults to
    ``limit``). Build it with :meth:`per` to give the period in seconds."""

    limit: int
    period_ms: int
    burst: int | None = None
    kind: Literal["rate"] = "rate"

    @classmethod
    def per(cls, limit: int, period: float, burst: int | None = None) -> RatePolicy:
        return cls(limit=limit, period_ms=to_ms(period), burst=burst)

    @property
    def period(self) -> float:
        return self.period_ms / 1000.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "rate", "limit": self.limit, "period_ms": self.period_ms}
        if self.burst is not None:
            out["burst"] = self.burst
        return out


Policy = ConcurrencyPolicy | RatePolicy


def policy_from_json(d: Json) -> Policy:
    if d.get("kind") == "concurrency":
        return ConcurrencyPolicy(pattern=str(d["pattern"]), limit=int(d["limit"]))
    burst = d.get("burst")
    return RatePolicy(
        limit=int(d["limit"]),
        period_ms=int(d["period_ms"]),
        burst=None if burst is None else int(burst),
    )


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    spec: Policy

    @classmethod
    def from_json(cls, d: Json) -> PolicyEntry:
        return cls(name=str(d["name"]), spec=policy_from_json(d))


@dataclass(frozen=True)
class Tier:
    """A tier multiplies a rate policy's limit and burst (``superuser`` x10, say)."""

    name: str
    multiplier: float

    @classmethod
    def from_json(cls, d: Json) -> Tier:
        return cls(name=str(d["name"]), multiplier=float(d["multiplier"]))


@dataclass(frozen=True)
class AllowEntry:
    """An allowlist entry: exactly one of ``key`` (a glob, ``*`` = any run of
    characters) or ``ip`` (an IPv4/IPv6 address or CIDR), for one ``policy`` or, with
    none, for every check. Checks it matches are allowed without being charged."""

    key: str | None = None
    ip: str | None = None
    policy: str | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.ip is None):
            raise ValueError("an allowlist entry needs exactly one of key and ip")

    def to_json(self) -> dict[str, str]:
        out = {"key": self.key, "ip": self.ip, "policy": self.policy}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, d: Json) -> AllowEntry:
        return cls(key=d.get("key"), ip=d.get("ip"), policy=d.get("policy"))


@dataclass(frozen=True)
class Allowlist:
    """``GET /v1/allowlist``: every entry (CIDRs in canonical form) and the bound."""

    entries: tuple[AllowEntry, ...]
    max: int

    @classmethod
    def from_json(cls, d: Json) -> Allowlist:
        return cls(entries=tuple(AllowEntry.from_json(e) for e in d["entries"]), max=int(d["max"]))


@dataclass(frozen=True)
class AllowChange:
    """The answer to adding or removing an entry: the entry as the cluster stores it,
    and whether the list changed (false: it was already there / not there)."""

    entry: AllowEntry
    changed: bool

    @classmethod
    def from_json(cls, d: Json) -> AllowChange:
        return cls(entry=AllowEntry.from_json(d["entry"]), changed=bool(d["changed"]))


@dataclass(frozen=True)
class AuditRecord:
    """One admin change: log ``index``, cluster time, ``caller`` (token name, ``open``
    or ``system``), the ``op``, the ``key`` that changed and its value ``before`` and
    ``after`` (``None``: absent)."""

    index: int
    time_ms: int
    caller: str
    op: str
    key: str
    before: str | None = None
    after: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> AuditRecord:
        return cls(
            index=int(d["index"]),
            time_ms=int(d["time_ms"]),
            caller=str(d["caller"]),
            op=str(d["op"]),
            key=str(d["key"]),
            before=d.get("before"),
            after=d.get("after"),
        )


@dataclass(frozen=True)
class AuditTrail:
    """``GET /v1/audit``: records oldest first; ``truncated`` when more matched (ask
    again with ``since`` = the last index); ``capacity`` is the ring's size."""

    records: tuple[AuditRecord, ...]
    truncated: bool
    capacity: int

    @classmethod
    def from_json(cls, d: Json) -> AuditTrail:
        return cls(
            records=tuple(AuditRecord.from_json(r) for r in d["records"]),
            truncated=bool(d["truncated"]),
            capacity=int(d["capacity"]),
        )


@dataclass(frozen=True)
class Policies:
    """``GET /v1/policies``: concurrency policies in match order, rate policies, tiers."""

    default_limit: int
    policies: tuple[PolicyEntry, ...]
    tiers: tuple[Tier, ...]

    @classmethod
    def from_json(cls, d: Json) -> Policies:
        return cls(
            default_limit=int(d["default_limit"]),
            policies=tuple(PolicyEntry.from_json(p) for p in d.get("policies", ())),
            tiers=tuple(Tier.from_json(t) for t in d.get("tiers", ())),
        )

    def get(self, name: str) -> Policy | None:
        for p in self.policies:
            if p.name == name:
                return p.spec
        return None


@dataclass(frozen=True)
class Member:
    id: int
    api_addr: str
    raft_addr: str
    voter: bool = True

    @classmethod
    def from_json(cls, d: Json) -> Member:
        return cls(
            id=int(d["id"]),
            api_addr=str(d["api_addr"]),
            raft_addr=str(d["raft_addr"]),
            voter=bool(d.get("voter", True)),
        )


@dataclass(frozen=True)
class ClusterInfo:
    """``GET /v1/cluster``: one node's view of the cluster."""

    node_id: int
    leader_id: int | None
    term: int
    members: tuple[Member, ...]
    last_log_index: int | None
    committed_index: int | None
    applied_index: int | None
    state_digest: str
    #: The leader's API base URL as clients reach it (the ``x-quorate-leader`` header);
    #: None while no leader is known.
    leader_api: str | None = None

    @classmethod
    def from_json(cls, d: Json) -> ClusterInfo:
        return cls(
            node_id=int(d["node_id"]),
            leader_id=d.get("leader_id"),
            term=int(d["term"]),
            members=tuple(Member.from_json(m) for m in d.get("members", ())),
            last_log_index=d.get("last_log_index"),
            committed_index=d.get("committed_index"),
            applied_index=d.get("applied_index"),
            state_digest=str(d.get("state_digest", "")),
            leader_api=d.get("leader_api"),
        )
