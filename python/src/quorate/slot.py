"""Held concurrency slots: acquire, renew in the background, release on every path.

:class:`Slot` (threads) and :class:`AsyncSlot` (asyncio) are the objects behind
``client.slot(keys, ttl)`` and ``client.hold(lease_id, ttl)``. Both keep the same
state and follow the same rules, which are the point of the whole package:

- **All or nothing, once.** Entry acquires one slot on every key. The lease id is
  fixed when the slot object is made, so every retry inside the acquire (a timeout, a
  503 during an election) asks for *the same* lease and cannot double-book.
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
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import LeaseLost, LeaseNotFound, QuorateError, Unavailable
from .types import Lease

if TYPE_CHECKING:
    # Client and AsyncClient are named (quoted) in the flavours' base classes.
    from .client import (
        AsyncClient,  # noqa: F401
        Client,  # noqa: F401
        FailurePolicy,
        _BaseClient,
    )

__all__ = ["AsyncSlot", "Slot"]

logger = logging.getLogger("quorate")

#: The shortest renewal interval, so a tiny TTL cannot turn into a busy loop.
_MIN_INTERVAL = 0.01

_C = TypeVar("_C", bound="_BaseClient[Any]")


class _SlotState(Generic[_C]):
    """What both slot flavours track and decide: the lease, its local deadline, when to
    renew, what a renewal's outcome means, whether to release. No I/O here; the
    flavours only call the client and run the renewer (a thread, a task)."""

    def __init__(
        self,
        client: _C,
        keys: Sequence[str],
        ttl: float,
        *,
        lease_id: str,
        holder: str,
        failure_policy: FailurePolicy | str | None = None,
        adopt: bool = False,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._client = client
        self.keys = list(keys)
        self.ttl = float(ttl)
        #: The lease id, fixed before the first attempt and reused by every retry.
        self.lease_id = lease_id
        self.holder = holder
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
        self._deadline = 0.0  # monotonic; see `lost`
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
    def lost(self) -> bool:
        """True once the lease is (or may be) gone; see the module docs."""
        if self._lost_reason is None and self._held and time.monotonic() > self._deadline:
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
        return self._deadline - time.monotonic()

    def raise_if_lost(self) -> None:
        """Raise :class:`~quorate.LeaseLost` if the lease is lost."""
        if self.lost:
            raise LeaseLost(f"lease {self.lease_id} lost: {self._lost_reason}")

    # -- acquire ----------------------------------------------------------------------

    def _needs_acquire(self) -> bool:
        return not (self._held or self.degraded)

    def _undecided(self, exc: Unavailable) -> None:
        """The acquire got no decision: go on degraded if the failure policy allows
        (never for an adopted lease), else raise."""
        if self._adopt or not self._client._fails_open(
            exc, f"slot {self.keys}", self._failure_policy
        ):
            raise exc
        self.degraded = True

    def _granted(self, started: float) -> None:
        self._held = True
        self._failed = False
        self._deadline = started + self.ttl

    # -- renewal ----------------------------------------------------------------------

    def _next_wait(self) -> float:
        if not self._failed:
            return self.interval
        # Retry sooner after a failure, but never past the deadline.
        return max(_MIN_INTERVAL, min(self.interval, self.remaining / 3))

    def _renew_budget(self) -> float:
        return max(0.05, self.remaining)

    def _renewed(self, started: float) -> bool:
        """Record a successful renewal; False (stop renewing) if the lease was lost
        meanwhile."""
        self._failed = False
        # A success that arrives after the deadline does not undo the loss: for a while
        # nobody could tell whether the lease was still ours.
        if self.lost:
            return False
        self._deadline = started + self.ttl
        self.renewals += 1
        return True

    def _renew_failed(self, exc: QuorateError) -> bool:
        """Record a failed renewal; False (stop renewing) when the lease is gone."""
        if isinstance(exc, LeaseNotFound):
            self._mark_lost("the cluster no longer has the lease (lease_not_found)")
            return False
        self._failed = True
        logger.warning("renewal of lease %s failed: %s", self.lease_id, exc)
        return True

    def _mark_lost(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
            logger.warning("lease %s lost: %s", self.lease_id, reason)

    # -- release ----------------------------------------------------------------------

    def _begin_release(self) -> bool:
        """True when there is a lease to release now (and it is no longer held)."""
        if not self._held or self._detached or self.released is not None:
            return False
        self._held = False
        return True

    def _release_deadline(self) -> float:
        return min(self._client.deadline, max(1.0, self.ttl))

    def _release_failed(self, exc: QuorateError) -> None:
        logger.warning("release of lease %s failed (it will expire): %s", self.lease_id, exc)

    def detach(self) -> str:
        """Hand the lease over: stop renewing, do not release on exit. Returns the id."""
        self._detached = True
        return self.lease_id


class Slot(_SlotState["Client"]):
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
        if not self._needs_acquire():
            return self
        started = time.monotonic()
        try:
            if self._adopt:
                self._client.renew(self.lease_id, self.ttl)  # LeaseNotFound if gone
            else:
                self.lease = self._client.acquire(
                    self.keys, self.ttl, lease_id=self.lease_id, holder=self.holder
                )
        except Unavailable as e:
            self._undecided(e)
            return self
        self._granted(started)
        self._thread = threading.Thread(
            target=self._renew_loop,
            args=(self._stop,),
            name=f"quorate-renew-{self.lease_id}",
            daemon=True,
        )
        self._thread.start()
        return self

    def _renew_loop(self, stop: threading.Event) -> None:
        # Event.wait is the timer; release() sets the event to stop at once.
        while not stop.wait(self._next_wait()):
            if self.lost:
                return
            started = time.monotonic()
            try:
                self._client.renew(self.lease_id, self.ttl, deadline=self._renew_budget())
            except QuorateError as e:
                if not self._renew_failed(e):
                    return
            else:
                if not self._renewed(started):
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
        if not self._begin_release():
            return self.released
        try:
            self.released = self._client.release(self.lease_id, deadline=self._release_deadline())
        except QuorateError as e:
            self._release_failed(e)
            return None
        return self.released

    def detach(self) -> str:
        super().detach()
        self._stop_renewing()
        return self.lease_id


class AsyncSlot(_SlotState["AsyncClient"]):
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
        if not self._needs_acquire():
            return self
        started = time.monotonic()
        try:
            if self._adopt:
                await self._client.renew(self.lease_id, self.ttl)
            else:
                self.lease = await self._client.acquire(
                    self.keys, self.ttl, lease_id=self.lease_id, holder=self.holder
                )
        except Unavailable as e:
            self._undecided(e)
            return self
        self._granted(started)
        self._task = asyncio.get_running_loop().create_task(
            self._renew_loop(), name=f"quorate-renew-{self.lease_id}"
        )
        return self

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._next_wait())  # the timer; cancelled on release
            if self.lost:
                return
            started = time.monotonic()
            try:
                await self._client.renew(self.lease_id, self.ttl, deadline=self._renew_budget())
            except QuorateError as e:
                if not self._renew_failed(e):
                    return
            else:
                if not self._renewed(started):
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
        if not self._begin_release():
            return self.released
        try:
            self.released = await self._client.release(
                self.lease_id, deadline=self._release_deadline()
            )
        except QuorateError as e:
            self._release_failed(e)
            return None
        return self.released

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
