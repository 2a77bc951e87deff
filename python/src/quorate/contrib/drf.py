"""Django REST framework throttles backed by quorate (seed 002).

DRF's own throttles keep counters in the Django cache with a get-then-set race and
one sliding window per process group. These keep the bucket in the cluster: every app
worker shares it, a check-and-charge is one linearizable step, and the policy (limit,
period, *burst*) lives in quorate, not in each process's settings.

Scopes map to quorate rate policies of the same name unless
``QUORATE["DRF_POLICIES"] = {"anon": "anon", "user": "user", "worker": "worker"}``
says otherwise::

    REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["quorate.contrib.drf.CombinedThrottle"],
    }
    # CombinedThrottle = AnonRateThrottle + UserRateThrottle + ScopedRateThrottle,
    # charged all-or-none in ONE multi-check.

Why the combined class: DRF calls *every* throttle class and only then denies, so with
separate remote throttles a request refused by one still spends quota in the others.
:class:`CombinedThrottle` asks the cluster once for all of them; a denial charges none.

``wait()`` returns the cluster's real ``retry_after`` (DRF turns it into the
``Retry-After`` header of its 429). The tier comes from :meth:`QuorateThrottle.get_tier`:
none by default; ``use_tiers = True`` sends superuser / authenticated / anonymous;
override it to read a plan from the user. When the cluster cannot decide, fail-closed
throttles (``wait()`` is 1 s) and fail-open allows, per ``QUORATE["FAILURE_POLICY"]``
or the class's ``failure_policy``. ``QUORATE["ENABLED"] = False`` lets every request
through without asking the cluster.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from ..errors import Unavailable
from ..types import RateCheck, RateDecision
from .common import key_part, rate_limit_headers
from .django import client_ip, get_client, quorate_enabled, tier_for_user

__all__ = [
    "AnonRateThrottle",
    "CombinedThrottle",
    "QuorateThrottle",
    "RateLimitHeadersMixin",
    "ScopedRateThrottle",
    "UserRateThrottle",
]

logger = logging.getLogger("quorate")


class QuorateThrottle(BaseThrottle):  # type: ignore[misc]
    """Base class: charge one request against the quorate policy of ``scope``.

    Subclasses say *who* is charged (:meth:`get_ident_key`, ``None`` for "this
    throttle does not apply") and may override :meth:`get_tier` and :meth:`get_policy`.
    """

    scope: ClassVar[str | None] = None
    #: ``None``: the Django setting ``QUORATE["FAILURE_POLICY"]`` decides.
    failure_policy: ClassVar[str | None] = None
    #: Prefix of bucket keys; ``None``: ``QUORATE["DRF_KEY_PREFIX"]``, else ``"drf"``.
    key_prefix: ClassVar[str | None] = None
    #: Send the user's tier (superuser x10, authenticated x2 with the default tiers).
    #: Off by default so ``user`` means exactly the policy's rate.
    use_tiers: ClassVar[bool] = False

    def __init__(self) -> None:
        self.decision: RateDecision | None = None
        self.unavailable = False

    # -- what to charge -----------------------------------------------------------------

    def get_scope(self, request: Any, view: Any) -> str | None:
        return self.scope

    def get_policy(self, scope: str) -> str:
        mapping: dict[str, str] = getattr(settings, "QUORATE", {}).get("DRF_POLICIES", {})
        return mapping.get(scope, scope)

    def get_tier(self, request: Any) -> str | None:
        """The quorate tier for this request's user (``None``: the policy as is).
        Override to read a plan or role from the user."""
        if not self.use_tiers:
            return None
        return tier_for_user(getattr(request, "user", None))

    def get_ident(self, request: Any) -> str:
        """The client IP through the trusted proxies (not DRF's ``NUM_PROXIES``)."""
        return client_ip(request)

    def get_ident_key(self, request: Any, view: Any) -> str | None:
        raise NotImplementedError

    def get_check(self, request: Any, view: Any) -> RateCheck | None:
        """The rate check for this request, or ``None`` if the throttle does not apply."""
        scope = self.get_scope(request, view)
        if scope is None:
            return None
        ident = self.get_ident_key(request, view)
        if ident is None:
            return None
        prefix = self.key_prefix or getattr(settings, "QUORATE", {}).get("DRF_KEY_PREFIX", "drf")
        return RateCheck(
            key=f"{prefix}:{scope}:{ident}",
            policy=self.get_policy(scope),
            tier=self.get_tier(request),
        )

    # -- DRF's interface ----------------------------------------------------------------

    def allow_request(self, request: Any, view: Any) -> bool:
        check = self.get_check(request, view)
        if check is None:
            return True
        return self._decide(request, [check])

    def _decide(self, request: Any, checks: list[RateCheck]) -> bool:
        self.unavailable = False
        if not quorate_enabled("the DRF throttles"):
            return True
        try:
            self.decision = get_client().check_all(checks, failure_policy=self.failure_policy)
        except Unavailable:
            # Fail-closed: DRF answers 429 with Retry-After from wait().
            self.unavailable = True
            self.decision = None
            return False
        # Views and middleware can read the decision (e.g. to add RateLimit headers).
        request.quorate_decision = self.decision
        return self.decision.allowed

    def wait(self) -> float | None:
        if self.unavailable:
            return 1.0
        if self.decision is None or self.decision.allowed:
            return None
        return max(self.decision.retry_after, 0.001)


class AnonRateThrottle(QuorateThrottle):
    """Unauthenticated requests, by client IP (scope ``anon``)."""

    scope: ClassVar[str | None] = "anon"

    def get_ident_key(self, request: Any, view: Any) -> str | None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return None
        return f"ip:{key_part(self.get_ident(request))}"


class UserRateThrottle(QuorateThrottle):
    """Authenticated requests by user id, others by IP (scope ``user``), like DRF's."""

    scope: ClassVar[str | None] = "user"

    def get_ident_key(self, request: Any, view: Any) -> str | None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user:{key_part(user.pk)}"
        return f"ip:{key_part(self.get_ident(request))}"


class ScopedRateThrottle(UserRateThrottle):
    """The view's ``throttle_scope`` (``worker`` on job-polling endpoints, say); views
    without one are not throttled by this class."""

    scope: ClassVar[str | None] = None
    scope_attr: ClassVar[str] = "throttle_scope"

    def get_scope(self, request: Any, view: Any) -> str | None:
        scope = getattr(view, self.scope_attr, None)
        return str(scope) if scope else None


class CombinedThrottle(QuorateThrottle):
    """Every throttle in ``throttle_classes`` charged all or none, in one multi-check.

    ``wait()`` is the longest wait among the denied checks (the cluster computes it).
    """

    throttle_classes: ClassVar[list[type[QuorateThrottle]]] = [
        AnonRateThrottle,
        UserRateThrottle,
        ScopedRateThrottle,
    ]

    def allow_request(self, request: Any, view: Any) -> bool:
        checks = []
        for cls in self.throttle_classes:
            check = cls().get_check(request, view)
            if check is not None:
                checks.append(check)
        if not checks:
            return True
        return self._decide(request, checks)


class RateLimitHeadersMixin:
    """Mix into an ``APIView`` to copy the throttle decision's RateLimit headers onto
    every response (DRF itself only sets ``Retry-After`` on 429s)."""

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        decision = getattr(request, "quorate_decision", None)
        if isinstance(decision, RateDecision):
            for k, v in rate_limit_headers(decision):
                if k not in response:
                    response[k] = v
        return response
