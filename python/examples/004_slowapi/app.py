"""Example 004: FastAPI + slowapi with its counters in quorate (``quorate://``).

slowapi keeps its limits in a ``limits`` storage chosen by URI; importing
``quorate.contrib.limits`` registers ``quorate://``, so every worker process counts in
the same replicated fixed window. Run two workers (two processes, one limit)::

    export QUORATE_NODES=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
    python app.py --port 8004 & python app.py --port 8014 &
    # or one uvicorn with two worker processes:
    #   uvicorn app:app --workers 2 --port 8004
    for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' -X POST \\
        localhost:80$((i % 2 ? 4 : 14))/api/v1/orders; done   # 10 x 201, then 429

Environment: ``QUORATE_NODES`` (required; or ``QUORATE_STORAGE_URI`` given whole),
``RATE`` ("10/minute"), ``RATE_KEY_PREFIX`` (namespaces the counters),
``QUORATE_TOKEN``, ``QUORATE_DEADLINE`` (seconds a hit may wait for the cluster).
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

import quorate.contrib.limits  # noqa: F401  (registers quorate:// with limits)
from quorate import QuorateError


def storage_uri() -> str:
    """``QUORATE_STORAGE_URI``, else ``quorate://`` over the hosts of ``QUORATE_NODES``."""
    if uri := os.environ.get("QUORATE_STORAGE_URI"):
        return uri
    hosts = [u.strip().split("://", 1)[-1] for u in os.environ["QUORATE_NODES"].split(",")]
    return "quorate://" + ",".join(hosts)


limiter = Limiter(
    key_func=get_remote_address,
    storage_uri=storage_uri(),
    storage_options={
        "deadline": os.environ.get("QUORATE_DEADLINE", "5"),
        "token": os.environ.get("QUORATE_TOKEN", ""),
    },
    key_prefix=os.environ.get("RATE_KEY_PREFIX", ""),
    strategy="fixed-window",
)
app = FastAPI()
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]


@app.exception_handler(QuorateError)
async def cluster_undecided(request: Request, exc: QuorateError) -> JSONResponse:
    # The cluster could not decide (no quorum within the deadline): refuse, never admit.
    return JSONResponse(
        {"error": "unavailable", "message": str(exc)}, status_code=503, headers={"Retry-After": "1"}
    )


@app.get("/healthz")
async def health() -> dict[str, object]:
    return {"status": "ok", "pid": os.getpid()}


@app.post("/api/v1/orders", status_code=201)
@limiter.limit(os.environ.get("RATE", "10/minute"))
async def create_order(request: Request) -> dict[str, object]:
    return {"created": True, "pid": os.getpid()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8004)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
