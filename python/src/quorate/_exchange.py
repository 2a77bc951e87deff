"""One call from its first attempt to its outcome, without I/O.

:class:`Nodes` is a client's routing state: the node URLs, which node answered last
(tried first next time), and the time budget (one attempt's ``timeout``, one call's
``deadline``, the backoff between rounds). :class:`Exchange` is one call run against
it: which node to try next and for how long, whether an answer decides the call or
moves on to the next node, how long to back off, when to give up. The clients' ``_run``
loops only send what :meth:`Exchange.next` names and sleep for :attr:`Exchange.wait`.

The rules:

- **Any node will do.** A ``503`` (no quorum, election running), a ``502``/``504`` from
  a proxy in front of a dead node, or an unreachable node moves on to the next node.
  Every other answer decides the call, since another node would say the same.
- Once every node failed in a round the call backs off (doubling up to
  ``max_backoff``) and goes round again until its deadline, then gives up with
  :class:`~quorate.Unavailable`, counted in :class:`~quorate.failure.Failures`, and
  the call's own ``undecided`` rule (raise, release, fail open) decides the outcome.

Imports point down only: calls, failure policy, errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Generic, TypeVar, cast

import httpx

from ._calls import Call, interpret
from .errors import ConfigError, Unavailable
from .failure import Failures

__all__ = ["Exchange", "Nodes"]

logger = logging.getLogger("quorate")

T = TypeVar("T")

# Statuses that mean "this node could not decide; another may": 503 is quorate's own
# (no quorum, election); 502/504 come from a proxy in front of a dead node.
_RETRY_STATUSES = frozenset({502, 503, 504})


class Nodes:
    """The node URLs, the one to try first, and the time budget of a call."""

    def __init__(
        self,
        nodes: Sequence[str] | str,
        *,
        timeout: float,
        deadline: float,
        backoff: float,
        max_backoff: float,
    ) -> None:
        if isinstance(nodes, str):
            nodes = [n for n in nodes.split(",") if n.strip()]
        self.urls: list[str] = [n.strip().rstrip("/") for n in nodes]
        if not self.urls:
            raise ConfigError("at least one node URL is required")
        for n in self.urls:
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
        #: Index of the node that answered last (tried first).
        self.preferred = 0


class Exchange(Generic[T]):
    """One call's retry plan and outcome; see the module docs."""

    def __init__(
        self, nodes: Nodes, failures: Failures, call: Call[T], deadline: float | None
    ) -> None:
        self.nodes = nodes
        self.failures = failures
        self.call = call
        self.deadline = time.monotonic() + (nodes.deadline if deadline is None else deadline)
        self.attempt = 0
        self.backoff = nodes.backoff
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
        urls = self.nodes.urls
        self._node = (self.nodes.preferred + self.attempt) % len(urls)
        remaining = self.deadline - time.monotonic()
        # Never let one attempt outlive the call's deadline, but give it a sliver of
        # time even at the end so a last try is a real try.
        timeout = max(0.05, min(self.nodes.timeout, remaining))
        return urls[self._node] + self.call.path, timeout

    def answered(self, response: httpx.Response) -> None:
        if response.status_code not in _RETRY_STATUSES:
            self.nodes.preferred = self._node
            self._answer = response
            return
        self.retry_after = _retry_after(response.headers)
        node = self.nodes.urls[self._node]
        self._failed(f"{node}: {response.status_code} {response.text[:200]}")

    def unreachable(self, error: httpx.TransportError) -> None:
        node = self.nodes.urls[self._node]
        self._failed(f"{node}: {type(error).__name__}: {error}")

    def _failed(self, why: str) -> None:
        """Record a failed attempt: set the wait before the next one, or give up."""
        self.last_error = why
        logger.debug("quorate node did not decide (%s); trying the next", why)
        self.attempt += 1
        self.wait = 0.0
        now = time.monotonic()
        if self.attempt % len(self.nodes.urls) == 0:
            # Every node failed once in this round: back off before the next round.
            if now + self.backoff >= self.deadline:
                self._give_up()
                return
            self.wait = self.backoff
            self.backoff = min(self.backoff * 2, self.nodes.max_backoff)
        elif now >= self.deadline:
            self._give_up()

    def _give_up(self) -> None:
        self.failures.undecided()
        self._gave_up = Unavailable(
            f"no quorate node decided within the deadline; last error: {self.last_error}",
            retry_after=self.retry_after,
        )

    def outcome(self) -> T:
        """The call's result once :attr:`done` (raising what the answer stands for)."""
        if self._answer is not None:
            return interpret(self.call, self._answer)
        gave_up = cast(Unavailable, self._gave_up)
        if self.call.undecided is None:
            raise gave_up
        return self.call.undecided(gave_up)


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None
