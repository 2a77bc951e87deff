"""The off switch of every integration: ``QUORATE["ENABLED"] = False`` for Django,
DRF and Channels, ``enabled=False`` for the ASGI middleware. Switched off, each lets
everything through without a cluster (the configured node is dead, so any call would
fail) and says so once in the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from quorate_cluster import free_ports

from quorate.contrib import common


def dead_nodes() -> list[str]:
    return [f"http://127.0.0.1:{free_ports(1)[0]}"]


@pytest.fixture
def switched_off(caplog: pytest.LogCaptureFixture) -> Iterator[dict[str, Any]]:
    if not settings.configured:
        settings.configure(ALLOWED_HOSTS=["*"], SECRET_KEY="test", INSTALLED_APPS=[])
        django.setup()
    before = getattr(settings, "QUORATE", None)
    settings.QUORATE = {
        "ENABLED": False,
        "NODES": dead_nodes(),
        "DEADLINE": 0.5,
        "RATE_LIMIT": {"ANON": "1/hour", "USER": "1/hour"},
    }
    common._noticed.clear()
    caplog.set_level(logging.WARNING, logger="quorate")
    yield settings.QUORATE
    settings.QUORATE = before


def notices(caplog: pytest.LogCaptureFixture, integration: str) -> int:
    return sum(
        1
        for r in caplog.records
        if "switched off" in r.getMessage() and integration in r.getMessage()
    )


def ok_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


async def ok_view_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def test_django_middleware_lets_everything_through(
    switched_off: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    import quorate.contrib.django as qdj

    rf = RequestFactory()
    sync_mw = qdj.RateLimitMiddleware(ok_view)
    async_mw = qdj.RateLimitMiddleware(ok_view_async)

    async def run_async() -> list[int]:
        return [(await async_mw(rf.get("/x"))).status_code for _ in range(3)]

    assert [sync_mw(rf.get("/x")).status_code for _ in range(3)] == [200] * 3
    assert asyncio.run(run_async()) == [200] * 3
    assert "X-RateLimit-Limit" not in sync_mw(rf.get("/x"))
    assert notices(caplog, "Django") == 1, "said once, not per request"
    # Switched back on, the same middleware asks the (dead) cluster: 503, fail-closed.
    switched_off["ENABLED"] = True
    assert sync_mw(rf.get("/x")).status_code == 503


def test_drf_throttles_allow_everything(
    switched_off: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from quorate.contrib.drf import AnonRateThrottle, CombinedThrottle

    rf = RequestFactory()
    for cls in (AnonRateThrottle, CombinedThrottle):
        throttle = cls()
        assert all(throttle.allow_request(rf.get("/x"), view=None) for _ in range(3))
        assert throttle.wait() is None
    assert notices(caplog, "DRF") == 1


def test_channels_limits_let_everything_through(
    switched_off: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from quorate.contrib.channels import RateLimitedConsumerMixin, RateLimitMiddleware

    reached = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    class Consumer(RateLimitedConsumerMixin):
        scope: Any = {"type": "websocket", "client": ("10.0.0.1", 5000)}

    async def main() -> None:
        mw = RateLimitMiddleware(inner, limit="1/hour")
        scope = {"type": "websocket", "client": ("10.0.0.1", 5000), "headers": []}
        for _ in range(3):
            await mw(scope, None, None)
        for _ in range(3):
            assert (await Consumer().check_rate_limit("message")).allowed

    asyncio.run(main())
    assert reached == ["websocket"] * 3
    assert notices(caplog, "Channels") == 1


def test_asgi_middleware_enabled_false_needs_no_cluster(caplog: pytest.LogCaptureFixture) -> None:
    from quorate.contrib.asgi import RateLimitMiddleware

    common._noticed.clear()
    caplog.set_level(logging.WARNING, logger="quorate")
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    mw = RateLimitMiddleware(app, write="1/hour", enabled=False)
    scope = {"type": "http", "method": "POST", "path": "/", "client": ("1.2.3.4", 1), "headers": []}

    async def main() -> None:
        for _ in range(3):
            await mw(scope, receive, send)

    asyncio.run(main())
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 3
    assert notices(caplog, "ASGI") == 1
    with pytest.raises(ValueError, match="enabled=False"):
        RateLimitMiddleware(app)
