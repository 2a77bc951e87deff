"""Pure ASGI rate-limit middleware for Starlette, FastAPI or any ASGI app.

A plain ASGI callable (not Starlette's ``BaseHTTPMiddleware``): it never buffers
bodies, works for streaming responses, and only touches ``http.response.start`` to
add headers. Every HTTP request is checked before the app runs, against the *read*
limit for ``GET``/``HEAD``/``OPTIONS`` and the *write* limit for everything else (seed
003: reads are cheap and frequent, writes are not), keyed by client IP resolved
through trusted proxies only::

    from starlette.applications import Starlette
    from quorate.contrib.asgi import RateLimitMiddleware

    app = Starlette(routes=...)
    app = RateLimitMiddleware(
        app,
        nodes=["http://127.0.0.1:7101", "http://127.0.0.1:7102"],
        read="1000/min",               # or a quorate policy name: read="api_read"
        write="100/min",
        trusted_proxies=["10.0.0.0/8"],
    )
    # FastAPI / Starlette: app.add_middleware(RateLimitMiddleware, nodes=..., ...)

Every response gets the RateLimit headers; a denied request gets a JSON 429 with
``Retry-After`` from the real bucket state and never reaches the app. When the cluster
cannot decide: ``failure_policy="closed"`` (default) answers 503, ``"open"`` lets the
request through (logged and counted on the client). Lifespan and websocket scopes pass
through untouched. ``enabled=False`` lets every request through without a client (no
``nodes`` needed; for tests and local runs), said once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

from ..client import AsyncClient, FailurePolicy
from ..errors import Unavailable
from ..types import RateCheck, RateDecision
from .common import (
    READ_METHODS,
    Limit,
    TrustedProxies,
    disabled_notice,
    key_part,
    limited_body,
    rate_limit_headers,
    unavailable_body,
)

__all__ = ["AsyncRateChecker", "RateLimitMiddleware"]

logger = logging.getLogger("quorate")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AsyncRateChecker(Protocol):
    """What the middleware asks: :class:`~quorate.AsyncClient`, or the fake
    :class:`~quorate.testing.FakeAsyncClient` in tests."""

    async def check_all(
        self,
        checks: Iterable[RateCheck | Mapping[str, Any]],
        *,
        failure_policy: FailurePolicy | str | None = ...,
        raise_on_limit: bool = ...,
    ) -> RateDecision: ...


class RateLimitMiddleware:
    """See the module docs. ``client`` or ``nodes`` (plus ``client_options``) say where
    the cluster is; the client is created lazily inside the server's event loop."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncRateChecker | None = None,
        nodes: Sequence[str] | str | None = None,
        client_options: dict[str, Any] | None = None,
        read: Limit | str | dict[str, Any] | None = None,
        write: Limit | str | dict[str, Any] | None = None,
        trusted_proxies: Iterable[str] = (),
        key_prefix: str = "ip",
        exempt_paths: Iterable[str] = (),
        failure_policy: FailurePolicy | str | None = None,
        enabled: bool = True,
    ) -> None:
        if enabled and client is None and nodes is None:
            raise ValueError("give client= or nodes= (or enabled=False)")
        self.enabled = enabled
        self.app = app
        self._client = client
        self._nodes = nodes
        self._client_options = dict(client_options or {})
        self.read = None if read is None else Limit.parse(read)
        self.write = None if write is None else Limit.parse(write)
        self.proxies = TrustedProxies(trusted_proxies)
        self.key_prefix = key_prefix
        self.exempt_paths = tuple(exempt_paths)
        self.failure_policy = failure_policy

    @property
    def client(self) -> AsyncRateChecker:
        if self._client is None:
            assert self._nodes is not None
            self._client = AsyncClient(self._nodes, **self._client_options)
        return self._client

    def client_ip(self, scope: Scope) -> str:
        peer = scope.get("client")
        forwarded = None
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                # Several header lines are one list, in order.
                text = value.decode("latin-1")
                forwarded = text if forwarded is None else f"{forwarded},{text}"
        return self.proxies.client_ip(peer[0] if peer else None, forwarded)

    def rule(self, scope: Scope) -> tuple[str, Limit] | None:
        """Which limit governs this request (``None``: not limited). Override to add
        per-route limits."""
        path: str = scope.get("path", "")
        if any(path.startswith(p) for p in self.exempt_paths):
            return None
        if scope.get("method", "GET").upper() in READ_METHODS:
            return ("read", self.read) if self.read is not None else None
        return ("write", self.write) if self.write is not None else None

    def key(self, scope: Scope, kind: str) -> str:
        """The bucket key: ``<prefix>:<read|write>:<client ip>``. Override to key by
        API token or user instead."""
        return f"{self.key_prefix}:{kind}:{key_part(self.client_ip(scope))}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled:
            disabled_notice("the ASGI rate-limit middleware", "enabled=False")
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.rule(scope)
        if rule is None:
            await self.app(scope, receive, send)
            return
        kind, limit = rule
        try:
            decision = await self.client.check_all(
                [limit.check(self.key(scope, kind))], failure_policy=self.failure_policy
            )
        except Unavailable:
            await _respond(send, 503, unavailable_body(), [("retry-after", "1")])
            return
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            await _respond(send, 429, limited_body(decision, kind), headers)
            return
        await self.app(scope, receive, _with_headers(send, headers))


def _with_headers(send: Send, headers: list[tuple[str, str]]) -> Send:
    encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", ())}
            message["headers"] = [
                *message.get("headers", ()),
                *((k, v) for k, v in encoded if k not in present),
            ]
        await send(message)

    return wrapped


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
