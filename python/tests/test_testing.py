"""``quorate.testing`` on its own: the surfaces match the real clients, time moves
only when the test moves it (leases expire, held slots renew, buckets refill exactly
as GCRA says), the failure policies work on an unavailable fake, and the pytest
fixtures are there. No cluster needed; test_behaviour.py holds the fake to a real one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from quorate_cluster import ROOT, poll

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


# -- waiting for a slot: FIFO per key, no barging, deadlines on the fake clock ----------


@pytest.fixture
def waiting() -> Iterator[Callable[..., Future[Any]]]:
    """Runs a blocking call (a waiting acquire) on a thread of its own."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield lambda fn, *args, **kw: pool.submit(fn, *args, **kw)


def queued(c: FakeClient, key: str, n: int) -> None:
    """Wait (with a deadline, real time) until ``n`` acquires wait on ``key``."""
    poll(f"{n} waiting on {key}", lambda: True if c.slots(key).queue.length == n else None, 5)


def test_waiters_are_granted_first_come_first_served_as_slots_free(
    waiting: Callable[..., Future[Any]],
) -> None:
    fake = FakeCluster()
    c = fake.client(holder="test")
    c.set_limit("k", 1)
    first = c.acquire(["k"], ttl=60)
    b = waiting(c.acquire, ["k"], ttl=20, lease_id="b", wait=30)
    queued(c, "k", 1)
    d = waiting(c.acquire, ["k"], ttl=60, lease_id="c", wait=30)
    queued(c, "k", 2)
    q = c.slots("k").queue
    assert [(w.position, w.lease_id, w.keys) for w in q.waiters] == [
        (1, "b", ("k",)),
        (2, "c", ("k",)),
    ]
    assert q.waiters[0].deadline_ms == fake.clock.now_ms + 30_000
    fake.advance(5)
    assert c.release(first.lease_id)
    granted = b.result(timeout=5)
    assert granted.lease_id == "b" and granted.waited == 5.0
    assert granted.expires_at_ms == fake.clock.now_ms + 20_000, "its TTL runs from the grant"
    assert not d.done() and [w.lease_id for w in c.slots("k").queue.waiters] == ["c"]
    fake.advance(20)  # b's lease expires before c's deadline: the slot goes to c
    assert d.result(timeout=5).waited == 25.0
    assert c.slots("k").queue.length == 0


def test_a_wait_ends_at_its_deadline_on_the_fake_clock(
    waiting: Callable[..., Future[Any]],
) -> None:
    fake = FakeCluster()
    c = fake.client()
    c.set_limit("k", 1)
    c.acquire(["k"], ttl=600)
    w = waiting(c.acquire, ["k"], ttl=60, wait=30)
    queued(c, "k", 1)
    fake.advance(29.999)
    assert not w.done()
    fake.advance(0.001)
    with pytest.raises(quorate.LimitExceeded) as e:
        w.result(timeout=5)
    assert (e.value.queue_position, e.value.blocked_by) == (1, ["k"])
    assert e.value.body["queue_position"] == 1
    assert c.slots("k").queue.length == 0
    # Without anyone to free a slot or move the clock, the wait ends in real time.
    with pytest.raises(quorate.LimitExceeded) as e:
        c.acquire(["k"], ttl=60, wait=0.05)
    assert e.value.queue_position == 1
    with pytest.raises(quorate.InvalidRequest):
        c.acquire(["k"], ttl=60, wait=60.001)  # over [limits] max_wait_ms


def test_no_barging_and_all_or_nothing_across_keys(waiting: Callable[..., Future[Any]]) -> None:
    fake = FakeCluster()
    c = fake.client()
    c.set_limit("x", 1)
    c.set_limit("y", 1)
    a = c.acquire(["x"], ttl=60)
    both = waiting(c.acquire, ["x", "y"], ttl=60, lease_id="both", wait=30)
    queued(c, "y", 1)
    # y has room, but "both" asked first: a newcomer on y waits behind it.
    with pytest.raises(quorate.LimitExceeded) as e:
        c.acquire(["y"], ttl=60)
    assert e.value.blocked_by == ["y"] and e.value.queue_position is None
    assert e.value.retry_after_ms == 30_000, "blocked by the queue: its deadline at the latest"
    later = waiting(c.acquire, ["y"], ttl=60, lease_id="later", wait=30)
    queued(c, "y", 2)
    assert c.slots("y").used == 0 and not later.done()
    c.release(a.lease_id)
    assert both.result(timeout=5).lease_id == "both"
    assert (c.slots("x").used, c.slots("y").used) == (1, 1)
    assert not later.done()
    c.set_limit("y", 2)  # a raised limit grants the next waiter
    assert later.result(timeout=5).lease_id == "later"


def test_a_retry_keeps_its_place_and_a_granted_waiter_gets_its_grant(
    waiting: Callable[..., Future[Any]],
) -> None:
    fake = FakeCluster()
    c = fake.client()
    c.set_limit("k", 1)
    a = c.acquire(["k"], ttl=60)
    b = waiting(c.acquire, ["k"], ttl=60, lease_id="b", wait=30)
    queued(c, "k", 1)
    d = waiting(c.acquire, ["k"], ttl=60, lease_id="c", wait=30)
    queued(c, "k", 2)
    # "b" asks again (its first answer was lost): still first, not behind "c", with
    # its deadline moved to the retry's.
    fake.advance(1)
    again = waiting(c.acquire, ["k"], ttl=60, lease_id="b", wait=30)
    moved = fake.clock.now_ms + 30_000
    poll("the retry", lambda: c.slots("k").queue.waiters[0].deadline_ms == moved or None, 5)
    assert [w.lease_id for w in c.slots("k").queue.waiters] == ["b", "c"]
    with pytest.raises(quorate.LeaseConflict):
        c.acquire(["other"], ttl=60, lease_id="b", wait=30)
    with pytest.raises(quorate.LimitExceeded):
        c.acquire(["k"], ttl=60, lease_id="c")  # a plain acquire of a waiting id: denied
    assert [w.lease_id for w in c.slots("k").queue.waiters] == ["b", "c"], "and still waiting"
    c.release(a.lease_id)
    token = b.result(timeout=5).fencing_token
    assert again.result(timeout=5).fencing_token == token
    assert c.acquire(["k"], ttl=60, lease_id="b", wait=30).fencing_token == token
    assert not d.done()
    fake.advance(30)
    with pytest.raises(quorate.LimitExceeded):
        d.result(timeout=5)


def test_a_waiting_slot_counts_its_ttl_from_the_grant(waiting: Callable[..., Future[Any]]) -> None:
    fake = FakeCluster()
    c = fake.client()
    c.set_limit("k", 1)
    c.acquire(["k"], ttl=40)

    def job() -> tuple[bool, float, int]:
        with c.slot(["k"], ttl=30, wait=60) as s:
            fake.advance(15)  # renews on the way, at a third of the TTL
            return s.lost, s.remaining, s.renewals

    held = waiting(job)
    queued(c, "k", 1)
    fake.advance(40)  # the first lease expires: the slot's wait ends after 40 s
    lost, remaining, renewals = held.result(timeout=5)
    # Its local deadline is the grant plus the TTL, not the request's start plus the
    # TTL (long gone after a 40 s wait).
    assert not lost and renewals == 1 and remaining == pytest.approx(25.0)
    assert c.slots("k").used == 0


def test_async_fake_waits_without_blocking_the_loop() -> None:
    async def main() -> None:
        fake = FakeCluster()
        async with fake.async_client() as c:
            await c.set_limit("k", 1)
            first = await c.acquire(["k"], ttl=60)
            task = asyncio.create_task(c.acquire(["k"], ttl=60, lease_id="w", wait=30))
            while (await c.slots("k")).queue.length == 0:
                await asyncio.sleep(0)  # let the task queue
            assert await c.release(first.lease_id)
            assert (await asyncio.wait_for(task, 5)).lease_id == "w"
            async with c.slot(["k"], ttl=60, wait=0.05) as s:
                pytest.fail(f"{s} entered while the slot is held")

    with pytest.raises(quorate.LimitExceeded) as e:
        asyncio.run(main())
    assert e.value.queue_position == 1


def test_a_cancelled_async_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        fake = FakeCluster()
        async with fake.async_client() as c:
            await c.set_limit("k", 1)
            await c.acquire(["k"], ttl=60)
            task = asyncio.create_task(c.acquire(["k"], ttl=60, wait=30))
            while (await c.slots("k")).queue.length == 0:
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.wait({task})
            assert task.cancelled()
            assert (await c.slots("k")).queue.length == 0

    asyncio.run(main())
