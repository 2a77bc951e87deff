"""Exceptions mirroring the quorate API's error codes.

Every non-2xx body from a node is ``{"error": "<code>", "message": "..."}``; the code is
stable and clients match on it (see ``proto/src/lib.rs``, module ``codes``). Each code
maps to one exception class here, all under :class:`QuorateError`, so callers can catch
as broadly or as narrowly as they like::

    try:
        client.renew(lease_id, ttl=30)
    except quorate.LeaseNotFound:
        ...  # the lease expired: stop the work
    except quorate.Unavailable:
        ...  # no node could decide: try again later

:class:`Unavailable` is special: it is raised both for a ``503 unavailable`` answer and
when no node could be reached before the deadline. The cluster never reports a grant
it did not make, so ``Unavailable`` always means "no decision", never "denied".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .types import RateDecision, SlotUsage

__all__ = [
    "ApiError",
    "ConfigError",
    "DecodeError",
    "Forbidden",
    "InternalError",
    "InvalidRequest",
    "LeaseConflict",
    "LeaseLost",
    "LeaseNotFound",
    "LimitExceeded",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PolicyNotFound",
    "QuorateError",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "error_from_response",
]


class QuorateError(Exception):
    """Base class of every error this package raises."""

    #: The API error code (``"lease_not_found"``, ...) or ``None`` for local errors.
    code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(QuorateError):
    """The client was configured wrongly (no nodes, a URL without a scheme, ...)."""


class DecodeError(QuorateError):
    """A node answered with something that is not the documented JSON."""


class LeaseLost(QuorateError):
    """Raised by ``Slot.raise_if_lost()``: the lease expired or was taken away."""

    code = "lease_lost"


class Unavailable(QuorateError):
    """No node decided before the deadline (503s, refused connections, timeouts).

    Never a grant and never a denial: the cluster did not decide (or the answer was
    lost). Retrying an acquire with the same lease id is safe.
    """

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds suggested by the node's ``Retry-After`` header, when one answered.
        self.retry_after = retry_after


class ApiError(QuorateError):
    """A node answered with an error body."""

    #: The HTTP status of the answer.
    status: int = 0

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        #: The decoded JSON body (or ``None``).
        self.body = body

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class InvalidRequest(ApiError):
    """400: malformed body, bad key, a limit/ttl/cost out of range, too many keys."""

    status, code = 400, "invalid_request"


class Unauthorized(ApiError):
    """401: missing or wrong bearer token."""

    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    """403: the token's role may not do this (a ``client`` token on an admin route)."""

    status, code = 403, "forbidden"


class NotFound(ApiError):
    """404: unknown route or resource. Base of the more specific 404 codes."""

    status, code = 404, "not_found"


class LeaseNotFound(NotFound):
    """404: renew of a lease that expired, was released or never existed."""

    code = "lease_not_found"


class PolicyNotFound(NotFound):
    """404: a rate check named a policy or tier that does not exist."""

    code = "policy_not_found"


class MethodNotAllowed(ApiError):
    """405: known route, wrong method."""

    status, code = 405, "method_not_allowed"


class LeaseConflict(ApiError):
    """409: a live lease id was reused for a different key set."""

    status, code = 409, "lease_conflict"


class PayloadTooLarge(ApiError):
    """413: the request body is over the node's limit."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    """415: body without a JSON content type."""

    status, code = 415, "unsupported_media_type"


class LimitExceeded(ApiError):
    """429 on an acquire: at least one key is at its concurrency limit (or, for an
    acquire that waited, its wait ended before a slot was granted)."""

    status, code = 429, "limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        blocked_by: list[str],
        slots: list[SlotUsage],
        retry_after_ms: int,
        queue_position: int | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, body=body)
        #: Every key that had no free slot.
        self.blocked_by = blocked_by
        #: Occupancy of every requested key at the moment of the decision.
        self.slots = slots
        self.retry_after_ms = retry_after_ms
        #: For an acquire that waited (``wait=``): the place it had in the queue when
        #: its wait ended (1 = next). ``None`` when it never queued.
        self.queue_position = queue_position

    @property
    def retry_after(self) -> float:
        """Seconds until the blocking leases expire (a release may free a slot sooner)."""
        return self.retry_after_ms / 1000.0


class RateLimited(ApiError):
    """429 on a rate check, raised only by ``check(..., raise_on_limit=True)``.

    A plain ``check()`` returns a :class:`~quorate.types.RateDecision` with
    ``allowed=False`` instead: being limited is an answer, not a failure.
    """

    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, decision: RateDecision, body: Any = None) -> None:
        super().__init__(message, body=body)
        self.decision = decision

    @property
    def retry_after(self) -> float:
        return self.decision.retry_after


class InternalError(ApiError):
    """500: a bug in the node (the server is built so this never happens)."""

    status, code = 500, "internal"


_BY_CODE: dict[str, type[ApiError]] = {
    str(cls.code): cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        LeaseNotFound,
        PolicyNotFound,
        MethodNotAllowed,
        LeaseConflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        InternalError,
    )
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: LeaseConflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    500: InternalError,
}


def error_from_response(status: int, body: Any, text: str = "") -> ApiError:
    """The exception for a non-2xx answer (not 429 or 503, which callers handle).

    The error code decides the class; the status is the fallback for a body that is
    not the documented shape (a proxy's HTML error page, say).
    """
    code: str | None = None
    message = text[:200]
    if isinstance(body, dict):
        raw_code = body.get("error")
        raw_message = body.get("message")
        code = raw_code if isinstance(raw_code, str) else None
        if isinstance(raw_message, str):
            message = raw_message
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or ApiError
    return cls(message, status=status, code=code or cls.code or "unknown", body=body)
