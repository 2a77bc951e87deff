"""Django Channels integration: WebSocket connection and message limits (seed 001).

Two levels, as in the seed:

- :class:`RateLimitMiddleware` (a ``channels.middleware.BaseMiddleware``) charges every
  WebSocket *connection attempt* against the ``connect`` policy before any consumer
  exists. Over the limit, the handshake is accepted and closed at once with code
  **4029** (application range; a close before accept would reach the browser as a bare
  HTTP 403 and the code would be lost). Put it inside ``AuthMiddlewareStack`` so the
  user is known.
- :class:`RateLimitedConsumerMixin` and the :func:`rate_limit` decorator charge
  *messages* by named scope (``message``, ``ai_query``, ...), each mapped to a quorate
  rate policy. An over-limit message is answered with a JSON error frame and not
  handled; the connection stays open.

Who is charged: the user (``user:<pk>``) when authenticated, otherwise the client IP
(``ip:<addr>``, ``X-Forwarded-For`` only through ``QUORATE["TRUSTED_PROXIES"]``). The
tier sent with each check is ``superuser`` / ``authenticated`` / ``anonymous``
(override :meth:`RateLimitedConsumerMixin.get_tier`), so quorate's tier multipliers
give superusers x10 and signed-in users x2 of the same policy. Settings::

    QUORATE = {
        "NODES": [...],
        "CHANNELS": {
            "CONNECT": "ws_connect",                        # policy for connections
            "POLICIES": {"message": "ws_message", "ai_query": "ws_ai_query"},
            "TIERS": True,
            "KEY_PREFIX": "ws",
        },
    }

When the cluster cannot decide: fail-closed closes the connection with 1013 ("try
again later") or answers a message with an ``unavailable`` error frame; fail-open lets
it through (logged and counted). ``QUORATE["ENABLED"] = False`` lets every connection
and message through without asking the cluster.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar, TypeVar

from channels.middleware import BaseMiddleware
from django.conf import settings

from ..errors import Unavailable
from ..types import RateCheck, RateDecision
from .common import Limit, TrustedProxies, key_part, pass_through
from .django import get_async_client, quorate_enabled, tier_for_user

__all__ = [
    "CLOSE_RATE_LIMITED",
    "CLOSE_TRY_AGAIN_LATER",
    "RateLimitMiddleware",
    "RateLimitedConsumerMixin",
    "rate_limit",
    "scope_identity",
]

#: Close code for "over the connection rate limit" (application range 4000-4999).
CLOSE_RATE_LIMITED = 4029
#: RFC 6455 "Try Again Later": the limiter could not decide and fails closed.
CLOSE_TRY_AGAIN_LATER = 1013

Scope = MutableMapping[str, Any]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _conf() -> dict[str, Any]:
    conf: dict[str, Any] = getattr(settings, "QUORATE", {}).get("CHANNELS", {})
    return conf


def _unavailable_decision() -> RateDecision:
    return RateDecision(
        allowed=False,
        limit=0,
        remaining=0,
        reset_after_ms=0,
        retry_after_ms=1000,
        error="unavailable",
        message="the rate limiter is unavailable; try again shortly",
    )


def scope_identity(scope: Scope) -> tuple[str, str]:
    """``("user:<pk>" or "ip:<addr>", tier)`` for a Channels scope."""
    user = scope.get("user")
    tier = tier_for_user(user)
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{key_part(user.pk)}", tier
    proxies = TrustedProxies(getattr(settings, "QUORATE", {}).get("TRUSTED_PROXIES", ()))
    forwarded = None
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            text = value.decode("latin-1")
            forwarded = text if forwarded is None else f"{forwarded},{text}"
    peer = scope.get("client")
    return f"ip:{key_part(proxies.client_ip(peer[0] if peer else None, forwarded))}", tier


async def _check(name: str, limit: Limit, scope: Scope, tier: str | None) -> RateDecision:
    if not quorate_enabled("the Channels rate limits"):
        return pass_through()
    ident, user_tier = scope_identity(scope)
    prefix = _conf().get("KEY_PREFIX", "ws")
    use_tiers = _conf().get("TIERS", True)
    check: RateCheck = limit.check(
        f"{prefix}:{name}:{ident}", tier if tier is not None else (user_tier if use_tiers else None)
    )
    try:
        return await get_async_client().check_all([check])
    except Unavailable:
        return _unavailable_decision()


class RateLimitMiddleware(BaseMiddleware):  # type: ignore[misc]
    """Connection-level limit: closes over-limit WebSocket connections with 4029."""

    def __init__(self, inner: Any, limit: Limit | str | None = None) -> None:
        super().__init__(inner)
        self.limit = Limit.parse(limit or _conf().get("CONNECT", "ws_connect"))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope.get("type") != "websocket":
            return await super().__call__(scope, receive, send)
        decision = await _check("connect", self.limit, scope, None)
        if decision.allowed:
            scope = dict(scope, quorate_connect=decision)
            return await super().__call__(scope, receive, send)
        code = CLOSE_TRY_AGAIN_LATER if decision.error == "unavailable" else CLOSE_RATE_LIMITED
        message = await receive()
        if message.get("type") == "websocket.connect":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": code})
        return None


class RateLimitedConsumerMixin:
    """Message-level limits for (async) WebSocket consumers. Mix in before the
    consumer class; call :meth:`check_rate_limit` or decorate handlers with
    :func:`rate_limit`."""

    #: Scope name -> quorate policy (or ``Limit``/"20/min"); defaults to the
    #: ``QUORATE["CHANNELS"]["POLICIES"]`` setting, then to the scope name itself.
    rate_limit_policies: ClassVar[dict[str, Limit | str]] = {}

    scope: Scope

    def get_tier(self) -> str | None:
        """The tier for this connection's user; ``None`` to use the settings default."""
        return None

    def _limit_for(self, name: str) -> Limit:
        value = self.rate_limit_policies.get(name) or _conf().get("POLICIES", {}).get(name, name)
        return Limit.parse(value)

    async def check_rate_limit(self, name: str) -> RateDecision:
        """Charge one ``name`` event (``message``, ``ai_query``) for this connection's
        user or IP. A fail-closed outage is a denial with ``error == "unavailable"``."""
        return await _check(name, self._limit_for(name), self.scope, self.get_tier())

    async def rate_limited(self, name: str, decision: RateDecision) -> None:
        """Called for a denied event; by default sends a JSON error frame."""
        frame = {
            "type": "error",
            "error": decision.error or "rate_limited",
            "scope": name,
            "retry_after": decision.retry_after,
            "message": decision.message or f"rate limit exceeded for {name}",
        }
        send = getattr(self, "send", None)
        if send is not None:
            await send(text_data=json.dumps(frame))


def rate_limit(name: str) -> Callable[[F], F]:
    """Decorate an async consumer handler: run it only if the ``name`` limit allows."""

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        async def wrapper(self: RateLimitedConsumerMixin, *args: Any, **kwargs: Any) -> Any:
            decision = await self.check_rate_limit(name)
            if not decision.allowed:
                await self.rate_limited(name, decision)
                return None
            return await handler(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
