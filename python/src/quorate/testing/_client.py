"""Fake clients: the surface of :class:`~quorate.Client` and
:class:`~quorate.AsyncClient`, answered by a :class:`FakeCluster` in memory.

Every public method of the real clients exists here with the same signature, result
types and exceptions (a test checks the surfaces match), so code under test takes a
fake where it would take a client. The calls run the real clients' client-side rules
(request building from :mod:`quorate._calls`, the :class:`~quorate.Failures` policy),
then ask the fake cluster instead of a node.

Slots are the real :class:`~quorate.Slot` / :class:`~quorate.AsyncSlot` (same flows,
same ``lost`` rules), on the fake clock: a held slot renews itself at a third of its
TTL through the clock's timers, so ``clock.advance(300)`` inside ``with
fake.slot(...)`` keeps the lease alive, while a lease taken with plain ``acquire``
expires. ``fake.available = False`` (on the :class:`FakeCluster`) makes every call
undecided, and renewals then fail until the lease is lost, as with a real outage.

A waiting acquire (``acquire(..., wait=5)``, ``slot(..., wait=5)``) queues in the fake
and blocks the calling thread (the sync client) or awaits (the async one) until the
fake grants it -- another thread or task releases, raises a limit, or advances the
clock past a lease's expiry -- or until its deadline passes on the fake clock, or
after ``wait`` real seconds, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from .. import _calls as calls
from ..errors import QuorateError, RateLimited, Unavailable
from ..failure import FailurePolicy, Failures
from ..slot import AsyncSlot, Slot, drive
from ..types import (
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
from ._clock import FakeClock
from ._cluster import FakeCluster

__all__ = ["FakeAsyncClient", "FakeClient"]

T = TypeVar("T")


class _FakeBase:
    """What both fake clients share: the cluster, the failure policy, the rules."""

    def __init__(
        self,
        cluster: FakeCluster | None = None,
        *,
        failure_policy: FailurePolicy | str = FailurePolicy.CLOSED,
        holder: str | None = None,
        timeout: float = 3.0,
        deadline: float = 10.0,
    ) -> None:
        #: The fake cluster answering this client (shared by the clients made on it).
        self.fake = cluster if cluster is not None else FakeCluster()
        self.nodes = ["fake://quorate"]
        self.timeout = timeout
        self.deadline = deadline
        self.failures = Failures(failure_policy)
        self.holder = holder or f"{socket.gethostname()}/pid-{os.getpid()}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} policy={self.failure_policy.value}>"

    @property
    def clock(self) -> FakeClock:
        return self.fake.clock

    @property
    def failure_policy(self) -> FailurePolicy:
        return self.failures.policy

    @property
    def fail_open_count(self) -> int:
        return self.failures.fail_open_count

    @property
    def unavailable_count(self) -> int:
        return self.failures.unavailable_count

    @property
    def leader_hint(self) -> str | None:
        """Always None: the fake has no nodes to route between."""
        return None

    def _decide(
        self, fn: Callable[[], T], undecided: Callable[[Unavailable], T] | None = None
    ) -> T:
        if not self.fake.available:
            self.failures.undecided()
            exc = Unavailable("no quorate node decided: the fake cluster is unavailable")
            if undecided is None:
                raise exc
            return undecided(exc)
        return fn()

    # -- the calls, once, for both flavours ------------------------------------------------

    def _acquire(
        self,
        keys: Sequence[str],
        ttl: float,
        lease_id: str | None,
        holder: str | None,
        wait: float | None,
    ) -> Lease:
        body = self._acquire_body(keys, ttl, lease_id, holder, wait)
        return self._decide(
            lambda: self.fake.acquire(
                body["keys"], ttl, body["lease_id"], body.get("holder", ""), wait
            )
        )

    def _acquire_body(
        self,
        keys: Sequence[str],
        ttl: float,
        lease_id: str | None,
        holder: str | None,
        wait: float | None,
    ) -> dict[str, Any]:
        """The request a real client would send (its client-side checks included)."""
        lid = lease_id or str(uuid.uuid4())
        return calls.acquire_body(keys, ttl, lid, holder or self.holder, wait)

    def _check_all(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        failure_policy: FailurePolicy | str | None,
        raise_on_limit: bool,
    ) -> RateDecision:
        as_list = calls.as_checks(checks)
        calls.rate_body(as_list)  # the client-side checks a real request gets

        def undecided(exc: Unavailable) -> RateDecision:
            if self.failures.fails_open(exc, "rate check", failure_policy):
                return RateDecision.fail_open(str(exc))
            raise exc

        decision = self._decide(lambda: self.fake.check_all(as_list), undecided)
        if raise_on_limit and not decision.allowed:
            raise RateLimited(decision.message or "rate limited", decision=decision)
        return decision

    def _slot_args(
        self, keys: Sequence[str], lease_id: str | None, holder: str | None
    ) -> tuple[list[str], str, str]:
        keys = [keys] if isinstance(keys, str) else keys
        return list(keys), lease_id or str(uuid.uuid4()), holder or self.holder


class FakeClient(_FakeBase):
    """The surface of :class:`~quorate.Client`, answered in memory.

    ``FakeClient()`` makes its own :class:`FakeCluster`; pass one to share it between
    clients (two "processes" of one app, a sync and an async client)."""

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def acquire(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
        wait: float | None = None,
    ) -> Lease:
        return self._acquire(keys, ttl, lease_id, holder, wait)

    def release(self, lease_id: str, *, deadline: float | None = None) -> bool:
        return self._decide(lambda: self.fake.release(lease_id))

    def renew(
        self, lease_id: str, ttl: float | None = None, *, deadline: float | None = None
    ) -> Renewal:
        return self._decide(lambda: self.fake.renew(lease_id, ttl))

    def slots(self, key: str) -> SlotsInfo:
        return self._decide(lambda: self.fake.slots(key))

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
        keys, lease_id, holder = self._slot_args(keys, lease_id, holder)
        return _FakeSlot(
            self,
            keys,
            ttl,
            lease_id=lease_id,
            holder=holder,
            failure_policy=failure_policy,
            clock=self.clock,
            wait=wait,
        )

    def hold(self, lease_id: str, ttl: float = 60.0) -> Slot:
        return _FakeSlot(
            self, [], ttl, lease_id=lease_id, holder=self.holder, adopt=True, clock=self.clock
        )

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
        check = RateCheck(key, policy, tier, cost, limit, period, burst)
        return self._check_all([check], failure_policy, raise_on_limit)

    def check_all(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        *,
        failure_policy: FailurePolicy | str | None = None,
        raise_on_limit: bool = False,
    ) -> RateDecision:
        return self._check_all(checks, failure_policy, raise_on_limit)

    def set_limit(self, key: str, limit: int) -> int:
        return self._decide(lambda: self.fake.set_limit(key, limit))

    def get_limit(self, key: str) -> LimitInfo:
        return self._decide(lambda: self.fake.get_limit(key))

    def counter_incr(self, key: str, expiry: float, amount: int = 1) -> Counter:
        return self._decide(lambda: self.fake.counter_incr(key, expiry, amount))

    def counter(self, key: str) -> Counter:
        return self._decide(lambda: self.fake.counter(key))

    def clear_counter(self, key: str) -> bool:
        return self._decide(lambda: self.fake.clear_counter(key))

    def list_limits(self, prefix: str = "", *, max: int | None = None) -> LimitList:
        return self._decide(lambda: self.fake.list_limits(prefix, max))

    def delete_limit(self, key: str) -> bool:
        return self._decide(lambda: self.fake.delete_limit(key))

    def policies(self) -> Policies:
        return self._decide(self.fake.policies)

    def put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        return self._decide(lambda: self.fake.put_policy(name, spec))

    def delete_policy(self, name: str) -> bool:
        return self._decide(lambda: self.fake.delete_policy(name))

    def put_tier(self, name: str, multiplier: float) -> Tier:
        return self._decide(lambda: self.fake.put_tier(name, multiplier))

    def delete_tier(self, name: str) -> bool:
        return self._decide(lambda: self.fake.delete_tier(name))

    def allowlist(self) -> Allowlist:
        return self._decide(self.fake.allowlist)

    def allow(self, entry: AllowEntry) -> AllowChange:
        return self._decide(lambda: self.fake.allow(entry))

    def disallow(self, entry: AllowEntry) -> AllowChange:
        return self._decide(lambda: self.fake.disallow(entry))

    def audit(self, since: int = 0, key: str = "", *, max: int | None = None) -> AuditTrail:
        return self._decide(lambda: self.fake.audit(since, key, max))

    def cluster(self) -> ClusterInfo:
        return self._decide(self.fake.cluster)


class FakeAsyncClient(_FakeBase):
    """The surface of :class:`~quorate.AsyncClient`, answered in memory."""

    def __init__(self, cluster: FakeCluster | None = None, **options: Any) -> None:
        super().__init__(cluster, **options)
        # Renewals run from the clock's timers, which are not coroutines: they go
        # through a sync twin sharing this client's cluster and failure policy.
        self._twin = FakeClient(self.fake, holder=self.holder)
        self._twin.failures = self.failures

    async def __aenter__(self) -> FakeAsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pass

    async def acquire(
        self,
        keys: Sequence[str],
        ttl: float = 60.0,
        *,
        lease_id: str | None = None,
        holder: str | None = None,
        wait: float | None = None,
    ) -> Lease:
        if not wait:
            return self._acquire(keys, ttl, lease_id, holder, wait)
        body = self._acquire_body(keys, ttl, lease_id, holder, wait)
        joined = self._decide(
            lambda: self.fake._join(
                body["keys"], ttl, body["lease_id"], body.get("holder", ""), wait
            )
        )
        if isinstance(joined, Lease):
            return joined
        # Awaited, not blocking the loop: the fake wakes the future when it decides
        # (from whichever thread or task freed the slot or moved the clock).
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def resolve() -> None:
            if not woken.done():
                woken.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(resolve)

        joined.watchers.append(wake)
        if joined.done.is_set():
            wake()
        try:
            await asyncio.wait_for(woken, joined.wait_s)
        except asyncio.TimeoutError:
            pass  # the wait ran out in real time: leave below
        except BaseException:
            # Cancelled (the client went away): the waiter leaves the queue.
            with contextlib.suppress(QuorateError):
                self.fake._leave(joined)
            raise
        return self.fake._leave(joined)

    async def release(self, lease_id: str, *, deadline: float | None = None) -> bool:
        return self._twin.release(lease_id)

    async def renew(
        self, lease_id: str, ttl: float | None = None, *, deadline: float | None = None
    ) -> Renewal:
        return self._twin.renew(lease_id, ttl)

    async def slots(self, key: str) -> SlotsInfo:
        return self._twin.slots(key)

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
        keys, lease_id, holder = self._slot_args(keys, lease_id, holder)
        return _FakeAsyncSlot(
            self,
            keys,
            ttl,
            lease_id=lease_id,
            holder=holder,
            failure_policy=failure_policy,
            clock=self.clock,
            wait=wait,
        )

    def hold(self, lease_id: str, ttl: float = 60.0) -> AsyncSlot:
        return _FakeAsyncSlot(
            self, [], ttl, lease_id=lease_id, holder=self.holder, adopt=True, clock=self.clock
        )

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
        return self._check_all([check], failure_policy, raise_on_limit)

    async def check_all(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        *,
        failure_policy: FailurePolicy | str | None = None,
        raise_on_limit: bool = False,
    ) -> RateDecision:
        return self._check_all(checks, failure_policy, raise_on_limit)

    async def set_limit(self, key: str, limit: int) -> int:
        return self._twin.set_limit(key, limit)

    async def get_limit(self, key: str) -> LimitInfo:
        return self._twin.get_limit(key)

    async def counter_incr(self, key: str, expiry: float, amount: int = 1) -> Counter:
        return self._twin.counter_incr(key, expiry, amount)

    async def counter(self, key: str) -> Counter:
        return self._twin.counter(key)

    async def clear_counter(self, key: str) -> bool:
        return self._twin.clear_counter(key)

    async def list_limits(self, prefix: str = "", *, max: int | None = None) -> LimitList:
        return self._twin.list_limits(prefix, max=max)

    async def delete_limit(self, key: str) -> bool:
        return self._twin.delete_limit(key)

    async def policies(self) -> Policies:
        return self._twin.policies()

    async def put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        return self._twin.put_policy(name, spec)

    async def delete_policy(self, name: str) -> bool:
        return self._twin.delete_policy(name)

    async def put_tier(self, name: str, multiplier: float) -> Tier:
        return self._twin.put_tier(name, multiplier)

    async def delete_tier(self, name: str) -> bool:
        return self._twin.delete_tier(name)

    async def allowlist(self) -> Allowlist:
        return self._twin.allowlist()

    async def allow(self, entry: AllowEntry) -> AllowChange:
        return self._twin.allow(entry)

    async def disallow(self, entry: AllowEntry) -> AllowChange:
        return self._twin.disallow(entry)

    async def audit(self, since: int = 0, key: str = "", *, max: int | None = None) -> AuditTrail:
        return self._twin.audit(since, key, max=max)

    async def cluster(self) -> ClusterInfo:
        return self._twin.cluster()


# ---------------------------------------------------------------------------------------
# Slots renewed by the fake clock's timers


def _clock(slot: Slot | AsyncSlot) -> FakeClock:
    """The fake clock a fake slot was made with (its ``clock``)."""
    return cast(FakeClock, slot._clock)


class _FakeSlot(Slot):
    """A :class:`~quorate.Slot` whose renewer is a timer on the fake clock."""

    _timer: int | None = None

    def _start_renewer(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        self._timer = _clock(self).call_later(self._next_wait(), self._renew_now)

    def _renew_now(self) -> None:
        self._timer = None
        if drive(self._renew_flow(), self._client):
            self._schedule()

    def _stop_renewing(self) -> None:
        if self._timer is not None:
            _clock(self).cancel(self._timer)
            self._timer = None


class _FakeAsyncSlot(AsyncSlot):
    """An :class:`~quorate.AsyncSlot` whose renewer is a timer on the fake clock."""

    _timer: int | None = None

    def _start_renewer(self) -> None:
        self._schedule()

    def _fake(self) -> FakeAsyncClient:
        assert isinstance(self._client, FakeAsyncClient)
        return self._client

    def _schedule(self) -> None:
        self._timer = _clock(self).call_later(self._next_wait(), self._renew_now)

    def _renew_now(self) -> None:
        self._timer = None
        if drive(self._renew_flow(), self._fake()._twin):
            self._schedule()

    def _cancel(self) -> None:
        if self._timer is not None:
            _clock(self).cancel(self._timer)
            self._timer = None

    async def _stop_renewing(self) -> None:
        self._cancel()

    def detach(self) -> str:
        self._detached = True
        self._cancel()
        return self.lease_id
