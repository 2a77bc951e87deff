"""The failure policy: what a call that got no decision comes to.

quorate never reports a grant it did not make, so an undecided call (no node reached,
no quorum before the deadline) is neither a grant nor a denial. The caller chooses:

- ``"closed"`` (default): raise :class:`~quorate.Unavailable`. Never admits more than
  the limit.
- ``"open"``: allow (a rate decision or a slot marked ``degraded``), log a warning on
  the ``quorate`` logger and count it.

:class:`Failures` holds one client's default policy and its counters; the clients, the
slots and :mod:`quorate.work` ask it whether to fail open, so the rule and the
bookkeeping live here only. It knows nothing of HTTP or of the clients.
"""

from __future__ import annotations

import enum
import logging
import threading

from .errors import ConfigError, Unavailable

__all__ = ["FailurePolicy", "Failures"]

logger = logging.getLogger("quorate")


class FailurePolicy(str, enum.Enum):
    """What to do when the cluster cannot decide (unreachable, no quorum)."""

    #: Deny: raise :class:`~quorate.Unavailable`. Never admits more than the limit.
    CLOSED = "closed"
    #: Allow, log a warning and count it. For work where over-admission is cheaper
    #: than refusing.
    OPEN = "open"

    @classmethod
    def parse(cls, value: FailurePolicy | str) -> FailurePolicy:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"failure_policy must be 'open' or 'closed', got {value!r}") from None


class Failures:
    """One client's failure policy and counters (thread-safe)."""

    def __init__(self, policy: FailurePolicy | str = FailurePolicy.CLOSED) -> None:
        self.policy = FailurePolicy.parse(policy)
        #: Times the fail-open policy allowed something the cluster did not decide.
        self.fail_open_count = 0
        #: Times a call ended without a decision (either policy).
        self.unavailable_count = 0
        self._lock = threading.Lock()

    def undecided(self) -> None:
        """Count a call that ended without a decision."""
        with self._lock:
            self.unavailable_count += 1

    def fails_open(
        self, exc: Unavailable, what: str, override: FailurePolicy | str | None = None
    ) -> bool:
        """Apply the policy (``override`` if given) to an undecided call: True to allow
        it (counted and logged), False to raise ``exc``."""
        policy = self.policy if override is None else FailurePolicy.parse(override)
        if policy is FailurePolicy.OPEN:
            with self._lock:
                self.fail_open_count += 1
            logger.warning("quorate unavailable; failing open for %s: %s", what, exc)
            return True
        logger.warning("quorate unavailable; failing closed for %s: %s", what, exc)
        return False
