"""What the Django examples (000, 001, 002) share: the quorate settings every one reads
from the environment, the Django settings they all start from, and the user type of
their fixed user tables. Each ``app.py`` puts this folder on ``sys.path`` to import it.

Environment: ``QUORATE_NODES`` (comma-separated node URLs), ``QUORATE_FAILURE_POLICY``
(``closed`` or ``open``), ``QUORATE_TRUSTED_PROXIES`` (comma-separated CIDRs) and
``QUORATE_DEADLINE`` (seconds per call).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import django
from django.conf import settings


def quorate_settings(**extra: Any) -> dict[str, Any]:
    """``settings.QUORATE`` from the environment, plus the example's own ``extra``."""
    return {
        "NODES": os.environ.get("QUORATE_NODES", "http://127.0.0.1:7101"),
        "FAILURE_POLICY": os.environ.get("QUORATE_FAILURE_POLICY", "closed"),
        "TRUSTED_PROXIES": [
            p for p in os.environ.get("QUORATE_TRUSTED_PROXIES", "").split(",") if p
        ],
        "TIMEOUT": 2.0,
        "DEADLINE": float(os.environ.get("QUORATE_DEADLINE", 8)),
        **extra,
    }


def configure(**options: Any) -> None:
    """Configure Django with the examples' common settings plus ``options``, and set
    it up."""
    settings.configure(DEBUG=False, SECRET_KEY="example-only", ALLOWED_HOSTS=["*"], **options)
    django.setup()


@dataclass(frozen=True)
class User:
    """A user of an example's fixed table (no database)."""

    pk: int
    username: str
    is_authenticated: bool = True
    is_superuser: bool = False
