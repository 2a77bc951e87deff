"""The decision stream's byte layout and routing rules, without I/O.

A client may send its decisions (acquire, release, renew, rate checks) over one
upgraded connection instead of one HTTP request each: ``POST /v1/stream`` with
``Connection: Upgrade`` and ``Upgrade: quorate-api/1`` (:data:`STREAM_PROTOCOL`), then
length-prefixed frames both ways. This module mirrors ``proto/src/stream.rs`` (a test
holds the numbers to it), so the sync and async connections in
:mod:`quorate._stream_io` share one definition. All integers are big-endian:

- a request frame: ``u32`` length of the rest, ``u64`` id (the client's choice, never
  0), ``u8`` op (:data:`OPS`), then the JSON body the op's HTTP route takes;
- an answer frame: ``u32`` length of the rest, ``u64`` id of the request, ``u16`` the
  HTTP status the route would answer, then the JSON body it would answer.

An answer's status and body become an :class:`httpx.Response` (:func:`as_response`),
so the exchange and :func:`quorate._calls.interpret` read it exactly as an HTTP answer:
there is one mapping from statuses and bodies to results and errors. Answers carry no
headers: the leader hint comes once, on the upgrade's ``101``, and a rate check builds
the rate-limit headers from its body as the node would have (:func:`quorate._calls.rate`).

:class:`StreamRoutes` decides which attempts may use a stream at all: only decisions,
only ``http://`` nodes (a stream is a plain socket; TLS nodes keep HTTP), and not a
node that refused the upgrade in the last :data:`REFUSAL_MEMORY` seconds (an older
release answers 404/405/400; asking it again on every call would double each call's
cost).

Imports point down only: routes, calls.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from . import _routes as r
from ._calls import Call

__all__ = [
    "ANSWER_HEAD",
    "LEN_BYTES",
    "MAX_IN_FLIGHT",
    "OPS",
    "REFUSAL_MEMORY",
    "REQUEST_HEAD",
    "STREAM_PROTOCOL",
    "Answer",
    "FrameError",
    "StreamRoutes",
    "as_response",
    "encode_request",
    "parse_upgrade",
    "take_answers",
    "upgrade_request",
]

#: The ``Upgrade`` token of a decision stream.
STREAM_PROTOCOL = "quorate-api/1"
#: Bytes of a frame's length prefix.
LEN_BYTES = 4
#: Bytes before a request's JSON body: id and op.
REQUEST_HEAD = 9
#: Bytes before an answer's JSON body: id and status.
ANSWER_HEAD = 10
#: Requests of one stream a node works on at once (it reads no further until one is
#: answered); the async connection keeps at most this many in flight.
MAX_IN_FLIGHT = 256
#: Seconds a node that refused the upgrade is sent plain HTTP before it is asked again
#: (long enough to spare an older release the extra round trip on every call, short
#: enough that a rolling upgrade is noticed soon).
REFUSAL_MEMORY = 30.0
#: Bytes of the upgrade's answer head we read at most (a node's is a few hundred).
MAX_HEAD = 64 * 1024

#: The op byte of each route a stream carries (``StreamOp`` in ``proto/src/stream.rs``).
OPS: Mapping[r.Route, int] = {r.ACQUIRE: 1, r.RELEASE: 2, r.RENEW: 3, r.RATE_CHECK: 4}
_OP_BY_PATH = {route.pattern: op for route, op in OPS.items()}

_LEN = struct.Struct(">I")
_REQUEST = struct.Struct(">IQB")
_ANSWER = struct.Struct(">QH")


class FrameError(ValueError):
    """A node sent bytes that are not the stream's layout."""


class Answer(NamedTuple):
    """One answer frame: the request's id (0: a refused frame), status and JSON body."""

    id: int
    status: int
    body: bytes


def op_of(call: Call[Any]) -> int | None:
    """The op byte of ``call`` if a stream can carry it (a decision: a ``POST`` of one
    of :data:`OPS`' routes with a JSON body), else None."""
    if call.method != "POST" or call.body is None or call.params is not None:
        return None
    return _OP_BY_PATH.get(call.path)


def encode_request(request_id: int, op: int, body: Mapping[str, Any]) -> bytes:
    """A whole request frame (length prefix included) carrying ``body`` as JSON."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    return _REQUEST.pack(REQUEST_HEAD + len(payload), request_id, op) + payload


def encode_answer(request_id: int, status: int, body: bytes) -> bytes:
    """A whole answer frame (what a node writes; for tests and fakes)."""
    return _LEN.pack(ANSWER_HEAD + len(body)) + _ANSWER.pack(request_id, status) + body


def take_answers(buf: bytearray) -> list[Answer]:
    """Every whole answer frame at the front of ``buf``, removed from it; a partial
    frame stays for the next read. :class:`FrameError` for a payload shorter than an
    answer's head (the stream is then unusable: frame boundaries are lost)."""
    out: list[Answer] = []
    at = 0
    while len(buf) - at >= LEN_BYTES:
        (n,) = _LEN.unpack_from(buf, at)
        if len(buf) - at - LEN_BYTES < n:
            break
        if n < ANSWER_HEAD:
            raise FrameError(f"an answer of {n} bytes is shorter than its {ANSWER_HEAD}-byte head")
        start = at + LEN_BYTES
        request_id, status = _ANSWER.unpack_from(buf, start)
        out.append(Answer(request_id, status, bytes(buf[start + ANSWER_HEAD : start + n])))
        at = start + n
    del buf[:at]
    return out


def as_response(answer: Answer) -> httpx.Response:
    """The answer as the HTTP response its route would have given (without headers), for
    :meth:`quorate._exchange.Exchange.answered` and :func:`quorate._calls.interpret`."""
    return httpx.Response(answer.status, content=answer.body)


def address(base: str) -> tuple[str, int]:
    """Host and port of an ``http://`` base URL (port 80 when it names none)."""
    u = urlsplit(base)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"decision streams need an http:// node, not {base!r}")
    return u.hostname, u.port or 80


def upgrade_request(base: str, headers: Mapping[str, str]) -> bytes:
    """The ``POST /v1/stream`` upgrade for the node at ``base``, with the client's
    ``headers`` (its bearer token: the node checks it once for the stream's life)."""
    authority = urlsplit(base).netloc
    lines = [
        f"{r.STREAM.method} {r.STREAM.pattern} HTTP/1.1",
        f"host: {authority}",
        "connection: Upgrade",
        f"upgrade: {STREAM_PROTOCOL}",
        "content-length: 0",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_upgrade(head: bytes) -> tuple[int, httpx.Headers]:
    """Status and headers of the upgrade's answer head (up to the blank line)."""
    try:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/"):
            raise ValueError(version)
        code = int(status)
    except ValueError as e:
        raise FrameError(f"not an HTTP answer to the stream upgrade: {head[:80]!r}") from e
    fields = [tuple(x.strip() for x in line.split(":", 1)) for line in lines if ":" in line]
    return code, httpx.Headers([(k, v) for k, v in fields])


class StreamRoutes:
    """Which attempts go over a stream: decisions, to ``http://`` nodes that have not
    refused the upgrade lately. Shared by a client's stream connection(s); thread-safe."""

    def __init__(self, enabled: bool, memory: float = REFUSAL_MEMORY) -> None:
        self.enabled = enabled
        self.memory = memory
        self._refused: dict[str, float] = {}
        self._lock = threading.Lock()

    def op(self, call: Call[Any]) -> int | None:
        """The op byte to send ``call`` with, or None: send it over HTTP."""
        return op_of(call) if self.enabled else None

    def usable(self, base: str, now: float | None = None) -> bool:
        """May an attempt to the node at ``base`` open a stream?"""
        if not base.startswith("http://"):
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            until = self._refused.get(base)
            if until is not None and now >= until:
                del self._refused[base]
                until = None
        return until is None

    def refused(self, base: str, now: float | None = None) -> None:
        """The node at ``base`` answered the upgrade with something other than 101: send
        it HTTP for a while. Any status, not just an older release's 404/405/400: the
        HTTP request this attempt falls back to then says what a 401 or a 503 means."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._refused[base] = now + self.memory
