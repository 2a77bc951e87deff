"""A ``limits`` storage backed by quorate: ``storage_uri="quorate://h1:7101,h2:7101,h3:7101"``.

`limits <https://limits.readthedocs.io>`_ is the rate-limit library under slowapi and
Flask-Limiter; it picks its backend from a URI, and registers every
:class:`limits.storage.Storage` subclass by its ``STORAGE_SCHEME``. Importing this
module registers two:

- :class:`QuorateStorage` for ``quorate://`` (sync: slowapi, Flask-Limiter, the
  ``limits.strategies`` limiters);
- :class:`AsyncQuorateStorage` for ``async+quorate://`` (``limits.aio.strategies``).

So with slowapi or Flask-Limiter, changing the URI (and importing this module once)
moves every worker process's counters into the cluster::

    import quorate.contrib.limits  # registers quorate:// and async+quorate://
    limiter = Limiter(key_func=get_remote_address,
                      storage_uri="quorate://10.0.0.1:7101,10.0.0.2:7101,10.0.0.3:7101")

The URI lists the nodes (``host:port``, comma-separated; the client fails over between
them and follows the leader). ``quorate+https://`` / ``async+quorate+https://`` use
TLS. A client token goes in the userinfo (``quorate://:TOKEN@h1:7101,...``) or, better
(URIs end up in logs), the ``token`` storage option; ``timeout`` and ``deadline``
(seconds) are passed to the client, and ``client`` may hand over a ready client (a
:class:`quorate.Client` / :class:`quorate.AsyncClient` or a :mod:`quorate.testing`
fake).

What it does: the **fixed window** strategy, exactly. ``incr`` is one replicated
counter increment (``POST /v1/counters/{key}/incr``): the cluster starts the window at
the first hit, with its expiry in cluster time, and answers the value after the
increment, so "admit while the value is at most the limit" holds across every process
and every node: N workers sharing a limit of L admit exactly L per window. ``get`` and
``get_expiry`` are linearizable reads. A cluster that cannot decide raises
:class:`quorate.Unavailable` (a :class:`quorate.QuorateError`, the storage's
``base_exceptions``): limits and the frameworks then fail as they do for a Redis that is
down (Flask-Limiter's ``swallow_errors`` / in-memory fallback apply).

What it does not do:

- **Moving window** and **sliding window counter** are not supported (limits says so
  when a limiter is built with them): both need a *conditional* charge (count the hit
  only if the window has room, or keep a log of hit times), which a plain counter
  increment is not; quorate's native rate checks (GCRA, ``/v1/rate/check``) are the
  exact, burst-aware answer to that need.
- ``reset()`` raises :class:`NotImplementedError` (which slowapi and Flask-Limiter
  report as "storage does not support reset"): the cluster offers no listing of
  counters to clear. ``clear(key)`` works; counters expire with their window.

Retries: an increment whose answer was lost (a leader killed mid-request) may have
been applied, and the client's retry then counts the hit twice. That can only deny a
request that would have been admitted near the end of a window, never admit one too
many.

Keys: limits' keys (``LIMITER/<key func value>/<path>/10/1/minute``) may hold any
character; quorate keys are 1..=256 bytes of ``A-Z a-z 0-9 _ - . : / @ + =``. A key is
stored as ``limits:`` plus the key with every other byte (and ``=``) written ``=XX``
(hex of its UTF-8 bytes), which is one-to-one; a key whose escaped form would be longer
than 256 bytes is stored as ``limits-sha256:`` plus the SHA-256 of the key instead.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol

from limits.aio.storage import Storage as AsyncStorage
from limits.errors import ConfigurationError
from limits.storage import Storage

from ..client import AsyncClient, Client
from ..errors import QuorateError
from ..types import ClusterInfo, Counter

__all__ = [
    "AsyncCounterBackend",
    "AsyncQuorateStorage",
    "CounterBackend",
    "QuorateStorage",
    "counter_key",
    "parse_uri",
]

#: Longest quorate key (bytes).
MAX_KEY_LEN = 256
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:/@+")
_PREFIX = "limits:"
_HASHED = "limits-sha256:"


class CounterBackend(Protocol):
    """What :class:`QuorateStorage` needs of a client: :class:`quorate.Client` and
    :class:`quorate.testing.FakeClient` both are one."""

    def counter_incr(self, key: str, expiry: float, amount: int = 1) -> Counter: ...
    def counter(self, key: str) -> Counter: ...
    def clear_counter(self, key: str) -> bool: ...
    def cluster(self) -> ClusterInfo: ...


class AsyncCounterBackend(Protocol):
    """:class:`CounterBackend` for :class:`AsyncQuorateStorage` (``AsyncClient``)."""

    async def counter_incr(self, key: str, expiry: float, amount: int = 1) -> Counter: ...
    async def counter(self, key: str) -> Counter: ...
    async def clear_counter(self, key: str) -> bool: ...
    async def cluster(self) -> ClusterInfo: ...


def counter_key(key: str) -> str:
    """The quorate counter key for a ``limits`` key (see the module docs): escaped and
    prefixed, or hashed when too long. Distinct limits keys get distinct counter keys."""
    escaped = "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in key.encode())
    if len(_PREFIX) + len(escaped) <= MAX_KEY_LEN:
        return _PREFIX + escaped
    return _HASHED + hashlib.sha256(key.encode()).hexdigest()


def parse_uri(uri: str) -> tuple[list[str], str | None]:
    """``quorate://[:TOKEN@]host:port,host:port`` -> (node URLs, token or None)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.removeprefix("async+") not in ("quorate", "quorate+https"):
        raise ConfigurationError(f"not a quorate storage URI: {uri!r}")
    http = "https" if scheme.endswith("+https") else "http"
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    token = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        token = userinfo.partition(":")[2] or None
    hosts = [h.strip() for h in netloc.split(",") if h.strip()]
    if not hosts:
        raise ConfigurationError(f"{uri!r} names no node (quorate://host:port,host:port,...)")
    return [f"{http}://{h}" for h in hosts], token


def _client_options(uri: str, options: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    nodes, token = parse_uri(uri)
    kwargs: dict[str, Any] = {}
    token = options.pop("token", None) or token
    if token:
        kwargs["token"] = str(token)
    for name in ("timeout", "deadline"):
        if name in options:
            kwargs[name] = float(options.pop(name))
    return nodes, kwargs


def _expiry_at(ttl_ms: int) -> float:
    """A window's end on the local clock: now plus the time the cluster says is left
    (so client/cluster clock skew does not move the window)."""
    return time.time() + ttl_ms / 1000


class QuorateStorage(Storage):
    """Sync ``limits`` storage on a quorate cluster (``quorate://``); see the module."""

    STORAGE_SCHEME = ["quorate", "quorate+https"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        given = options.pop("client", None)
        nodes, kwargs = _client_options(uri, options)
        self.client: CounterBackend = given if given is not None else Client(nodes, **kwargs)
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return QuorateError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.client.counter_incr(counter_key(key), expiry, amount).value

    def get(self, key: str) -> int:
        return self.client.counter(counter_key(key)).value

    def get_expiry(self, key: str) -> float:
        return _expiry_at(self.client.counter(counter_key(key)).ttl_ms)

    def check(self) -> bool:
        try:
            self.client.cluster()
        except QuorateError:
            return False
        return True

    def reset(self) -> int | None:
        raise NotImplementedError("quorate counters cannot be listed, so not reset; they expire")

    def clear(self, key: str) -> None:
        self.client.clear_counter(counter_key(key))


class AsyncQuorateStorage(AsyncStorage):
    """Async ``limits`` storage (``async+quorate://``) for ``limits.aio.strategies``."""

    STORAGE_SCHEME = ["async+quorate", "async+quorate+https"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        given = options.pop("client", None)
        nodes, kwargs = _client_options(uri, options)
        self.client: AsyncCounterBackend = (
            given if given is not None else AsyncClient(nodes, **kwargs)
        )
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return QuorateError

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return (await self.client.counter_incr(counter_key(key), expiry, amount)).value

    async def get(self, key: str) -> int:
        return (await self.client.counter(counter_key(key))).value

    async def get_expiry(self, key: str) -> float:
        return _expiry_at((await self.client.counter(counter_key(key))).ttl_ms)

    async def check(self) -> bool:
        try:
            await self.client.cluster()
        except QuorateError:
            return False
        return True

    async def reset(self) -> int | None:
        raise NotImplementedError("quorate counters cannot be listed, so not reset; they expire")

    async def clear(self, key: str) -> None:
        await self.client.clear_counter(counter_key(key))
