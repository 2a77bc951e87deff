"""The example's users (no database) and its token authentication."""

from __future__ import annotations

from typing import Any

from django_example import User  # app.py put the examples folder on sys.path
from rest_framework.authentication import BaseAuthentication

USERS = {
    "alice": User(1, "alice"),
    "worker-1": User(100, "worker-1"),
    "root": User(0, "root", is_superuser=True),
}


class TokenAuth(BaseAuthentication):  # type: ignore[misc]
    """``Authorization: Token <username>`` (an example, not a security mechanism)."""

    def authenticate(self, request: Any) -> tuple[User, str] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.startswith("Token "):
            return None
        user = USERS.get(header[6:].strip())
        return None if user is None else (user, header[6:].strip())
