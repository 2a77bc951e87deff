"""Sync and async clients for a quorate cluster.

:class:`Client` and :class:`AsyncClient` have the same surface (as ``httpx.Client`` and
``httpx.AsyncClient`` do): every method of one exists on the other, the async one
returning a coroutine. Both are built on the same pieces, so they cannot drift, and
the pieces import one way (routes <- calls <- exchange <- client; the failure policy
and the slots never import a client):

- :mod:`quorate._routes` declares every method and path once;
- :mod:`quorate._calls` describes every API call once (body, how to read the answer,
  what an undecided call comes to);
- :mod:`quorate._exchange` is one call without I/O: which node to try next, how long
  one attempt may take, what an answer means, when to back off or give up;
- :mod:`quorate.failure` is the failure policy and its counters;
- :mod:`quorate._stream` is the decision stream's byte layout and which attempts may
  use one; :mod:`quorate._stream_io` its sync and async connections;
- this module adds only the I/O: the two ``_run`` loops send requests (over the
  decision stream when it takes them, else HTTP) and sleep, and each client opens its
  HTTP client and releases a lease in the background (a thread, a task).

Behaviour that matters for a limiter:

- **Leader first.** Every answer names the current leader (``x-quorate-leader``); the
  next call goes straight there, saving the hop a follower would forward it over, and
  a changed name is followed at once (:attr:`Client.leader_hint`). A hint may name a
  node not in ``nodes`` (as in the Rust client), but never downgrades ``https`` to
  ``http``. When the hinted node fails, the configured nodes are tried as below.
- **Any node will do.** Nodes are tried in turn, starting with the one that answered
  last. A ``503 unavailable`` (no quorum, election running) or an unreachable node moves
  on to the next; once every node failed in a round the client backs off (doubling up to
  ``max_backoff``) until the overall ``deadline``, then raises :class:`Unavailable`.
- **Retries never double-book.** ``acquire`` picks the lease id before the first
  attempt and every retry reuses it; the cluster answers a repeat with the original
  grant. If the client gives up, it releases that lease id in the background, in case a
  grant was made but its answer lost.
- **Waiting is one long request.** ``acquire(..., wait=30)`` and ``slot(..., wait=30)``
  ask the cluster to hold the request until a slot is granted, first come first
  served, or the wait ends (:class:`LimitExceeded` with ``queue_position``). The
  request may take the wait plus ``timeout``; if its node dies meanwhile, the same
  lease id is retried on another node for what is left of the wait, and keeps its
  place in the queue (or gets the grant made meanwhile).
- **Failure policy is the caller's.** ``failure_policy="closed"`` (default) raises
  :class:`Unavailable` when the cluster cannot decide; ``"open"`` allows (an allowing
  :class:`RateDecision` or a slot without a lease, both with ``degraded=True``), logs a
  warning on the ``quorate`` logger and counts it in :attr:`Client.fail_open_count`.
  :attr:`Client.unavailable_count` counts every undecided call under either policy.
- **Decisions may stream.** With ``stream=True`` acquire, release, renew and rate
  checks go over one upgraded connection per client (``POST /v1/stream``), which
  spares each decision the HTTP request's cost on the node. Everything above holds
  unchanged: the same nodes in the same order, the same timeouts and deadline, the
  same retries, the same results and errors. ``https://`` nodes, and nodes that refuse
  the upgrade (an older release), get HTTP. Everything else is always HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, NoReturn, TypeVar

import httpx

from . import _calls as calls
from ._calls import Call
from ._exchange import Exchange, Nodes
from ._stream import StreamRoutes
from ._stream_io import AsyncStream, SyncStream
from .errors import QuorateError, Unavailable
from .failure import FailurePolicy, Failures
from .slot import AsyncSlot, Slot
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
    Renewal,
    SlotsInfo,
    Tier,
)

__all__ = ["AsyncClient", "Client", "FailurePolicy"]

logger = logging.getLogger("quorate")

T = TypeVar("T")
_TransportT = TypeVar("_TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


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
        stream: bool = False,
    ) -> None:
        self._nodes = Nodes(
            nodes, timeout=timeout, deadline=deadline, backoff=backoff, max_backoff=max_backoff
        )
        #: The node URLs, tried in turn.
        self.nodes: list[str] = self._nodes.urls
        #: Seconds one HTTP attempt may take.
        self.timeout = timeout
        #: Seconds one call may spend across attempts, nodes and backoff.
        self.deadline = deadline
        #: The failure policy and its counters (shared with this client's slots).
        self.failures = Failures(failure_policy)
        #: Free text recorded with leases (shown in usage listings).
        self.holder = holder or f"{socket.gethostname()}/pid-{os.getpid()}"
        self._headers = {"accept": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._verify = verify
        self._trust_env = trust_env
        #: Which attempts go over a decision stream (none unless ``stream``).
        self._streams = StreamRoutes(stream)
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

    @property
    def failure_policy(self) -> FailurePolicy:
        return self.failures.policy

    @property
    def fail_open_count(self) -> int:
        """Times the fail-open policy allowed something the cluster did not decide."""
        return self.failures.fail_open_count

    @property
    def unavailable_count(self) -> int:
        """Times a call ended without a decision (either policy)."""
        return self.failures.unavailable_count

    @property
    def leader_hint(self) -> str | None:
        """The leader's API base URL as the cluster last named it (the
        ``x-quorate-leader`` header of any answer), where calls go first; ``None``
        before the first answer or after the hinted node failed."""
        return self._nodes.leader

    @property
    def _preferred(self) -> int:
        """Index of the node that answered last (tried first)."""
        return self._nodes.preferred

    def _new_lease_id(self) -> str:
        return str(uuid.uuid4())

    def _acquire_call(
        self,
        keys: Sequence[str],
        ttl: float,
        lease_id: str | None,
        holder: str | None,
        wait: float | None = None,
    ) -> Call[Lease]:
        lid = lease_id or self._new_lease_id()

        def abandon(exc: Unavailable) -> NoReturn:
            # The grant may have been made with its answer lost: free it if we can.
            self._release_in_background(lid)
            raise exc

        return calls.acquire(keys, ttl, lid, holder or self.holder, abandon, wait)

    def _check_all_call(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        failure_policy: FailurePolicy | str | None,
        raise_on_limit: bool,
    ) -> Call[RateDecision]:
        def undecided(exc: Unavailable) -> RateDecision:
            if self.failures.fails_open(exc, "rate check", failure_policy):
                return RateDecision.fail_open(str(exc))
            raise exc

        return calls.rate(calls.as_checks(checks), raise_on_limit, undecided)

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

    ``stream=True`` sends acquire, release, renew and rate checks over one decision
    stream (an upgraded connection to the node calls go to, opened on first use and
    reopened when broken) instead of one HTTP request each. One request is on it at a
    time; a thread that finds it busy sends HTTP rather than wait. It connects directly
    to ``http://`` nodes (no ``transport``, no proxy from ``trust_env``); other calls,
    ``https://`` nodes and nodes that refuse the upgrade get HTTP.
    """

    def _open(self, transport: httpx.BaseTransport | None, options: dict[str, Any]) -> None:
        self._http = httpx.Client(transport=transport, **options)
        self._threads: set[threading.Thread] = set()
        self._stream = (
            SyncStream(self._streams, self._headers, self._nodes.follow)
            if self._streams.enabled
            else None
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Let background releases finish first (each is bounded by its own deadline).
        for t in list(self._threads):
            t.join(timeout=2.5)
        if self._stream is not None:
            self._stream.close()
        self._http.close()

    def _run(self, call: Call[T], *, deadline: float | None = None) -> T:
        x = Exchange(self._nodes, self.failures, call, deadline)
        op = self._streams.op(call)
        while True:
            url, _ = x.next()
            try:
                answer = None
                if op is not None and self._stream is not None and x.body is not None:
                    answer = self._stream.send(x.node, op, x.body, x.http_timeout)
                if answer is None:
                    answer = self._http.request(
                        call.method, url, json=x.body, params=call.params, timeout=x.http_timeout
                    )
                x.answered(answer)
            except httpx.TransportError as e:
                # Not sent, or sent with its answer lost (over HTTP or the stream): the
                # exchange decides alike whether and where to try again.
                x.unreachable(e)
            if x.done:
                return x.outcome()
            if x.wait > 0:
                time.sleep(x.wait)  # backoff between rounds, bounded by the deadline

    def _release_in_background(self, lease_id: str) -> None:
        def work() -> None:
            try:
                self._run(calls.release(lease_id), deadline=min(self.deadline, 2.0))
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
        wait: float | None = None,
    ) -> Lease:
        """Take one slot on every key, all or nothing; raise :class:`LimitExceeded`
        when a key is full. The raw call: nothing renews or releases the lease (use
        :meth:`slot` for that). Retries reuse ``lease_id`` (generated if absent).

        With ``wait`` (seconds, at most the cluster's ``[limits] max_wait_ms``), a full
        key does not deny at once: the acquire waits in the FIFO queue of each of its
        keys and returns when granted (``Lease.waited`` says how long it waited), or
        raises :class:`LimitExceeded` with ``queue_position`` when the wait ends first.
        Nobody overtakes a waiter, so the first to ask is the first served."""
        return self._run(self._acquire_call(keys, ttl, lease_id, holder, wait))

    def release(self, lease_id: str, *, deadline: float | None = None) -> bool:
        """Release a lease; ``False`` if it was not live. Idempotent."""
        return self._run(calls.release(lease_id), deadline=deadline)

    def renew(
        self, lease_id: str, ttl: float | None = None, *, deadline: float | None = None
    ) -> Renewal:
        """Extend a live lease to now + ``ttl``; :class:`LeaseNotFound` if it is gone."""
        return self._run(calls.renew(lease_id, ttl), deadline=deadline)

    def slots(self, key: str) -> SlotsInfo:
        """A key's usage, limit and live leases (linearizable)."""
        return self._run(calls.slots(key))

    def slot(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
        failure_policy: FailurePolicy | str | None = None,
        wait: float | None = None,
    ) -> Slot:
        """A context manager holding one slot on every key while the block runs::

            with client.slot(["org:acme", "global"], ttl=30, wait=10) as s:
                work(fencing_token=s.fencing_token)

        Acquires on entry -- at once, or with ``wait`` seconds waiting its turn in the
        keys' queues -- raising :class:`LimitExceeded` when full (or when the wait
        ended first), renews in the background every ``ttl / 3``, releases on exit
        whatever the exit."""
        keys, lease_id, holder = self._slot_args(keys, lease_id, holder)
        return Slot(
            self,
            keys,
            ttl,
            lease_id=lease_id,
            holder=holder,
            failure_policy=failure_policy,
            wait=wait,
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
        return self._run(calls.set_limit(key, limit))

    def get_limit(self, key: str) -> LimitInfo:
        """A key's effective limit, its source (override/policy/default) and usage."""
        return self._run(calls.get_limit(key))

    # -- counters (the fixed windows of quorate.contrib.limits) --

    def counter_incr(self, key: str, expiry: float, amount: int = 1) -> Counter:
        """Add ``amount`` to ``key``'s counter, one Raft write; a key without a live
        counter starts at ``amount``, expiring ``expiry`` seconds after the cluster
        applies it. Retried on failover like every call: if an attempt was applied but
        its answer lost, the retry counts twice (a limiter then denies sooner, never
        later)."""
        return self._run(calls.counter_incr(key, expiry, amount))

    def counter(self, key: str) -> Counter:
        """``key``'s counter now (linearizable); value 0 when it has none."""
        return self._run(calls.counter(key))

    def clear_counter(self, key: str) -> bool:
        """Remove ``key``'s counter; False when it had no live one."""
        return self._run(calls.clear_counter(key))

    def list_limits(self, prefix: str = "", *, max: int | None = None) -> LimitList:
        """Overrides and keys in use under ``prefix``, each with its usage."""
        return self._run(calls.list_limits(prefix, max))

    def delete_limit(self, key: str) -> bool:
        """Remove a per-key override (the key falls back to its policy or default)."""
        return self._run(calls.delete_limit(key))

    def policies(self) -> Policies:
        return self._run(calls.policies())

    def put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        return self._run(calls.put_policy(name, spec))

    def delete_policy(self, name: str) -> bool:
        return self._run(calls.delete_policy(name))

    def put_tier(self, name: str, multiplier: float) -> Tier:
        return self._run(calls.put_tier(name, multiplier))

    def delete_tier(self, name: str) -> bool:
        return self._run(calls.delete_tier(name))

    def allowlist(self) -> Allowlist:
        """Every allowlist entry and the cluster's bound."""
        return self._run(calls.allowlist())

    def allow(self, entry: AllowEntry) -> AllowChange:
        """Add an allowlist entry (admin token): checks it matches pass uncharged."""
        return self._run(calls.allow(entry))

    def disallow(self, entry: AllowEntry) -> AllowChange:
        """Remove an allowlist entry (admin token); any form of the same CIDR works."""
        return self._run(calls.disallow(entry))

    def audit(self, since: int = 0, key: str = "", *, max: int | None = None) -> AuditTrail:
        """Admin changes after log index ``since`` whose key starts with ``key``
        (admin token), oldest first."""
        return self._run(calls.audit(since, key, max))

    def cluster(self) -> ClusterInfo:
        """The cluster as seen by whichever node answers."""
        return self._run(calls.cluster())


# ---------------------------------------------------------------------------------------
# The async client


class AsyncClient(_BaseClient[httpx.AsyncBaseTransport]):
    """The same surface as :class:`Client`, with coroutines. Use it from one event loop.

    With ``stream=True`` (see :class:`Client`) concurrent coroutines share the one
    decision stream, each request in flight on it at once, answered by id."""

    def _open(self, transport: httpx.AsyncBaseTransport | None, options: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(transport=transport, **options)
        # Background releases are kept referenced until done (asyncio holds tasks weakly).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stream = (
            AsyncStream(self._streams, self._headers, self._nodes.follow)
            if self._streams.enabled
            else None
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        # Let background releases finish first (each is bounded by its own deadline).
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.5)
        if self._stream is not None:
            await self._stream.aclose()
        await self._http.aclose()

    async def _run(self, call: Call[T], *, deadline: float | None = None) -> T:
        x = Exchange(self._nodes, self.failures, call, deadline)
        op = self._streams.op(call)
        while True:
            url, _ = x.next()
            try:
                answer = None
                if op is not None and self._stream is not None and x.body is not None:
                    answer = await self._stream.send(x.node, op, x.body, x.http_timeout)
                if answer is None:
                    answer = await self._http.request(
                        call.method, url, json=x.body, params=call.params, timeout=x.http_timeout
                    )
                x.answered(answer)
            except httpx.TransportError as e:
                # See Client._run: a lost stream answer is a lost HTTP answer.
                x.unreachable(e)
            if x.done:
                return x.outcome()
            if x.wait > 0:
                await asyncio.sleep(x.wait)  # backoff between rounds, bounded by the deadline

    def _release_in_background(self, lease_id: str) -> None:
        async def work() -> None:
            try:
                await self._run(calls.release(lease_id), deadline=min(self.deadline, 2.0))
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
        wait: float | None = None,
    ) -> Lease:
        """See :meth:`Client.acquire`."""
        return await self._run(self._acquire_call(keys, ttl, lease_id, holder, wait))

    async def release(self, lease_id: str, *, deadline: float | None = None) -> bool:
        return await self._run(calls.release(lease_id), deadline=deadline)

    async def renew(
        self, lease_id: str, ttl: float | None = None, *, deadline: float | None = None
    ) -> Renewal:
        return await self._run(calls.renew(lease_id, ttl), deadline=deadline)

    async def slots(self, key: str) -> SlotsInfo:
        return await self._run(calls.slots(key))

    def slot(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
        failure_policy: FailurePolicy | str | None = None,
        wait: float | None = None,
    ) -> AsyncSlot:
        """``async with client.slot(keys, ttl, wait=10) as s:`` -- see :meth:`Client.slot`."""
        keys, lease_id, holder = self._slot_args(keys, lease_id, holder)
        return AsyncSlot(
            self,
            keys,
            ttl,
            lease_id=lease_id,
            holder=holder,
            failure_policy=failure_policy,
            wait=wait,
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
        return await self._run(calls.set_limit(key, limit))

    async def get_limit(self, key: str) -> LimitInfo:
        return await self._run(calls.get_limit(key))

    async def counter_incr(self, key: str, expiry: float, amount: int = 1) -> Counter:
        return await self._run(calls.counter_incr(key, expiry, amount))

    async def counter(self, key: str) -> Counter:
        return await self._run(calls.counter(key))

    async def clear_counter(self, key: str) -> bool:
        return await self._run(calls.clear_counter(key))

    async def list_limits(self, prefix: str = "", *, max: int | None = None) -> LimitList:
        return await self._run(calls.list_limits(prefix, max))

    async def delete_limit(self, key: str) -> bool:
        return await self._run(calls.delete_limit(key))

    async def policies(self) -> Policies:
        return await self._run(calls.policies())

    async def put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        return await self._run(calls.put_policy(name, spec))

    async def delete_policy(self, name: str) -> bool:
        return await self._run(calls.delete_policy(name))

    async def put_tier(self, name: str, multiplier: float) -> Tier:
        return await self._run(calls.put_tier(name, multiplier))

    async def delete_tier(self, name: str) -> bool:
        return await self._run(calls.delete_tier(name))

    async def allowlist(self) -> Allowlist:
        return await self._run(calls.allowlist())

    async def allow(self, entry: AllowEntry) -> AllowChange:
        return await self._run(calls.allow(entry))

    async def disallow(self, entry: AllowEntry) -> AllowChange:
        return await self._run(calls.disallow(entry))

    async def audit(self, since: int = 0, key: str = "", *, max: int | None = None) -> AuditTrail:
        return await self._run(calls.audit(since, key, max))

    async def cluster(self) -> ClusterInfo:
        return await self._run(calls.cluster())
