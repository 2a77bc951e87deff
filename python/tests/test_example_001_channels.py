"""Seed 001 end to end: WebSocket connection, message and AI-query limits per user and
per IP with tier multipliers (``examples/001_channels_ws`` under uvicorn)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from apps import App, Workers, app_env
from quorate_cluster import Cluster
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

EXAMPLE = "001_channels_ws"


def ws_url(app: App, token: str | None = None) -> str:
    url = app.url.replace("http://", "ws://") + "/ws/chat/"
    return f"{url}?token={token}" if token else url


_STACK = contextlib.ExitStack()


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    _STACK.close()


def open_ws(app: App, token: str | None = None) -> tuple[ClientConnection | None, int | None]:
    """Connect; (connection, None) when welcomed, (None, close code) when refused.
    Every connection is closed at the end of the test."""
    ws = _STACK.enter_context(connect(ws_url(app, token), open_timeout=10, close_timeout=2))
    try:
        frame = json.loads(ws.recv(timeout=10))
    except ConnectionClosed as e:
        return None, e.rcvd.code if e.rcvd else None
    assert frame["type"] == "welcome"
    return ws, None


def ask(ws: ClientConnection, kind: str, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ws.send(json.dumps({"type": kind, "text": f"m{i}", "question": f"q{i}"}))
        out.append(json.loads(ws.recv(timeout=15)))
    return out


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [f.get("error", f["type"]) for f in frames]


def test_connection_limits_per_ip_and_per_user_with_tiers(
    cluster: Cluster, uid: str, apps: Workers
) -> None:
    (app,) = apps.start(app_env(cluster.urls, RATE_KEY_PREFIX=uid))
    started = time.monotonic()
    anon = [open_ws(app) for _ in range(12)]
    codes = [code for _, code in anon]
    refill = int((time.monotonic() - started) * 10 / 60) + 1
    assert codes[:10] == [None] * 10
    assert 10 <= codes.count(None) <= 10 + refill
    assert codes[-1] == 4029
    # Authenticated users are charged per user, with the x2 tier: 20 connections.
    alice = [open_ws(app, "alice") for _ in range(21)]
    assert [code for _, code in alice][:20] == [None] * 20
    assert alice[-1][1] == 4029
    for ws, _ in anon + alice:
        if ws is not None:
            ws.close()


def test_message_and_ai_query_limits_with_tiers(cluster: Cluster, uid: str, apps: Workers) -> None:
    (app,) = apps.start(app_env(cluster.urls, RATE_KEY_PREFIX=uid))
    anon, _ = open_ws(app)
    assert anon is not None
    frames = ask(anon, "message", 22)
    assert kinds(frames)[:20] == ["message"] * 20
    assert kinds(frames)[-1] == "rate_limited"
    assert frames[-1]["scope"] == "message"
    assert frames[-1]["retry_after"] > 0
    ai = ask(anon, "ai_query", 6)
    assert kinds(ai)[:5] == ["answer"] * 5
    assert kinds(ai)[5] == "rate_limited"
    # The connection stays open after a denial: a later, different scope still works.
    anon.close()
    bob, _ = open_ws(app, "bob")
    assert bob is not None
    assert kinds(ask(bob, "ai_query", 11)) == ["answer"] * 10 + ["rate_limited"]
    root, _ = open_ws(app, "root")
    assert root is not None
    assert kinds(ask(root, "ai_query", 30)) == ["answer"] * 30  # x10: 50 per minute
    bob.close()
    root.close()


def test_two_workers_share_the_connection_limit(cluster: Cluster, uid: str, apps: Workers) -> None:
    workers = apps.start(app_env(cluster.urls, RATE_KEY_PREFIX=uid), n=2)
    started = time.monotonic()
    results = [open_ws(workers[i % 2]) for i in range(16)]
    accepted = [ws for ws, _ in results if ws is not None]
    refill = int((time.monotonic() - started) * 10 / 60) + 1
    assert 10 <= len(accepted) <= 10 + refill
    assert all(code == 4029 for ws, code in results if ws is None)
    for ws in accepted:
        ws.close()


def test_leader_kill_keeps_limits(chaos_cluster: Cluster, uid: str, apps: Workers) -> None:
    c = chaos_cluster
    workers = apps.start(app_env(c.urls, RATE_KEY_PREFIX=uid), n=2)
    started = time.monotonic()
    ws1, _ = open_ws(workers[0], "alice")
    ws2, _ = open_ws(workers[1], "alice")
    assert ws1 is not None
    assert ws2 is not None
    frames = ask(ws1, "ai_query", 4) + ask(ws2, "ai_query", 2)
    c.kill(c.leader_id())
    frames += ask(ws1, "ai_query", 4) + ask(ws2, "ai_query", 4)
    assert c.leader_id() in c.running()
    answered = kinds(frames).count("answer")
    refill = int((time.monotonic() - started) * 10 / 60) + 1
    assert answered <= 10 + refill  # alice's x2 AI limit, across both workers
    assert answered >= 8
    assert kinds(frames).count("unavailable") <= 2
    ws1.close()
    ws2.close()


def test_fail_closed_and_fail_open(chaos_cluster: Cluster, uid: str, apps: Workers) -> None:
    c = chaos_cluster
    base = {"RATE_KEY_PREFIX": uid, "QUORATE_DEADLINE": 1.5}
    closed, opened = apps.start_closed_and_open(app_env(c.urls, **base))
    held, _ = open_ws(closed)
    assert held is not None
    for nid in list(c.running()):
        c.kill(nid)
    ws, code = open_ws(closed)
    assert ws is None
    assert code == 1013  # try again later
    assert kinds(ask(held, "message", 1)) == ["unavailable"]
    ws_open, _ = open_ws(opened)
    assert ws_open is not None
    assert kinds(ask(ws_open, "ai_query", 8)) == ["answer"] * 8  # past the limit of 5
    held.close()
    ws_open.close()
