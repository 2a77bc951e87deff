"""Held concurrency slots: acquire, renew in the background, release on every path.

:class:`Slot` (threads) and :class:`AsyncSlot` (asyncio) are the objects behind
``client.slot(keys, ttl)`` and ``client.hold(lease_id, ttl)``. Both keep the same
state and follow the same rules, which are the point of the whole package:

- **All or nothing, once.** Entry acquires one slot on every key. The lease id is
  fixed when the slot object is made, so every retry inside the acquire (a timeout, a
  503 during an election) asks for *the same* lease and cannot double-book.
- **Waiting counts from the grant.** With ``wait``, entry may wait in the keys'
  queues before its grant; the local deadline starts at the earliest moment the
  grant can have been made (the request's start plus the ``waited`` the cluster
  reports), not at the request's start, so a long wait does not eat the TTL.
- **Renewed at a third of the TTL.** Two renewals can fail before the lease is at
  risk; a failed renewal is retried sooner, never later than the lease's own deadline.
- **Lost is explicit.** ``lost`` turns true when a renewal answers
  ``lease_not_found`` (the cluster expired it, e.g. after the holder stalled), *or* when
  the local deadline -- the start of the last successful renewal (or of the acquire)
  plus the TTL -- passes without a successful renewal: from then on the cluster may
  have handed the slot to someone else, whatever the network says later. Once lost,
  always lost. Check it between steps of long work, or call ``raise_if_lost()``; give
  ``fencing_token`` to downstream systems so they can reject a stale holder anyway.
- **Released on exit, whatever the exit** (return, exception, cancellation,
  KeyboardInterrupt). A release that fails is logged, not raised: the lease expires by
  itself after its TTL, and raising from ``__exit__`` would hide the original error.
- ``detach()`` hands the lease over (to a background job that will ``hold()`` it):
  renewal stops and exit no longer releases.

Shape: a slot never imports a client. It is typed against :class:`SlotBackend` /
:class:`AsyncSlotBackend` (acquire, renew, release, a time budget and the
:class:`~quorate.failure.Failures` policy), which the real clients and the fakes of
:mod:`quorate.testing` satisfy. Each step is written once, as a generator that yields
the call to make and receives its result -- the flow of httpx's ``Auth.auth_flow`` --
and the two flavours only drive it (blocking or awaited) and run the renewer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from .errors import LeaseLost, LeaseNotFound, QuorateError, Unavailable
from .failure import FailurePolicy, Failures
from .types import Lease, Renewal

__all__ = ["AsyncSlot", "AsyncSlotBackend", "Slot", "SlotBackend"]

logger = logging.getLogger("quorate")

#: The shortest renewal interval, so a tiny TTL cannot turn into a busy loop.
_MIN_INTERVAL = 0.01


# ---------------------------------------------------------------------------------------
# What a slot needs from its client


class _Budget(Protocol):
    """The time budget and failure policy a slot reads from its client."""

    @property
    def timeout(self) -> float: ...

    @property
    def deadline(self) -> float: ...

    @property
    def failures(self) -> Failures: ...


class SlotBackend(_Budget, Protocol):
    """What :class:`Slot` calls: :class:`~quorate.Client` and
    :class:`~quorate.testing.FakeClient` both satisfy it."""

    def acquire(
        self,
        keys: Sequence[str],
        ttl: float = ...,
        *,
        lease_id: str | None = ...,
        holder: str | None = ...,
        wait: float | None = ...,
    ) -> Lease: ...

    def renew(
        self, lease_id: str, ttl: float | None = ..., *, deadline: float | None = ...
    ) -> Renewal: ...

    def release(self, lease_id: str, *, deadline: float | None = ...) -> bool: ...


class AsyncSlotBackend(_Budget, Protocol):
    """What :class:`AsyncSlot` awaits: :class:`~quorate.AsyncClient` and
    :class:`~quorate.testing.FakeAsyncClient` both satisfy it."""

    async def acquire(
        self,
        keys: Sequence[str],
        ttl: float = ...,
        *,
        lease_id: str | None = ...,
        holder: str | None = ...,
        wait: float | None = ...,
    ) -> Lease: ...

    async def renew(
        self, lease_id: str, ttl: float | None = ..., *, deadline: float | None = ...
    ) -> Renewal: ...

    async def release(self, lease_id: str, *, deadline: float | None = ...) -> bool: ...


# ---------------------------------------------------------------------------------------
# The calls a slot makes, as values its flows yield (httpx's auth-flow shape)


@dataclass(frozen=True)
class _Acquire:
    keys: list[str]
    ttl: float
    lease_id: str
    holder: str
    wait: float | None = None


@dataclass(frozen=True)
class _Renew:
    lease_id: str
    ttl: float
    deadline: float | None


@dataclass(frozen=True)
class _Release:
    lease_id: str
    deadline: float


#: A call a slot step makes. A step (``_enter_flow``, ``_renew_flow``,
#: ``_release_flow``) yields these, is sent their results (or thrown their errors)
#: and returns what it decided; :func:`drive` and :func:`adrive` run it.
_Op = _Acquire | _Renew | _Release
_R = TypeVar("_R")
_B = TypeVar("_B", bound=_Budget)


def _perform(backend: SlotBackend, op: _Op) -> Any:
    if isinstance(op, _Acquire):
        return backend.acquire(
            op.keys, op.ttl, lease_id=op.lease_id, holder=op.holder, wait=op.wait
        )
    if isinstance(op, _Renew):
        return backend.renew(op.lease_id, op.ttl, deadline=op.deadline)
    return backend.release(op.lease_id, deadline=op.deadline)


async def _aperform(backend: AsyncSlotBackend, op: _Op) -> Any:
    if isinstance(op, _Acquire):
        return await backend.acquire(
            op.keys, op.ttl, lease_id=op.lease_id, holder=op.holder, wait=op.wait
        )
    if isinstance(op, _Renew):
        return await backend.renew(op.lease_id, op.ttl, deadline=op.deadline)
    return await backend.release(op.lease_id, deadline=op.deadline)


def drive(flow: Generator[_Op, Any, _R], backend: SlotBackend) -> _R:
    """Run a flow to its end with blocking calls (errors are thrown into the flow)."""
    try:
        op = next(flow)
        while True:
            try:
                result = _perform(backend, op)
            except QuorateError as e:
                op = flow.throw(e)
            else:
                op = flow.send(result)
    except StopIteration as stop:
        value: _R = stop.value
        return value


async def adrive(flow: Generator[_Op, Any, _R], backend: AsyncSlotBackend) -> _R:
    """Run a flow to its end with awaited calls."""
    try:
        op = next(flow)
        while True:
            try:
                result = await _aperform(backend, op)
            except QuorateError as e:
                op = flow.throw(e)
            else:
                op = flow.send(result)
    except StopIteration as stop:
        value: _R = stop.value
        return value


# ---------------------------------------------------------------------------------------
# The state and decisions both flavours share


class _SlotState(Generic[_B]):
    """What both slot flavours track and decide: the lease, its local deadline, when to
    renew, what a renewal's outcome means, whether to release. No I/O here: each step
    is a flow (a generator yielding the call to make); the flavours drive the flows
    against their client and run the renewer (a thread, a task)."""

    def __init__(
        self,
        client: _B,
        keys: Sequence[str],
        ttl: float,
        *,
        lease_id: str,
        holder: str,
        failure_policy: FailurePolicy | str | None = None,
        adopt: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wait: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if wait is not None and not wait >= 0:
            raise ValueError("wait must be a number of seconds >= 0")
        self._client = client
        self._clock = clock
        self.keys = list(keys)
        self.ttl = float(ttl)
        #: The lease id, fixed before the first attempt and reused by every retry.
        self.lease_id = lease_id
        self.holder = holder
        #: Seconds entry may wait in the keys' queues for a slot (``None``: no wait).
        self.wait = wait
        #: The grant (``None`` before entry, when adopted, or when failing open).
        self.lease: Lease | None = None
        #: True when the fail-open policy let the block run without a lease.
        self.degraded = False
        #: The server's answer to the release (``None`` until released).
        self.released: bool | None = None
        self._failure_policy = failure_policy
        self._adopt = adopt
        self._held = False
        self._detached = False
        self._lost_reason: str | None = None
        self._deadline = 0.0  # on `clock`; see `lost`
        self._failed = False  # the last renewal failed: retry sooner
        self.renewals = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} lease_id={self.lease_id!r} keys={self.keys} "
            f"held={self._held} lost={self.lost} degraded={self.degraded}>"
        )

    @property
    def fencing_token(self) -> int | None:
        """The grant's fencing token; ``None`` when adopted or failing open."""
        return None if self.lease is None else self.lease.fencing_token

    @property
    def interval(self) -> float:
        return max(_MIN_INTERVAL, self.ttl / 3)

    @property
    def held(self) -> bool:
        """True from a successful entry until release or detach."""
        return self._held and not self._detached

    @property
    def lost(self) -> bool:
        """True once the lease is (or may be) gone; see the module docs."""
        if self._lost_reason is None and self._held and self._clock() > self._deadline:
            self._lost_reason = "no successful renewal before the lease's deadline"
            logger.warning("lease %s lost: %s", self.lease_id, self._lost_reason)
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        _ = self.lost
        return self._lost_reason

    @property
    def remaining(self) -> float:
        """Seconds until the local deadline (negative once passed)."""
        return self._deadline - self._clock()

    def raise_if_lost(self) -> None:
        """Raise :class:`~quorate.LeaseLost` if the lease is lost."""
        if self.lost:
            raise LeaseLost(f"lease {self.lease_id} lost: {self._lost_reason}")

    # -- flows: one step each, no I/O ----------------------------------------------------

    def _enter_flow(self) -> Generator[_Op, Any, bool]:
        """Acquire (or, adopting, confirm) the lease. True: held, start renewing."""
        if self._held or self.degraded:
            return False
        started = self._clock()
        try:
            if self._adopt:
                yield _Renew(self.lease_id, self.ttl, None)  # LeaseNotFound if gone
            else:
                self.lease = yield _Acquire(
                    self.keys, self.ttl, self.lease_id, self.holder, self.wait
                )
        except Unavailable as e:
            # No decision: go on degraded if the failure policy allows (never for an
            # adopted lease), else raise.
            what = f"slot {self.keys}"
            if self._adopt or not self._client.failures.fails_open(e, what, self._failure_policy):
                raise
            self.degraded = True
            return False
        self._held = True
        self._failed = False
        # The grant came no sooner than `waited` after the request left (the server
        # counts from its arrival): its TTL runs from there. Less a millisecond, in
        # case the server rounded `waited_ms` up.
        waited = 0.0 if self.lease is None else max(self.lease.waited - 0.001, 0.0)
        self._deadline = started + waited + self.ttl
        return True

    def _next_wait(self) -> float:
        """Seconds until the next renewal."""
        if not self._failed:
            return self.interval
        # Retry sooner after a failure, but never past the deadline.
        return max(_MIN_INTERVAL, min(self.interval, self.remaining / 3))

    def _renew_flow(self) -> Generator[_Op, Any, bool]:
        """One renewal. False: stop renewing (lost, or gone)."""
        if self.lost:
            return False
        started = self._clock()
        try:
            yield _Renew(self.lease_id, self.ttl, max(0.05, self.remaining))
        except LeaseNotFound:
            self._mark_lost("the cluster no longer has the lease (lease_not_found)")
            return False
        except QuorateError as e:
            self._failed = True
            logger.warning("renewal of lease %s failed: %s", self.lease_id, e)
            return True
        self._failed = False
        # A success that arrives after the deadline does not undo the loss: for a while
        # nobody could tell whether the lease was still ours. (`lost_reason`, not
        # `lost`: the same test, re-read after the call.)
        if self.lost_reason is not None:
            return False
        self._deadline = started + self.ttl
        self.renewals += 1
        return True

    def _release_flow(self) -> Generator[_Op, Any, bool | None]:
        """Release the lease if held (once); the server's answer, or ``None`` when
        there was nothing to release or the release failed (it will expire)."""
        if not self._held or self._detached or self.released is not None:
            return self.released
        self._held = False
        try:
            deadline = min(self._client.deadline, max(1.0, self.ttl))
            self.released = yield _Release(self.lease_id, deadline)
        except QuorateError as e:
            logger.warning("release of lease %s failed (it will expire): %s", self.lease_id, e)
            return None
        return self.released

    def _mark_lost(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
            logger.warning("lease %s lost: %s", self.lease_id, reason)

    def detach(self) -> str:
        """Hand the lease over: stop renewing, do not release on exit. Returns the id."""
        self._detached = True
        return self.lease_id


class Slot(_SlotState[SlotBackend]):
    """A held slot for blocking code; see the module docs. Made by ``Client.slot``."""

    _thread: threading.Thread | None = None

    @cached_property
    def _stop(self) -> threading.Event:
        """Set to stop the renewer (its timer: it waits on this event)."""
        return threading.Event()

    def __enter__(self) -> Slot:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> Slot:
        """Acquire (or, for ``hold()``, confirm) the lease and start renewing it."""
        if drive(self._enter_flow(), self._client):
            self._start_renewer()
        return self

    def _start_renewer(self) -> None:
        self._thread = threading.Thread(
            target=self._renew_loop,
            args=(self._stop,),
            name=f"quorate-renew-{self.lease_id}",
            daemon=True,
        )
        self._thread.start()

    def _renew_loop(self, stop: threading.Event) -> None:
        # Event.wait is the timer; release() sets the event to stop at once.
        while not stop.wait(self._next_wait()):
            if not drive(self._renew_flow(), self._client):
                return

    def _stop_renewing(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            # Bounded: one renew attempt is bounded by the lease's remaining time.
            t.join(timeout=self._client.timeout + 1.0)

    def release(self) -> bool | None:
        """Stop renewing and release the lease now (idempotent). Returns the server's
        answer, or ``None`` when there was nothing to release or the release failed."""
        self._stop_renewing()
        return drive(self._release_flow(), self._client)

    def detach(self) -> str:
        super().detach()
        self._stop_renewing()
        return self.lease_id


class AsyncSlot(_SlotState[AsyncSlotBackend]):
    """A held slot for asyncio code; see the module docs. Made by ``AsyncClient.slot``."""

    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncSlot:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    async def acquire(self) -> AsyncSlot:
        """Acquire (or, for ``hold()``, confirm) the lease and start renewing it."""
        if await adrive(self._enter_flow(), self._client):
            self._start_renewer()
        return self

    def _start_renewer(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._renew_loop(), name=f"quorate-renew-{self.lease_id}"
        )

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._next_wait())  # the timer; cancelled on release
            if not await adrive(self._renew_flow(), self._client):
                return

    async def _stop_renewing(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # asyncio.wait, not `await task`: it does not re-raise the renewer's
            # CancelledError, so a cancellation of *this* coroutine still propagates.
            await asyncio.wait({task})

    async def release(self) -> bool | None:
        """Stop renewing and release the lease now (idempotent)."""
        await self._stop_renewing()
        return await adrive(self._release_flow(), self._client)

    async def adetach(self) -> str:
        """Hand the lease over and wait for the renewer to stop."""
        super().detach()
        await self._stop_renewing()
        return self.lease_id

    def detach(self) -> str:
        super().detach()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        return self.lease_id
