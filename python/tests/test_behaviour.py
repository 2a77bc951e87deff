"""One set of behaviour tests, run on the fake (``quorate.testing``) and on a real
three-node cluster: what a test written against the fake asserts must hold on the
real thing. Each test is parametrized over the backends (``[fake]``, ``[cluster]``,
and ``[stream]``: the real cluster with decisions sent over a decision stream, which
must behave as HTTP does); all start from the repository's ``cluster.toml`` seeds.

Time is not moved here (a real cluster's clock cannot be), so the numbers compared
are those that stay exact while a test runs for well under a second: GCRA's
``remaining`` and the order of denials, and waits up to the few milliseconds that
pass between calls. Tests that move time are the fake's own (test_testing.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from quorate_cluster import ROOT, poll

import quorate
from quorate import Client, ConcurrencyPolicy, RateCheck, RatePolicy
from quorate.testing import FakeCluster

BACKENDS = ["fake", "cluster", "stream"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def qc(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A sync client: a fake on a fresh fake cluster, or a real one on the shared
    cluster (tests use unique keys and names there)."""
    if backend == "fake":
        with FakeCluster.from_config(ROOT / "cluster.toml").client() as fake:
            yield fake
    else:
        cluster = request.getfixturevalue("cluster")
        with Client(cluster.urls, deadline=10.0, stream=backend == "stream") as real:
            yield real


@pytest.fixture
def aqc_factory(backend: str, request: pytest.FixtureRequest) -> Any:
    """Makes an async client inside the running loop (for ``asyncio.run``)."""
    if backend == "fake":
        fake = FakeCluster.from_config(ROOT / "cluster.toml")
        return fake.async_client
    cluster = request.getfixturevalue("cluster")
    return lambda: quorate.AsyncClient(cluster.urls, stream=backend == "stream")


# -- slots ----------------------------------------------------------------------------


def test_acquire_is_all_or_nothing(qc: Any, uid: str) -> None:
    org, other, glob = f"org:a-{uid}", f"org:b-{uid}", f"g-{uid}"
    assert qc.set_limit(glob, 1) == 1
    lease = qc.acquire([org, glob], ttl=30)
    assert [(s.key, s.used, s.limit) for s in lease.slots] == [(org, 1, 5), (glob, 1, 1)]
    with pytest.raises(quorate.LimitExceeded) as e:
        qc.acquire([other, glob], ttl=30)
    assert e.value.blocked_by == [glob]
    assert [(s.key, s.used, s.limit) for s in e.value.slots] == [(other, 0, 5), (glob, 1, 1)]
    assert 29_000 < e.value.retry_after_ms <= 30_000
    assert e.value.status == 429 and e.value.code == "limit_exceeded"
    assert qc.slots(other).used == 0, "a denied acquire takes nothing"
    assert qc.release(lease.lease_id) is True
    assert qc.release(lease.lease_id) is False
    assert qc.acquire([other, glob], ttl=30).slots[1].used == 1
    qc.delete_limit(glob)


def test_a_retried_acquire_returns_the_first_grant(qc: Any, uid: str) -> None:
    key = f"org:r-{uid}"
    first = qc.acquire([key], ttl=30, lease_id=f"job-{uid}")
    again = qc.acquire([key], ttl=30, lease_id=f"job-{uid}")
    assert (again.fencing_token, again.expires_at_ms) == (first.fencing_token, first.expires_at_ms)
    assert qc.slots(key).used == 1
    with pytest.raises(quorate.LeaseConflict):
        qc.acquire([f"org:other-{uid}"], ttl=30, lease_id=f"job-{uid}")
    later = qc.acquire([f"org:r2-{uid}"], ttl=30)
    assert later.fencing_token > first.fencing_token
    qc.release(first.lease_id)
    qc.release(later.lease_id)


def test_renew_extends_and_a_released_lease_is_not_found(qc: Any, uid: str) -> None:
    lease = qc.acquire([f"org:n-{uid}"], ttl=10, holder="worker-1")
    renewed = qc.renew(lease.lease_id, ttl=60)
    assert renewed.lease_id == lease.lease_id
    assert renewed.expires_at_ms >= lease.expires_at_ms + 49_000
    info = qc.slots(f"org:n-{uid}")
    assert [(x.lease_id, x.holder, x.fencing_token) for x in info.leases] == [
        (lease.lease_id, "worker-1", lease.fencing_token)
    ]
    assert qc.release(lease.lease_id)
    with pytest.raises(quorate.LeaseNotFound) as e:
        qc.renew(lease.lease_id, ttl=10)
    assert e.value.status == 404 and e.value.code == "lease_not_found"


def test_slot_holds_and_releases_on_exit(qc: Any, uid: str) -> None:
    key = f"org:s-{uid}"
    with pytest.raises(RuntimeError), qc.slot([key], ttl=30) as s:
        assert s.fencing_token is not None and not s.lost
        assert qc.slots(key).used == 1
        raise RuntimeError("the work failed")
    assert s.released is True
    assert qc.slots(key).used == 0


def test_a_detached_lease_is_held_elsewhere_and_released_there(qc: Any, uid: str) -> None:
    key = f"org:h-{uid}"
    with qc.slot([key], ttl=30) as s:
        lease_id = s.detach()
    assert qc.slots(key).used == 1, "a detached slot is not released on exit"
    with qc.hold(lease_id, ttl=30) as job:
        assert job.held and not job.lost
    assert job.released is True
    assert qc.slots(key).used == 0
    with pytest.raises(quorate.LeaseNotFound), qc.hold(lease_id, ttl=30):
        pytest.fail("a released lease cannot be adopted")


def test_limits_come_from_override_policy_or_default(qc: Any, uid: str) -> None:
    org, plain = f"org:l-{uid}", f"plain-{uid}"
    assert (qc.get_limit(org).limit, qc.get_limit(org).source) == (5, "policy")
    assert qc.get_limit(org).policy == "orgs"
    assert (qc.get_limit(plain).limit, qc.get_limit(plain).source) == (10, "default")
    qc.set_limit(org, 2)
    info = qc.get_limit(org)
    assert (info.limit, info.source, info.used) == (2, "override", 0)
    listed = qc.list_limits(f"org:l-{uid}")
    assert [(x.key, x.limit) for x in listed.limits] == [(org, 2)]
    assert qc.delete_limit(org) is True
    assert qc.delete_limit(org) is False
    assert qc.get_limit(org).source == "policy"
    with pytest.raises(quorate.InvalidRequest):
        qc.set_limit(org, 0)
    with pytest.raises(quorate.InvalidRequest):
        qc.list_limits("org:", max=0)


def test_waiters_take_turns_in_fifo_order_and_a_wait_can_end_ungranted(qc: Any, uid: str) -> None:
    key = f"org:w-{uid}"
    qc.set_limit(key, 1)
    first = qc.acquire([key], ttl=30)

    def queue() -> list[tuple[int, str | None]]:
        return [(w.position, w.lease_id) for w in qc.slots(key).queue.waiters]

    def queued(n: int) -> None:
        poll(f"{n} waiting on {key}", lambda: True if len(queue()) == n else None, 10)

    with ThreadPoolExecutor(max_workers=2) as pool:
        b = pool.submit(qc.acquire, [key], ttl=30, lease_id=f"b-{uid}", wait=20)
        queued(1)  # b waits before c asks
        c = pool.submit(qc.acquire, [key], ttl=30, lease_id=f"c-{uid}", wait=20)
        queued(2)
        assert queue() == [(1, f"b-{uid}"), (2, f"c-{uid}")]
        waiter = qc.slots(key).queue.waiters[0]
        assert waiter.keys == (key,) and waiter.deadline_ms > first.expires_at_ms - 30_000
        assert qc.release(first.lease_id)
        granted = b.result(timeout=10)
        assert granted.lease_id == f"b-{uid}" and granted.fencing_token > first.fencing_token
        assert granted.waited > 0, "a grant from the queue says it waited"
        assert queue() == [(1, f"c-{uid}")] and not c.done()
        assert qc.release(granted.lease_id)
        assert c.result(timeout=10).lease_id == f"c-{uid}"
    assert qc.slots(key).queue.length == 0 and qc.slots(key).used == 1
    # A wait that ends before a slot frees: the same 429 as a plain denial, plus the
    # place it had; it leaves the queue.
    with pytest.raises(quorate.LimitExceeded) as e:
        qc.acquire([key], ttl=30, wait=0.2)
    assert (e.value.queue_position, e.value.blocked_by) == (1, [key])
    # No lease expiry to point at (a new wait joins the back): a fixed 1 s hint.
    assert e.value.status == 429 and e.value.retry_after_ms == 1000
    assert qc.slots(key).queue.length == 0
    with pytest.raises(quorate.InvalidRequest):
        qc.acquire([key], ttl=30, wait=61)  # over [limits] max_wait_ms
    qc.release(f"c-{uid}")
    qc.delete_limit(key)


# -- rate limits ----------------------------------------------------------------------


def test_gcra_allows_the_burst_then_denies_with_the_wait(qc: Any, uid: str) -> None:
    key = f"ip:g-{uid}"
    for i in range(5):
        d = qc.check(key, limit=5, period=60)
        assert d.allowed and d.remaining == 4 - i
        assert (i + 1) * 12_000 - 1_000 < d.reset_after_ms <= (i + 1) * 12_000
        assert d.headers["x-ratelimit-limit"] == "5"
        assert "retry-after" not in d.headers
    d = qc.check(key, limit=5, period=60)
    assert not d.allowed
    assert (d.limit, d.remaining, d.error) == (5, 0, "rate_limited")
    assert 11_000 < d.retry_after_ms <= 12_000
    assert d.message == f"rate limit exceeded on {key}"
    assert d.headers["retry-after"] == "12"
    assert d.headers["ratelimit-policy"].startswith('"inline";q=5;w=60;pk=:')
    with pytest.raises(quorate.RateLimited) as e:
        qc.check(key, limit=5, period=60, raise_on_limit=True)
    assert not e.value.decision.allowed


def test_cost_and_burst(qc: Any, uid: str) -> None:
    key = f"ip:c-{uid}"
    d = qc.check(key, limit=10, period=1, cost=4)
    assert d.allowed and d.remaining == 6
    d = qc.check(key, limit=10, period=1, cost=7)
    assert not d.allowed and d.results[0].remaining == 6
    with pytest.raises(quorate.InvalidRequest):
        qc.check(key, limit=10, period=1, cost=11)
    d = qc.check(f"ip:b-{uid}", limit=60, period=60, burst=3)
    assert (d.results[0].burst, d.remaining) == (3, 2)


def test_multi_check_charges_all_or_none(qc: Any, uid: str) -> None:
    tight, loose = f"t-{uid}", f"l-{uid}"
    both = [RateCheck(tight, limit=1, period=60), RateCheck(loose, limit=10, period=60)]
    d = qc.check_all(both)
    assert d.allowed and [r.remaining for r in d.results] == [0, 9]
    assert d.remaining == 0, "the most restrictive result speaks for the request"
    d = qc.check_all(both)
    assert not d.allowed
    assert [r.allowed for r in d.results] == [False, True]
    assert d.results[1].remaining == 9, "the passing check reports its uncharged state"
    # The loose bucket was not charged by the denied request.
    assert qc.check(loose, limit=10, period=60).remaining == 8


def test_named_policies_and_tiers(qc: Any, uid: str) -> None:
    d = qc.check(f"user:p-{uid}", "user")
    assert (d.limit, d.results[0].period_ms, d.remaining) == (300, 60_000, 299)
    d = qc.check(f"user:q-{uid}", "user", tier="superuser")
    assert (d.limit, d.results[0].burst) == (3000, 3000)
    d = qc.check(f"user:r-{uid}", "user", tier="authenticated")
    assert d.limit == 600
    with pytest.raises(quorate.PolicyNotFound):
        qc.check(f"user:s-{uid}", "no-such-policy")
    with pytest.raises(quorate.PolicyNotFound):
        qc.check(f"user:s-{uid}", "user", tier="no-such-tier")
    with pytest.raises(quorate.InvalidRequest):
        qc.check("bad key", limit=1, period=1)


def test_policies_and_tiers_are_managed(qc: Any, uid: str) -> None:
    rate, conc, tier = f"r-{uid}", f"c-{uid}", f"t-{uid}"
    qc.put_policy(rate, RatePolicy.per(2, 1.0))
    qc.put_policy(conc, ConcurrencyPolicy(f"job-{uid}:*", 1))
    assert qc.put_tier(tier, 1.5).multiplier == 1.5
    p = qc.policies()
    assert p.get(rate) == RatePolicy(limit=2, period_ms=1000, burst=2)
    assert p.get(conc) == ConcurrencyPolicy(f"job-{uid}:*", 1)
    assert (tier, 1.5) in [(t.name, t.multiplier) for t in p.tiers]
    assert qc.check(f"k-{uid}", rate, tier=tier).limit == 3
    assert qc.get_limit(f"job-{uid}:x").limit == 1
    assert qc.delete_policy(rate) and qc.delete_policy(conc) and qc.delete_tier(tier)
    assert not qc.delete_policy(rate)
    assert qc.policies().get(rate) is None


# -- counters (the limits storage's fixed windows) -------------------------------------


def test_counters_count_within_a_window_and_clear(qc: Any, uid: str) -> None:
    key = f"LIMITER/c-{uid}/10/1/minute"
    first = qc.counter_incr(key, 60)
    assert (first.key, first.value) == (key, 1)
    assert 59_000 < first.ttl_ms <= 60_000 and first.expires_at_ms is not None
    again = qc.counter_incr(key, 5, amount=3)
    assert (again.value, again.expires_at_ms) == (4, first.expires_at_ms), "expiry kept"
    assert qc.counter(key).value == 4
    assert qc.clear_counter(key) is True
    assert qc.clear_counter(key) is False
    none = qc.counter(key)
    assert (none.value, none.expires_at_ms, none.ttl_ms) == (0, None, 0)
    with pytest.raises(quorate.InvalidRequest):
        qc.counter_incr("a b", 60)
    with pytest.raises(quorate.InvalidRequest):
        qc.counter_incr(key, 60, amount=0)


def test_allowlisted_checks_pass_uncharged_and_are_audited(qc: Any, uid: str) -> None:
    vip = quorate.AllowEntry(key=f"vip-{uid}:*")
    assert qc.allow(vip).changed
    policy = f"ip-{uid}"
    qc.put_policy(policy, RatePolicy(1, 60_000))
    net = quorate.AllowEntry(ip="2001:db8:1::5/32", policy=policy)
    try:
        for _ in range(3):  # limit 1, yet every one allowed and none charged
            d = qc.check(f"vip-{uid}:x", limit=1, period=60)
            assert d.allowed and d.allowlisted and d.results[0].allowlisted
        plain = qc.check(f"plain-{uid}", limit=1, period=60)
        assert plain.allowed and not plain.allowlisted
        assert not qc.check(f"plain-{uid}", limit=1, period=60).allowed

        change = qc.allow(net)
        assert change.changed and change.entry.ip == "2001:db8::/32"  # canonical
        assert not qc.allow(net).changed
        assert qc.check(f"ip:2001:db8:ffff::1-{uid}", policy).allowed  # not an address
        assert not qc.check(f"ip:2001:db8:ffff::1-{uid}", policy).allowed
        for _ in range(2):
            assert qc.check("ip:2001:db8:ffff::1", policy).allowlisted
        with pytest.raises(quorate.InvalidRequest):
            qc.allow(quorate.AllowEntry(ip="10.0.0.300/8"))

        trail = qc.audit(key=f"allowlist:global:key:vip-{uid}")
        assert [(r.op, r.before, r.after) for r in trail.records] == [("allow", None, "allowed")]
    finally:
        qc.disallow(vip)
        qc.disallow(net)
        qc.delete_policy(policy)
    assert not qc.check(f"vip-{uid}:y", limit=1, period=60).allowlisted
    removed = qc.audit(key=f"allowlist:global:key:vip-{uid}").records[-1]
    assert (removed.op, removed.before, removed.after) == ("disallow", "allowed", None)


async def async_waiter_is_served(c: Any, key: str) -> None:
    """An awaited waiting slot is entered when the slot it waits for is released
    (by the same event loop: the wait must not block it)."""
    await c.set_limit(key, 1)
    first = await c.acquire([key], ttl=30)
    entered = asyncio.Event()

    async def waiter() -> int | None:
        async with c.slot([key], ttl=30, wait=20) as s:
            entered.set()
            token: int | None = s.fencing_token
            return token

    task = asyncio.create_task(waiter())
    deadline = asyncio.get_running_loop().time() + 10
    while (await c.slots(key)).queue.length == 0:
        assert asyncio.get_running_loop().time() < deadline, "the waiter never queued"
        await asyncio.sleep(0.02)
    assert not entered.is_set()
    assert await c.release(first.lease_id)
    token = await asyncio.wait_for(task, 10)
    assert token is not None and token > first.fencing_token
    assert (await c.slots(key)).used == 0, "released on exit"
    await c.delete_limit(key)


def test_async_surface(backend: str, aqc_factory: Any, uid: str) -> None:
    async def main() -> None:
        async with aqc_factory() as c:
            async with c.slot([f"org:as-{uid}"], ttl=30) as s:
                assert s.fencing_token is not None
                assert (await c.slots(f"org:as-{uid}")).used == 1
            assert (await c.slots(f"org:as-{uid}")).used == 0
            async with c.slot([f"org:as-{uid}"], ttl=30, wait=5) as s:
                assert s.lease is not None and s.lease.waited == 0  # room: at once
            await async_waiter_is_served(c, f"org:aw-{uid}")
            d = await c.check(f"ip:as-{uid}", limit=1, period=60)
            assert d.allowed
            assert not (await c.check(f"ip:as-{uid}", limit=1, period=60)).allowed

    asyncio.run(main())
