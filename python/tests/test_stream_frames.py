"""The decision stream's byte layout and routing rules (``quorate._stream``) without a
node: frames byte for byte, the numbers held to ``proto/src/stream.rs``, which calls
may stream and where. test_stream.py runs streams against a real cluster."""

from __future__ import annotations

import json
import re
import struct
from typing import NoReturn

import pytest
from quorate_cluster import ROOT

import quorate
from quorate import _calls as calls
from quorate import _routes as routes
from quorate import _stream as s
from quorate.types import RateCheck

STREAM_RS = (ROOT / "proto" / "src" / "stream.rs").read_text()
ROUTES_RS = (ROOT / "proto" / "src" / "routes.rs").read_text()


def rust_const(name: str) -> str:
    m = re.search(rf"pub const {name}: [^=]+= (.+);", STREAM_RS)
    assert m, f"{name} not in stream.rs"
    return m.group(1).strip('"')


def test_the_numbers_mirror_the_rust_definition() -> None:
    ours = (s.STREAM_PROTOCOL, s.LEN_BYTES, s.REQUEST_HEAD, s.ANSWER_HEAD, s.MAX_IN_FLIGHT)
    rust = (
        rust_const("STREAM_PROTOCOL"),
        *(
            int(rust_const(n))
            for n in ("LEN_BYTES", "REQUEST_HEAD", "ANSWER_HEAD", "MAX_IN_FLIGHT")
        ),
    )
    assert ours == rust


def test_each_op_byte_names_the_route_it_does_in_rust() -> None:
    """StreamOp's byte -> its RouteId (``StreamOp::X => RouteId::Y``) -> that route's
    path in the route table: the same op byte for the same path here."""
    bytes_ = {v: int(b) for v, b in re.findall(r"^\s+(\w+) = (\d+),$", STREAM_RS, re.M)}
    route_of = dict(re.findall(r"StreamOp::(\w+) => RouteId::(\w+)", STREAM_RS))
    paths = dict(re.findall(r'row\(RouteId::(\w+), Post, "([^"]+)"', ROUTES_RS))
    rust = {paths[route_of[v]]: b for v, b in bytes_.items()}
    assert rust == {route.pattern: op for route, op in s.OPS.items()}
    assert len(rust) == 4


def test_a_request_frame_byte_for_byte() -> None:
    frame = s.encode_request(7, 4, {"key": "k", "limit": 1})
    body = b'{"key":"k","limit":1}'
    assert frame == struct.pack(">I", 9 + len(body)) + (7).to_bytes(8, "big") + b"\x04" + body
    # The length prefix counts everything after itself.
    assert int.from_bytes(frame[:4], "big") == len(frame) - s.LEN_BYTES


def test_answers_are_taken_whole_and_partial_ones_wait() -> None:
    one = s.encode_answer(2**64 - 1, 429, b'{"allowed":false}')
    two = s.encode_answer(3, 200, b"{}")
    assert one[4:12] == b"\xff" * 8 and one[12:14] == (429).to_bytes(2, "big")
    buf = bytearray(one + two[:5])
    assert s.take_answers(buf) == [s.Answer(2**64 - 1, 429, b'{"allowed":false}')]
    assert buf == bytearray(two[:5]), "a partial frame stays for the next read"
    assert s.take_answers(buf) == []
    buf += two[5:] + one[:3]
    assert s.take_answers(buf) == [s.Answer(3, 200, b"{}")]
    assert buf == bytearray(one[:3])


def test_an_answer_shorter_than_its_head_is_a_frame_error() -> None:
    buf = bytearray(struct.pack(">I", 9) + bytes(9))
    with pytest.raises(s.FrameError):
        s.take_answers(buf)


def never(e: Exception) -> NoReturn:
    pytest.fail(f"undecided: {e}")


def test_an_answer_becomes_the_response_its_route_would_give() -> None:
    """Status and body read as over HTTP; the rate-limit headers the answer lacks are
    the node's, built from the body (test_stream.py compares them with a node's)."""
    result = {"key": "k", "allowed": False, "limit": 1, "period_ms": 1000, "burst": 1}
    result |= {"remaining": 0, "reset_after_ms": 900, "retry_after_ms": 900}
    denied = {"error": "rate_limited", "message": "no", "allowed": False, "limit": 1}
    denied |= {"remaining": 0, "reset_after_ms": 900, "retry_after_ms": 900}
    denied["results"] = [result]
    call = calls.rate([RateCheck("k", limit=1, period=1)], False, never)
    resp = s.as_response(s.Answer(5, 429, json.dumps(denied).encode()))
    assert "ratelimit" not in resp.headers
    d = calls.interpret(call, resp)
    assert (d.allowed, d.retry_after_ms, d.results[0].key) == (False, 900, "k")
    assert d.headers["retry-after"] == "1" and d.headers["x-ratelimit-limit"] == "1"
    assert d.headers["ratelimit"].startswith('"inline";r=0;t=1;pk=:')
    with pytest.raises(quorate.RateLimited):
        calls.interpret(calls.rate([RateCheck("k", limit=1, period=1)], True, never), resp)
    gone = s.Answer(6, 404, b'{"error":"lease_not_found","message":"gone"}')
    with pytest.raises(quorate.LeaseNotFound):
        calls.interpret(calls.renew("x", 1.0), s.as_response(gone))


def test_only_decisions_stream() -> None:
    release = calls.release("x")
    assert s.op_of(release) == 2
    assert s.op_of(calls.renew("x", 3.0)) == 3
    assert s.op_of(calls.acquire(["k"], 1.0, "id", None, never)) == 1
    assert s.op_of(calls.rate([RateCheck("k", "p")], False, never)) == 4
    for other in (calls.slots("k"), calls.counter_incr("k", 1.0, 1), calls.cluster()):
        assert s.op_of(other) is None, other.path
    assert s.StreamRoutes(enabled=False).op(release) is None
    assert s.StreamRoutes(enabled=True).op(release) == 2


def test_streams_go_to_http_nodes_that_did_not_refuse_lately() -> None:
    r = s.StreamRoutes(enabled=True, memory=30.0)
    a, b = "http://10.0.0.1:7101", "http://10.0.0.2:7101"
    assert r.usable(a, now=100.0) and r.usable(b, now=100.0)
    assert not r.usable("https://10.0.0.1:7101", now=100.0), "TLS nodes keep HTTP"
    r.refused(a, now=100.0)
    assert not r.usable(a, now=129.9) and r.usable(b, now=129.9)
    assert r.usable(a, now=130.0), "asked again once the refusal is old"


def test_the_upgrade_request_and_its_answer() -> None:
    req = s.upgrade_request("http://127.0.0.1:7101", {"authorization": "Bearer t"})
    head, _, rest = req.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST {routes.STREAM.pattern} HTTP/1.1" and rest == b""
    assert {"host: 127.0.0.1:7101", "connection: Upgrade", "authorization: Bearer t"} <= set(lines)
    assert f"upgrade: {s.STREAM_PROTOCOL}" in lines

    status, headers = s.parse_upgrade(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: quorate-api/1\r\n"
        b"x-quorate-leader: http://10.0.0.2:7101\r\n\r\n"
    )
    assert status == 101 and headers["x-quorate-leader"] == "http://10.0.0.2:7101"
    assert s.parse_upgrade(b"HTTP/1.1 404 Not Found\r\n\r\n")[0] == 404
    with pytest.raises(s.FrameError):
        s.parse_upgrade(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(ValueError, match="http://"):
        s.address("https://10.0.0.1:7101")
    assert s.address("http://[::1]:7101") == ("::1", 7101)
