"""Every API operation described once, as a :class:`Call`, for both clients.

A :class:`Call` is a request and how to read its answer: the route's method and
filled-in path (from :mod:`quorate._routes`), the JSON body or query, a parser for a
2xx body, how to read a 429 (an acquire raises :class:`~quorate.LimitExceeded`; a rate
check's 429 is a decision), and what the call comes to when no node decides. The
functions below build one call per API operation; :func:`interpret` turns a deciding
node's answer into the call's result or the exception it stands for.

No I/O and no client here: :mod:`quorate._exchange` runs a call across nodes, and the
clients only send. Imports point down only (routes, errors, types).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import httpx

from . import _ratelimit_headers as ratelimit_headers
from . import _routes as r
from .errors import DecodeError, LimitExceeded, RateLimited, Unavailable, error_from_response
from .types import (
    AllowChange,
    AllowEntry,
    Allowlist,
    AuditTrail,
    ClusterInfo,
    Counter,
    Lease,
    LimitInfo,
    LimitList,
    Policies,
    Policy,
    PolicyEntry,
    RateCheck,
    RateDecision,
    RateResult,
    Renewal,
    SlotsInfo,
    SlotUsage,
    Tier,
    to_ms,
)

T = TypeVar("T")

#: The rate-limit headers a decision keeps (lower-case), ready to copy onto a response.
RATE_HEADERS = (
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
)


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any, httpx.Headers], T]
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str] | None = None
    #: How to read a 429 (acquire: raise LimitExceeded; rate check: a decision).
    on_429: Callable[[Any, httpx.Headers], T] | None = None
    #: What an undecided call comes to (given the :class:`Unavailable` it would raise):
    #: ``None`` raises it; acquire releases its lease id first, a rate check may fail open.
    undecided: Callable[[Unavailable], T] | None = None
    #: Seconds the server may hold the request before answering (a waiting acquire's
    #: ``wait``; 0: it answers at once). One long request, not a polling loop: each
    #: attempt may take what is left of the wait on top of the client's ``timeout``,
    #: and asks the server to wait only for what is left (:meth:`attempt_body`).
    hold: float = 0.0

    def attempt_body(self, hold_left: float) -> Mapping[str, Any] | None:
        """The body of an attempt made with ``hold_left`` seconds of the wait to go: a
        retry (same lease id, so the waiter keeps its place) waits only for the rest,
        and at least 1 ms, so that it still asks rather than acquiring afresh."""
        if self.hold <= 0 or self.body is None:
            return self.body
        return {**self.body, "wait_ms": max(1, to_ms(max(hold_left, 0.0)))}


def _call(
    route: r.Route,
    *segments: str,
    parse: Callable[[Any, httpx.Headers], T],
    body: Mapping[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
    on_429: Callable[[Any, httpx.Headers], T] | None = None,
    undecided: Callable[[Unavailable], T] | None = None,
    hold: float = 0.0,
) -> Call[T]:
    path = route.path(*segments)
    return Call(route.method, path, parse, body, params, on_429, undecided, hold)


def interpret(call: Call[T], response: httpx.Response) -> T:
    """A deciding node's answer: the call's result, or the API error it stands for."""
    try:
        body: Any = response.json() if response.content else None
    except ValueError:
        body = None
    status = response.status_code
    if 200 <= status < 300:
        if body is None:
            raise DecodeError(f"{call.method} {call.path}: {status} without a JSON body")
        try:
            return call.parse(body, response.headers)
        except (KeyError, TypeError, ValueError) as e:
            raise DecodeError(f"{call.method} {call.path}: unexpected body: {e}") from e
    if status == 429 and call.on_429 is not None:
        return call.on_429(body, response.headers)
    raise error_from_response(status, body, response.text)


def denied(body: Any, _headers: Mapping[str, str] | None = None) -> NoReturn:
    """Raise the :class:`LimitExceeded` a 429 acquire body stands for."""
    if not isinstance(body, dict):
        raise DecodeError(f"429 without a JSON body: {body!r}")
    position = body.get("queue_position")
    raise LimitExceeded(
        str(body.get("message", "limit exceeded")),
        blocked_by=[str(k) for k in body.get("blocked_by", ())],
        slots=[SlotUsage.from_json(s) for s in body.get("slots", ())],
        retry_after_ms=int(body.get("retry_after_ms", 0)),
        queue_position=None if position is None else int(position),
        body=body,
    )


def decision(body: Any, headers: Mapping[str, str], raise_on_limit: bool) -> RateDecision:
    """A rate check's answer (200 or 429) as a decision; :class:`RateLimited` if
    ``raise_on_limit`` and it denies."""
    kept = {h: headers[h] for h in RATE_HEADERS if h in headers}
    d = RateDecision.from_json(body, kept)
    if raise_on_limit and not d.allowed:
        raise RateLimited(d.message or "rate limited", decision=d)
    return d


def acquire_body(
    keys: Sequence[str], ttl: float, lease_id: str, holder: str | None, wait: float | None = None
) -> dict[str, Any]:
    """An acquire's JSON body. ``wait`` (seconds; ``None`` or 0: answer at once) becomes
    ``wait_ms``, left out when there is no wait (the server's default)."""
    if isinstance(keys, str):
        keys = [keys]
    body: dict[str, Any] = {"keys": list(keys), "lease_id": lease_id, "ttl_ms": to_ms(ttl)}
    if holder:
        body["holder"] = holder
    wait_ms = to_ms(wait) if wait is not None else 0
    if wait_ms > 0:
        body["wait_ms"] = wait_ms
    return body


def acquire(
    keys: Sequence[str],
    ttl: float,
    lease_id: str,
    holder: str | None,
    undecided: Callable[[Unavailable], Lease],
    wait: float | None = None,
) -> Call[Lease]:
    """Acquire, or with ``wait`` seconds wait in the keys' FIFO queues for a slot: the
    server holds the request until the grant (200, ``waited_ms``) or the end of the
    wait (429 with ``queue_position``, raised as :class:`LimitExceeded`)."""
    body = acquire_body(keys, ttl, lease_id, holder, wait)
    return _call(
        r.ACQUIRE,
        parse=lambda b, _: Lease.from_json(b),
        body=body,
        on_429=denied,
        undecided=undecided,
        hold=body.get("wait_ms", 0) / 1000.0,
    )


def release(lease_id: str) -> Call[bool]:
    return _call(r.RELEASE, parse=lambda b, _: bool(b["released"]), body={"lease_id": lease_id})


def renew(lease_id: str, ttl: float | None) -> Call[Renewal]:
    body: dict[str, Any] = {"lease_id": lease_id}
    if ttl is not None:
        body["ttl_ms"] = to_ms(ttl)
    return _call(r.RENEW, parse=lambda b, _: Renewal.from_json(b), body=body)


def slots(key: str) -> Call[SlotsInfo]:
    return _call(r.SLOTS, key, parse=lambda b, _: SlotsInfo.from_json(b))


def as_checks(checks: Iterable[RateCheck | Mapping[str, Any]]) -> list[RateCheck]:
    return [c if isinstance(c, RateCheck) else RateCheck(**c) for c in checks]


def rate_body(checks: Sequence[RateCheck]) -> dict[str, Any]:
    if not checks:
        raise ValueError("at least one rate check is required")
    return checks[0].to_json() if len(checks) == 1 else {"checks": [c.to_json() for c in checks]}


def node_headers(body: Any, names: Sequence[str]) -> dict[str, str]:
    """The rate-limit headers a node sends with the decision ``body`` of checks with
    policy ``names`` (none if the body does not hold one result per check)."""
    try:
        results = [RateResult.from_json(x) for x in body["results"]]
        allowed = bool(body["allowed"])
    except (KeyError, TypeError, ValueError):
        return {}
    if not results or len(results) != len(names):
        return {}
    return ratelimit_headers.fields(names, results, allowed)


def rate(
    checks: Sequence[RateCheck],
    raise_on_limit: bool,
    undecided: Callable[[Unavailable], RateDecision],
) -> Call[RateDecision]:
    names = ratelimit_headers.names(checks)

    def read(body: Any, headers: httpx.Headers) -> RateDecision:
        kept: Mapping[str, str] = headers
        if not any(h in headers for h in RATE_HEADERS):
            # A decision stream's answer is the body alone: the decision gets the
            # headers the node would have sent with it, as over HTTP.
            kept = node_headers(body, names)
        return decision(body, kept, raise_on_limit)

    return _call(r.RATE_CHECK, parse=read, body=rate_body(checks), on_429=read, undecided=undecided)


def counter_incr(key: str, expiry: float, amount: int) -> Call[Counter]:
    body = {"expiry_ms": to_ms(expiry), "amount": amount}
    return _call(r.COUNTER_INCR, key, parse=lambda b, _: Counter.from_json(b), body=body)


def counter(key: str) -> Call[Counter]:
    return _call(r.GET_COUNTER, key, parse=lambda b, _: Counter.from_json(b))


def clear_counter(key: str) -> Call[bool]:
    return _deleted(r.CLEAR_COUNTER, key)


def set_limit(key: str, limit: int) -> Call[int]:
    return _call(r.PUT_LIMIT, key, parse=lambda b, _: int(b["limit"]), body={"limit": limit})


def get_limit(key: str) -> Call[LimitInfo]:
    return _call(r.GET_LIMIT, key, parse=lambda b, _: LimitInfo.from_json(b))


def _deleted(route: r.Route, name: str) -> Call[bool]:
    return _call(route, name, parse=lambda b, _: bool(b["deleted"]))


def delete_limit(key: str) -> Call[bool]:
    return _deleted(r.DELETE_LIMIT, key)


def list_limits(prefix: str, max_rows: int | None) -> Call[LimitList]:
    params = {"prefix": prefix}
    if max_rows is not None:
        params["max"] = str(max_rows)
    return _call(r.LIST_LIMITS, parse=lambda b, _: LimitList.from_json(b), params=params)


def policies() -> Call[Policies]:
    return _call(r.POLICIES, parse=lambda b, _: Policies.from_json(b))


def put_policy(name: str, spec: Policy) -> Call[PolicyEntry]:
    return _call(
        r.PUT_POLICY, name, parse=lambda b, _: PolicyEntry.from_json(b), body=spec.to_json()
    )


def delete_policy(name: str) -> Call[bool]:
    return _deleted(r.DELETE_POLICY, name)


def put_tier(name: str, multiplier: float) -> Call[Tier]:
    return _call(
        r.PUT_TIER, name, parse=lambda b, _: Tier.from_json(b), body={"multiplier": multiplier}
    )


def delete_tier(name: str) -> Call[bool]:
    return _deleted(r.DELETE_TIER, name)


def allowlist() -> Call[Allowlist]:
    return _call(r.ALLOWLIST, parse=lambda b, _: Allowlist.from_json(b))


def allow(entry: AllowEntry) -> Call[AllowChange]:
    return _call(r.ALLOW, parse=lambda b, _: AllowChange.from_json(b), body=entry.to_json())


def disallow(entry: AllowEntry) -> Call[AllowChange]:
    return _call(r.DISALLOW, parse=lambda b, _: AllowChange.from_json(b), params=entry.to_json())


def audit(since: int, key: str, max_rows: int | None) -> Call[AuditTrail]:
    params = {"since": str(since), "key": key}
    if max_rows is not None:
        params["max"] = str(max_rows)
    return _call(r.AUDIT, parse=lambda b, _: AuditTrail.from_json(b), params=params)


def cluster() -> Call[ClusterInfo]:
    return _call(r.CLUSTER, parse=lambda b, _: ClusterInfo.from_json(b))
