"""The rate-limit header fields of a rate check's answer, as a node builds them.

The Python counterpart of ``crates/server/src/ratelimit_headers.rs`` and of the
choice in ``http/api/rate.rs`` of which result speaks for the request. A node sends
these fields as HTTP headers; two answers carry none and get them from here:

- a decision stream's (:mod:`quorate._stream`), which has the JSON body only, so
  that ``RateDecision.headers`` is the same whichever way the decision travelled;
- the in-memory fake's (:mod:`quorate.testing`), which has no HTTP at all.

``tests/test_stream.py`` holds the fields built here to a real node's headers.
Imports point down only: types.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from .types import RateCheck, RateResult

__all__ = ["fields", "names", "top_result"]


def _partition_key(key: str) -> str:
    """``pk``: the first 12 bytes of SHA-256 of the bucket key, never the key itself."""
    return ":" + base64.b64encode(hashlib.sha256(key.encode()).digest()[:12]).decode() + ":"


def _sf_string(s: str) -> str:
    """An RFC 8941 string: ``"`` and ``\\`` escaped, anything unprintable ``?``."""
    out = "".join("\\" + c if c in '"\\' else (c if " " <= c <= "~" else "?") for c in s)
    return f'"{out}"'


def _secs(ms: int) -> int:
    return -(-ms // 1000)


def names(checks: Sequence[RateCheck]) -> list[str]:
    """The policy name each check's fields carry: its policy, or ``inline``."""
    return [c.policy if c.policy is not None else "inline" for c in checks]


def top_result(results: Sequence[RateResult], allowed: bool) -> RateResult:
    """The result that speaks for the request: the denied check with the longest wait
    (the last of equals, as Rust's ``max_by_key``), or, all allowed, the one with the
    fewest left (the first of equals, as ``min_by_key``)."""
    if allowed:
        return min(results, key=lambda x: x.remaining)
    waits = [x for x in results if not x.allowed]
    top = waits[0]
    for x in waits:
        if x.retry_after_ms >= top.retry_after_ms:
            top = x
    return top


def fields(names: Sequence[str], results: Sequence[RateResult], allowed: bool) -> dict[str, str]:
    """The headers (lower-case names) of an answer whose checks carry the policy
    ``names`` (``"inline"`` for an inline limit) and got ``results``, in order."""
    top = top_result(results, allowed)
    pks = [_partition_key(x.key) for x in results]
    policy = ", ".join(
        f"{_sf_string(n)};q={x.limit};w={max(_secs(x.period_ms), 1)};pk={pk};"
        f"quorate-burst={x.burst}"
        for n, x, pk in zip(names, results, pks, strict=True)
    )
    state = ", ".join(
        f"{_sf_string(n)};r={x.remaining};t={_secs(x.reset_after_ms)};pk={pk}"
        for n, x, pk in zip(names, results, pks, strict=True)
    )
    headers = {
        "ratelimit-policy": policy,
        "ratelimit": state,
        "x-ratelimit-limit": str(top.limit),
        "x-ratelimit-remaining": str(top.remaining),
        "x-ratelimit-reset": str(_secs(top.reset_after_ms)),
    }
    if not allowed:
        headers["retry-after"] = str(max(_secs(top.retry_after_ms), 1))
    return headers
