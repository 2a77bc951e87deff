"""``quorate.testing`` on its own: the surfaces match the real clients, time moves
only when the test moves it (leases expire, held slots renew, buckets refill exactly
as GCRA says), the failure policies work on an unavailable fake, and the pytest
fixtures are there. No cluster needed; test_behaviour.py holds the fake to a real one.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from quorate_cluster import ROOT

import quorate
from quorate import AsyncClient, Client, ConcurrencyPolicy, RatePolicy
from quorate.testing import FakeAsyncClient, FakeClient, FakeClock, FakeCluster


def public(cls: type) -> dict[str, object]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_")}


@pytest.mark.parametrize(("real", "fake"), [(Client, FakeClient), (AsyncClient, FakeAsyncClient)])
def test_fake_clients_have_the_real_surface(real: type, fake: type) -> None:
    real_api, fake_api = public(real), public(fake)
    missing = sorted(set(real_api) - set(fake_api))
    assert missing == [], f"{fake.__name__} lacks {missing}"
    for name, attr in real_api.items():
        if not callable(attr) or isinstance(attr, property):
            continue
        fake_attr = fake_api[name]
        assert inspect.signature(attr) == inspect.signature(fake_attr), name  # type: ignore[arg-type]
        assert inspect.iscoroutinefunction(attr) == inspect.iscoroutinefunction(fake_attr), name
    for name in ("__enter__", "__exit__") if real is Client else ("__aenter__", "__aexit__"):
        assert hasattr(fake, name)


def test_a_raw_lease_expires_in_cluster_time() -> None:
    fake = FakeCluster()
    c = fake.client()
    lease = c.acquire(["k"], ttl=30)
    assert lease.expires_at_ms == fake.clock.now_ms + 30_000
    fake.advance(29.999)
    assert c.slots("k").used == 1
    fake.advance(0.001)
    assert c.slots("k").used == 0
    with pytest.raises(quorate.LeaseNotFound):
        c.renew(lease.lease_id)


def test_a_held_slot_renews_as_time_passes_and_is_freed_on_exit() -> None:
    fake = FakeCluster(policies={"one": ConcurrencyPolicy("job:*", 1)})
    c = fake.client()
    with c.slot(["job:a"], ttl=30) as s:
        fake.advance(300)
        assert not s.lost and s.renewals == 30  # every ttl/3
        with pytest.raises(quorate.LimitExceeded) as e:
            c.acquire(["job:a"])
        assert e.value.retry_after_ms <= 30_000
    assert c.slots("job:a").used == 0
    fake.advance(300)  # no timer left behind renews a released lease
    assert s.renewals == 30


def test_an_outage_loses_a_held_slot_at_its_deadline() -> None:
    fake = FakeCluster()
    c = fake.client()
    with c.slot(["k"], ttl=30) as s:
        fake.available = False
        fake.advance(29)
        assert not s.lost
        fake.advance(2)
        assert s.lost and "deadline" in (s.lost_reason or "")
        fake.available = True
    assert c.unavailable_count >= 2


def test_buckets_refill_exactly_as_gcra_says() -> None:
    fake = FakeCluster()
    c = fake.client()
    for _ in range(3):
        assert c.check("ip:1", limit=3, period=3).allowed
    denied = c.check("ip:1", limit=3, period=3)
    assert not denied.allowed and denied.retry_after_ms == 1000
    fake.advance(0.999)
    assert c.check("ip:1", limit=3, period=3).retry_after_ms == 1
    fake.advance(0.001)
    d = c.check("ip:1", limit=3, period=3)
    assert d.allowed and d.remaining == 0


def test_failure_policies_on_an_unavailable_fake() -> None:
    fake = FakeCluster()
    closed, open_ = fake.client(), fake.client(failure_policy="open")
    fake.available = False
    with pytest.raises(quorate.Unavailable):
        closed.check("k", limit=1, period=1)
    with pytest.raises(quorate.Unavailable):
        closed.acquire(["k"])
    d = open_.check("k", limit=1, period=1)
    assert d.allowed and d.degraded
    with open_.slot(["k"]) as s:
        assert s.degraded and s.lease is None
    assert (closed.unavailable_count, open_.fail_open_count) == (2, 2)


def test_async_fake_slots_renew_on_the_fake_clock() -> None:
    async def main() -> None:
        fake = FakeCluster()
        async with fake.async_client() as c, c.slot(["k"], ttl=3) as s:
            fake.advance(10)
            assert not s.lost and s.renewals == 10
            assert (await c.slots("k")).used == 1
        assert (await c.slots("k")).used == 0

    asyncio.run(main())


def test_seeded_from_cluster_toml() -> None:
    fake = FakeCluster.from_config(ROOT / "cluster.toml", clock=FakeClock(0))
    p = fake.client().policies()
    assert p.default_limit == 10
    assert p.get("orgs") == ConcurrencyPolicy("org:*", 5)
    assert p.get("user") == RatePolicy(300, 60_000, 300)
    assert {t.name: t.multiplier for t in p.tiers}["superuser"] == 10.0


def test_pytest_fixtures(
    quorate_fake: FakeCluster, quorate_client: FakeClient, quorate_async_client: FakeAsyncClient
) -> None:
    assert quorate_client.fake is quorate_fake is quorate_async_client.fake
    quorate_client.acquire(["k"])
    assert asyncio.run(quorate_async_client.slots("k")).used == 1


def test_the_asgi_middleware_runs_on_the_fake() -> None:
    from quorate.contrib.asgi import RateLimitMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    fake = FakeCluster()
    mw = RateLimitMiddleware(app, client=fake.async_client(), write="2/hour")
    scope = {"type": "http", "method": "POST", "path": "/", "client": ("1.2.3.4", 1), "headers": []}
    statuses: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def main() -> None:
        for _ in range(3):
            await mw(scope, lambda: asyncio.sleep(0), send)

    asyncio.run(main())
    assert statuses == [200, 200, 429]
