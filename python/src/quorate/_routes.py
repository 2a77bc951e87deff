"""The API routes this package calls, declared once.

Every method and path the clients send is one :class:`Route` below, collected in
:data:`ROUTES` -- the Python counterpart of ``proto/src/routes.rs`` -- or, for the
decision stream's upgrade, in :data:`UPGRADES`. Calls build their URL path with
:meth:`Route.path`, which fills the ``{param}`` segments in order and percent-encodes
each value as exactly one segment (a key may hold ``:`` or ``/``; a ``/`` must not
split it). Nothing else in the package writes a path literal, so the tests that check
:data:`ROUTES` against ``proto/openapi.json`` and :data:`UPGRADES` against
``proto/src/routes.rs`` cover every request the package can make.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["ROUTES", "UPGRADES", "Route"]

_PARAM = re.compile(r"\{[a-z_]+\}")


def _seg(s: str) -> str:
    """Percent-encode one path segment (keys may hold ``:``; ``/`` must not split)."""
    return quote(s, safe=":@+=")


@dataclass(frozen=True)
class Route:
    """One API route: HTTP method and path pattern (``{name}`` for a segment)."""

    method: str
    pattern: str

    @property
    def params(self) -> list[str]:
        return [m.group(0)[1:-1] for m in _PARAM.finditer(self.pattern)]

    def path(self, *values: str) -> str:
        """The pattern with its parameters filled in, in order, each encoded."""
        names = self.params
        if len(values) != len(names):
            raise TypeError(f"{self.pattern} takes {len(names)} parameter(s), got {len(values)}")
        it = iter(values)
        return _PARAM.sub(lambda _: _seg(next(it)), self.pattern)


ACQUIRE = Route("POST", "/v1/slots/acquire")
RELEASE = Route("POST", "/v1/slots/release")
RENEW = Route("POST", "/v1/slots/renew")
SLOTS = Route("GET", "/v1/slots/{key}")
LIST_LIMITS = Route("GET", "/v1/limits")
PUT_LIMIT = Route("PUT", "/v1/limits/{key}")
GET_LIMIT = Route("GET", "/v1/limits/{key}")
DELETE_LIMIT = Route("DELETE", "/v1/limits/{key}")
RATE_CHECK = Route("POST", "/v1/rate/check")
COUNTER_INCR = Route("POST", "/v1/counters/{key}/incr")
GET_COUNTER = Route("GET", "/v1/counters/{key}")
CLEAR_COUNTER = Route("DELETE", "/v1/counters/{key}")
POLICIES = Route("GET", "/v1/policies")
PUT_POLICY = Route("PUT", "/v1/policies/{name}")
DELETE_POLICY = Route("DELETE", "/v1/policies/{name}")
PUT_TIER = Route("PUT", "/v1/tiers/{name}")
DELETE_TIER = Route("DELETE", "/v1/tiers/{name}")
ALLOWLIST = Route("GET", "/v1/allowlist")
ALLOW = Route("POST", "/v1/allowlist")
DISALLOW = Route("DELETE", "/v1/allowlist")
AUDIT = Route("GET", "/v1/audit")
CLUSTER = Route("GET", "/v1/cluster")
#: The decision stream's upgrade (:mod:`quorate._stream`): it answers 101 and then
#: speaks frames, not JSON, so it is outside the OpenAPI document, as in
#: ``proto/src/routes.rs`` (its ``upgrade`` rows).
STREAM = Route("POST", "/v1/stream")

#: Every route the package calls (checked against ``proto/openapi.json`` by a test).
ROUTES: tuple[Route, ...] = (
    ACQUIRE,
    RELEASE,
    RENEW,
    SLOTS,
    LIST_LIMITS,
    PUT_LIMIT,
    GET_LIMIT,
    DELETE_LIMIT,
    RATE_CHECK,
    COUNTER_INCR,
    GET_COUNTER,
    CLEAR_COUNTER,
    POLICIES,
    PUT_POLICY,
    DELETE_POLICY,
    PUT_TIER,
    DELETE_TIER,
    ALLOWLIST,
    ALLOW,
    DISALLOW,
    AUDIT,
    CLUSTER,
)

#: Routes that upgrade the connection (checked against ``proto/src/routes.rs``).
UPGRADES: tuple[Route, ...] = (STREAM,)
