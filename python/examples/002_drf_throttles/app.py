"""Seed 002: Django REST framework throttling for anon / user / worker scopes, kept in
quorate so every worker process shares one bucket per client.

Scopes map to the cluster's rate policies: ``anon`` 60/min, ``user`` 300/min, and
``worker`` 30/min with bursts of 10 (token bucket: a worker may poll 10 times at once,
then once every 2 s). ``CombinedThrottle`` charges all of a request's scopes in one
all-or-none multi-check, so a request denied by ``worker`` does not spend ``user``.

    export QUORATE_NODES=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
    python app.py --port 8002
    curl -si localhost:8002/api/items/                                 # anon, by IP
    curl -si -H 'Authorization: Token alice' localhost:8002/api/items/  # user, by id
    curl -si -H 'Authorization: Token worker-1' 'localhost:8002/api/jobs/?ids_only=1'

Users are a fixed table (no database): ``alice`` (user), ``worker-1`` (processing
service), ``root`` (superuser).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# The Django examples' shared settings live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from django_example import configure, quorate_settings

configure(
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["rest_framework"],
    MIDDLEWARE=[],
    REST_FRAMEWORK={
        "DEFAULT_AUTHENTICATION_CLASSES": ["users.TokenAuth"],
        "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
        "DEFAULT_THROTTLE_CLASSES": ["quorate.contrib.drf.CombinedThrottle"],
        "UNAUTHENTICATED_USER": None,
    },
    QUORATE=quorate_settings(
        # Scope -> quorate policy (identity here, spelled out for the reader).
        DRF_POLICIES={"anon": "anon", "user": "user", "worker": "worker"},
        DRF_KEY_PREFIX=os.environ.get("RATE_KEY_PREFIX", "antenna"),
    ),
)

from django.urls import path  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from quorate.contrib.drf import RateLimitHeadersMixin  # noqa: E402


class Items(RateLimitHeadersMixin, APIView):  # type: ignore[misc]
    def get(self, request: Any) -> Response:
        user = request.user
        return Response(
            {"items": [1, 2, 3], "user": getattr(user, "username", None), "pid": os.getpid()}
        )


class Jobs(RateLimitHeadersMixin, APIView):  # type: ignore[misc]
    """The processing services' polling endpoint: also charged to ``worker``."""

    throttle_scope = "worker"

    def get(self, request: Any) -> Response:
        return Response({"jobs": [], "pid": os.getpid()})


def health(request: Any) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"status": "ok", "pid": os.getpid()})


urlpatterns = [
    path("healthz", health),
    path("api/items/", Items.as_view()),
    path("api/jobs/", Jobs.as_view()),
]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="seed 002: DRF throttles on quorate")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(sys.argv[1:])
    from django.core.management import call_command

    call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False, use_threading=True)
