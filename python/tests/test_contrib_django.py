"""The Django middleware in-process (sync and async modes) against the real cluster,
and the trusted-proxy rule shared by every integration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import django
import pytest
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from quorate_cluster import Cluster, free_ports

import quorate.contrib.django as qdj
from quorate.contrib.common import TrustedProxies


@dataclass
class FakeUser:
    pk: int
    is_authenticated: bool = True
    is_superuser: bool = False


@pytest.fixture
def configured(cluster: Cluster, uid: str) -> Iterator[dict[str, Any]]:
    if not settings.configured:
        settings.configure(ALLOWED_HOSTS=["*"], SECRET_KEY="test", INSTALLED_APPS=[])
        django.setup()
    settings.QUORATE = {
        "NODES": cluster.urls,
        "TRUSTED_PROXIES": ["127.0.0.1/32"],
        "DEADLINE": 1.0,
        "RATE_LIMIT": {"ANON": "3/hour", "USER": "5/hour", "KEY_PREFIX": uid},
    }
    qdj._sync_clients.clear()
    yield settings.QUORATE
    qdj._sync_clients.clear()


def ok_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


async def ok_view_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def test_sync_middleware_limits_by_ip_and_user(configured: dict[str, Any]) -> None:
    mw = qdj.RateLimitMiddleware(ok_view)
    assert not iscoroutinefunction(mw)
    rf = RequestFactory()
    got = [
        mw(rf.get("/x", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.7"))
        for _ in range(4)
    ]
    assert [r.status_code for r in got] == [200, 200, 200, 429]
    assert got[0]["X-RateLimit-Limit"] == "3"
    assert got[0]["X-RateLimit-Remaining"] == "2"
    assert "RateLimit-Policy" in got[0]
    body = json.loads(got[3].content)
    assert body["error"] == "rate_limited"
    assert int(got[3]["Retry-After"]) == body["retry_after"] >= 1
    # Another forwarded client (through the trusted proxy) has its own bucket.
    other = mw(rf.get("/x", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.8"))
    assert other.status_code == 200
    # A signed-in user is charged per user with the USER limit (tiers multiply named
    # policies only; this one is inline).
    req = rf.get("/x")
    req.user = FakeUser(pk=7)
    r = mw(req)
    assert r.status_code == 200
    assert r["X-RateLimit-Limit"] == "5"


def test_async_middleware(configured: dict[str, Any]) -> None:
    mw = qdj.RateLimitMiddleware(ok_view_async)
    assert iscoroutinefunction(mw)
    rf = RequestFactory()

    async def main() -> list[HttpResponse]:
        return [await mw(rf.get("/x", REMOTE_ADDR="10.1.2.3")) for _ in range(4)]

    got = asyncio.run(main())
    assert [r.status_code for r in got] == [200, 200, 200, 429]
    assert got[3]["Content-Type"] == "application/json"
    assert got[1]["X-RateLimit-Remaining"] == "1"


def test_fail_closed_is_503(configured: dict[str, Any]) -> None:
    configured["NODES"] = [f"http://127.0.0.1:{free_ports(1)[0]}"]
    mw = qdj.RateLimitMiddleware(ok_view)
    r = mw(RequestFactory().get("/x"))
    assert r.status_code == 503
    assert r["Retry-After"] == "1"


def test_trusted_proxies() -> None:
    none = TrustedProxies()
    assert none.client_ip("203.0.113.5", "1.2.3.4") == "203.0.113.5"
    lb = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])
    assert lb.client_ip("10.0.0.2", "1.2.3.4") == "1.2.3.4"
    # The client can prepend anything; only the hop the proxy appended counts.
    assert lb.client_ip("10.0.0.2", "6.6.6.6, 1.2.3.4") == "1.2.3.4"
    assert lb.client_ip("10.0.0.2", "1.2.3.4, 10.0.0.9") == "1.2.3.4"
    assert lb.client_ip("10.0.0.2", "garbage, 10.0.0.9") == "10.0.0.9"
    assert lb.client_ip("203.0.113.5", "1.2.3.4") == "203.0.113.5"  # untrusted peer
    assert lb.client_ip("2001:db8::1", "[2001:db8:ffff::9]:443") == "2001:db8:ffff::9"
    assert lb.client_ip("::ffff:10.0.0.2", "1.2.3.4") == "1.2.3.4"
    assert none.client_ip(None) == "unknown"
