"""Sync and async clients for a quorate cluster.

:class:`Client` and :class:`AsyncClient` have the same surface (as ``httpx.Client`` and
``httpx.AsyncClient`` do): every method of one exists on the other, the async one
returning a coroutine. Both are built on the same pieces, so they cannot drift:

- every API call is described once as a :class:`_Call` (method, path, body, how to read
  the answer, what to do when no node decides) by the functions in the "Calls" section
  below and the ``_*_call`` methods of :class:`_BaseClient`;
- :class:`_Exchange` is one call without I/O: which node to try next, how long one
  attempt may take, what an answer means, when to back off or give up;
- the two ``_run`` loops only send requests and sleep, and each client only adds how it
  opens its HTTP client and releases a lease in the background (a thread, a task).

Behaviour that matters for a limiter:

- **Any node will do.** Nodes are tried in turn, starting with the one that answered
  last. A ``503 unavailable`` (no quorum, election running) or an unreachable node moves
  on to the next; once every node failed in a round the client backs off (doubling up to
  ``max_backoff``) until the overall ``deadline``, then raises :class:`Unavailable`.
- **Retries never double-book.** ``acquire`` picks the lease id before the first
  attempt and every retry reuses it; the cluster answers a repeat with the original
  grant. If the client gives up, it releases that lease id in the background, in case a
  grant was made but its answer lost.
- **Failure policy is the caller's.** ``failure_policy="closed"`` (default) raises
  :class:`Unavailable` when the cluster cannot decide; ``"open"`` allows (an allowing
  :class:`RateDecision` or a slot without a lease, both with ``degraded=True``), logs a
  warning on the ``quorate`` logger and counts it in :attr:`Client.fail_open_count`.
  :attr:`Client.unavailable_count` counts every undecided call under either policy.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar, cast
from urllib.parse import quote

import httpx

from .errors import (
    ConfigError,
    DecodeError,
    LimitExceeded,
    QuorateError,
    RateLimited,
    Unavailable,
    error_from_response,
)
from .slot import AsyncSlot, Slot
from .types import (
    ClusterInfo,
    Lease,
    LimitInfo,
    LimitList,
    Policies,
    Policy,
    PolicyEntry,
    RateCheck,
    RateDecision,
    Renewal,
    SlotsInfo,
    SlotUsage,
    Tier,
    to_ms,
)

__all__ = ["AsyncClient", "Client", "FailurePolicy"]

logger = logging.getLogger("quorate")

T = TypeVar("T")
_TransportT = TypeVar("_TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)

# Statuses that mean "this node could not decide; another may": 503 is quorate's own
# (no quorum, election); 502/504 come from a proxy in front of a dead node.
_RETRY_STATUSES = frozenset({502, 503, 504})


class FailurePolicy(str, enum.Enum):
    """What to do when the cluster cannot decide (unreachable, no quorum)."""

    #: Deny: raise :class:`~quorate.Unavailable`. Never admits more than the limit.
    CLOSED = "closed"
    #: Allow, log a warning and count it. For work where over-admission is cheaper
    #: than refusing.
    OPEN = "open"


def _policy(value: FailurePolicy | str) -> FailurePolicy:
    try:
        return FailurePolicy(value)
    except ValueError:
        raise ConfigError(f"failure_policy must be 'open' or 'closed', got {value!r}") from None


def _seg(s: str) -> str:
    """Percent-encode one path segment (keys may hold ``:``; ``/`` must not split)."""
    return quote(s, safe=":@+=")


# ---------------------------------------------------------------------------------------
# Calls: each API operation described once, for both clients.


@dataclass(frozen=True)
class _Call(Generic[T]):
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


def _interpret(call: _Call[T], response: httpx.Response) -> T:
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


def _denied(body: Any, _headers: httpx.Headers) -> NoReturn:
    if not isinstance(body, dict):
        raise DecodeError(f"429 without a JSON body: {body!r}")
    raise LimitExceeded(
        str(body.get("message", "limit exceeded")),
        blocked_by=[str(k) for k in body.get("blocked_by", ())],
        slots=[SlotUsage.from_json(s) for s in body.get("slots", ())],
        retry_after_ms=int(body.get("retry_after_ms", 0)),
        body=body,
    )


_RATE_HEADERS = (
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
)


def _decision(body: Any, headers: httpx.Headers) -> RateDecision:
    kept = {h: headers[h] for h in _RATE_HEADERS if h in headers}
    return RateDecision.from_json(body, kept)


def _acquire_call(
    keys: Sequence[str],
    ttl: float,
    lease_id: str,
    holder: str | None,
    undecided: Callable[[Unavailable], Lease],
) -> _Call[Lease]:
    if isinstance(keys, str):
        keys = [keys]
    body: dict[str, Any] = {"keys": list(keys), "lease_id": lease_id, "ttl_ms": to_ms(ttl)}
    if holder:
        body["holder"] = holder
    return _Call(
        "POST",
        "/v1/slots/acquire",
        lambda b, _: Lease.from_json(b),
        body,
        on_429=_denied,
        undecided=undecided,
    )


def _release_call(lease_id: str) -> _Call[bool]:
    return _Call(
        "POST", "/v1/slots/release", lambda b, _: bool(b["released"]), {"lease_id": lease_id}
    )


def _renew_call(lease_id: str, ttl: float | None) -> _Call[Renewal]:
    body: dict[str, Any] = {"lease_id": lease_id}
    if ttl is not None:
        body["ttl_ms"] = to_ms(ttl)
    return _Call("POST", "/v1/slots/renew", lambda b, _: Renewal.from_json(b), body)


def _slots_call(key: str) -> _Call[SlotsInfo]:
    return _Call("GET", f"/v1/slots/{_seg(key)}", lambda b, _: SlotsInfo.from_json(b))


def _rate_call(
    checks: Sequence[RateCheck],
    raise_on_limit: bool,
    undecided: Callable[[Unavailable], RateDecision],
) -> _Call[RateDecision]:
    if not checks:
        raise ValueError("at least one rate check is required")
    body = checks[0].to_json() if len(checks) == 1 else {"checks": [c.to_json() for c in checks]}

    def read(body: Any, headers: httpx.Headers) -> RateDecision:
        decision = _decision(body, headers)
        if raise_on_limit and not decision.allowed:
            raise RateLimited(decision.message or "rate limited", decision=decision)
        return decision

    return _Call("POST", "/v1/rate/check", read, body, on_429=read, undecided=undecided)


def _set_limit_call(key: str, limit: int) -> _Call[int]:
    return _Call("PUT", f"/v1/limits/{_seg(key)}", lambda b, _: int(b["limit"]), {"limit": limit})


def _get_limit_call(key: str) -> _Call[LimitInfo]:
    return _Call("GET", f"/v1/limits/{_seg(key)}", lambda b, _: LimitInfo.from_json(b))


def _delete_call(path: str) -> _Call[bool]:
    return _Call("DELETE", path, lambda b, _: bool(b["deleted"]))


def _list_limits_call(prefix: str, max_rows: int | None) -> _Call[LimitList]:
    params = {"prefix": prefix}
    if max_rows is not None:
        params["max"] = str(max_rows)
    return _Call("GET", "/v1/limits", lambda b, _: LimitList.from_json(b), params=params)


def _policies_call() -> _Call[Policies]:
    return _Call("GET", "/v1/policies", lambda b, _: Policies.from_json(b))


def _put_policy_call(name: str, spec: Policy) -> _Call[PolicyEntry]:
    return _Call(
        "PUT", f"/v1/policies/{_seg(name)}", lambda b, _: PolicyEntry.from_json(b), spec.to_json()
    )


def _put_tier_call(name: str, multiplier: float) -> _Call[Tier]:
    return _Call(
        "PUT",
        f"/v1/tiers/{_seg(name)}",
        lambda b, _: Tier.from_json(b),
        {"multiplier": multiplier},
    )


def _cluster_call() -> _Call[ClusterInfo]:
    return _Call("GET", "/v1/cluster", lambda b, _: ClusterInfo.from_json(b))


def _as_checks(checks: Iterable[RateCheck | Mapping[str, Any]]) -> list[RateCheck]:
    out = []
    for c in checks:
        out.append(c if isinstance(c, RateCheck) else RateCheck(**c))
    return out


# ---------------------------------------------------------------------------------------
# One call without I/O: the retry plan and what each answer means


class _Exchange(Generic[T]):
    """One call from its first attempt to its outcome, with no I/O: which node to try
    next and for how long, whether an answer decides the call or moves on to the next
    node, how long to back off, when to give up. The clients' ``_run`` loops do only
    the sending and the sleeping."""

    def __init__(self, client: _BaseClient[Any], call: _Call[T], deadline: float | None) -> None:
        self.client = client
        self.call = call
        self.deadline = time.monotonic() + (client.deadline if deadline is None else deadline)
        self.attempt = 0
        self.backoff = client.backoff
        self.last_error = "no attempt made"
        self.retry_after: float | None = None
        #: Seconds to wait before the next attempt (0: at once).
        self.wait = 0.0
        self._node = 0
        self._answer: httpx.Response | None = None
        self._gave_up: Unavailable | None = None

    @property
    def done(self) -> bool:
        return self._answer is not None or self._gave_up is not None

    def next(self) -> tuple[str, float]:
        """The URL of the next attempt and how long it may take."""
        n = len(self.client.nodes)
        self._node = (self.client._preferred + self.attempt) % n
        remaining = self.deadline - time.monotonic()
        # Never let one attempt outlive the call's deadline, but give it a sliver of
        # time even at the end so a last try is a real try.
        timeout = max(0.05, min(self.client.timeout, remaining))
        return self.client.nodes[self._node] + self.call.path, timeout

    def answered(self, response: httpx.Response) -> None:
        if response.status_code not in _RETRY_STATUSES:
            self.client._preferred = self._node
            self._answer = response
            return
        self.retry_after = _retry_after(response.headers)
        node = self.client.nodes[self._node]
        self._failed(f"{node}: {response.status_code} {response.text[:200]}")

    def unreachable(self, error: httpx.TransportError) -> None:
        node = self.client.nodes[self._node]
        self._failed(f"{node}: {type(error).__name__}: {error}")

    def _failed(self, why: str) -> None:
        """Record a failed attempt: set the wait before the next one, or give up."""
        self.last_error = why
        logger.debug("quorate node did not decide (%s); trying the next", why)
        self.attempt += 1
        self.wait = 0.0
        now = time.monotonic()
        if self.attempt % len(self.client.nodes) == 0:
            # Every node failed once in this round: back off before the next round.
            if now + self.backoff >= self.deadline:
                self._give_up()
                return
            self.wait = self.backoff
            self.backoff = min(self.backoff * 2, self.client.max_backoff)
        elif now >= self.deadline:
            self._give_up()

    def _give_up(self) -> None:
        with self.client._lock:
            self.client.unavailable_count += 1
        self._gave_up = Unavailable(
            f"no quorate node decided within the deadline; last error: {self.last_error}",
            retry_after=self.retry_after,
        )

    def outcome(self) -> T:
        """The call's result once :attr:`done` (raising what the answer stands for)."""
        if self._answer is not None:
            return _interpret(self.call, self._answer)
        gave_up = cast(Unavailable, self._gave_up)
        if self.call.undecided is None:
            raise gave_up
        return self.call.undecided(gave_up)


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------------------
# Configuration and calls shared by both clients


class _BaseClient(Generic[_TransportT]):
    """Configuration, bookkeeping and call building shared by :class:`Client` and
    :class:`AsyncClient`, which add only their I/O. ``transport`` is an httpx transport:
    a sync one for :class:`Client`, an async one for :class:`AsyncClient`."""

    def __init__(
        self,
        nodes: Sequence[str] | str,
        *,
        token: str | None = None,
        verify: ssl.SSLContext | str | bool = True,
        timeout: float = 3.0,
        deadline: float = 10.0,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
        failure_policy: FailurePolicy | str = FailurePolicy.CLOSED,
        holder: str | None = None,
        trust_env: bool = False,
        transport: _TransportT | None = None,
    ) -> None:
        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n.strip()]
        self.nodes: list[str] = [n.strip().rstrip("/") for n in nodes]
        if not self.nodes:
            raise ConfigError("at least one node URL is required")
        for n in self.nodes:
            if not n.startswith(("http://", "https://")):
                raise ConfigError(f"node URL {n!r} must start with http:// or https://")
        if timeout <= 0 or deadline <= 0 or backoff <= 0:
            raise ConfigError("timeout, deadline and backoff must be positive")
        #: Seconds one HTTP attempt may take.
        self.timeout = timeout
        #: Seconds one call may spend across attempts, nodes and backoff.
        self.deadline = deadline
        self.backoff = backoff
        self.max_backoff = max(max_backoff, backoff)
        self.failure_policy = _policy(failure_policy)
        #: Free text recorded with leases (shown in usage listings).
        self.holder = holder or f"{socket.gethostname()}/pid-{os.getpid()}"
        #: Times the fail-open policy allowed something the cluster did not decide.
        self.fail_open_count = 0
        #: Times a call ended without a decision (either policy).
        self.unavailable_count = 0
        self._preferred = 0
        self._lock = threading.Lock()
        self._headers = {"accept": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._verify = verify
        self._trust_env = trust_env
        self._open(
            transport,
            {
                "headers": self._headers,
                "verify": verify,
                "trust_env": trust_env,
                "timeout": timeout,
            },
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} nodes={self.nodes} policy={self.failure_policy.value}>"

    def _open(self, transport: _TransportT | None, options: dict[str, Any]) -> None:
        """Make the HTTP client (``options`` are httpx client arguments)."""
        raise NotImplementedError

    def _release_in_background(self, lease_id: str) -> None:
        raise NotImplementedError

    def _fails_open(
        self, exc: Unavailable, what: str, override: FailurePolicy | str | None
    ) -> bool:
        """Apply the failure policy to an undecided call: True to allow (and count it)."""
        policy = self.failure_policy if override is None else _policy(override)
        if policy is FailurePolicy.OPEN:
            with self._lock:
                self.fail_open_count += 1
            logger.warning("quorate unavailable; failing open for %s: %s", what, exc)
            return True
        logger.warning("quorate unavailable; failing closed for %s: %s", what, exc)
        return False

    def _new_lease_id(self) -> str:
        return str(uuid.uuid4())

    def _acquire_call(
        self, keys: Sequence[str], ttl: float, lease_id: str | None, holder: str | None
    ) -> _Call[Lease]:
        lid = lease_id or self._new_lease_id()

        def abandon(exc: Unavailable) -> NoReturn:
            # The grant may have been made with its answer lost: free it if we can.
            self._release_in_background(lid)
            raise exc

        return _acquire_call(keys, ttl, lid, holder or self.holder, abandon)

    def _check_all_call(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        failure_policy: FailurePolicy | str | None,
        raise_on_limit: bool,
    ) -> _Call[RateDecision]:
        def undecided(exc: Unavailable) -> RateDecision:
            if self._fails_open(exc, "rate check", failure_policy):
                return RateDecision.fail_open(str(exc))
            raise exc

        return _rate_call(_as_checks(checks), raise_on_limit, undecided)

    def _slot_args(
        self, keys: Sequence[str], lease_id: str | None, holder: str | None
    ) -> tuple[list[str], str, str]:
        """A new slot's keys, lease id and holder."""
        keys = [keys] if isinstance(keys, str) else keys
        return list(keys), lease_id or self._new_lease_id(), holder or self.holder


# ---------------------------------------------------------------------------------------
# The sync client


class Client(_BaseClient[httpx.BaseTransport]):
    """A blocking client. Thread-safe; share one per process (create it after a fork).

    ``nodes`` is a list of base URLs (``["http://127.0.0.1:7101", ...]``) or one
    comma-separated string. ``timeout`` bounds one HTTP attempt and ``deadline`` a whole
    call, both in seconds. ``verify`` is passed to httpx: ``True``, ``False``, a CA file
    path (the cluster's ``tls.ca_file``) or an ``ssl.SSLContext``.
    """

    def _open(self, transport: httpx.BaseTransport | None, options: dict[str, Any]) -> None:
        self._http = httpx.Client(transport=transport, **options)
        self._threads: set[threading.Thread] = set()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Let background releases finish first (each is bounded by its own deadline).
        for t in list(self._threads):
            t.join(timeout=2.5)
        self._http.close()

    def _run(self, call: _Call[T], *, deadline: float | None = None) -> T:
        x = _Exchange(self, call, deadline)
        while True:
            url, timeout = x.next()
            try:
                x.answered(
                    self._http.request(
                        call.method, url, json=call.body, params=call.params, timeout=timeout
                    )
                )
            except httpx.TransportError as e:
                x.unreachable(e)
            if x.done:
                return x.outcome()
            if x.wait > 0:
                time.sleep(x.wait)  # backoff between rounds, bounded by the deadline

    def _release_in_background(self, lease_id: str) -> None:
        def work() -> None:
            try:
                self._run(_release_call(lease_id), deadline=min(self.deadline, 2.0))
            except (QuorateError, RuntimeError) as e:  # RuntimeError: client closed
                logger.debug("background release of %s failed: %s", lease_id, e)
            finally:
                self._threads.discard(threading.current_thread())

        t = threading.Thread(target=work, name=f"quorate-release-{lease_id}", daemon=True)
        self._threads.add(t)
        t.start()

    # -- slots ------------------------------------------------------------------------

    def acquire(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
    ) -> Lease:
        """Take one slot on every key, all or nothing; raise :class:`LimitExceeded`
        when a key is full. The raw call: nothing renews or releases the lease (use
        :meth:`slot` for that). Retries reuse ``lease_id`` (generated if absent)."""
        return self._run(self._acquire_call(keys, ttl, lease_id, holder))

    def release(self, lease_id: str, *, deadline: float | None = None) -> bool:
        """Release a lease; ``False`` if it was not live. Idempotent."""
        return self._run(_release_call(lease_id), deadline=deadline)

    def renew(
        self, lease_id: str, ttl: float | None = None, *, deadline: float | None = None
    ) -> Renewal:
        """Extend a live lease to now + ``ttl``; :class:`LeaseNotFound` if it is gone."""
        return self._run(_renew_call(lease_id, ttl), deadline=deadline)

    def slots(self, key: str) -> SlotsInfo:
        """A key's usage, limit and live leases (linearizable)."""
        return self._run(_slots_call(key))

    def slot(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
        failure_policy: FailurePolicy | str | None = None,
    ) -> Slot:
        """A context manager holding one slot on every key while the block runs::

            with client.slot(["org:acme", "global"], ttl=30) as s:
                work(fencing_token=s.fencing_token)

        Acquires on entry (raising :class:`LimitExceeded` when full), renews in the
        background every ``ttl / 3``, releases on exit whatever the exit."""
        keys, lease_id, holder = self._slot_args(keys, lease_id, holder)
        return Slot(
            self, keys, ttl, lease_id=lease_id, holder=holder, failure_policy=failure_policy
        )

    def hold(self, lease_id: str, ttl: float = 60.0) -> Slot:
        """A context manager adopting a lease acquired elsewhere (a request handler
        that handed ``lease_id`` to a background job): renews it while the block runs
        and releases it on exit. Entry raises :class:`LeaseNotFound` if it is gone."""
        return Slot(self, [], ttl, lease_id=lease_id, holder=self.holder, adopt=True)

    # -- rate limits ------------------------------------------------------------------

    def check(
        self,
        key: str,
        policy: str | None = None,
        *,
        tier: str | None = None,
        cost: int | None = None,
        limit: int | None = None,
        period: float | None = None,
        burst: int | None = None,
        failure_policy: FailurePolicy | str | None = None,
        raise_on_limit: bool = False,
    ) -> RateDecision:
        """Check and (if allowed) charge one request against a named ``policy`` (with an
        optional ``tier``) or an inline ``limit`` per ``period`` seconds. Being limited
        is an answer (``allowed=False``), not an exception, unless ``raise_on_limit``."""
        check = RateCheck(key, policy, tier, cost, limit, period, burst)
        return self.check_all([check], failure_policy=failure_policy, raise_on_limit=raise_on_limit)

    def check_all(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        *,
        failure_policy: FailurePolicy | str | None = None,
        raise_on_limit: bool = False,
    ) -> RateDecision:
        """Several checks charged all together or not at all (at most 16)."""
        return self._run(self._check_all_call(checks, failure_policy, raise_on_limit))

    # -- limits, policies, tiers (admin) ----------------------------------------------

    def set_limit(self, key: str, limit: int) -> int:
        """Set a per-key concurrency override (replicated; no stale caches)."""
        return self._run(_set_limit_call(key, limit))

    def get_limit(self, key: str) -> LimitInfo:
        """A key's effective limit, its source (override/policy/default) and usage."""
        return self._run(_get_limit_call(key))

    def list_limits(self, prefix: str = "", *, max: int | None = None) -> LimitList:
        """Overrides and keys in use under ``prefix``, each with its usage."""
        return self._run(_list_limits_call(prefix, max))

    def delete_limit(self, key: str) -> bool:
        """Remove a per-key override (the key falls back to its policy or default)."""
        return self._run(_delete_call(f"/v1/limits/{_seg(key)}"))

    def policies(self) -> Policies:
        return self._run(_policies_call())

    def put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        return self._run(_put_policy_call(name, spec))

    def delete_policy(self, name: str) -> bool:
        return self._run(_delete_call(f"/v1/policies/{_seg(name)}"))

    def put_tier(self, name: str, multiplier: float) -> Tier:
        return self._run(_put_tier_call(name, multiplier))

    def delete_tier(self, name: str) -> bool:
        return self._run(_delete_call(f"/v1/tiers/{_seg(name)}"))

    def cluster(self) -> ClusterInfo:
        """The cluster as seen by whichever node answers."""
        return self._run(_cluster_call())


# ---------------------------------------------------------------------------------------
# The async client


class AsyncClient(_BaseClient[httpx.AsyncBaseTransport]):
    """The same surface as :class:`Client`, with coroutines. Use it from one event loop."""

    def _open(self, transport: httpx.AsyncBaseTransport | None, options: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(transport=transport, **options)
        # Background releases are kept referenced until done (asyncio holds tasks weakly).
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        # Let background releases finish first (each is bounded by its own deadline).
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.5)
        await self._http.aclose()

    async def _run(self, call: _Call[T], *, deadline: float | None = None) -> T:
        x = _Exchange(self, call, deadline)
        while True:
            url, timeout = x.next()
            try:
                x.answered(
                    await self._http.request(
                        call.method, url, json=call.body, params=call.params, timeout=timeout
                    )
                )
            except httpx.TransportError as e:
                x.unreachable(e)
            if x.done:
                return x.outcome()
            if x.wait > 0:
                await asyncio.sleep(x.wait)  # backoff between rounds, bounded by the deadline

    def _release_in_background(self, lease_id: str) -> None:
        async def work() -> None:
            try:
                await self._run(_release_call(lease_id), deadline=min(self.deadline, 2.0))
            except (QuorateError, RuntimeError) as e:  # RuntimeError: client closed
                logger.debug("background release of %s failed: %s", lease_id, e)

        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- slots ------------------------------------------------------------------------

    async def acquire(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
    ) -> Lease:
        """See :meth:`Client.acquire`."""
        return await self._run(self._acquire_call(keys, ttl, lease_id, holder))

    async def release(self, lease_id: str, *, deadline: float | None = None) -> bool:
        return await self._run(_release_call(lease_id), deadline=deadline)

    async def renew(
        self, lease_id: str, ttl: float | None = None, *, deadline: float | None = None
    ) -> Renewal:
        return await self._run(_renew_call(lease_id, ttl), deadline=deadline)

    async def slots(self, key: str) -> SlotsInfo:
        return await self._run(_slots_call(key))

    def slot(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
        failure_policy: FailurePolicy | str | None = None,
    ) -> AsyncSlot:
        """``async with client.slot(keys, ttl) as s:`` -- see :meth:`Client.slot`."""
        keys, lease_id, holder = self._slot_args(keys, lease_id, holder)
        return AsyncSlot(
            self, keys, ttl, lease_id=lease_id, holder=holder, failure_policy=failure_policy
        )

    def hold(self, lease_id: str, ttl: float = 60.0) -> AsyncSlot:
        """See :meth:`Client.hold`."""
        return AsyncSlot(self, [], ttl, lease_id=lease_id, holder=self.holder, adopt=True)

    # -- rate limits ------------------------------------------------------------------

    async def check(
        self,
        key: str,
        policy: str | None = None,
        *,
        tier: str | None = None,
        cost: int | None = None,
        limit: int | None = None,
        period: float | None = None,
        burst: int | None = None,
        failure_policy: FailurePolicy | str | None = None,
        raise_on_limit: bool = False,
    ) -> RateDecision:
        check = RateCheck(key, policy, tier, cost, limit, period, burst)
        return await self.check_all(
            [check], failure_policy=failure_policy, raise_on_limit=raise_on_limit
        )

    async def check_all(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        *,
        failure_policy: FailurePolicy | str | None = None,
        raise_on_limit: bool = False,
    ) -> RateDecision:
        return await self._run(self._check_all_call(checks, failure_policy, raise_on_limit))

    # -- limits, policies, tiers (admin) ----------------------------------------------

    async def set_limit(self, key: str, limit: int) -> int:
        return await self._run(_set_limit_call(key, limit))

    async def get_limit(self, key: str) -> LimitInfo:
        return await self._run(_get_limit_call(key))

    async def list_limits(self, prefix: str = "", *, max: int | None = None) -> LimitList:
        return await self._run(_list_limits_call(prefix, max))

    async def delete_limit(self, key: str) -> bool:
        return await self._run(_delete_call(f"/v1/limits/{_seg(key)}"))

    async def policies(self) -> Policies:
        return await self._run(_policies_call())

    async def put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        return await self._run(_put_policy_call(name, spec))

    async def delete_policy(self, name: str) -> bool:
        return await self._run(_delete_call(f"/v1/policies/{_seg(name)}"))

    async def put_tier(self, name: str, multiplier: float) -> Tier:
        return await self._run(_put_tier_call(name, multiplier))

    async def delete_tier(self, name: str) -> bool:
        return await self._run(_delete_call(f"/v1/tiers/{_seg(name)}"))

    async def cluster(self) -> ClusterInfo:
        return await self._run(_cluster_call())
