"""Seed 003: a Starlette (or FastAPI) API with separate read and write limits per
client IP, RateLimit headers on every response, and a JSON 429 with the real
Retry-After -- shared by every worker process through quorate.

    QUORATE_NODES=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103 \\
        python app.py --port 8003
    curl -si localhost:8003/api/v1/sessions          # read: 1000/min per IP
    curl -si -X POST localhost:8003/api/v1/sessions  # write: 100/min per IP

Environment: ``QUORATE_NODES`` (required), ``RATE_READ`` / ``RATE_WRITE`` ("1000/min"
or a quorate policy name), ``QUORATE_FAILURE_POLICY`` (closed|open),
``QUORATE_TRUSTED_PROXIES`` (CIDRs whose X-Forwarded-For is believed).
"""

from __future__ import annotations

import argparse
import itertools
import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from quorate.contrib.asgi import RateLimitMiddleware

_ids = itertools.count(1)
SESSIONS: dict[int, dict[str, object]] = {}


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid()})


async def list_sessions(request: Request) -> JSONResponse:
    return JSONResponse({"sessions": list(SESSIONS.values()), "pid": os.getpid()})


async def create_session(request: Request) -> JSONResponse:
    sid = next(_ids)
    SESSIONS[sid] = {"id": sid, "pid": os.getpid()}
    return JSONResponse(SESSIONS[sid], status_code=201)


def build_app() -> RateLimitMiddleware:
    app = Starlette(
        routes=[
            Route("/healthz", health),
            Route("/api/v1/sessions", list_sessions, methods=["GET"]),
            Route("/api/v1/sessions", create_session, methods=["POST"]),
        ]
    )
    # Pure ASGI wrapping; with FastAPI: app.add_middleware(RateLimitMiddleware, ...).
    return RateLimitMiddleware(
        app,
        nodes=os.environ["QUORATE_NODES"],
        client_options={"timeout": 2.0, "deadline": float(os.environ.get("QUORATE_DEADLINE", 5))},
        read=os.environ.get("RATE_READ", "1000/min"),
        write=os.environ.get("RATE_WRITE", "100/min"),
        key_prefix=os.environ.get("RATE_KEY_PREFIX", "agentwatch"),
        trusted_proxies=[p for p in os.environ.get("QUORATE_TRUSTED_PROXIES", "").split(",") if p],
        exempt_paths=["/healthz"],
        failure_policy=os.environ.get("QUORATE_FAILURE_POLICY", "closed"),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args()
    # proxy_headers=False: uvicorn would otherwise rewrite the client address from
    # X-Forwarded-For for loopback peers; the middleware's trusted-proxy list decides.
    uvicorn.run(
        build_app(), host=args.host, port=args.port, log_level="warning", proxy_headers=False
    )
