"""Django integration: settings-driven clients, client IP, and a rate-limit middleware.

Settings (all optional except ``NODES``)::

    QUORATE = {
        "ENABLED": True,                 # False: every integration lets everything
                                         # through (tests, local runs); NODES unused
        "NODES": ["http://10.0.0.1:7101", "http://10.0.0.2:7101", "http://10.0.0.3:7101"],
        "TOKEN": None,                   # bearer token (role "client", or "admin")
        "VERIFY": True,                  # or the cluster's CA file path
        "TIMEOUT": 3.0, "DEADLINE": 10.0,  # seconds: one attempt / one call
        "FAILURE_POLICY": "closed",      # or "open": allow, log, count
        "TRUSTED_PROXIES": ["10.0.0.0/8"],  # X-Forwarded-For is read only from these
        "RATE_LIMIT": {                  # for RateLimitMiddleware
            "ANON": "anon",              # quorate policy name, or "60/min"
            "USER": "user",
            "TIERS": True,               # send superuser/authenticated/anonymous tiers
            "EXEMPT_PATHS": ["/healthz"],
            "KEY_PREFIX": "django",
        },
    }

:func:`get_client` / :func:`get_async_client` build one client per process (after a
fork: a new one) and per event loop. :class:`RateLimitMiddleware` is sync *and* async
capable, so Django runs it natively under WSGI and ASGI without thread hops.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from ..client import AsyncClient, Client
from ..errors import Unavailable
from ..types import RateCheck, RateDecision
from .common import (
    Limit,
    TrustedProxies,
    disabled_notice,
    key_part,
    limited_body,
    rate_limit_headers,
)
from .common import unavailable_body as _unavailable_body

__all__ = [
    "RateLimitMiddleware",
    "client_ip",
    "get_async_client",
    "get_client",
    "quorate_enabled",
    "quorate_settings",
    "tier_for_user",
    "too_many_requests",
]

_lock = threading.Lock()
_sync_clients: dict[int, Client] = {}
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def quorate_enabled(integration: str) -> bool:
    """``QUORATE["ENABLED"]`` (default True), read on every call so test settings
    overrides apply; when False, says once in the log that ``integration`` lets
    everything through."""
    if getattr(settings, "QUORATE", {}).get("ENABLED", True):
        return True
    disabled_notice(integration, 'QUORATE["ENABLED"] = False')
    return False


def quorate_settings() -> dict[str, Any]:
    conf: dict[str, Any] = dict(getattr(settings, "QUORATE", {}))
    if not conf.get("NODES"):
        raise RuntimeError("settings.QUORATE['NODES'] must list the quorate node URLs")
    return conf


_K = TypeVar("_K", bound=Hashable)
_C = TypeVar("_C", Client, AsyncClient)


def _cached_client(
    clients: MutableMapping[_K, _C], key: _K, make: Callable[..., _C], *, only: bool = False
) -> _C:
    """The client kept under ``key``, built from ``settings.QUORATE`` on first use;
    ``only``: forget the others when building it."""
    with _lock:
        client = clients.get(key)
        if client is None:
            conf = quorate_settings()
            client = make(
                conf["NODES"],
                token=conf.get("TOKEN"),
                verify=conf.get("VERIFY", True),
                timeout=float(conf.get("TIMEOUT", 3.0)),
                deadline=float(conf.get("DEADLINE", 10.0)),
                failure_policy=conf.get("FAILURE_POLICY", "closed"),
            )
            if only:
                clients.clear()
            clients[key] = client
        return client


def get_client() -> Client:
    """This process's sync client, built from ``settings.QUORATE``."""
    # Keyed by pid, and only one: a forked child must not use its parent's sockets.
    return _cached_client(_sync_clients, os.getpid(), Client, only=True)


def get_async_client() -> AsyncClient:
    """The running event loop's async client, built from ``settings.QUORATE``."""
    return _cached_client(_async_clients, asyncio.get_running_loop(), AsyncClient)


def _proxies() -> TrustedProxies:
    return TrustedProxies(getattr(settings, "QUORATE", {}).get("TRUSTED_PROXIES", ()))


def client_ip(request: HttpRequest, proxies: TrustedProxies | None = None) -> str:
    """The client's IP: ``REMOTE_ADDR``, or ``X-Forwarded-For`` read through the
    configured trusted proxies only."""
    proxies = proxies or _proxies()
    return proxies.client_ip(
        request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR")
    )


def tier_for_user(user: Any) -> str:
    """The quorate tier of a user: ``superuser``, ``authenticated`` or ``anonymous``."""
    if user is None or not getattr(user, "is_authenticated", False):
        return "anonymous"
    if getattr(user, "is_superuser", False):
        return "superuser"
    return "authenticated"


def too_many_requests(
    retry_after: float,
    message: str = "too many requests",
    *,
    error: str = "limit_exceeded",
    headers: list[tuple[str, str]] | None = None,
    **extra: Any,
) -> HttpResponse:
    """A JSON 429 with ``Retry-After`` (whole seconds, rounded up, at least 1)."""
    seconds = max(1, int(-(-retry_after // 1)))
    body = {"error": error, "message": message, "retry_after": seconds, **extra}
    response = HttpResponse(json.dumps(body), status=429, content_type="application/json")
    for k, v in headers or ():
        response[k] = v
    response["Retry-After"] = str(seconds)
    return response


def _json(status: int, body: bytes, headers: list[tuple[str, str]]) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type="application/json")
    for k, v in headers:
        response[k] = v
    return response


class RateLimitMiddleware:
    """Rate-limits every request by user (authenticated) or client IP (anonymous).

    Add it after ``AuthenticationMiddleware``. Allowed responses carry the RateLimit
    headers; denied requests get a JSON 429 with ``Retry-After`` and never reach the
    view; when the cluster cannot decide, fail-closed answers 503 and fail-open lets the
    request through. Override :meth:`get_checks` or :meth:`get_tier` to change what is
    charged.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        conf = getattr(settings, "QUORATE", {}).get("RATE_LIMIT", {})
        self.anon = Limit.parse(conf.get("ANON", "anon"))
        self.user = Limit.parse(conf.get("USER", "user"))
        self.use_tiers = bool(conf.get("TIERS", True))
        self.exempt_paths = tuple(conf.get("EXEMPT_PATHS", ()))
        self.key_prefix = str(conf.get("KEY_PREFIX", "django"))
        self.failure_policy = conf.get("FAILURE_POLICY")
        self.proxies = _proxies()

    def get_tier(self, request: HttpRequest, user: Any) -> str | None:
        return tier_for_user(user) if self.use_tiers else None

    def get_checks(self, request: HttpRequest, user: Any) -> list[RateCheck]:
        """What this request is charged against (empty: nothing)."""
        if request.path.startswith(self.exempt_paths) if self.exempt_paths else False:
            return []
        tier = self.get_tier(request, user)
        if user is not None and getattr(user, "is_authenticated", False):
            key = f"{self.key_prefix}:user:{key_part(user.pk)}"
            return [self.user.check(key, tier)]
        key = f"{self.key_prefix}:ip:{key_part(client_ip(request, self.proxies))}"
        return [self.anon.check(key, tier)]

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if not quorate_enabled("the Django rate-limit middleware"):
            return self.get_response(request)
        checks = self.get_checks(request, getattr(request, "user", None))
        if not checks:
            return self.get_response(request)
        try:
            decision = get_client().check_all(checks, failure_policy=self.failure_policy)
        except Unavailable:
            return _json(503, _unavailable_body(), [("Retry-After", "1")])
        return self._respond(request, decision, self.get_response)

    async def __acall__(self, request: HttpRequest) -> Any:
        if not quorate_enabled("the Django rate-limit middleware"):
            return await self.get_response(request)
        user = await _auser(request)
        checks = self.get_checks(request, user)
        if not checks:
            return await self.get_response(request)
        try:
            client = get_async_client()
            decision = await client.check_all(checks, failure_policy=self.failure_policy)
        except Unavailable:
            return _json(503, _unavailable_body(), [("Retry-After", "1")])
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            return _json(429, limited_body(decision), headers)
        response = await self.get_response(request)
        return _add_headers(response, headers)

    def _respond(
        self, request: HttpRequest, decision: RateDecision, get_response: Callable[..., Any]
    ) -> Any:
        headers = rate_limit_headers(decision)
        if not decision.allowed:
            return _json(429, limited_body(decision), headers)
        return _add_headers(get_response(request), headers)


def _add_headers(response: HttpResponse, headers: list[tuple[str, str]]) -> HttpResponse:
    for k, v in headers:
        if k not in response:
            response[k] = v
    return response


async def _auser(request: HttpRequest) -> Any:
    """``request.user`` without touching the database from the event loop."""
    auser = getattr(request, "auser", None)
    if auser is not None:  # Django >= 5.0
        return await auser()
    if not hasattr(request, "user"):
        return None

    def resolve() -> Any:
        user = request.user
        _ = user.is_authenticated  # force the lazy object while in a thread
        return user

    return await sync_to_async(resolve)()
