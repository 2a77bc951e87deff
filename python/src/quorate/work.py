"""Concurrency slots around work that outlives the request (seed 000).

The shape the seed needed: an API request starts a job for an organisation; at most
``N`` jobs may run per organisation and ``M`` in total. The request takes one slot on
``org:<id>`` *and* ``global`` in a single atomic step (no "eventually enforced" global
cap), hands the lease id to the background job, and answers at once. The job holds the
lease while it runs (renewing it) and releases it when it finishes -- on success, on
failure, on every path. If the job never starts (the queue is down), the request
releases it. If everything dies, the lease's TTL frees the slot::

    gate = WorkSlots(client, ttl=60)

    def deploy(request, org_id):
        try:
            with gate.admit(org_id, job_id=execution_id) as lease:
                queue.enqueue(run_job, lease_id=gate.lease_id(lease))  # raises? released
        except LimitExceeded as e:
            return too_many_requests(e.retry_after)        # 429 + Retry-After
        return accepted(execution_id)

    def run_job(lease_id):
        with gate.hold(lease_id):                            # renews; releases on exit
            do_the_work()

``admit`` raises :class:`~quorate.LimitExceeded` when either key is full -- or, with
``WorkSlots(..., wait=30)``, waits up to 30 s for its turn first: requests queue in
the order they asked (a released slot goes to the earliest, never to whoever polls
first), and only a wait that ends ungranted raises, with ``queue_position``. When the
cluster cannot decide, the client's failure policy applies: fail-closed raises
:class:`~quorate.Unavailable`; fail-open admits without a lease (``admit`` yields
``None`` and ``hold(None)`` is a no-op), logged and counted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from .client import Client
from .errors import QuorateError, Unavailable
from .failure import FailurePolicy
from .slot import Slot
from .types import Lease, SlotsInfo

__all__ = ["WorkSlots"]

logger = logging.getLogger("quorate")

P = ParamSpec("P")
R = TypeVar("R")


class WorkSlots:
    """Per-organisation plus global concurrency slots for background work."""

    def __init__(
        self,
        client: Client,
        *,
        ttl: float = 60.0,
        org_key: str = "org:{}",
        global_key: str | None = "global",
        failure_policy: FailurePolicy | str | None = None,
        wait: float | None = None,
    ) -> None:
        self.client = client
        self.ttl = ttl
        #: Seconds ``admit`` waits for a slot before it raises (``None``: no wait).
        self.wait = wait
        self.org_key = org_key
        self.global_key = global_key
        self.failure_policy = failure_policy

    def keys(self, org_id: object) -> list[str]:
        keys = [self.org_key.format(org_id)]
        if self.global_key:
            keys.append(self.global_key)
        return keys

    @contextlib.contextmanager
    def admit(
        self, org_id: object, *, job_id: str | None = None, holder: str | None = None
    ) -> Iterator[Lease | None]:
        """Take a slot on ``org:<id>`` and ``global`` for a job about to be handed off.

        If the block raises (the hand-off failed) the slot is released at once; if it
        completes, the lease now belongs to the job. ``job_id`` becomes the lease id,
        so a retried request for the same job cannot take a second slot (nor a second
        place in the queue). With :attr:`wait`, a full key is waited for, in turn."""
        try:
            lease: Lease | None = self.client.acquire(
                self.keys(org_id), self.ttl, lease_id=job_id, holder=holder, wait=self.wait
            )
        except Unavailable as e:
            if not self.client.failures.fails_open(
                e, f"work slot for {org_id}", self.failure_policy
            ):
                raise
            lease = None
        try:
            yield lease
        except BaseException:
            if lease is not None:
                self.release(lease.lease_id)
            raise

    @staticmethod
    def lease_id(lease: Lease | None) -> str | None:
        return None if lease is None else lease.lease_id

    def hold(self, lease_id: str | None) -> contextlib.AbstractContextManager[Slot | None]:
        """In the job: renew the lease while the block runs, release it on exit."""
        if lease_id is None:
            return contextlib.nullcontext()
        return self.client.hold(lease_id, self.ttl)

    def run(self, lease_id: str | None, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` holding the lease; released when it returns or raises."""
        with self.hold(lease_id):
            return fn(*args, **kwargs)

    def release(self, lease_id: str) -> bool:
        """Release now (idempotent); a failure is logged, the TTL frees the slot."""
        try:
            return self.client.release(lease_id)
        except QuorateError as e:
            logger.warning("release of %s failed (it will expire): %s", lease_id, e)
            return False

    def usage(self, org_id: object) -> list[SlotsInfo]:
        """Live usage of the organisation's key and the global key."""
        return [self.client.slots(k) for k in self.keys(org_id)]
