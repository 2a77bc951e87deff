"""Framework-free pieces shared by the integrations.

- :class:`TrustedProxies` -- the client's IP, taking ``X-Forwarded-For`` into account
  *only* when the direct peer is a configured proxy. Trusting the header from anyone
  lets every client pick its own rate-limit key (seed 003); trusting nothing puts
  every client behind a load balancer into one bucket.
- :func:`rate_limit_headers` -- the headers to put on a response from a decision
  (the node's own ``RateLimit-Policy``/``RateLimit``/``X-RateLimit-*``/``Retry-After``).
- :func:`limited_body` -- the JSON body of a 429 (and 503) produced by an integration.
- :data:`READ_METHODS` -- methods counted as reads by the read/write split.
- :func:`disabled_notice` and :func:`pass_through` -- the off switch
  (``QUORATE["ENABLED"] = False``, ``RateLimitMiddleware(enabled=False)``): every
  request and message is let through, said once per integration in the log.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..types import RateCheck, RateDecision

__all__ = [
    "READ_METHODS",
    "Limit",
    "TrustedProxies",
    "disabled_notice",
    "key_part",
    "limited_body",
    "pass_through",
    "rate_limit_headers",
    "unavailable_body",
]

#: Safe methods: counted against the read limit; everything else is a write.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

logger = logging.getLogger("quorate")

_notice_lock = threading.Lock()
#: Integrations that already said they are switched off (once per process each).
_noticed: set[str] = set()


def disabled_notice(integration: str, how: str) -> None:
    """Say once per process, per integration, that it lets everything through."""
    with _notice_lock:
        if integration in _noticed:
            return
        _noticed.add(integration)
    logger.warning(
        "quorate is switched off (%s): %s lets every request through unlimited",
        how,
        integration,
    )


def pass_through() -> RateDecision:
    """The decision a switched-off integration acts on: allowed, marked ``degraded``
    (so no rate-limit headers are invented), charged nowhere."""
    return RateDecision(
        allowed=True,
        limit=0,
        remaining=0,
        reset_after_ms=0,
        retry_after_ms=0,
        message="quorate is switched off",
        degraded=True,
    )


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> _Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.9:5050"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    """Resolve the client address of a request that may have passed through proxies.

    ``TrustedProxies(["10.0.0.0/8", "127.0.0.1"])``; an empty list trusts nobody and
    always returns the direct peer. When the peer is trusted, ``X-Forwarded-For`` is
    read from the right (nearest hop) and the first address that is *not* a trusted
    proxy is the client: entries further left were written by the client itself and
    prove nothing.
    """

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks: list[_Network] = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]})"

    def trusts(self, addr: _Address | None) -> bool:
        return addr is not None and any(addr in n for n in self.networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None = None) -> str:
        """The client's IP as text (``"unknown"`` if even the peer is unknown)."""
        peer_addr = _parse_ip(peer) if peer else None
        if peer_addr is None:
            return "unknown"
        if not forwarded_for or not self.trusts(peer_addr):
            return str(peer_addr)
        nearest = peer_addr
        for hop in reversed(forwarded_for.split(",")):
            addr = _parse_ip(hop)
            if addr is None:
                # Garbage from the left of the chain: the last good hop is all we know.
                return str(nearest)
            if not self.trusts(addr):
                return str(addr)
            nearest = addr
        return str(nearest)


def rate_limit_headers(decision: RateDecision) -> list[tuple[str, str]]:
    """Headers for a response governed by ``decision`` (none for fail-open guesses).

    The node's own headers are used when present (they follow the IETF RateLimit
    draft and the classic ``X-RateLimit-*`` trio); ``Retry-After`` only on denials.
    """
    if decision.degraded:
        return []
    headers = dict(decision.headers)
    headers.setdefault("x-ratelimit-limit", str(decision.limit))
    headers.setdefault("x-ratelimit-remaining", str(decision.remaining))
    headers.setdefault("x-ratelimit-reset", str(math.ceil(decision.reset_after_ms / 1000)))
    if decision.allowed:
        headers.pop("retry-after", None)
    else:
        headers.setdefault("retry-after", decision.retry_after_header)
    return sorted(headers.items())


def limited_body(decision: RateDecision, scope: str | None = None) -> bytes:
    """``{"error": "rate_limited", "message", "retry_after", ...}`` as JSON bytes."""
    body: dict[str, Any] = {
        "error": "rate_limited",
        "message": decision.message or "rate limit exceeded",
        "retry_after": math.ceil(decision.retry_after_ms / 1000),
        "retry_after_ms": decision.retry_after_ms,
        "limit": decision.limit,
    }
    if scope:
        body["scope"] = scope
    return json.dumps(body).encode()


def unavailable_body() -> bytes:
    """The 503 body when the limiter cannot decide and the policy is fail-closed."""
    return json.dumps(
        {
            "error": "unavailable",
            "message": "the rate limiter is unavailable; try again shortly",
            "retry_after": 1,
        }
    ).encode()


_KEY_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/@+")


def key_part(text: object) -> str:
    """Make any text usable inside a quorate key (``[A-Za-z0-9_-.:/@+=]``, at most 256
    bytes): other bytes become ``=XX``, so distinct inputs stay distinct."""
    raw = str(text).encode()
    return "".join(chr(b) if b in _KEY_SAFE else f"={b:02X}" for b in raw)[:200]


@dataclass(frozen=True)
class Limit:
    """A rate limit an integration applies: a named quorate ``policy`` (tiers apply),
    or an inline ``limit`` per ``period`` seconds with an optional ``burst``."""

    policy: str | None = None
    limit: int | None = None
    period: float | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        if (self.policy is None) == (self.limit is None or self.period is None):
            raise ValueError("give either policy=... or limit=... and period=...")

    @classmethod
    def parse(cls, value: Limit | str | dict[str, Any]) -> Limit:
        """``Limit``, a policy name, ``"60/min"`` style text, or a dict of fields."""
        if isinstance(value, Limit):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if "/" in value:
            count, _, unit = value.partition("/")
            seconds = {
                "s": 1,
                "sec": 1,
                "second": 1,
                "m": 60,
                "min": 60,
                "minute": 60,
                "h": 3600,
                "hour": 3600,
                "d": 86400,
                "day": 86400,
            }[unit.strip()]
            return cls(limit=int(count), period=float(seconds))
        return cls(policy=value)

    def check(self, key: str, tier: str | None = None, cost: int | None = None) -> RateCheck:
        return RateCheck(
            key=key,
            policy=self.policy,
            tier=tier if self.policy is not None else None,
            cost=cost,
            limit=self.limit,
            period=self.period,
            burst=self.burst,
        )
