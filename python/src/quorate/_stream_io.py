"""Decision stream connections: the I/O of :mod:`quorate._stream`, sync and async.

Each client with ``stream=True`` has one stream, opened lazily to the node its next
attempt goes to (the hinted leader first) and reopened there when that moves or the
stream broke. ``send`` answers an attempt with the :class:`httpx.Response` its route
would have given, or None when the attempt should go over HTTP instead (not an
``http://`` node, a node that refused the upgrade, or -- sync only -- a stream busy
with another thread's request).

Failures are the ones an HTTP attempt has, as httpx's own exceptions, so the exchange
treats them as it treats HTTP's: a frame that was never written (connect, upgrade, a
stream found closed before writing) may go to another node; a frame written whose
answer never came (the stream broke, the read timed out) has an unknown outcome,
exactly a lost HTTP response, and :meth:`quorate._exchange.Exchange.unreachable`
retries it on the next node with the same body (an acquire's lease id makes that
safe). A stream the node closed while idle is noticed before writing and reopened,
so it costs no failed attempt.

- :class:`SyncStream`: a plain socket, one request at a time under a lock. A thread
  that finds the stream busy sends over HTTP rather than queueing: a waiting acquire
  may hold the stream for its whole wait.
- :class:`AsyncStream`: asyncio streams, many requests in flight (up to
  :data:`~quorate._stream.MAX_IN_FLIGHT`): every coroutine writes its frame whole and
  awaits a future that a reader task resolves by the answer's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ._stream import (
    MAX_HEAD,
    MAX_IN_FLIGHT,
    Answer,
    FrameError,
    StreamRoutes,
    address,
    as_response,
    encode_request,
    parse_upgrade,
    take_answers,
    upgrade_request,
)

__all__ = ["AsyncStream", "SyncStream"]

logger = logging.getLogger("quorate")

#: Takes the leader hint of the upgrade's answer (``Nodes.follow``).
Follow = Callable[[httpx.Headers], None]

_READ_CHUNK = 64 * 1024
_HEAD_END = b"\r\n\r\n"


def _upgraded(base: str, head: bytes, follow: Follow, routes: StreamRoutes) -> bool:
    """Read the upgrade's answer: True for 101; otherwise remember the refusal."""
    status, headers = parse_upgrade(head)
    follow(headers)
    if status == 101:
        logger.debug("decision stream open to %s", base)
        return True
    routes.refused(base)
    logger.info(
        "quorate node %s refused the decision stream (%s); sending it HTTP for %.0f s",
        base,
        status,
        routes.memory,
    )
    return False


# ---------------------------------------------------------------------------------------
# Sync


class SyncStream:
    """A sync client's decision stream: one socket, one request at a time."""

    def __init__(self, routes: StreamRoutes, headers: Mapping[str, str], follow: Follow) -> None:
        self.routes = routes
        self._headers = dict(headers)
        self._follow = follow
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        #: The node the open stream goes to (None: no stream open).
        self.base: str | None = None
        self._buf = bytearray()
        self._next_id = 1
        self._closed = False

    def send(
        self, base: str, op: int, body: Mapping[str, Any], timeout: httpx.Timeout
    ) -> httpx.Response | None:
        """The node's answer to one request over the stream to ``base``, or None: send
        this attempt over HTTP. Raises what httpx would (a TransportError)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._closed or not self._ready(base, timeout):
                return None
            return self._call(op, body, timeout)
        except BaseException:
            # Whatever broke (a timeout, KeyboardInterrupt mid-read), the stream may be
            # mid-frame: never reuse it.
            self._drop()
            raise
        finally:
            self._lock.release()

    def close(self) -> None:
        self._closed = True
        self._drop()

    def _ready(self, base: str, timeout: httpx.Timeout) -> bool:
        """Make sure a stream to ``base`` is open; False if it will not be."""
        if self._sock is not None:
            if self.base == base and self._alive(self._sock):
                return True
            self._drop()
        if not self.routes.usable(base):
            return False
        return self._open(base, timeout.connect)

    def _open(self, base: str, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            sock = socket.create_connection(address(base), timeout=timeout)
        except TimeoutError as e:
            raise httpx.ConnectTimeout(f"{base}: {e}") from e
        except OSError as e:
            raise httpx.ConnectError(f"{base}: {e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(upgrade_request(base, self._headers))
            head = bytearray()
            while _HEAD_END not in head:
                if len(head) > MAX_HEAD:
                    raise FrameError(f"{base}: the upgrade's answer head is over {MAX_HEAD} bytes")
                if deadline is not None:
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed while answering the upgrade")
                head += chunk
            end = head.index(_HEAD_END) + len(_HEAD_END)
            if not _upgraded(base, bytes(head[:end]), self._follow, self.routes):
                sock.close()
                return False
        except TimeoutError as e:
            sock.close()
            raise httpx.ConnectTimeout(f"{base}: stream upgrade: {e}") from e
        except (OSError, FrameError) as e:
            sock.close()
            raise httpx.ConnectError(f"{base}: stream upgrade: {e}") from e
        except BaseException:
            sock.close()
            raise
        self._sock, self.base, self._buf = sock, base, head[end:]
        return True

    @staticmethod
    def _alive(sock: socket.socket) -> bool:
        """Is the stream still open? A node closes idle streams and closes them all when
        it stops; noticing that before writing makes it a reconnect, not a lost answer."""
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _call(self, op: int, body: Mapping[str, Any], timeout: httpx.Timeout) -> httpx.Response:
        sock = self._sock
        assert sock is not None
        rid = self._next_id
        self._next_id += 1
        try:
            sock.settimeout(timeout.write)
            sock.sendall(encode_request(rid, op, body))
        except TimeoutError as e:
            raise httpx.WriteTimeout(f"{self.base}: decision stream: {e}") from e
        except OSError as e:
            raise httpx.WriteError(f"{self.base}: decision stream: {e}") from e
        deadline = None if timeout.read is None else time.monotonic() + timeout.read
        while True:
            try:
                answers = take_answers(self._buf)
            except FrameError as e:
                raise httpx.RemoteProtocolError(f"{self.base}: {e}") from e
            for a in answers:
                if a.id == rid:
                    return as_response(a)
                if a.id == 0:
                    # Our frame refused (too large): the node closes the stream after.
                    self._drop()
                    return as_response(a)
                # Any other id answers nothing in flight here; skip it.
            try:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out")
                    sock.settimeout(left)
                data = sock.recv(_READ_CHUNK)
            except TimeoutError as e:
                raise httpx.ReadTimeout(f"{self.base}: decision stream: {e}") from e
            except OSError as e:
                raise httpx.ReadError(f"{self.base}: decision stream: {e}") from e
            if not data:
                raise httpx.ReadError(f"{self.base}: the node closed the decision stream")
            self._buf += data

    def _drop(self) -> None:
        sock, self._sock, self.base = self._sock, None, None
        self._buf = bytearray()
        if sock is not None:
            # shutdown wakes a thread blocked reading it (close alone may not).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


# ---------------------------------------------------------------------------------------
# Async


class _AsyncConn:
    """One open stream: its writer, a reader task, and the requests in flight on it."""

    def __init__(
        self, base: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.base = base
        self._reader = reader
        self._writer = writer
        #: Requests in flight by id, in the order they were sent.
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._next_id = 1
        #: The answer (id 0) refusing a frame; it ends the stream.
        self._refusal: Answer | None = None
        self.closed = False
        #: Replaced by a stream to another node: takes no new request, closes once the
        #: ones in flight are answered.
        self.retired = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(
        cls,
        base: str,
        headers: Mapping[str, str],
        timeout: float | None,
        follow: Follow,
        routes: StreamRoutes,
    ) -> _AsyncConn | None:
        host, port = address(base)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except asyncio.TimeoutError as e:
            raise httpx.ConnectTimeout(f"{base}: timed out connecting") from e
        except OSError as e:
            raise httpx.ConnectError(f"{base}: {e}") from e
        try:
            writer.write(upgrade_request(base, headers))
            head = await asyncio.wait_for(reader.readuntil(_HEAD_END), timeout)
            if _upgraded(base, head, follow, routes):
                # Bytes after the head stay in the reader for the reader task.
                return cls(base, reader, writer)
            writer.close()
            return None
        except asyncio.TimeoutError as e:
            writer.close()
            raise httpx.ConnectTimeout(f"{base}: stream upgrade timed out") from e
        except (OSError, FrameError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            writer.close()
            raise httpx.ConnectError(f"{base}: stream upgrade: {e!r}") from e
        except BaseException:
            writer.close()
            raise

    @property
    def usable(self) -> bool:
        return not self.closed and not self.retired

    async def call(
        self, op: int, body: Mapping[str, Any], timeout: httpx.Timeout
    ) -> httpx.Response:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout.pool)
        except asyncio.TimeoutError as e:
            # Not written: like httpx's pool running out of connections.
            raise httpx.PoolTimeout(f"{self.base}: {MAX_IN_FLIGHT} requests in flight") from e
        try:
            if self.closed:
                raise httpx.ConnectError(f"{self.base}: the decision stream closed")
            rid = self._next_id
            self._next_id += 1
            fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._pending[rid] = fut
            try:
                # One write call puts the whole frame in the transport's buffer, so
                # frames of concurrent coroutines never interleave.
                self._writer.write(encode_request(rid, op, body))
                try:
                    await asyncio.wait_for(self._writer.drain(), timeout.write)
                except asyncio.TimeoutError as e:
                    raise httpx.WriteTimeout(f"{self.base}: decision stream") from e
                except OSError as e:
                    raise httpx.WriteError(f"{self.base}: decision stream: {e}") from e
                try:
                    # The reader task sets the answer, or a ReadError if the stream ends.
                    answer = await asyncio.wait_for(fut, timeout.read)
                except asyncio.TimeoutError as e:
                    raise httpx.ReadTimeout(f"{self.base}: decision stream") from e
            finally:
                # A late answer to an id no longer pending is dropped by the reader.
                self._pending.pop(rid, None)
                if self.retired and not self._pending:
                    self.close()
        finally:
            self._slots.release()
        return as_response(answer)

    def retire(self) -> None:
        self.retired = True
        if not self._pending:
            self.close()

    def close(self) -> None:
        """Close the connection; the reader task then fails what is still in flight."""
        self.closed = True
        self._writer.close()

    async def _read(self) -> None:
        buf = bytearray()
        why = "the node closed the decision stream"
        try:
            while True:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    break
                buf += data
                for a in take_answers(buf):
                    if a.id == 0:
                        self._refusal = a
                        continue
                    fut = self._pending.get(a.id)
                    if fut is not None and not fut.done():
                        fut.set_result(a)
        except (OSError, FrameError) as e:
            why = f"decision stream broken: {e}"
        finally:
            self.closed = True
            self._writer.close()
            self._fail_pending(why)

    def _fail_pending(self, why: str) -> None:
        refusal = self._refusal
        for fut in list(self._pending.values()):
            if fut.done():
                continue
            if refusal is not None:
                # The node reads frames in order and answers all it read before the
                # one it refused, then closes: so the refusal is the first unanswered.
                fut.set_result(refusal)
                refusal = None
            else:
                fut.set_exception(httpx.ReadError(f"{self.base}: {why}"))


class AsyncStream:
    """An async client's decision stream: one at a time, many requests in flight."""

    def __init__(self, routes: StreamRoutes, headers: Mapping[str, str], follow: Follow) -> None:
        self.routes = routes
        self._headers = dict(headers)
        self._follow = follow
        self._conn: _AsyncConn | None = None
        #: Every connection not yet closed and awaited (the current and retired ones).
        self._conns: list[_AsyncConn] = []
        self._opening: asyncio.Lock | None = None
        self._closed = False

    @property
    def base(self) -> str | None:
        """The node the open stream goes to (None: no stream open)."""
        conn = self._conn
        return conn.base if conn is not None and conn.usable else None

    async def send(
        self, base: str, op: int, body: Mapping[str, Any], timeout: httpx.Timeout
    ) -> httpx.Response | None:
        """See :meth:`SyncStream.send`; concurrent calls share the stream."""
        conn = await self._connection(base, timeout)
        if conn is None:
            return None
        return await conn.call(op, body, timeout)

    async def _connection(self, base: str, timeout: httpx.Timeout) -> _AsyncConn | None:
        conn = self._conn
        if conn is not None and conn.base == base and conn.usable:
            return conn
        if self._opening is None:
            # Made here, in the running loop, not when the client was made.
            self._opening = asyncio.Lock()
        async with self._opening:
            # Another coroutine may have opened it while this one waited.
            conn = self._conn
            if conn is not None and conn.base == base and conn.usable:
                return conn
            if self._closed or not self.routes.usable(base):
                return None
            new = await _AsyncConn.open(
                base, self._headers, timeout.connect, self._follow, self.routes
            )
            if new is None:
                return None
            self._conns = [c for c in self._conns if not c.task.done()]
            if self._conn is not None:
                # Requests in flight on the old stream still get their answers.
                self._conn.retire()
            self._conn = new
            self._conns.append(new)
            return new

    async def aclose(self) -> None:
        self._closed = True
        conns, self._conns, self._conn = self._conns, [], None
        for c in conns:
            c.close()
        for c in conns:
            with contextlib.suppress(asyncio.CancelledError):
                await c.task
