"""Example 004 end to end: FastAPI + slowapi with ``storage_uri="quorate://..."``.

Two real worker processes (``examples/004_slowapi/app.py`` under uvicorn) against a
real three-node cluster share one limit exactly, and a leader kill never lets them
admit more than it."""

from __future__ import annotations

from apps import Workers
from limits_examples import no_over_admission_through_a_leader_kill, two_workers_share_one_limit
from quorate_cluster import Cluster

EXAMPLE = "004_slowapi"


def test_two_workers_share_one_limit(cluster: Cluster, uid: str, apps: Workers) -> None:
    two_workers_share_one_limit(cluster, uid, apps)


def test_denials_are_slowapi_429s(cluster: Cluster, uid: str, apps: Workers) -> None:
    (app,) = apps.start(
        {"QUORATE_NODES": ",".join(cluster.urls), "RATE_KEY_PREFIX": uid, "RATE": "2/hour"}
    )
    codes = [app.http.post("/api/v1/orders").status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    assert "2 per 1 hour" in app.http.post("/api/v1/orders").text


def test_survives_leader_kill_without_over_admission(
    chaos_cluster: Cluster, uid: str, apps: Workers
) -> None:
    no_over_admission_through_a_leader_kill(chaos_cluster, uid, apps)
