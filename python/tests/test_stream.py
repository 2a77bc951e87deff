"""Decisions over a decision stream (``stream=True``) against real clusters: the same
results as over HTTP, seen by the nodes as streamed frames, several coroutines on one
stream, the HTTP fallback for a node that refuses the upgrade, a lost answer retried
like a lost HTTP answer, and a stream that outlives its node's restart.

The nodes' ``/metrics`` tell which way a decision travelled: a streamed one counts in
``quorate_http_requests_total`` with ``method="STREAM"``, an HTTP one with ``POST``,
and ``quorate_api_streams`` is the streams a node holds open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from quorate_cluster import Cluster, poll, tokens_toml

import quorate
from quorate import AsyncClient, Client, RateCheck
from quorate import _calls as calls
from quorate._stream import LEN_BYTES

_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def total(c: Cluster, name: str, **labels: str) -> float:
    """The sum of metric ``name`` over the running nodes' samples with ``labels``."""
    out = 0.0
    for nid in c.running():
        for line in c.http.get(c.url(nid) + "/metrics").text.splitlines():
            m = _SAMPLE.match(line)
            if m and m.group(1) == name:
                have = dict(_LABEL.findall(m.group(2) or ""))
                if all(have.get(k) == v for k, v in labels.items()):
                    out += float(m.group(3))
    return out


def streamed(c: Cluster, route: str | None = None) -> float:
    """Decisions the nodes took from streams (of ``route``, or all)."""
    labels = {"method": "STREAM"} | ({"route": route} if route else {})
    return total(c, "quorate_http_requests_total", **labels)


def open_streams(c: Cluster) -> float:
    return total(c, "quorate_api_streams")


def no_streams_open(c: Cluster) -> None:
    """Wait for the nodes to see every earlier test's streams closed (a node counts a
    stream down once it reads the close)."""
    poll("no decision streams open", lambda: True if open_streams(c) == 0 else None, 10)


# -- the same results as over HTTP -------------------------------------------------------


def decisions(c: Client, key: str, rate_key: str) -> list[Any]:
    """Every decision a stream carries, with its errors, as facts comparable between
    runs on different keys: 13 frames the node decides, and one it refuses."""
    facts: list[Any] = []
    c.set_limit(key, 1)  # an admin call: always HTTP
    lease = c.acquire([key], ttl=10)
    facts.append(("granted", [(s.key == key, s.used, s.limit) for s in lease.slots]))
    with pytest.raises(quorate.LimitExceeded) as full:
        c.acquire([key], ttl=10)
    facts.append(("full", full.value.blocked_by == [key], full.value.retry_after > 0))
    renewed = c.renew(lease.lease_id, 30)
    later = renewed.expires_at_ms > lease.expires_at_ms
    facts.append(("renewed", renewed.lease_id == lease.lease_id, later))
    facts.append(("released", c.release(lease.lease_id), c.release(lease.lease_id)))
    with pytest.raises(quorate.LeaseNotFound) as gone:
        c.renew(lease.lease_id, 5)
    facts.append(("gone", gone.value.status, gone.value.code))
    checks = [c.check(rate_key, limit=2, period=3600) for _ in range(3)]
    facts.append([(d.allowed, d.remaining, d.limit, d.error, sorted(d.headers)) for d in checks])
    facts.append(("retry-after", checks[2].headers["retry-after"], checks[2].retry_after > 0))
    both = [RateCheck(rate_key, limit=2, period=3600), RateCheck(rate_key + "b", "user")]
    multi = c.check_all(both)
    facts.append(("multi", multi.allowed, [(r.allowed, r.limit) for r in multi.results]))
    with pytest.raises(quorate.RateLimited) as limited:
        c.check(rate_key, limit=2, period=3600, raise_on_limit=True)
    facts.append(("limited", limited.value.decision.remaining))
    with pytest.raises(quorate.InvalidRequest) as bad:
        c.acquire(["bad key"], ttl=5)
    facts.append(("invalid", bad.value.status, bad.value.code))
    # Too large for the node: a stream refuses the frame (id 0) and closes; the next
    # decision opens a new one.
    with pytest.raises(quorate.PayloadTooLarge) as big:
        c.acquire([key], ttl=5, holder="x" * 70_000)
    facts.append(("too large", big.value.status, big.value.code))
    facts.append(("after", c.check(rate_key + "c", limit=1, period=60).allowed))
    c.delete_limit(key)
    return facts


def test_stream_decisions_equal_http_decisions(cluster: Cluster, uid: str) -> None:
    seen = []
    for stream in (False, True):
        before = streamed(cluster)
        with Client(cluster.urls, stream=stream) as c:
            facts = decisions(c, f"org:eq{stream}-{uid}", f"ip:eq{stream}-{uid}")
            assert c.unavailable_count == 0
        seen.append((facts, streamed(cluster) - before))
    (over_http, none), (over_stream, frames) = seen
    assert over_stream == over_http
    assert (none, frames) == (0, 13)
    assert over_http[0] == ("granted", [(True, 1, 1)])
    assert over_http[5][2][:3] == (False, 0, 2), "the third check is limited"


def test_stream_rate_headers_are_the_nodes(cluster: Cluster, uid: str) -> None:
    """The headers a streamed decision rebuilds from its body are those a node sends
    with that very body over HTTP (named policy, inline, several, denied)."""
    inline = {"key": f"ip:h2-{uid}", "limit": 3, "period_ms": 10_000, "burst": 2}
    several = [{"key": f"h3-{uid}", "policy": "user"}, {"key": f"h4-{uid}", "limit": 1}]
    several[1]["period_ms"] = 60_000
    cases: list[dict[str, Any]] = [
        {"key": f"ip:h1-{uid}", "policy": "user", "tier": "authenticated"},
        inline,
        {"checks": several},
    ]
    statuses = []
    for body in cases:
        names = [c.get("policy", "inline") for c in body.get("checks", [body])]
        for _ in range(3):  # allowed, then (the last two cases) denied
            r = cluster.http.post(cluster.urls[0] + "/v1/rate/check", json=body)
            statuses.append(r.status_code)
            node = {h: r.headers[h] for h in calls.RATE_HEADERS if h in r.headers}
            assert len(node) >= 5
            assert calls.node_headers(r.json(), names) == node
    assert statuses == [200, 200, 200, 200, 200, 429, 200, 429, 429]


# -- the node's view ---------------------------------------------------------------------


def test_one_stream_per_client_counted_by_the_node(cluster: Cluster, uid: str) -> None:
    no_streams_open(cluster)
    before = streamed(cluster, "/v1/rate/check")
    with Client(cluster.urls, stream=True) as c:
        assert open_streams(cluster) == 0, "opened on first use, not before"
        for _ in range(5):
            assert c.check(f"ip:m-{uid}", limit=10, period=60).allowed
        # One stream: the first went to the first node, whose answer named the leader,
        # where the stream moved (a node counts a stream closed once it reads the close).
        poll("one stream open", lambda: True if open_streams(cluster) == 1 else None, 10)
        assert streamed(cluster, "/v1/rate/check") - before == 5
        assert c.slots(f"org:m-{uid}").used == 0  # a read: HTTP, the stream stays
        assert c.check(f"ip:m-{uid}", limit=10, period=60).remaining == 4
        assert open_streams(cluster) == 1
    poll("the stream closed", lambda: True if open_streams(cluster) == 0 else None, 10)


def test_async_coroutines_share_one_stream(cluster: Cluster, uid: str) -> None:
    """Many coroutines in flight on one stream at once, a waiting acquire among them."""
    no_streams_open(cluster)
    key, full = f"ip:a-{uid}", f"org:afull-{uid}"
    before = streamed(cluster)

    async def main() -> None:
        async with AsyncClient(cluster.urls, stream=True) as c:
            await c.set_limit(full, 1)
            holder = await c.acquire([full], ttl=30)
            # A waiting acquire holds its request open on the stream ...
            waiter = asyncio.create_task(c.acquire([full], ttl=30, wait=20))
            while not (await c.slots(full)).queue.length:
                await asyncio.sleep(0.02)
            # ... while 25 checks share the stream with it, all in flight together.
            ds = await asyncio.gather(*(c.check(key, limit=10, period=3600) for _ in range(25)))
            assert sum(d.allowed for d in ds) == 10
            assert not waiter.done()
            assert await asyncio.to_thread(open_streams, cluster) == 1
            assert await c.release(holder.lease_id)
            granted = await asyncio.wait_for(waiter, 10)
            assert granted.waited > 0
            assert await c.release(granted.lease_id)
            with pytest.raises(quorate.LeaseNotFound):
                await c.renew(granted.lease_id, 5)
            await c.delete_limit(full)

    asyncio.run(main())
    # acquire, waiting acquire, 25 checks, 2 releases, renew.
    assert streamed(cluster) - before == 30


def test_a_busy_sync_stream_sends_other_threads_over_http(cluster: Cluster, uid: str) -> None:
    """One request at a time on a sync client's stream: while a waiting acquire holds
    it, another thread's decision goes over HTTP instead of waiting behind it."""
    key = f"org:busy-{uid}"
    with Client(cluster.urls, stream=True) as c, ThreadPoolExecutor(max_workers=1) as pool:
        c.set_limit(key, 1)
        holder = c.acquire([key], ttl=30)
        waiter = pool.submit(c.acquire, [key], ttl=30, wait=20)
        poll("the waiter queued", lambda: True if c.slots(key).queue.length else None, 10)
        assert c._stream is not None and c._stream.base is not None, "it waits on the stream"
        http_before = total(cluster, "quorate_http_requests_total", method="POST")
        stream_before = streamed(cluster)
        assert c.check(f"ip:busy-{uid}", limit=5, period=60).allowed
        assert not waiter.done()
        assert total(cluster, "quorate_http_requests_total", method="POST") - http_before == 1
        assert streamed(cluster) == stream_before
        assert c.release(holder.lease_id)
        granted = waiter.result(timeout=10)
        assert c.release(granted.lease_id)
        c.delete_limit(key)


# -- tokens ------------------------------------------------------------------------------

AUTH_TOML = tokens_toml(
    {
        "ops": ("admin", "admin-token-0123456789"),
        "team-a": ("client", "client-a-token-0123456789"),
        "team-b": ("client", "client-b-token-0123456789"),
    }
)


def test_stream_tokens_forbidden_and_unauthorized(quorate_bin: Any, uid: str) -> None:
    c = Cluster(quorate_bin, nodes=1, policies_toml=AUTH_TOML, name="stream-auth")
    try:
        c.start()
        c.http.headers["authorization"] = "Bearer admin-token-0123456789"  # for /metrics
        key = f"org:tok-{uid}"
        with (
            Client(c.urls, token="client-a-token-0123456789", stream=True) as a,
            Client(c.urls, token="client-b-token-0123456789", stream=True) as b,
        ):
            lease = a.acquire([key], ttl=30)
            with pytest.raises(quorate.Forbidden) as release:
                b.release(lease.lease_id)
            with pytest.raises(quorate.Forbidden) as renew:
                b.renew(lease.lease_id, 30)
            assert (release.value.status, renew.value.code) == (403, "forbidden")
            assert open_streams(c) == 2
            assert total(c, "quorate_http_requests_total", method="STREAM", status="403") == 2
            assert a.release(lease.lease_id)
        # Without a token the upgrade itself is refused (401): the call goes over HTTP,
        # whose answer says what the refusal means.
        with Client(c.urls, stream=True) as anon, pytest.raises(quorate.Unauthorized):
            anon.check(f"ip:anon-{uid}", limit=1, period=60)
    finally:
        c.close()


# -- a node that refuses the upgrade -----------------------------------------------------

DECISION = {
    "allowed": True,
    "limit": 5,
    "remaining": 4,
    "reset_after_ms": 12_000,
    "retry_after_ms": 0,
    "results": [
        {
            "key": "k",
            "allowed": True,
            "limit": 5,
            "period_ms": 60_000,
            "burst": 5,
            "remaining": 4,
            "reset_after_ms": 12_000,
            "retry_after_ms": 0,
        }
    ],
}


class _OlderRelease(BaseHTTPRequestHandler):
    """A node from before decision streams: no /v1/stream route (404), rate checks
    answered over HTTP. Records what it was asked."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str | None]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append((self.path, self.headers.get("upgrade")))
        status, body = (200, DECISION) if self.path == "/v1/rate/check" else (404, {})
        if status == 404:
            body = {"error": "not_found", "message": f"no route {self.path}"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def older_node() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (_OlderRelease,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_upgrade_falls_back_to_http_and_is_remembered(
    older_node: tuple[str, list[tuple[str, str | None]]],
) -> None:
    url, seen = older_node
    upgrade = ("/v1/stream", "quorate-api/1")
    with Client([url], stream=True) as c:
        assert [c.check("k", limit=5, period=60).remaining for _ in range(3)] == [4, 4, 4]
    # One upgrade asked, refused, and not asked again for the next calls.
    assert seen == [upgrade] + [("/v1/rate/check", None)] * 3

    seen.clear()

    async def main() -> None:
        async with AsyncClient([url], stream=True) as c:
            ds = await asyncio.gather(*(c.check("k", limit=5, period=60) for _ in range(3)))
            assert [d.allowed for d in ds] == [True] * 3

    asyncio.run(main())
    assert seen.count(upgrade) == 1 and seen.count(("/v1/rate/check", None)) == 3


# -- failures ----------------------------------------------------------------------------


class _DropFirstAnswer:
    """A TCP proxy to one node that passes a stream's upgrade and requests through but,
    where the first answer frame should be relayed, closes the client's connection:
    the node decided, the client never hears of it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.dropped = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            client, _ = self.listener.accept()
        up = socket.create_connection(self.upstream)
        threading.Thread(target=self._pipe, args=(client, up), daemon=True).start()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += up.recv(4096)
        head, _, buf = buf.partition(b"\r\n\r\n")
        client.sendall(head + b"\r\n\r\n")
        # Read the first answer frame whole, then drop it and the connection.
        while len(buf) < LEN_BYTES or len(buf) < LEN_BYTES + int.from_bytes(buf[:4], "big"):
            buf += up.recv(4096)
        self.dropped += 1
        for s in (client, up):
            # shutdown, not just close: the pipe thread still reads from them.
            s.shutdown(socket.SHUT_RDWR)
            s.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(4096):
                dst.sendall(data)
        except OSError:
            pass


def test_a_lost_stream_answer_is_retried_like_a_lost_http_answer(
    cluster: Cluster, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The acquire's frame was decided but its answer lost with the stream: an unknown
    outcome, so the exchange retries the same lease id on the next node, as after a
    lost HTTP answer, and gets the first grant back instead of a second slot."""
    caplog.set_level(logging.DEBUG, logger="quorate")
    key = f"org:lost-{uid}"
    proxy = _DropFirstAnswer(cluster.urls[1])
    before = streamed(cluster, "/v1/slots/acquire")
    with Client([proxy.url, *cluster.urls], stream=True) as c:
        lease = c.acquire([key], ttl=30)
        assert proxy.dropped == 1
        assert "closed the decision stream" in caplog.text
        info = c.slots(key)
        assert info.used == 1, "the retry must return the first grant, not take a second slot"
        assert info.leases[0].lease_id == lease.lease_id
        # Both attempts were frames: the lost one, and the retry on the hinted leader.
        assert streamed(cluster, "/v1/slots/acquire") - before == 2
        assert c.release(lease.lease_id)


def test_streams_outlive_a_restart_of_their_node(
    chaos_cluster: Cluster, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The node a stream goes to restarts: the client notices the closed stream before
    writing to it, opens a new one, and the call costs no failed attempt."""
    c = chaos_cluster
    caplog.set_level(logging.DEBUG, logger="quorate")
    key = f"ip:rs-{uid}"

    async def main() -> None:
        async with AsyncClient(c.urls, timeout=1.0, deadline=15.0, stream=True) as ac:
            with Client(c.urls, timeout=1.0, deadline=15.0, stream=True) as sc:
                assert sc.check(key, limit=100, period=60).allowed
                assert (await ac.check(key, limit=100, period=60)).allowed
                assert sc._stream is not None and ac._stream is not None
                node = sc._stream.base
                assert node is not None and ac._stream.base == node
                nid = next(n for n in c.nodes if c.url(n) == node)
                assert await asyncio.to_thread(open_streams, c) == 2
                await asyncio.to_thread(c.restart, nid)
                caplog.clear()
                assert sc.check(key, limit=100, period=60).allowed
                assert (await ac.check(key, limit=100, period=60)).allowed
                assert sc._stream.base is not None and ac._stream.base is not None
                assert await asyncio.to_thread(open_streams, c) == 2
                failed = [r.getMessage() for r in caplog.records if "did not decide" in r.msg]
                assert not [f for f in failed if "decision stream" in f], failed

    asyncio.run(main())
