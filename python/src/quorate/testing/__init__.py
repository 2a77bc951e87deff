"""Test quorate code without a cluster: an in-memory fake with the clients' surface.

::

    from quorate.testing import FakeCluster

    def test_second_job_waits(tmp_path):
        fake = FakeCluster(policies={"orgs": ConcurrencyPolicy("org:*", 1)})
        client = fake.client()                      # same surface as quorate.Client
        with client.slot(["org:acme"], ttl=30):
            with pytest.raises(quorate.LimitExceeded):
                client.acquire(["org:acme"])
            fake.advance(300)                       # held slots renew on the way
        assert client.slots("org:acme").used == 0

- :class:`FakeCluster` decides like a cluster (slots, leases and TTLs, waiting
  acquires in FIFO queues, GCRA rate checks, policies, tiers, overrides; same
  exceptions and decision fields) on a
  :class:`FakeClock` that moves only when the test says so;
  :meth:`FakeCluster.from_config` seeds it from a ``cluster.toml``;
  ``fake.available = False`` makes every call undecided, to exercise failure policies.
- :class:`FakeClient` and :class:`FakeAsyncClient` have the surface of
  :class:`~quorate.Client` and :class:`~quorate.AsyncClient`.
- The pytest plugin (installed with the package, ``quorate.testing.pytest_plugin``)
  provides the fixtures ``quorate_fake``, ``quorate_client`` and
  ``quorate_async_client``.

The fake's behaviour is checked against a real cluster by one shared set of tests
(``python/tests/test_behaviour.py``). What it leaves out: replication, elections,
state-size caps, tokens and roles.
"""

from ._client import FakeAsyncClient, FakeClient
from ._clock import FakeClock
from ._cluster import FakeCluster

__all__ = ["FakeAsyncClient", "FakeClient", "FakeClock", "FakeCluster"]
