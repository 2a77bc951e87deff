"""The client against a real three-node cluster: failover, slots, rate checks, admin
calls, error mapping, failure policy. Async twins check the same surface."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from quorate_cluster import Cluster, free_ports, poll, tokens_toml

import quorate
from quorate import AsyncClient, Client


def dead_url() -> str:
    """A loopback URL nothing listens on (connections are refused at once)."""
    return f"http://127.0.0.1:{free_ports(1)[0]}"


@pytest.fixture
def client(cluster: Cluster) -> Any:
    with Client(cluster.urls, timeout=3.0, deadline=10.0) as c:
        yield c


# -- failover -------------------------------------------------------------------------


def test_failover_when_first_node_is_dead(cluster: Cluster, uid: str) -> None:
    with Client([dead_url(), *cluster.urls], deadline=10.0) as c:
        with c.slot([f"org:fo-{uid}"], ttl=10) as s:
            assert s.fencing_token is not None
            assert c.slots(f"org:fo-{uid}").used == 1
        # The client remembers the node that answered and starts there next time.
        assert c._preferred != 0
        assert c.check(f"ip:fo-{uid}", limit=5, period=60).allowed
    assert c.unavailable_count == 0


def test_async_failover_when_first_node_is_dead(cluster: Cluster, uid: str) -> None:
    async def main() -> None:
        async with AsyncClient([dead_url(), *cluster.urls]) as c:
            async with c.slot([f"org:afo-{uid}"], ttl=10) as s:
                assert s.fencing_token is not None
                assert (await c.slots(f"org:afo-{uid}")).used == 1
            assert (await c.slots(f"org:afo-{uid}")).used == 0

    asyncio.run(main())


def rate_checks_served(c: Cluster, ids: list[int]) -> list[float]:
    """Rate checks each node has served on its own API (whatever it then did)."""
    out = []
    for nid in ids:
        text = c.http.get(c.url(nid) + "/metrics").text
        prefix = 'quorate_http_requests_total{route="/v1/rate/check"'
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        out.append(sum(float(line.rsplit(" ", 1)[1]) for line in lines))
    return out


def served_by(c: Cluster, ids: list[int], key: str, client: Client, n: int = 5) -> list[float]:
    """How many of ``n`` rate checks by ``client`` each node served."""
    before = rate_checks_served(c, ids)
    for _ in range(n):
        assert client.check(key, limit=1000, period=60).allowed
    after = rate_checks_served(c, ids)
    return [a - b for a, b in zip(after, before, strict=True)]


def test_the_client_sends_to_the_leader_and_follows_it_after_a_kill(
    chaos_cluster: Cluster, uid: str
) -> None:
    c = chaos_cluster
    key = f"ip:hint-{uid}"
    leader = c.leader_id()
    # Followers first, so only the hint can bring the calls to the leader.
    urls = [c.url(n) for n in sorted(c.nodes, key=lambda n: n == leader)]
    with Client(urls, timeout=1.0, deadline=15.0) as client:
        # The first answer, from a follower, names the leader.
        assert client.check(key, limit=1000, period=60).allowed
        assert client.leader_hint == c.url(leader)
        ids = list(c.nodes)
        assert served_by(c, ids, key, client) == [5.0 if i == leader else 0.0 for i in ids]

        c.kill(leader)
        # The hinted node is gone: the client falls back to the others, whose answers
        # name the new leader once one is elected.
        assert client.check(key, limit=1000, period=60).allowed
        new_leader = c.leader_id()
        assert new_leader != leader

        def follows() -> bool | None:
            ok = client.check(key, limit=1000, period=60).allowed
            return True if ok and client.leader_hint == c.url(new_leader) else None

        poll("the client to follow the new leader", follows)
        running = c.running()
        got = served_by(c, running, key, client)
        assert got == [5.0 if i == new_leader else 0.0 for i in running]


# -- slots ----------------------------------------------------------------------------


def test_slot_is_all_or_nothing_and_released(client: Client, uid: str) -> None:
    org, glob = f"org:aon-{uid}", f"glob-{uid}"
    client.set_limit(glob, 1)
    with client.slot([org, glob], ttl=10) as first:
        assert first.lease is not None
        assert {s.key for s in first.lease.slots} == {org, glob}
        with (
            pytest.raises(quorate.LimitExceeded) as err,
            client.slot([f"org:other-{uid}", glob], ttl=10),
        ):
            pytest.fail("must not be admitted")
        assert err.value.blocked_by == [glob]
        assert err.value.retry_after > 0
        # Nothing was taken on the other org: all or nothing.
        assert client.slots(f"org:other-{uid}").used == 0
    assert client.slots(org).used == 0
    assert client.slots(glob).used == 0
    assert first.released is True
    client.delete_limit(glob)


def test_renewal_outlives_the_ttl(client: Client, uid: str) -> None:
    key = f"org:renew-{uid}"
    with client.slot([key], ttl=0.9) as s:
        started = time.monotonic()
        # Seven renewals at ttl/3 take well over twice the TTL.
        poll("seven renewals", lambda: True if s.renewals >= 7 else None, deadline=15)
        assert time.monotonic() - started > 2 * s.ttl
        info = client.slots(key)
        assert info.used == 1
        assert info.leases[0].lease_id == s.lease_id
        assert not s.lost
    assert client.slots(key).used == 0


def test_release_on_exception(client: Client, uid: str) -> None:
    key = f"org:exc-{uid}"
    with pytest.raises(RuntimeError, match="boom"), client.slot([key], ttl=30) as s:
        assert client.slots(key).used == 1
        raise RuntimeError("boom")
    assert s.released is True
    assert client.slots(key).used == 0


def test_async_release_on_exception_and_cancellation(cluster: Cluster, uid: str) -> None:
    key = f"org:aexc-{uid}"

    async def main() -> None:
        async with AsyncClient(cluster.urls) as c:
            with pytest.raises(ValueError, match="bad"):
                async with c.slot([key], ttl=30):
                    assert (await c.slots(key)).used == 1
                    raise ValueError("bad")
            assert (await c.slots(key)).used == 0

            entered = asyncio.Event()

            async def holder() -> None:
                async with c.slot([key], ttl=30):
                    entered.set()
                    await asyncio.Event().wait()  # until cancelled

            task = asyncio.create_task(holder())
            await asyncio.wait_for(entered.wait(), 10)
            assert (await c.slots(key)).used == 1
            task.cancel()
            await asyncio.wait({task})
            assert (await c.slots(key)).used == 0

    asyncio.run(main())


def test_lost_when_renewal_finds_lease_gone(client: Client, uid: str) -> None:
    key = f"org:lost-{uid}"
    with client.slot([key], ttl=0.9) as s:
        # Someone else (an operator, a bug) releases the lease behind the holder's back.
        assert client.release(s.lease_id) is True
        poll("lost flag", lambda: True if s.lost else None, deadline=5)
        assert "lease_not_found" in (s.lost_reason or "")
        with pytest.raises(quorate.LeaseLost):
            s.raise_if_lost()


def test_async_lost_when_renewal_finds_lease_gone(cluster: Cluster, uid: str) -> None:
    async def main() -> None:
        async with AsyncClient(cluster.urls) as c, c.slot([f"org:alost-{uid}"], ttl=0.9) as s:
            assert await c.release(s.lease_id)
            end = time.monotonic() + 5
            while not s.lost and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert s.lost
            assert "lease_not_found" in (s.lost_reason or "")

    asyncio.run(main())


def test_lost_when_deadline_passes_without_renewal(chaos_cluster: Cluster, uid: str) -> None:
    c = chaos_cluster
    with (
        Client(c.urls, timeout=1.0, deadline=3.0) as client,
        client.slot([f"org:dl-{uid}"], ttl=1.5) as s,
    ):
        assert not s.lost
        # Take the quorum away: renewals now get 503s and refused connections,
        # never lease_not_found, so only the local deadline can say "lost".
        leader = c.leader_id()
        for nid in [n for n in c.nodes if n != leader][:2]:
            c.kill(nid)
        poll("deadline-based loss", lambda: True if s.lost else None, deadline=10)
        assert "deadline" in (s.lost_reason or "")
        assert s.remaining < 0


def test_waiters_keep_their_places_through_a_leader_kill(chaos_cluster: Cluster, uid: str) -> None:
    """Two waiting acquires, each one long request; the leader dies under them. Each
    client retries its own lease id on another node for what is left of its wait, and
    the replicated queue keeps them in the order they asked."""
    c = chaos_cluster
    key = f"org:wk-{uid}"
    b_id, c_id = f"b-{uid}", f"c-{uid}"
    with (
        Client(c.urls, timeout=1.0, deadline=15.0) as admin,
        Client(c.urls, timeout=1.0, deadline=15.0) as for_b,
        Client(c.urls, timeout=1.0, deadline=15.0) as for_c,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        admin.set_limit(key, 1)
        first = admin.acquire([key], ttl=60)

        def queue_is(ids: list[str]) -> None:
            def check() -> bool | None:
                return True if [w.lease_id for w in admin.slots(key).queue.waiters] == ids else None

            poll(f"queue of {key} == {ids}", check, deadline=20)

        waits_b = pool.submit(for_b.acquire, [key], ttl=60, lease_id=b_id, wait=45)
        queue_is([b_id])
        waits_c = pool.submit(for_c.acquire, [key], ttl=60, lease_id=c_id, wait=45)
        queue_is([b_id, c_id])
        c.kill(c.leader_id())
        c.leader_id()  # a new one is elected
        queue_is([b_id, c_id])
        assert not waits_b.done() and not waits_c.done()

        assert admin.release(first.lease_id)
        granted_b = waits_b.result(timeout=30)
        # (Its `waited` may be 0: a retry that arrives after the queue granted it is
        # answered with that grant, as a repeated acquire is.)
        assert granted_b.lease_id == b_id
        queue_is([c_id])
        assert not waits_c.done(), "c waits its turn behind b"
        assert admin.release(b_id)
        assert waits_c.result(timeout=30).lease_id == c_id
        assert admin.slots(key).used == 1
        admin.release(c_id)
        admin.delete_limit(key)


class _LoseFirstAcquireAnswer(httpx.BaseTransport):
    """Sends every request, but drops the answer to the first acquire: the grant is
    made and the client sees a timeout, exactly the case retries must not double-book."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.dropped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path == "/v1/slots/acquire" and not self.dropped:
            response.read()
            self.dropped += 1
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_retry_after_lost_answer_reuses_the_lease(cluster: Cluster, uid: str) -> None:
    key = f"org:lostans-{uid}"
    transport = _LoseFirstAcquireAnswer()
    with Client(cluster.urls, transport=transport) as c:
        lease = c.acquire([key], ttl=30)
        assert transport.dropped == 1
        info = c.slots(key)
        assert info.used == 1, "the retry must return the first grant, not take a second slot"
        assert info.leases[0].lease_id == lease.lease_id
        # An explicit repeat with the same id is answered with the same grant.
        again = c.acquire([key], ttl=30, lease_id=lease.lease_id)
        assert again.fencing_token == lease.fencing_token
        assert c.release(lease.lease_id) is True
        assert c.release(lease.lease_id) is False  # idempotent


def test_hold_adopts_and_releases_a_handed_over_lease(client: Client, uid: str) -> None:
    key = f"org:hold-{uid}"
    request_side = client.slot([key], ttl=5).acquire()
    lease_id = request_side.detach()
    request_side.release()  # detached: does nothing
    assert client.slots(key).used == 1
    with pytest.raises(KeyError), client.hold(lease_id, ttl=5) as job:
        assert not job.lost
        raise KeyError("job failed")
    assert client.slots(key).used == 0
    with pytest.raises(quorate.LeaseNotFound), client.hold(lease_id, ttl=5):
        pytest.fail("a released lease cannot be adopted")


# -- rate checks ----------------------------------------------------------------------


def test_rate_check_single_with_headers(client: Client, uid: str) -> None:
    key = f"ip:rc-{uid}"
    decisions = [client.check(key, limit=3, period=3600) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    denied = decisions[3]
    assert denied.error == "rate_limited"
    assert denied.retry_after > 0
    assert denied.reset > 0
    assert denied.headers["retry-after"] == denied.retry_after_header
    assert denied.headers["x-ratelimit-limit"] == "3"
    assert "ratelimit-policy" in denied.headers
    with pytest.raises(quorate.RateLimited) as err:
        client.check(key, limit=3, period=3600, raise_on_limit=True)
    assert err.value.retry_after > 0


def test_rate_check_tiers_multiply(client: Client, uid: str) -> None:
    d = client.check(f"user:t-{uid}", "user", tier="superuser")
    assert d.limit == 3000
    assert client.check(f"user:t2-{uid}", "user", tier="authenticated").limit == 600
    assert client.check(f"user:t3-{uid}", "user").limit == 300


def test_multi_check_is_all_or_none(client: Client, uid: str) -> None:
    tight = quorate.RateCheck(f"tight-{uid}", limit=1, period=3600)
    loose = quorate.RateCheck(f"loose-{uid}", limit=100, period=3600)
    first = client.check_all([tight, loose])
    assert first.allowed
    assert [r.key for r in first.results] == [tight.key, loose.key]
    second = client.check_all([tight, {"key": loose.key, "limit": 100, "period": 3600}])
    assert not second.allowed
    assert second.results[0].allowed is False
    # The loose bucket was not charged by the denied request.
    assert client.check(loose.key, limit=100, period=3600).remaining == 98


# -- admin ----------------------------------------------------------------------------


def test_limits_policies_and_tiers(client: Client, uid: str) -> None:
    key = f"org:adm-{uid}"
    assert client.get_limit(key).source == "policy"
    assert client.get_limit(key).policy == "orgs"
    assert client.set_limit(key, 2) == 2
    info = client.get_limit(key)
    assert (info.limit, info.source) == (2, "override")
    with client.slot([key], ttl=10):
        rows = client.list_limits(f"org:adm-{uid}").limits
        assert [(r.key, r.limit, r.used) for r in rows] == [(key, 2, 1)]
    assert client.delete_limit(key) is True
    assert client.delete_limit(key) is False
    assert client.get_limit(key).limit == 5

    entry = client.put_policy(f"p-{uid}", quorate.RatePolicy.per(10, 60, burst=2))
    assert entry.spec == quorate.RatePolicy(limit=10, period_ms=60000, burst=2)
    tier = client.put_tier(f"gold-{uid}", 3)
    assert tier.multiplier == 3
    d = client.check(f"k-{uid}", f"p-{uid}", tier=f"gold-{uid}")
    assert (d.limit, d.results[0].burst) == (30, 6)
    policies = client.policies()
    assert policies.get("orgs") == quorate.ConcurrencyPolicy("org:*", 5)
    assert any(t.name == f"gold-{uid}" for t in policies.tiers)
    assert client.delete_tier(f"gold-{uid}") is True
    assert client.delete_policy(f"p-{uid}") is True
    with pytest.raises(quorate.PolicyNotFound):
        client.check(f"k-{uid}", f"p-{uid}")


def test_cluster_info(client: Client, cluster: Cluster) -> None:
    info = client.cluster()
    assert info.leader_id in cluster.nodes
    assert {m.api_addr for m in info.members} == {a for a, _ in cluster.nodes.values()}


# -- error mapping ----------------------------------------------------------------------


def test_error_mapping(client: Client, uid: str) -> None:
    with pytest.raises(quorate.InvalidRequest) as e1:
        client.acquire(["bad key with spaces"], ttl=5)
    assert (e1.value.status, e1.value.code) == (400, "invalid_request")
    with pytest.raises(quorate.LeaseNotFound) as e2:
        client.renew(f"never-{uid}", 5)
    assert isinstance(e2.value, quorate.NotFound) and e2.value.status == 404
    with pytest.raises(quorate.PolicyNotFound):
        client.check(f"k-{uid}", "no-such-policy")
    lease = client.acquire([f"org:c1-{uid}"], ttl=5)
    with pytest.raises(quorate.LeaseConflict):
        client.acquire([f"org:c2-{uid}"], ttl=5, lease_id=lease.lease_id)
    client.release(lease.lease_id)
    with pytest.raises(quorate.PayloadTooLarge):
        client.acquire([f"org:big-{uid}"], ttl=5, holder="x" * 70_000)
    from quorate._calls import Call

    with pytest.raises(quorate.NotFound) as e3:
        client._run(Call("GET", "/v1/nope", lambda b, _: b))
    assert e3.value.code == "not_found"
    with pytest.raises(quorate.MethodNotAllowed):
        client._run(Call("DELETE", "/v1/cluster", lambda b, _: b))
    assert all(issubclass(c, quorate.QuorateError) for c in (quorate.Unavailable, quorate.ApiError))


AUTH_TOML = tokens_toml(
    {
        "ops": ("admin", "admin-token-0123456789"),
        "workers": ("client", "client-token-0123456789"),
    }
)


def test_bearer_token_unauthorized_and_forbidden(quorate_bin: Any, uid: str) -> None:
    c = Cluster(quorate_bin, nodes=1, policies_toml=AUTH_TOML, name="auth")
    try:
        c.start()
        with Client(c.urls) as anon, pytest.raises(quorate.Unauthorized):
            anon.slots("k")
        with Client(c.urls, token="client-token-0123456789") as worker:
            assert worker.slots(f"k-{uid}").used == 0
            with pytest.raises(quorate.Forbidden) as err:
                worker.set_limit(f"k-{uid}", 3)
            assert err.value.status == 403
        with Client(c.urls, token="admin-token-0123456789") as admin:
            assert admin.set_limit(f"k-{uid}", 3) == 3
    finally:
        c.close()


# -- failure policy -------------------------------------------------------------------


def test_fail_closed_and_fail_open_when_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    urls = [dead_url(), dead_url()]
    with Client(urls, deadline=0.3) as closed:
        with pytest.raises(quorate.Unavailable):
            closed.check("k", "anon")
        with pytest.raises(quorate.Unavailable), closed.slot(["org:x"], ttl=5):
            pytest.fail("fail-closed must not run the block")
        assert closed.unavailable_count >= 2
        assert closed.fail_open_count == 0
    caplog.set_level(logging.WARNING, logger="quorate")
    with Client(urls, deadline=0.3, failure_policy="open") as open_:
        d = open_.check("k", "anon")
        assert d.allowed and d.degraded
        with open_.slot(["org:x"], ttl=5) as s:
            assert s.degraded and s.fencing_token is None and not s.lost
        assert open_.fail_open_count == 2
        # A per-call override beats the client's policy.
        with pytest.raises(quorate.Unavailable):
            open_.check("k", "anon", failure_policy="closed")
    assert "failing open" in caplog.text

    async def main() -> None:
        async with AsyncClient(urls, deadline=0.3, failure_policy="open") as c:
            assert (await c.check("k", "anon")).degraded
            async with c.slot(["org:x"], ttl=5) as s:
                assert s.degraded
            assert c.fail_open_count == 2

    asyncio.run(main())


def test_config_errors() -> None:
    with pytest.raises(quorate.ConfigError):
        Client([])
    with pytest.raises(quorate.ConfigError):
        Client(["127.0.0.1:7101"])
    with pytest.raises(quorate.ConfigError):
        Client(["http://127.0.0.1:7101"], failure_policy="sometimes")
    c = Client("http://127.0.0.1:7101/, http://127.0.0.1:7102")
    assert c.nodes == ["http://127.0.0.1:7101", "http://127.0.0.1:7102"]
    c.close()


# -- allowlist ------------------------------------------------------------------------


def test_allowlist_admin_calls_exempt_checks_and_validate(client: Client, uid: str) -> None:
    # A policy of this test's own, so the shared cluster's other tests are unaffected.
    policy = f"al-{uid}"
    client.put_policy(policy, quorate.RatePolicy.per(1, 60.0))
    key = quorate.AllowEntry(key=f"vip-{uid}:*", policy=policy)
    net = quorate.AllowEntry(ip="2001:db8:1:2::9/48", policy=policy)
    assert client.allow(key) == quorate.AllowChange(entry=key, changed=True)
    change = client.allow(net)
    assert change.entry.ip == "2001:db8:1::/48" and change.changed
    assert not client.allow(key).changed
    listed = client.allowlist()
    assert key in listed.entries and change.entry in listed.entries and listed.max >= 2

    # A limit of one per minute, yet allowlisted checks pass again and again, uncharged.
    for _ in range(3):
        for k in (f"vip-{uid}:1", "ip:2001:db8:1:ff::1"):
            d = client.check(k, policy)
            assert d.allowed and d.allowlisted and d.results[0].allowlisted
    assert client.check(f"other-{uid}", policy).allowed
    other = client.check(f"other-{uid}", policy)
    assert not other.allowed and not other.allowlisted

    with pytest.raises(quorate.InvalidRequest, match=r"10\.0\.0\.0/33"):
        client.allow(quorate.AllowEntry(ip="10.0.0.0/33", policy=policy))
    with pytest.raises(ValueError):
        quorate.AllowEntry(key="a", ip="10.0.0.1")

    # Removal by another form of the same network; then the limit applies.
    assert client.disallow(quorate.AllowEntry(ip="2001:db8:1::/48", policy=policy)).changed
    assert client.disallow(key).changed and not client.disallow(key).changed
    assert client.check(f"vip-{uid}:1", policy).allowed
    assert not client.check(f"vip-{uid}:1", policy).allowed
    client.delete_policy(policy)

    # The audit trail recorded each change (the shared cluster has no tokens: "open").
    trail = client.audit(key=f"allowlist:policy={policy}:")
    assert [(r.op, r.before, r.after) for r in trail.records] == [
        ("allow", None, "allowed"),
        ("allow", None, "allowed"),
        ("disallow", "allowed", None),
        ("disallow", "allowed", None),
    ]
    assert {r.caller for r in trail.records} == {"open"}
    first = trail.records[0].index
    later = client.audit(since=first, key=f"allowlist:policy={policy}:")
    assert len(later.records) == 3 and all(r.index > first for r in later.records)
    assert [r.key for r in client.audit(key=f"policy:{policy}").records] == [f"policy:{policy}"] * 2


def test_async_allowlist_admin_calls(cluster: Cluster, uid: str) -> None:
    async def main() -> None:
        async with AsyncClient(cluster.urls, timeout=3.0, deadline=10.0) as c:
            entry = quorate.AllowEntry(key=f"avip-{uid}:*", policy=f"none-{uid}")
            assert (await c.allow(entry)).changed
            assert entry in (await c.allowlist()).entries
            assert (await c.disallow(entry)).changed
            assert entry not in (await c.allowlist()).entries

    asyncio.run(main())
