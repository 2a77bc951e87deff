"""A clock that moves only when a test moves it.

:class:`FakeClock` counts integer nanoseconds (no float drift however many small
steps a test takes) from a wall-clock-like start, so ``expires_at_ms`` values look like
the cluster's (milliseconds since the epoch). It also keeps timers: ``call_later``
schedules a callback, and ``advance(seconds)`` moves time forward stopping at every
timer due on the way, in time order, with the clock set to the timer's instant when it
runs (as ``tokio::time::advance`` or a paused event loop would). The fake clients'
held slots renew themselves through these timers.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

__all__ = ["FakeClock"]

_NS = 1_000_000_000


class FakeClock:
    """Fake monotonic time. Calling it (or :meth:`now`) gives seconds as a float."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._ns = round(start * _NS)
        self._lock = threading.RLock()
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()

    def __call__(self) -> float:
        return self.now()

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now():.3f} timers={len(self._timers)}>"

    def now(self) -> float:
        """Seconds (as ``time.monotonic()`` would give them)."""
        return self._ns / _NS

    @property
    def now_ms(self) -> int:
        """Milliseconds, rounded down: the cluster time of a decision."""
        return self._ns // 1_000_000

    def call_later(self, seconds: float, fn: Callable[[], None]) -> int:
        """Run ``fn`` when the clock reaches now + ``seconds``; returns a handle for
        :meth:`cancel`."""
        with self._lock:
            handle = next(self._seq)
            heapq.heappush(self._timers, (self._ns + round(seconds * _NS), handle, fn))
            return handle

    def call_at_ms(self, ms: int, fn: Callable[[], None]) -> int:
        """Run ``fn`` once :attr:`now_ms` reaches ``ms`` (at once on the next
        :meth:`advance` if it already has); returns a handle for :meth:`cancel`.
        Integer nanoseconds, so it never runs a hair before ``ms``."""
        with self._lock:
            handle = next(self._seq)
            heapq.heappush(self._timers, (max(ms * 1_000_000, self._ns), handle, fn))
            return handle

    def cancel(self, handle: int) -> None:
        with self._lock:
            self._cancelled.add(handle)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0), running due timers on the way."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            stop = self._ns + round(seconds * _NS)
            while self._timers and self._timers[0][0] <= stop:
                when, handle, fn = heapq.heappop(self._timers)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
                self._ns = max(self._ns, when)
                fn()
            self._ns = stop
