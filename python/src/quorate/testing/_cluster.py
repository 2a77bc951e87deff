"""The fake's state machine: quorate's decisions, in memory, on a fake clock.

:class:`FakeCluster` follows ``crates/core`` (``state.rs``, ``gcra.rs``,
``validate.rs``) and the HTTP layer's shaping of answers (``crates/server/src/http``)
closely enough that a test written against it passes against a real cluster -- the
shared behaviour tests (``python/tests/test_behaviour.py``) run one set of tests on
both. What it models:

- **Slots**: leases on 1..8 keys, all or nothing; a key's limit is its override, else
  the first concurrency policy whose pattern matches, else the default; an acquire
  with a live lease id on the same keys returns the original grant (same token), on
  other keys a :class:`~quorate.LeaseConflict`; a full key raises
  :class:`~quorate.LimitExceeded` with ``blocked_by``, usage and ``retry_after_ms``
  (when the soonest blocking lease expires); leases expire in cluster time.
- **Waiting acquires** (``wait``): a FIFO queue per key in arrival order; the
  earliest waiter first on each of its keys with room on all is granted (on a
  release, an expiry as the clock moves, a raised limit), nobody overtakes a waiter
  (a plain acquire on a key with waiters is denied), a retry of a waiting lease id
  keeps its place, and a wait that ends is answered as the server answers it
  (``queue_position``, every waited key in ``blocked_by``, a 1 s hint).
- **Rate checks**: GCRA in integer nanoseconds with results rounded up to whole
  milliseconds, exactly as ``gcra.rs``; named policies scaled by tier multipliers
  (thousandths, clamped to ``1..=max_limit``); up to 16 checks charged all or none;
  the top-level numbers and headers taken from the most restrictive result.
- **Admin**: overrides, concurrency and rate policies (one namespace), tiers.
- The same input rules and error classes (codes, statuses) as the server.

What it does not model: replication, elections, caps on state size, tokens and roles.
``available = False`` makes every call undecided (as a cluster without quorum), so a
test can exercise a client's failure policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import ipaddress
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _ratelimit_headers as ratelimit_headers
from ..errors import (
    ApiError,
    InvalidRequest,
    LeaseConflict,
    LeaseNotFound,
    LimitExceeded,
    PolicyNotFound,
)
from ..types import (
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
    Policy,
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
    to_ms,
)
from ._clock import FakeClock

if TYPE_CHECKING:
    from ._client import FakeAsyncClient, FakeClient

__all__ = ["FakeCluster"]

_NS_PER_MS = 1_000_000
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/@+=")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
MAX_KEYS = 8
#: The Retry-After hint of a wait that ended ungranted (the server's constant).
_WAIT_TIMEOUT_RETRY_MS = 1000
MAX_CHECKS = 16


_E = TypeVar("_E", bound=ApiError)


def _api(cls: type[_E], message: str) -> _E:
    """The exception a node's error body would become (same class, code, body)."""
    return cls(message, body={"error": cls.code, "message": message})


def _invalid(field: str, reason: str) -> InvalidRequest:
    return _api(InvalidRequest, f"invalid {field}: {reason}")


def _check_chars(field: str, s: str, max_len: int, ok: frozenset[str]) -> None:
    if not s:
        raise _invalid(field, "must not be empty")
    if len(s.encode()) > max_len:
        raise _invalid(field, f"longer than {max_len} bytes")
    for c in s:
        if c not in ok:
            raise _invalid(field, f"character {c!r} not allowed")


def _key(field: str, k: str) -> None:
    _check_chars(field, k, 256, _KEY_CHARS)


def _name(field: str, n: str) -> None:
    _check_chars(field, n, 64, _NAME_CHARS)


def _ceil_ms(ns: int) -> int:
    return -(-ns // _NS_PER_MS)


@dataclass
class _Lease:
    lease_id: str
    token: int
    keys: tuple[str, ...]
    holder: str
    expires_at_ms: int
    #: How long it waited in the queue before its grant (0: granted at once).
    waited_ms: int = 0


@dataclass
class _Waiter:
    """An acquire waiting in the queue of each of its keys (``_join``)."""

    lease_id: str
    keys: tuple[str, ...]
    holder: str
    ttl_ms: int
    #: Arrival order (the queue is FIFO across keys).
    seq: int
    queued_ms: int
    #: Cluster time at which it leaves the queue ungranted.
    deadline_ms: int
    #: Occupancy of its keys when it queued (what a timed-out answer reports).
    slots: tuple[SlotUsage, ...] = ()
    #: The wait in real seconds, after which the waiting client gives up regardless.
    wait_s: float = 0.0
    #: The grant or the denial, once decided (then ``done`` is set).
    outcome: Lease | LimitExceeded | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: Called (under the cluster's lock, so they must not block) once decided.
    watchers: list[Callable[[], None]] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class _Spec:
    limit: int
    period_ms: int
    burst: int


@dataclass(frozen=True)
class _Gcra:
    allowed: bool
    new_tat: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int


def _params(spec: _Spec) -> tuple[int, int]:
    """Emission interval and tolerance in ns (``gcra::Params::new``)."""
    emission = max(spec.period_ms * _NS_PER_MS // max(spec.limit, 1), 1)
    return emission, emission * max(spec.burst, 1)


def _decide(tat: int | None, now: int, spec: _Spec, cost: int) -> _Gcra:
    """``gcra::decide``: the decision for a check of ``cost`` on a bucket."""
    emission, tolerance = _params(spec)
    tat = max(now if tat is None else tat, now)
    new_tat = tat + cost * emission
    horizon = now + tolerance
    if new_tat <= horizon:
        return _Gcra(True, new_tat, (horizon - new_tat) // emission, _ceil_ms(new_tat - now), 0)
    return _Gcra(
        False,
        new_tat,
        max(horizon - tat, 0) // emission,
        _ceil_ms(tat - now),
        max(_ceil_ms(new_tat - horizon), 1),
    )


def _peek(tat: int | None, now: int, spec: _Spec) -> _Gcra:
    """``gcra::peek``: the state as it stands, uncharged."""
    emission, tolerance = _params(spec)
    tat = max(now if tat is None else tat, now)
    horizon = now + tolerance
    return _Gcra(True, tat, max(horizon - tat, 0) // emission, _ceil_ms(tat - now), 0)


class FakeCluster:
    """quorate's decisions in memory, on an injectable :class:`FakeClock`.

    ``policies`` and ``tiers`` seed the cluster as ``cluster.toml`` would
    (:meth:`from_config` reads one). Thread-safe: one lock around every operation,
    like the single Raft log it stands in for.
    """

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        policies: Mapping[str, Policy] | Iterable[tuple[str, Policy]] = (),
        tiers: Mapping[str, float] | None = None,
        default_limit: int = 10,
        max_limit: int = 1_000_000,
        default_ttl: float = 60.0,
        max_ttl: float = 24 * 3600.0,
        max_retry_after: float = 60.0,
        max_period: float = 7 * 24 * 3600.0,
        max_wait: float = 60.0,
    ) -> None:
        self.clock = clock or FakeClock()
        #: False: every call is undecided (:class:`~quorate.Unavailable`), as when
        #: the cluster has no quorum.
        self.available = True
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.default_ttl_ms = to_ms(default_ttl)
        self.max_ttl_ms = to_ms(max_ttl)
        self.max_retry_after_ms = to_ms(max_retry_after)
        self.max_period_ms = to_ms(max_period)
        #: The longest ``wait`` an acquire may ask for (``[limits] max_wait_ms``).
        self.max_wait_ms = to_ms(max_wait)
        self._lock = threading.RLock()
        self._now_ms = 0
        self._last_token = 0
        self._leases: dict[str, _Lease] = {}
        #: Waiting acquires by lease id, in arrival order (each key's queue is the
        #: waiters on it, in this order).
        self._waiters: dict[str, _Waiter] = {}
        self._seq = 0
        #: Cluster times at which a clock timer will wake the queue (``_arm``).
        self._armed: set[int] = set()
        self._overrides: dict[str, int] = {}
        self._concurrency: list[tuple[str, ConcurrencyPolicy]] = []
        self._rate_policies: dict[str, _Spec] = {}
        self._tiers: dict[str, int] = {}
        self._buckets: dict[str, int] = {}
        #: key -> (value, expires_at_ms), live while now < expires_at_ms.
        self._counters: dict[str, tuple[int, int]] = {}
        #: Allowlist entries (CIDRs canonical), and its bound (`[limits] max_allowlist`).
        self._allow: set[AllowEntry] = set()
        self.max_allowlist = 1000
        #: The admin changes made through this fake, oldest first (its own log index).
        self._audit: list[AuditRecord] = []
        self.audit_entries = 1000
        items = policies.items() if isinstance(policies, Mapping) else policies
        for name, spec in items:
            self.put_policy(name, spec)
        for name, m in (tiers or {}).items():
            self.put_tier(name, m)

    @classmethod
    def from_config(cls, path: str | Path, *, clock: FakeClock | None = None) -> FakeCluster:
        """A fake seeded from a ``cluster.toml``: its ``[[policies]]``, ``[tiers]`` and
        the ``[limits]`` it shares with the fake (default and max limit, TTLs)."""
        try:
            toml = importlib.import_module("tomllib")  # Python 3.11+
        except ModuleNotFoundError:
            toml = importlib.import_module("tomli")  # pip install tomli on 3.10
        conf: dict[str, Any] = toml.loads(Path(path).read_text())
        limits = conf.get("limits", {})
        policies: list[tuple[str, Policy]] = []
        for p in conf.get("policies", []):
            spec: Policy
            if p.get("kind") == "concurrency":
                spec = ConcurrencyPolicy(pattern=p["pattern"], limit=int(p["limit"]))
            else:
                burst = p.get("burst")
                spec = RatePolicy(int(p["limit"]), int(p["period_ms"]), burst)
            policies.append((str(p["name"]), spec))
        return cls(
            clock=clock,
            policies=policies,
            tiers={str(k): float(v) for k, v in conf.get("tiers", {}).items()},
            default_limit=int(limits.get("default_limit", 10)),
            max_limit=int(limits.get("max_limit", 1_000_000)),
            default_ttl=int(limits.get("default_ttl_ms", 60_000)) / 1000,
            max_ttl=int(limits.get("max_ttl_ms", 24 * 3600_000)) / 1000,
            max_wait=int(limits.get("max_wait_ms", 60_000)) / 1000,
        )

    def client(self, **options: Any) -> FakeClient:
        """A :class:`~quorate.testing.FakeClient` on this cluster (options as for the
        real client: ``failure_policy``, ``holder``, ``timeout``, ``deadline``)."""
        from ._client import FakeClient

        return FakeClient(self, **options)

    def async_client(self, **options: Any) -> FakeAsyncClient:
        """A :class:`~quorate.testing.FakeAsyncClient` on this cluster."""
        from ._client import FakeAsyncClient

        return FakeAsyncClient(self, **options)

    def advance(self, seconds: float) -> None:
        """Move the cluster's clock forward (held fake slots renew on the way)."""
        self.clock.advance(seconds)

    # -- time ---------------------------------------------------------------------------

    def _tick(self) -> int:
        """The decision's cluster time: the clock, never backwards."""
        self._now_ms = max(self._now_ms, self.clock.now_ms)
        return self._now_ms

    def _live(self, lease: _Lease, now: int) -> bool:
        return lease.expires_at_ms > now

    def _live_on(self, key: str, now: int) -> list[_Lease]:
        return [x for x in self._leases.values() if key in x.keys and self._live(x, now)]

    def _purge(self, now: int) -> None:
        for lid in [lid for lid, x in self._leases.items() if not self._live(x, now)]:
            del self._leases[lid]

    # -- limits -------------------------------------------------------------------------

    def _resolve_limit(self, key: str) -> tuple[int, str, str | None]:
        if key in self._overrides:
            return self._overrides[key], "override", None
        for name, p in self._concurrency:
            prefix = p.pattern.removesuffix("*")
            if key.startswith(prefix) if p.pattern.endswith("*") else p.pattern == key:
                return p.limit, "policy", name
        return self.default_limit, "default", None

    def _check_limit(self, field: str, limit: int) -> None:
        if not 1 <= limit <= self.max_limit:
            raise _invalid(field, f"must be in 1..={self.max_limit}")

    def _check_ttl(self, ttl_ms: int) -> None:
        if not 1 <= ttl_ms <= self.max_ttl_ms:
            raise _invalid("ttl_ms", f"must be in 1..={self.max_ttl_ms}")

    # -- slots --------------------------------------------------------------------------

    def _check_acquire(
        self, keys: Sequence[str], ttl_ms: int, lease_id: str, holder: str, wait_ms: int
    ) -> None:
        if not keys:
            raise _invalid("keys", "at least one key is required")
        if len(keys) > MAX_KEYS:
            raise _invalid("keys", f"at most {MAX_KEYS} keys per acquire")
        for i, k in enumerate(keys):
            _key("keys", k)
            if k in keys[:i]:
                raise _invalid("keys", f"duplicate key {k}")
        _check_chars("lease_id", lease_id, 128, _KEY_CHARS)
        if len(holder.encode()) > 256:
            raise _invalid("holder", "longer than 256 bytes")
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in holder):
            raise _invalid("holder", "control characters not allowed")
        self._check_ttl(ttl_ms)
        if not 0 <= wait_ms <= self.max_wait_ms:
            raise _invalid("wait_ms", f"must be in 0..={self.max_wait_ms}")

    def acquire(
        self,
        keys: Sequence[str],
        ttl: float | None,
        lease_id: str,
        holder: str = "",
        wait: float | None = None,
    ) -> Lease:
        """Acquire as the cluster decides it. With ``wait`` (seconds) and no room, the
        acquire queues and this call blocks the calling thread until the grant or the
        end of the wait -- see :meth:`_join` for when that is."""
        joined = self._join(keys, ttl, lease_id, holder, wait)
        if isinstance(joined, Lease):
            return joined
        try:
            joined.done.wait(joined.wait_s)
        except BaseException:
            # Interrupted: a waiter nobody waits for leaves (a grant made meanwhile
            # stays an ordinary lease and expires by its TTL, as on a cluster).
            with contextlib.suppress(ApiError):
                self._leave(joined)
            raise
        # Decided, or the wait ran out in real time: leave (a no-op when decided).
        return self._leave(joined)

    def _join(
        self,
        keys: Sequence[str],
        ttl: float | None,
        lease_id: str,
        holder: str = "",
        wait: float | None = None,
    ) -> Lease | _Waiter:
        """An acquire's immediate answer: the grant, a :class:`LimitExceeded` raised,
        or (with ``wait`` and no room) its place in the queue, a :class:`_Waiter`
        whose ``done`` is set when the fake decides it: a slot frees for it (a
        release, an expiry as the clock moves, a raised limit) or its deadline
        passes on the fake clock (a test's ``advance``). The waiting client gives up
        after ``wait`` real seconds too, as it would against a cluster whose time
        passes, so a test that neither frees a slot nor moves the clock still ends."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        ttl_ms = self.default_ttl_ms if ttl is None else to_ms(ttl)
        wait_ms = 0 if wait is None else to_ms(wait)
        with self._lock:
            now = self._tick()
            self._check_acquire(keys, ttl_ms, lease_id, holder, wait_ms)
            self._settle(now)
            live = self._leases.get(lease_id)
            if live is not None and self._live(live, now):
                if sorted(live.keys) != sorted(keys):
                    raise self._conflict(lease_id, live.keys, keys)
                return Lease(
                    lease_id,
                    live.token,
                    live.expires_at_ms,
                    self._usage(keys, now),
                    live.waited_ms,
                )
            queued = self._waiters.get(lease_id)
            if queued is not None:
                # A retry of a waiting acquire keeps its place; its deadline moves to
                # the retry's (as the cluster's AcquireWait). A plain acquire of a
                # waiting id is denied and leaves the waiter as it is.
                if sorted(queued.keys) != sorted(keys):
                    raise self._conflict(lease_id, queued.keys, keys)
                if wait_ms == 0:
                    raise self._denied(keys, now)
                queued.deadline_ms = now + wait_ms
                queued.wait_s = wait_ms / 1000
                joined: Lease | _Waiter = queued
            else:
                usage = self._usage(keys, now)
                # No room, or somebody already waiting on a key: no barging.
                blocked = [u for u in usage if u.used >= u.limit or self._queue(u.key)]
                if not blocked:
                    return self._grant(lease_id, keys, holder, ttl_ms, now, 0)
                if wait_ms == 0:
                    raise self._denied(keys, now)
                self._seq += 1
                joined = _Waiter(
                    lease_id, tuple(keys), holder, ttl_ms, self._seq, now, now + wait_ms, usage
                )
                joined.wait_s = wait_ms / 1000
                self._waiters[lease_id] = joined
        self._arm()
        return joined

    @staticmethod
    def _conflict(lease_id: str, held: Sequence[str], keys: Sequence[str]) -> LeaseConflict:
        return _api(
            LeaseConflict, f"lease {lease_id} is live on keys {list(held)}, not {list(keys)}"
        )

    def _grant(
        self, lease_id: str, keys: Sequence[str], holder: str, ttl_ms: int, now: int, waited: int
    ) -> Lease:
        usage = self._usage(keys, now)
        self._last_token += 1
        lease = _Lease(lease_id, self._last_token, tuple(keys), holder, now + ttl_ms, waited)
        self._leases[lease_id] = lease
        granted = tuple(SlotUsage(u.key, u.used + 1, u.limit) for u in usage)
        return Lease(lease_id, lease.token, lease.expires_at_ms, granted, waited)

    def _denied(self, keys: Sequence[str], now: int) -> LimitExceeded:
        """The 429 of an acquire that found no room on a key, or waiters there."""
        usage = self._usage(keys, now)
        blocked = [u for u in usage if u.used >= u.limit or self._queue(u.key)]
        retry = 0
        for u in usage:
            if u.used >= u.limit:
                # A slot frees when (used - limit + 1) leases have expired.
                ends = sorted(x.expires_at_ms for x in self._live_on(u.key, now))
                need = u.used - u.limit
                retry = max(retry, ends[need] - now if need < len(ends) else 1)
            ahead = self._queue(u.key)
            if ahead:
                # Blocked by the queue: at the latest, the soonest deadline ahead.
                retry = max(retry, min(w.deadline_ms for w in ahead) - now)
        retry = min(max(retry, 1), self.max_retry_after_ms)
        return self._limit_exceeded([u.key for u in blocked], usage, retry, None)

    def _timed_out(self, w: _Waiter) -> LimitExceeded:
        """The 429 of a wait that ended ungranted, as the server shapes it: every key
        it waited on, the usage when it queued, the place it had (its best over its
        keys), and a fixed one-second hint (a new wait joins the back of the queue:
        no lease expiry to point at)."""
        position = min(self._queue(k).index(w) + 1 for k in w.keys)
        return self._limit_exceeded(list(w.keys), w.slots, _WAIT_TIMEOUT_RETRY_MS, position)

    def _limit_exceeded(
        self, blocked: list[str], usage: Sequence[SlotUsage], retry: int, position: int | None
    ) -> LimitExceeded:
        message = f"no free slot on {', '.join(blocked)}"
        body: dict[str, Any] = {
            "error": "limit_exceeded",
            "message": message,
            "blocked_by": blocked,
            "slots": [{"key": u.key, "used": u.used, "limit": u.limit} for u in usage],
            "retry_after_ms": retry,
        }
        if position is not None:
            body["queue_position"] = position
        return LimitExceeded(
            message,
            blocked_by=list(blocked),
            slots=list(usage),
            retry_after_ms=retry,
            queue_position=position,
            body=body,
        )

    # -- the queue of waiting acquires ----------------------------------------------------

    def _queue(self, key: str) -> list[_Waiter]:
        """The waiters on ``key``, first first (the waiters dict is in arrival order)."""
        return [w for w in self._waiters.values() if key in w.keys]

    def _settle(self, now: int) -> None:
        """Decide what the queue's waiters have come to at ``now``: those past their
        deadline leave ungranted, then, earliest first, every waiter that is first on
        each of its keys and finds room on all of them is granted (all or nothing, no
        barging). One pass suffices: a grant frees nothing, it only moves the
        waiters behind it up."""
        self._purge(now)
        for w in [w for w in self._waiters.values() if w.deadline_ms <= now]:
            self._decide(w, self._timed_out(w))
        for w in list(self._waiters.values()):
            first = all(self._queue(k)[0] is w for k in w.keys)
            if first and all(u.used < u.limit for u in self._usage(w.keys, now)):
                # The server counts at least 1 ms for a grant that waited.
                waited = max(now - w.queued_ms, 1)
                self._decide(w, self._grant(w.lease_id, w.keys, w.holder, w.ttl_ms, now, waited))

    def _decide(self, w: _Waiter, outcome: Lease | LimitExceeded) -> None:
        del self._waiters[w.lease_id]
        w.outcome = outcome
        w.done.set()
        for wake in w.watchers:
            wake()

    def _leave(self, w: _Waiter) -> Lease:
        """The waiting client gave up (its wait ran out in real time, or it was
        interrupted): the waiter leaves the queue -- or, granted meanwhile, keeps
        the lease."""
        with self._lock:
            now = self._tick()
            self._settle(now)
            if self._waiters.get(w.lease_id) is w:
                self._decide(w, self._timed_out(w))
        self._arm()
        return self._outcome(w)

    @staticmethod
    def _outcome(w: _Waiter) -> Lease:
        if isinstance(w.outcome, LimitExceeded):
            raise w.outcome
        assert w.outcome is not None, "a waiter is decided before its outcome is read"
        return w.outcome

    def _arm(self) -> None:
        """Make sure the clock wakes the queue at its next event (a waiter's deadline,
        the expiry of a lease on a key with waiters). Called without the lock held:
        the clock runs timers under its own lock, which then take this one."""
        while True:
            with self._lock:
                now = self._tick()
                self._settle(now)
                events = [w.deadline_ms for w in self._waiters.values()]
                waited_on = {k for w in self._waiters.values() for k in w.keys}
                events += [
                    x.expires_at_ms for x in self._leases.values() if waited_on & set(x.keys)
                ]
                if not events:
                    return
                at = min(events)
                if self._armed and min(self._armed) <= at:
                    return  # an earlier wake-up re-arms when it runs
                self._armed.add(at)
            self.clock.call_at_ms(at, functools.partial(self._wake, at))
            if self.clock.now_ms < at:
                return
            # Another thread moved the clock past `at` before the timer was in: settle
            # now rather than at the next advance.

    def _wake(self, at: int) -> None:
        with self._lock:
            self._armed.discard(at)
        self._arm()

    def _usage(self, keys: Sequence[str], now: int) -> tuple[SlotUsage, ...]:
        return tuple(
            SlotUsage(k, len(self._live_on(k, now)), self._resolve_limit(k)[0]) for k in keys
        )

    def release(self, lease_id: str) -> bool:
        with self._lock:
            now = self._tick()
            _check_chars("lease_id", lease_id, 128, _KEY_CHARS)
            lease = self._leases.get(lease_id)
            if lease is None or not self._live(lease, now):
                return False
            del self._leases[lease_id]
            self._settle(now)  # the freed slot goes to the earliest waiter
        self._arm()
        return True

    def renew(self, lease_id: str, ttl: float | None = None) -> Renewal:
        ttl_ms = self.default_ttl_ms if ttl is None else to_ms(ttl)
        with self._lock:
            now = self._tick()
            _check_chars("lease_id", lease_id, 128, _KEY_CHARS)
            self._check_ttl(ttl_ms)
            lease = self._leases.get(lease_id)
            if lease is None or not self._live(lease, now):
                raise _api(
                    LeaseNotFound,
                    f"lease {lease_id} not found (expired, released or never granted)",
                )
            lease.expires_at_ms = now + ttl_ms
            return Renewal(lease_id, lease.expires_at_ms)

    def slots(self, key: str) -> SlotsInfo:
        with self._lock:
            now = self._tick()
            _key("key", key)
            self._settle(now)
            live = sorted(self._live_on(key, now), key=lambda x: x.token)
            queue = self._queue(key)
            return SlotsInfo(
                key,
                len(live),
                self._resolve_limit(key)[0],
                tuple(LeaseInfo(x.lease_id, x.holder, x.token, x.expires_at_ms) for x in live),
                QueueInfo(
                    len(queue),
                    tuple(
                        Waiter(i, w.holder, w.deadline_ms, w.keys, w.lease_id)
                        for i, w in enumerate(queue, 1)
                    ),
                ),
            )

    # -- rate limits --------------------------------------------------------------------

    def _resolve_rate(self, c: RateCheck) -> _Spec:
        if c.policy is not None:
            if c.limit is not None or c.period is not None or c.burst is not None:
                raise _api(
                    InvalidRequest,
                    "give either policy (and tier) or limit/period_ms/burst, not both",
                )
            spec = self._rate_policies.get(c.policy)
            if spec is None:
                raise _api(PolicyNotFound, f"no rate policy named {c.policy}")
            if c.tier is None:
                return spec
            m = self._tiers.get(c.tier)
            if m is None:
                raise _api(PolicyNotFound, f"no tier named {c.tier}")

            def scale(v: int) -> int:
                return min(max(v * m // 1000, 1), self.max_limit)

            return _Spec(scale(spec.limit), spec.period_ms, scale(spec.burst))
        if c.limit is None or c.period is None:
            raise _api(InvalidRequest, "a check needs policy, or both limit and period_ms")
        if c.tier is not None:
            raise _api(InvalidRequest, "tier applies only to a named policy")
        spec = _Spec(c.limit, to_ms(c.period), c.limit if c.burst is None else c.burst)
        self._check_spec(spec)
        return spec

    def _check_spec(self, spec: _Spec) -> None:
        self._check_limit("limit", spec.limit)
        self._check_limit("burst", spec.burst)
        if not 1 <= spec.period_ms <= self.max_period_ms:
            raise _invalid("period_ms", f"must be in 1..={self.max_period_ms}")

    def check_all(self, checks: Sequence[RateCheck]) -> RateDecision:
        """Charge every check or none; the decision as the HTTP API shapes it."""
        with self._lock:
            now_ms = self._tick()
            if not checks:
                raise _invalid("checks", "at least one check is required")
            if len(checks) > MAX_CHECKS:
                raise _invalid("checks", f"at most {MAX_CHECKS} checks per request")
            specs = []
            for i, c in enumerate(checks):
                _key("key", c.key)
                if any(o.key == c.key for o in checks[:i]):
                    raise _invalid("checks", f"duplicate key {c.key}")
                spec = self._resolve_rate(c)
                cost = 1 if c.cost is None else c.cost
                if not 1 <= cost <= spec.burst:
                    raise _invalid("cost", f"must be in 1..={spec.burst} (the burst)")
                specs.append((spec, cost))
            now = now_ms * _NS_PER_MS
            exempt = [self._allowlisted(c.policy, c.key) for c in checks]
            decisions = [
                _peek(self._buckets.get(c.key), now, spec)
                if ex
                else _decide(self._buckets.get(c.key), now, spec, cost)
                for c, (spec, cost), ex in zip(checks, specs, exempt, strict=True)
            ]
            allowed = all(d.allowed for d in decisions)
            results = []
            for c, (spec, _), d, ex in zip(checks, specs, decisions, exempt, strict=True):
                if ex:
                    # Allowed and not charged (`state/allowlist.rs`): the bucket as it is.
                    results.append(
                        RateResult(
                            c.key,
                            True,
                            spec.limit,
                            spec.period_ms,
                            spec.burst,
                            d.remaining,
                            d.reset_after_ms,
                            0,
                            allowlisted=True,
                        )
                    )
                    continue
                if allowed:
                    self._buckets[c.key] = d.new_tat
                    shown = d
                elif d.allowed:
                    shown = _peek(self._buckets.get(c.key), now, spec)
                else:
                    shown = d
                results.append(
                    RateResult(
                        c.key,
                        d.allowed,
                        spec.limit,
                        spec.period_ms,
                        spec.burst,
                        shown.remaining,
                        shown.reset_after_ms,
                        shown.retry_after_ms,
                    )
                )
            decision = _shape(checks, results, allowed)
            if any(exempt):
                decision = dataclasses.replace(decision, allowlisted=True)
            return decision

    # -- counters -----------------------------------------------------------------------

    def _counter(self, key: str, now: int) -> Counter:
        value, at = self._counters.get(key, (0, 0))
        if at <= now:
            return Counter(key, 0, None, 0)
        return Counter(key, value, at, at - now)

    def counter_incr(self, key: str, expiry: float, amount: int = 1) -> Counter:
        with self._lock:
            now = self._tick()
            _key("key", key)
            if amount < 1:
                raise _invalid("amount", "must be at least 1")
            expiry_ms = to_ms(expiry)
            if not 1 <= expiry_ms <= self.max_period_ms:
                raise _invalid("expiry_ms", f"must be in 1..={self.max_period_ms} (max_period_ms)")
            live = self._counter(key, now)
            if live.expires_at_ms is None:
                self._counters[key] = (amount, now + expiry_ms)
            else:
                self._counters[key] = (live.value + amount, live.expires_at_ms)
            return self._counter(key, now)

    def counter(self, key: str) -> Counter:
        with self._lock:
            now = self._tick()
            _key("key", key)
            return self._counter(key, now)

    def clear_counter(self, key: str) -> bool:
        with self._lock:
            now = self._tick()
            _key("key", key)
            live = self._counter(key, now).expires_at_ms is not None
            self._counters.pop(key, None)
            return live

    # -- admin --------------------------------------------------------------------------

    def set_limit(self, key: str, limit: int) -> int:
        with self._lock:
            _key("key", key)
            self._check_limit("limit", limit)
            before = self._overrides.get(key)
            self._overrides[key] = limit
            self._record("set_limit", f"limit:{key}", before, limit)
        self._arm()  # a raised limit grants waiters
        return limit

    def get_limit(self, key: str) -> LimitInfo:
        with self._lock:
            now = self._tick()
            _key("key", key)
            return self._limit_info(key, now)

    def _limit_info(self, key: str, now: int) -> LimitInfo:
        limit, source, policy = self._resolve_limit(key)
        used = len(self._live_on(key, now))
        return LimitInfo(key, limit, source, used, policy)  # type: ignore[arg-type]

    def delete_limit(self, key: str) -> bool:
        with self._lock:
            _key("key", key)
            before = self._overrides.pop(key, None)
            self._record("delete_limit", f"limit:{key}", before, None)
        self._arm()
        return before is not None

    def list_limits(self, prefix: str = "", max_rows: int | None = None) -> LimitList:
        with self._lock:
            now = self._tick()
            if prefix:
                _key("prefix", prefix)
            keys = {k for k in self._overrides if k.startswith(prefix)}
            for lease in self._leases.values():
                if self._live(lease, now):
                    keys.update(k for k in lease.keys if k.startswith(prefix))
            ordered = sorted(keys)
            cap = 1000 if max_rows is None else max_rows
            if not 1 <= cap <= 10_000:
                raise _api(InvalidRequest, "max must be in 1..=10000")
            return LimitList(
                tuple(self._limit_info(k, now) for k in ordered[:cap]), len(ordered) > cap
            )

    def policies(self) -> Policies:
        with self._lock:
            entries = [PolicyEntry(n, p) for n, p in self._concurrency]
            entries += [
                PolicyEntry(n, RatePolicy(s.limit, s.period_ms, s.burst))
                for n, s in sorted(self._rate_policies.items())
            ]
            tiers = tuple(Tier(n, m / 1000) for n, m in sorted(self._tiers.items()))
            return Policies(self.default_limit, tuple(entries), tiers)

    def put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        entry = self._put_policy(name, spec)
        self._arm()  # a raised concurrency limit grants waiters
        return entry

    def _put_policy(self, name: str, spec: Policy) -> PolicyEntry:
        with self._lock:
            _name("policy name", name)
            if isinstance(spec, ConcurrencyPolicy):
                if spec.pattern != "*":
                    _key("pattern", spec.pattern.removesuffix("*"))
                self._check_limit("limit", spec.limit)
                self._rate_policies.pop(name, None)
                for i, (n, _) in enumerate(self._concurrency):
                    if n == name:
                        self._concurrency[i] = (name, spec)
                        break
                else:
                    self._concurrency.append((name, spec))
                return PolicyEntry(name, spec)
            rate = _Spec(
                spec.limit, spec.period_ms, spec.limit if spec.burst is None else spec.burst
            )
            self._check_spec(rate)
            self._concurrency = [(n, p) for n, p in self._concurrency if n != name]
            self._rate_policies[name] = rate
            return PolicyEntry(name, RatePolicy(rate.limit, rate.period_ms, rate.burst))

    def delete_policy(self, name: str) -> bool:
        with self._lock:
            _name("policy name", name)
            before = len(self._concurrency)
            self._concurrency = [(n, p) for n, p in self._concurrency if n != name]
            deleted = self._rate_policies.pop(name, None) is not None or before != len(
                self._concurrency
            )
        self._arm()
        return deleted

    def put_tier(self, name: str, multiplier: float) -> Tier:
        milli = multiplier * 1000
        if not math.isfinite(milli) or not 1 <= milli <= 1_000_000:
            raise _api(InvalidRequest, "multiplier must be in 0.001..=1000")
        with self._lock:
            _name("tier name", name)
            before = self._tiers.get(name)
            self._tiers[name] = round(milli)
            self._record("put_tier", f"tier:{name}", before, self._tiers[name])
            return Tier(name, self._tiers[name] / 1000)

    def delete_tier(self, name: str) -> bool:
        with self._lock:
            _name("tier name", name)
            before = self._tiers.pop(name, None)
            self._record("delete_tier", f"tier:{name}", before, None)
            return before is not None

    # -- allowlist and audit trail ---------------------------------------------------------

    def _record(self, op: str, key: str, before: object, after: object) -> None:
        """Keep an admin change that changed something (the fake's before/after strings
        are its own shapes, not the cluster's)."""
        if before == after:
            return
        b = None if before is None else str(before)
        a = None if after is None else str(after)
        index = self._audit[-1].index + 1 if self._audit else 1
        self._audit.append(AuditRecord(index, self._now_ms, "open", op, key, b, a))
        del self._audit[: -self.audit_entries]

    def _canonical(self, entry: AllowEntry) -> AllowEntry:
        if entry.policy is not None:
            _name("policy", entry.policy)
        if entry.ip is None:
            glob = entry.key or ""
            if glob.replace("*", ""):  # `*` is the glob's own character
                _key("key", glob.replace("*", ""))
            return entry
        try:
            net = ipaddress.ip_network(entry.ip, strict=False)
        except ValueError:
            raise _invalid("ip", f"invalid address or CIDR {entry.ip!r}") from None
        return AllowEntry(ip=str(net), policy=entry.policy)

    def _allowlisted(self, policy: str | None, key: str) -> bool:
        addr = _key_addr(key)
        for e in self._allow:
            if e.policy is not None and e.policy != policy:
                continue
            if e.key is not None and _glob(e.key).fullmatch(key):
                return True
            if e.ip is not None and addr is not None:
                net = ipaddress.ip_network(e.ip)
                if net.version == addr.version and addr in net:
                    return True
        return False

    def allowlist(self) -> Allowlist:
        with self._lock:
            ordered = sorted(self._allow, key=lambda e: (e.policy or "", e.key or "", e.ip or ""))
            return Allowlist(tuple(ordered), self.max_allowlist)

    def allow(self, entry: AllowEntry) -> AllowChange:
        with self._lock:
            self._tick()
            e = self._canonical(entry)
            if e in self._allow:
                return AllowChange(e, False)
            if len(self._allow) >= self.max_allowlist:
                raise _invalid("entry", f"the allowlist is full ({self.max_allowlist} entries)")
            self._allow.add(e)
            self._record("allow", _allow_key(e), None, "allowed")
            return AllowChange(e, True)

    def disallow(self, entry: AllowEntry) -> AllowChange:
        with self._lock:
            self._tick()
            e = self._canonical(entry)
            changed = e in self._allow
            self._allow.discard(e)
            self._record("disallow", _allow_key(e), "allowed" if changed else None, None)
            return AllowChange(e, changed)

    def audit(self, since: int = 0, key: str = "", max_rows: int | None = None) -> AuditTrail:
        with self._lock:
            cap = 100 if max_rows is None else max_rows
            matching = [r for r in self._audit if r.index > since and r.key.startswith(key)]
            return AuditTrail(tuple(matching[:cap]), len(matching) > cap, self.audit_entries)

    def cluster(self) -> ClusterInfo:
        with self._lock:
            return ClusterInfo(
                node_id=1,
                leader_id=1,
                term=1,
                members=(Member(1, "fake:7101", "fake:7201"),),
                last_log_index=None,
                committed_index=None,
                applied_index=None,
                state_digest="",
                leader_api="http://fake:7101",
            )


def _key_addr(key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a key ends with: the whole key, or what follows one of its ``:``
    (``state/allowlist.rs`` ``key_addr``); an IPv4-mapped IPv6 address as IPv4."""
    for start in [0] + [i + 1 for i, ch in enumerate(key) if ch == ":"]:
        try:
            addr = ipaddress.ip_address(key[start:])
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        return addr
    return None


def _glob(pattern: str) -> re.Pattern[str]:
    """A key glob: ``*`` is any run of characters, everything else itself."""
    return re.compile(".*".join(re.escape(p) for p in pattern.split("*")), re.S)


def _allow_key(e: AllowEntry) -> str:
    scope = "global" if e.policy is None else f"policy={e.policy}"
    pattern = f"key:{e.key}" if e.key is not None else f"ip:{e.ip}"
    return f"allowlist:{scope}:{pattern}"


def _shape(checks: Sequence[RateCheck], results: list[RateResult], allowed: bool) -> RateDecision:
    """The HTTP API's answer (``http/api/rate.rs``): the most restrictive result speaks
    for the request, and the headers are the node's (:mod:`quorate._ratelimit_headers`)."""
    top = ratelimit_headers.top_result(results, allowed)
    headers = ratelimit_headers.fields(ratelimit_headers.names(checks), results, allowed)
    return RateDecision(
        allowed=allowed,
        limit=top.limit,
        remaining=top.remaining if allowed else 0,
        reset_after_ms=top.reset_after_ms,
        retry_after_ms=top.retry_after_ms,
        results=tuple(results),
        error=None if allowed else "rate_limited",
        message=None if allowed else f"rate limit exceeded on {top.key}",
        headers=headers,
    )
