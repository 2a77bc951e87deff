"""Seed 001: per-user / per-IP WebSocket limits with Django Channels -- connections,
messages and AI queries per minute, with tier multipliers -- shared by every worker.

Connection attempts are charged by ``quorate.contrib.channels.RateLimitMiddleware``
(over the limit: accepted and closed at once with code 4029); messages and AI queries
by the ``rate_limit`` decorator on the consumer's handlers (over the limit: an error
frame, the connection stays open). Authenticated users are charged per user, anonymous
ones per IP. Policies (created at startup): ``ws_connect`` 10/min, ``ws_message``
20/min, ``ws_ai_query`` 5/min for anonymous users; quorate's tiers give authenticated
users x2 and superusers x10 of each.

    export QUORATE_NODES=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
    python app.py --port 8001
    python -m websockets 'ws://127.0.0.1:8001/ws/chat/?token=alice'
    > {"type": "message", "text": "hi"}
    > {"type": "ai_query", "question": "why?"}

Users are a fixed table: ``?token=alice`` (authenticated), ``?token=root``
(superuser); no token is anonymous.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings

# The Django examples' shared settings live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from django_example import User, configure, quorate_settings

configure(
    INSTALLED_APPS=["channels"],
    QUORATE=quorate_settings(
        CHANNELS={
            "CONNECT": "ws_connect",
            "POLICIES": {"message": "ws_message", "ai_query": "ws_ai_query"},
            "TIERS": True,
            "KEY_PREFIX": os.environ.get("RATE_KEY_PREFIX", "ws"),
        },
    ),
)

import uvicorn  # noqa: E402
from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from quorate import Client, RatePolicy  # noqa: E402
from quorate.contrib.channels import (  # noqa: E402
    RateLimitedConsumerMixin,
    RateLimitMiddleware,
    rate_limit,
)
from quorate.contrib.django import tier_for_user  # noqa: E402

#: The anonymous base of every scope; tiers multiply them.
POLICIES = {
    "ws_connect": RatePolicy.per(10, 60),
    "ws_message": RatePolicy.per(20, 60),
    "ws_ai_query": RatePolicy.per(5, 60),
}


ANONYMOUS = User(0, "", is_authenticated=False)
USERS = {
    "alice": User(1, "alice"),
    "bob": User(2, "bob"),
    "root": User(3, "root", is_superuser=True),
}


class TokenAuthMiddleware:
    """``?token=<username>`` -> ``scope["user"]`` (stands in for AuthMiddlewareStack)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        token = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
        scope = dict(scope, user=USERS.get(token, ANONYMOUS))
        return await self.inner(scope, receive, send)


class ChatConsumer(RateLimitedConsumerMixin, AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        await self.accept()
        user = self.scope["user"]
        await self.send_json({"type": "welcome", "tier": tier_for_user(user), "pid": os.getpid()})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "message":
            await self.on_message(content)
        elif kind == "ai_query":
            await self.on_ai_query(content)
        else:
            await self.send_json({"type": "error", "error": "unknown_type"})

    @rate_limit("message")
    async def on_message(self, content: Any) -> None:
        await self.send_json({"type": "message", "echo": content.get("text")})

    @rate_limit("ai_query")
    async def on_ai_query(self, content: Any) -> None:
        await self.send_json({"type": "answer", "answer": f"42 ({content.get('question')})"})


async def http_app(scope: Any, receive: Any, send: Any) -> None:
    """Plain HTTP: only /healthz."""
    ok = scope["path"] == "/healthz"
    body = json.dumps({"status": "ok", "pid": os.getpid()} if ok else {"error": "not_found"})
    await send(
        {
            "type": "http.response.start",
            "status": 200 if ok else 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": TokenAuthMiddleware(
            RateLimitMiddleware(URLRouter([path("ws/chat/", ChatConsumer.as_asgi())]))
        ),
    }
)


def ensure_policies() -> None:
    """Create the example's rate policies (idempotent; needs an admin-capable client)."""
    with Client(settings.QUORATE["NODES"]) as client:
        for name, spec in POLICIES.items():
            client.put_policy(name, spec)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="seed 001: WebSocket limits")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--no-setup", action="store_true", help="do not create the policies")
    args = parser.parse_args(sys.argv[1:])
    if not args.no_setup:
        ensure_policies()
    # proxy_headers=False: the trusted-proxy list in QUORATE decides who the client is.
    uvicorn.run(
        application,
        host="127.0.0.1",
        port=args.port,
        ws="websockets",
        lifespan="off",
        log_level="warning",
        proxy_headers=False,
    )
