"""Seed 003 end to end: Starlette app with read/write limits per client IP.

Real worker processes (``examples/003_starlette_rw/app.py`` under uvicorn) against a
real three-node cluster."""

from __future__ import annotations

import math
import threading
import time

import httpx
from apps import Workers, app_env, spread, statuses
from quorate_cluster import Cluster

EXAMPLE = "003_starlette_rw"


def post(c: httpx.Client, _i: int) -> httpx.Response:
    return c.post("/api/v1/sessions")


def test_seed_limits_headers_and_separate_read_write(
    cluster: Cluster, uid: str, apps: Workers
) -> None:
    # The seed's numbers: 1000 reads and 100 writes per minute per IP.
    (app,) = apps.start(app_env(cluster.urls, RATE_KEY_PREFIX=uid))
    started = time.monotonic()
    writes = [app.http.post("/api/v1/sessions") for _ in range(100)]
    # Then until the first denial: on a slow machine the bucket refills meanwhile.
    while writes[-1].status_code != 429 and len(writes) < 140:
        writes.append(app.http.post("/api/v1/sessions"))
    elapsed = time.monotonic() - started
    codes = [r.status_code for r in writes]
    # 100 of burst plus at most the refill while the loop ran (100/min = 1 per 0.6 s).
    admitted = codes.count(201)
    assert 100 <= admitted <= 100 + math.ceil(elapsed / 0.6) + 1, (elapsed, codes)
    assert codes[:100] == [201] * 100
    ok, denied = writes[0], writes[-1]
    assert denied.status_code == 429, codes
    for r in (ok, denied):  # headers on every response, allowed or not
        assert r.headers["x-ratelimit-limit"] == "100"
        assert "ratelimit-policy" in r.headers
        assert "ratelimit" in r.headers
    assert ok.headers["x-ratelimit-remaining"] == "99"
    assert "retry-after" not in ok.headers
    body = denied.json()
    assert body["error"] == "rate_limited"
    assert int(denied.headers["retry-after"]) == body["retry_after"] >= 1
    # Reads have their own bucket: still allowed with the write bucket empty.
    read = app.http.get("/api/v1/sessions")
    assert read.status_code == 200
    assert read.headers["x-ratelimit-limit"] == "1000"
    assert read.headers["x-ratelimit-remaining"] == "999"
    # The health endpoint is exempt and carries no rate headers.
    assert "x-ratelimit-limit" not in app.http.get("/healthz").headers


def test_two_workers_share_one_limit(cluster: Cluster, uid: str, apps: Workers) -> None:
    env = app_env(cluster.urls, RATE_KEY_PREFIX=uid, RATE_WRITE="20/hour")
    workers = apps.start(env, n=2)
    responses = spread(workers, 60, post)
    assert statuses(responses)[201] == 20, statuses(responses)
    assert statuses(responses)[429] == 40
    pids = {r.json()["pid"] for r in responses if r.status_code == 201}
    assert len(pids) == 2, "both worker processes admitted requests"


def test_forwarded_for_only_through_trusted_proxies(
    cluster: Cluster, uid: str, apps: Workers
) -> None:
    untrusting = apps.start(app_env(cluster.urls, RATE_KEY_PREFIX=f"u{uid}", RATE_WRITE="3/hour"))
    trusting = apps.start(
        app_env(
            cluster.urls,
            RATE_KEY_PREFIX=f"t{uid}",
            RATE_WRITE="3/hour",
            QUORATE_TRUSTED_PROXIES="127.0.0.1/32",
        ),
    )
    # A client rotating X-Forwarded-For cannot dodge the limit of an untrusting app...
    spoofed = [
        untrusting[0].http.post("/api/v1/sessions", headers={"x-forwarded-for": f"198.51.100.{i}"})
        for i in range(6)
    ]
    assert [r.status_code for r in spoofed] == [201] * 3 + [429] * 3
    # ...while behind a trusted proxy each forwarded client has its own bucket, and the
    # client-written left part of the chain is ignored.
    for i in range(3):
        hdr = {"x-forwarded-for": f"10.9.9.9, 203.0.113.{i}"}
        got = [trusting[0].http.post("/api/v1/sessions", headers=hdr).status_code for _ in range(4)]
        assert got == [201, 201, 201, 429]


def test_survives_leader_kill_without_over_admission(
    chaos_cluster: Cluster, uid: str, apps: Workers
) -> None:
    c = chaos_cluster
    env = app_env(c.urls, RATE_KEY_PREFIX=uid, RATE_WRITE="40/hour", QUORATE_DEADLINE=8)
    workers = apps.start(env, n=2)
    before = spread(workers, 20, post, threads=4)
    killed = threading.Event()

    def kill_leader() -> None:
        c.kill(c.leader_id())
        killed.set()

    killer = threading.Thread(target=kill_leader)
    killer.start()
    during = spread(workers, 60, post, threads=4)
    killer.join()
    assert killed.is_set()
    new_leader = c.leader_id()
    assert new_leader in c.running()
    after = spread(workers, 10, post, threads=2)
    counts = statuses(before + during + after)
    # Never more than the limit, whatever the kill did.
    assert counts[201] <= 40, counts
    # Bounded errors: the client rides out the election, so almost nothing fails.
    assert counts[503] <= 5, counts
    # A lost answer may charge a retry twice (never admit twice): allow a little slack.
    assert counts[201] >= 34, counts
    assert set(counts) <= {201, 429, 503}


def test_fail_closed_and_fail_open_when_cluster_down(
    chaos_cluster: Cluster, uid: str, apps: Workers
) -> None:
    c = chaos_cluster
    base = {"RATE_KEY_PREFIX": uid, "RATE_WRITE": "5/hour", "QUORATE_DEADLINE": 1.5}
    closed, opened = apps.start_closed_and_open(app_env(c.urls, **base))
    assert closed.http.post("/api/v1/sessions").status_code == 201
    for nid in list(c.running()):
        c.kill(nid)
    down_closed = [closed.http.post("/api/v1/sessions") for _ in range(3)]
    down_open = [opened.http.post("/api/v1/sessions") for _ in range(10)]
    assert [r.status_code for r in down_closed] == [503] * 3
    assert down_closed[0].headers["retry-after"] == "1"
    assert down_closed[0].json()["error"] == "unavailable"
    # Fail-open admits past the limit (that is the trade it makes) without rate headers.
    assert [r.status_code for r in down_open] == [201] * 10
    assert "x-ratelimit-limit" not in down_open[0].headers
