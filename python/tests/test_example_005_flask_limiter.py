"""Example 005 end to end: Flask + Flask-Limiter with ``storage_uri="quorate://..."``.

Two real worker processes (``examples/005_flask_limiter/app.py``) against a real
three-node cluster share one limit exactly, and a leader kill never lets them admit
more than it."""

from __future__ import annotations

from apps import Workers
from limits_examples import no_over_admission_through_a_leader_kill, two_workers_share_one_limit
from quorate_cluster import Cluster

EXAMPLE = "005_flask_limiter"


def test_two_workers_share_one_limit(cluster: Cluster, uid: str, apps: Workers) -> None:
    two_workers_share_one_limit(cluster, uid, apps)


def test_headers_come_from_the_shared_window(cluster: Cluster, uid: str, apps: Workers) -> None:
    env = {"QUORATE_NODES": ",".join(cluster.urls), "RATE_KEY_PREFIX": uid, "RATE": "3/hour"}
    first, second = apps.start(env, n=2)
    r = first.http.post("/api/v1/orders")
    assert (r.status_code, r.headers["x-ratelimit-remaining"]) == (201, "2")
    r = second.http.post("/api/v1/orders")
    assert (r.status_code, r.headers["x-ratelimit-remaining"]) == (201, "1")
    assert int(r.headers["x-ratelimit-reset"]) - int(r.headers.get("date-epoch", 0) or 0) > 3500
    first.http.post("/api/v1/orders")
    denied = second.http.post("/api/v1/orders")
    assert denied.status_code == 429
    assert int(denied.headers["retry-after"]) > 3500


def test_survives_leader_kill_without_over_admission(
    chaos_cluster: Cluster, uid: str, apps: Workers
) -> None:
    no_over_admission_through_a_leader_kill(chaos_cluster, uid, apps)
