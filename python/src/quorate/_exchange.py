"""One call from its first attempt to its outcome, without I/O.

:class:`Nodes` is a client's routing state: the node URLs, which node answered last
(tried first next time), and the time budget (one attempt's ``timeout``, one call's
``deadline``, the backoff between rounds). :class:`Exchange` is one call run against
it: which node to try next and for how long, whether an answer decides the call or
moves on to the next node, how long to back off, when to give up. The clients' ``_run``
loops only send what :meth:`Exchange.next` names and sleep for :attr:`Exchange.wait`.

The rules:

- **Leader first.** Every answer names the current leader's API base URL in the
  ``x-quorate-leader`` header; :class:`Nodes` remembers it and the next attempt goes
  there (any node decides any call by forwarding to the leader, so this only saves
  that hop). A new name in a later answer is followed at once. A hinted node that
  fails is dropped from :attr:`Nodes.leader` and the configured nodes are tried in
  turn, whose answers name the new leader. Each hint is tried at most once per round,
  so a hint naming a dead node cannot hold a call.
- **Which hints are followed** (as the Rust client): any bare ``http(s)://host[:port]``
  base URL, configured or not (a cluster may advertise names the client was not given,
  e.g. behind NAT), but never ``http://`` when a configured node is ``https://``: the
  bearer token goes wherever the hint points, so a hint may not downgrade the client.
- **Any node will do.** A ``503`` (no quorum, election running), a ``502``/``504`` from
  a proxy in front of a dead node, or an unreachable node moves on to the next node.
  Every other answer decides the call, since another node would say the same.
- Once every node failed in a round the call backs off (doubling up to
  ``max_backoff``) and goes round again until its deadline, then gives up with
  :class:`~quorate.Unavailable`, counted in :class:`~quorate.failure.Failures`, and
  the call's own ``undecided`` rule (raise, release, fail open) decides the outcome.
- **A waiting call is one long request.** A call the server may hold (``Call.hold``,
  an acquire's ``wait``) gets the wait on top of its budget: the deadline is the
  wait plus the usual ``deadline``, and each attempt may take what is left of the
  wait plus ``timeout``. A retry (the node died mid-wait: the same lease id, so
  the waiter keeps its place) asks the server to wait only for what is left
  (:meth:`Exchange.next` sets :attr:`Exchange.body`).

Imports point down only: calls, failure policy, errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Generic, TypeVar, cast
from urllib.parse import urlsplit

import httpx

from ._calls import Call, interpret
from .errors import ConfigError, Unavailable
from .failure import Failures

__all__ = ["LEADER_HEADER", "Exchange", "Nodes", "parse_hint"]

logger = logging.getLogger("quorate")

T = TypeVar("T")

# Statuses that mean "this node could not decide; another may": 503 is quorate's own
# (no quorum, election); 502/504 come from a proxy in front of a dead node.
_RETRY_STATUSES = frozenset({502, 503, 504})

#: Response header naming the current leader's API base URL (``quorate_proto::LEADER_HEADER``).
LEADER_HEADER = "x-quorate-leader"


def parse_hint(value: str | None, https_only: bool) -> str | None:
    """The leader base URL a hint names (no trailing ``/``), if the client may follow it:
    a bare ``http(s)://host[:port]`` (no path, query, fragment or credentials), and
    ``https://`` only when ``https_only``. Anything else is ignored, never an error."""
    if not value:
        return None
    s = value.strip().rstrip("/")
    try:
        u = urlsplit(s)
        _ = u.port  # raises ValueError on a bad port
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or (https_only and u.scheme != "https"):
        return None
    if not u.hostname or u.path or u.query or u.fragment or "@" in u.netloc:
        return None
    if any(c.isspace() for c in s):
        return None
    return s


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
        #: Index of the node that answered last (tried first after the leader).
        self.preferred = 0
        #: The leader's API base URL as the cluster last named it (tried first), or None.
        self.leader: str | None = None
        #: Hints must be ``https://`` (some configured node is).
        self.https_only = any(u.startswith("https://") for u in self.urls)

    def follow(self, headers: httpx.Headers) -> None:
        """Take the leader hint of an answer (no usable header: keep what we have)."""
        hint = parse_hint(headers.get(LEADER_HEADER), self.https_only)
        if hint is not None and hint != self.leader:
            logger.debug("following the cluster's leader hint to %s", hint)
            self.leader = hint

    def forget(self, failed: str) -> None:
        """Drop the hint ``failed`` (its node did not decide), unless an answer replaced
        it meanwhile. Unlocked: a race can at worst drop a fresh hint, which the next
        answer restores."""
        if self.leader == failed:
            self.leader = None


class Exchange(Generic[T]):
    """One call's retry plan and outcome; see the module docs."""

    def __init__(
        self, nodes: Nodes, failures: Failures, call: Call[T], deadline: float | None
    ) -> None:
        self.nodes = nodes
        self.failures = failures
        self.call = call
        now = time.monotonic()
        #: When the server's hold on a waiting call ends (``now`` for other calls).
        self.hold_until = now + max(call.hold, 0.0)
        self.deadline = (
            now + (nodes.deadline if deadline is None else deadline) + max(call.hold, 0.0)
        )
        #: The JSON body of the attempt :meth:`next` named.
        self.body = call.body
        #: The httpx timeouts of that attempt (the read timeout covers a wait).
        self.http_timeout = httpx.Timeout(nodes.timeout)
        self.attempt = 0
        self.backoff = nodes.backoff
        self.last_error = "no attempt made"
        self.retry_after: float | None = None
        #: Seconds to wait before the next attempt (0: at once).
        self.wait = 0.0
        self._node = 0
        #: The hint this attempt went to (None: a configured node, ``_node``).
        self._hint: str | None = None
        #: Hints tried (and failed) in this round.
        self._hints_tried: set[str] = set()
        self._answer: httpx.Response | None = None
        self._gave_up: Unavailable | None = None

    @property
    def done(self) -> bool:
        return self._answer is not None or self._gave_up is not None

    def next(self) -> tuple[str, float]:
        """The URL of the next attempt and how long it may take (its body is
        :attr:`body`)."""
        now = time.monotonic()
        remaining = self.deadline - now
        hold_left = max(self.hold_until - now, 0.0)
        self.body = self.call.attempt_body(hold_left)
        # Never let one attempt outlive the call's deadline, but give it a sliver of
        # time even at the end so a last try is a real try. A held request may take
        # the rest of its wait on top of the usual timeout -- for the answer only:
        # connecting to (and sending to) a node that is down still fails fast.
        timeout = max(0.05, min(self.nodes.timeout + hold_left, remaining))
        quick = min(timeout, self.nodes.timeout)
        self.http_timeout = httpx.Timeout(quick, read=timeout)
        hint = self.nodes.leader
        if hint is not None and hint not in self._hints_tried:
            self._hint = hint
            return hint + self.call.path, timeout
        self._hint = None
        urls = self.nodes.urls
        self._node = (self.nodes.preferred + self.attempt) % len(urls)
        return urls[self._node] + self.call.path, timeout

    def answered(self, response: httpx.Response) -> None:
        self.nodes.follow(response.headers)
        if response.status_code not in _RETRY_STATUSES:
            if self._hint is None:
                self.nodes.preferred = self._node
            self._answer = response
            return
        self.retry_after = _retry_after(response.headers)
        self._failed(f"{self._target()}: {response.status_code} {response.text[:200]}")

    def unreachable(self, error: httpx.TransportError) -> None:
        self._failed(f"{self._target()}: {type(error).__name__}: {error}")

    @property
    def node(self) -> str:
        """The base URL of the node the attempt :meth:`next` named (where a decision
        stream for it must go)."""
        return self._target()

    def _target(self) -> str:
        return self._hint if self._hint is not None else self.nodes.urls[self._node]

    def _failed(self, why: str) -> None:
        """Record a failed attempt: set the wait before the next one, or give up."""
        self.last_error = why
        logger.debug("quorate node did not decide (%s); trying the next", why)
        self.wait = 0.0
        if self._hint is not None:
            # The hinted node failed: drop the hint and go on with the configured nodes
            # (a failed hint does not count towards the round).
            self.nodes.forget(self._hint)
            self._hints_tried.add(self._hint)
            if time.monotonic() >= self.deadline:
                self._give_up()
            return
        self.attempt += 1
        now = time.monotonic()
        if self.attempt % len(self.nodes.urls) == 0:
            # Every node failed once in this round: back off before the next round.
            if now + self.backoff >= self.deadline:
                self._give_up()
                return
            self.wait = self.backoff
            self.backoff = min(self.backoff * 2, self.nodes.max_backoff)
            # A new round may try a hint again (the leader may be back).
            self._hints_tried.clear()
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
