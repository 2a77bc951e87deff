"""``quorate.contrib.limits``: the ``limits`` storage on quorate counters.

The key mapping and URI parsing on their own; the storage under limits' own
strategies on a :mod:`quorate.testing` fake (time moves only when the test moves it);
then against the real cluster: two storages with their own clients (as two worker
processes would have) share one fixed window exactly, sync and async.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.strategies import FixedWindowRateLimiter as AsyncFixedWindow
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from quorate_cluster import Cluster

import quorate
from quorate.contrib.limits import (
    AsyncQuorateStorage,
    QuorateStorage,
    counter_key,
    parse_uri,
)
from quorate.testing import FakeCluster

QUORATE_KEY = re.compile(r"[A-Za-z0-9_\-.:/@+=]{1,256}")


def uri(c: Cluster, scheme: str = "quorate") -> str:
    return f"{scheme}://" + ",".join(u.removeprefix("http://") for u in c.urls)


def test_counter_keys_are_valid_quorate_keys_and_one_to_one() -> None:
    keys = [
        "LIMITER/127.0.0.1//api/v1/orders/10/1/minute",
        "LIMITER/a b/10/1/minute",
        "LIMITER/a=20b/10/1/minute",  # looks like an escape of the one above
        "LIMITER/é/1/1/second",
        "LIMITER/?#%~!/1/1/second",
        "x" * 249,
        "x" * 250,
        "y" * 1000,
        "y" * 1001,
    ]
    mapped = [counter_key(k) for k in keys]
    assert all(QUORATE_KEY.fullmatch(m) for m in mapped), mapped
    assert len(set(mapped)) == len(keys)
    assert mapped[0] == "limits:LIMITER/127.0.0.1//api/v1/orders/10/1/minute"
    assert mapped[1] == "limits:LIMITER/a=20b/10/1/minute"
    assert mapped[2] == "limits:LIMITER/a=3D20b/10/1/minute"
    assert mapped[3] == "limits:LIMITER/=C3=A9/1/1/second"
    assert len(mapped[5]) == 256 and mapped[6].startswith("limits-sha256:")


def test_uris_name_the_nodes_and_an_optional_token() -> None:
    assert parse_uri("quorate://h1:7101,h2:7102") == (["http://h1:7101", "http://h2:7102"], None)
    assert parse_uri("async+quorate+https://:s3cret@h1:1/") == (["https://h1:1"], "s3cret")
    for bad in ("redis://h:1", "quorate://", "quorate:h1"):
        with pytest.raises(ConfigurationError):
            parse_uri(bad)


def test_the_schemes_are_registered_with_limits() -> None:
    s = storage_from_string("quorate://127.0.0.1:1", deadline=0.5, timeout=0.2)
    assert isinstance(s, QuorateStorage)
    assert isinstance(s.client, quorate.Client)
    assert s.client.nodes == ["http://127.0.0.1:1"]
    assert s.check() is False, "no node there"
    a = storage_from_string("async+quorate://127.0.0.1:1,127.0.0.1:2", token="t")
    assert isinstance(a, AsyncQuorateStorage)


def test_fixed_window_on_a_fake_cluster() -> None:
    fake = FakeCluster()
    storage = QuorateStorage("quorate://unused:1", client=fake.client())
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(3)
    assert [limiter.hit(item, "ip", "1.2.3.4") for _ in range(5)] == [True] * 3 + [False] * 2
    assert not limiter.test(item, "ip", "1.2.3.4")
    stats = limiter.get_window_stats(item, "ip", "1.2.3.4")
    assert stats.remaining == 0
    assert 59 < stats.reset_time - time.time() <= 60
    assert limiter.hit(item, "ip", "other"), "another identifier has its own window"
    fake.advance(60)
    assert limiter.hit(item, "ip", "1.2.3.4"), "a new window"
    limiter.clear(item, "ip", "1.2.3.4")
    assert limiter.get_window_stats(item, "ip", "1.2.3.4").remaining == 3
    with pytest.raises(NotImplementedError):
        storage.reset()
    # No conditional charge, so no moving or sliding window: limits refuses to build them.
    with pytest.raises(NotImplementedError):
        MovingWindowRateLimiter(storage)
    with pytest.raises(NotImplementedError):
        SlidingWindowCounterRateLimiter(storage)


def test_an_unavailable_cluster_raises_never_admits() -> None:
    fake = FakeCluster()
    limiter = FixedWindowRateLimiter(QuorateStorage("quorate://u:1", client=fake.client()))
    fake.available = False
    with pytest.raises(quorate.Unavailable):
        limiter.hit(RateLimitItemPerMinute(3), "k")


def test_two_storages_share_one_window_exactly(cluster: Cluster, uid: str) -> None:
    # Two storages, each with its own client: what two worker processes would have.
    storages = [storage_from_string(uri(cluster)) for _ in range(2)]
    limiters = [FixedWindowRateLimiter(s) for s in storages]
    item = RateLimitItemPerMinute(25)
    with ThreadPoolExecutor(max_workers=6) as pool:
        hits = list(pool.map(lambda i: limiters[i % 2].hit(item, uid), range(60)))
    assert hits.count(True) == 25
    assert limiters[1].get_window_stats(item, uid).remaining == 0
    assert storages[0].get(item.key_for(uid)) == 60, "every hit was counted once"
    assert all(s.check() for s in storages)
    limiters[0].clear(item, uid)
    assert limiters[1].hit(item, uid)


def test_the_async_storage_on_the_cluster(cluster: Cluster, uid: str) -> None:
    async def run() -> list[bool]:
        storage = storage_from_string(uri(cluster, "async+quorate"))
        assert isinstance(storage, AsyncQuorateStorage)
        limiter = AsyncFixedWindow(storage)
        item = RateLimitItemPerSecond(4, 30)
        hits = await asyncio.gather(*(limiter.hit(item, uid) for _ in range(10)))
        stats = await limiter.get_window_stats(item, uid)
        assert stats.remaining == 0
        assert 25 < stats.reset_time - time.time() <= 30
        assert await storage.check()
        assert isinstance(storage.client, quorate.AsyncClient)
        await storage.client.aclose()
        return hits

    assert asyncio.run(run()).count(True) == 4
