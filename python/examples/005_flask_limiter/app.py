"""Example 005: Flask + Flask-Limiter with its counters in quorate (``quorate://``).

Flask-Limiter keeps its limits in a ``limits`` storage chosen by URI; importing
``quorate.contrib.limits`` registers ``quorate://``, so every worker process counts in
the same replicated fixed window. Run two workers (two processes, one limit)::

    export QUORATE_NODES=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
    python app.py --port 8005 & python app.py --port 8015 &
    # or with any pre-forking server, e.g.: gunicorn -w 2 -b 127.0.0.1:8005 app:app
    for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' -X POST \\
        localhost:80$((i % 2 ? 5 : 15))/api/v1/orders; done   # 10 x 201, then 429

Environment: ``QUORATE_NODES`` (required; or ``QUORATE_STORAGE_URI`` given whole),
``RATE`` ("10/minute"), ``RATE_KEY_PREFIX`` (namespaces the counters),
``QUORATE_TOKEN``, ``QUORATE_DEADLINE`` (seconds a hit may wait for the cluster).
"""

from __future__ import annotations

import argparse
import os

from flask import Flask, Response, jsonify
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import quorate.contrib.limits  # noqa: F401  (registers quorate:// with limits)
from quorate import QuorateError


def storage_uri() -> str:
    """``QUORATE_STORAGE_URI``, else ``quorate://`` over the hosts of ``QUORATE_NODES``."""
    if uri := os.environ.get("QUORATE_STORAGE_URI"):
        return uri
    hosts = [u.strip().split("://", 1)[-1] for u in os.environ["QUORATE_NODES"].split(",")]
    return "quorate://" + ",".join(hosts)


app = Flask(__name__)
limiter = Limiter(
    get_remote_address,
    app=app,
    storage_uri=storage_uri(),
    storage_options={
        "deadline": os.environ.get("QUORATE_DEADLINE", "5"),
        "token": os.environ.get("QUORATE_TOKEN", ""),
    },
    key_prefix=os.environ.get("RATE_KEY_PREFIX", ""),
    strategy="fixed-window",
    headers_enabled=True,
)


@app.errorhandler(QuorateError)
def cluster_undecided(exc: QuorateError) -> tuple[Response, int, dict[str, str]]:
    # The cluster could not decide (no quorum within the deadline): refuse, never admit.
    return jsonify(error="unavailable", message=str(exc)), 503, {"Retry-After": "1"}


@app.get("/healthz")
@limiter.exempt
def health() -> Response:
    return jsonify(status="ok", pid=os.getpid())


@app.post("/api/v1/orders")
@limiter.limit(lambda: os.environ.get("RATE", "10/minute"))
def create_order() -> tuple[Response, int]:
    return jsonify(created=True, pid=os.getpid()), 201


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8005)
    args = parser.parse_args()
    app.run(host=args.host, port=args.port, threaded=True)
