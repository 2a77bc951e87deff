"""Seed 000: API deployments with at most N concurrent executions per organisation and
M in total, in a single-file Django app.

A request to start an execution takes one slot on ``org:<id>`` and ``global`` in one
atomic step (quorate policies ``orgs`` = 5 and ``global`` = 50), hands the lease to a
background job and answers 202. When the organisation (or the system) is full, the
request waits its turn for a slot, up to ``EXECUTION_WAIT`` seconds (default 30):
waiting requests form one FIFO queue per key across every worker process, and a slot
freed anywhere goes to the earliest -- instead of the seed's ``429`` +
``Retry-After: 300`` that sent every caller polling, and the first to poll after a
release winning. Only a wait that ends ungranted answers a JSON 429 with
``Retry-After`` and the ``queue_position`` it had (``EXECUTION_WAIT=0``: no waiting,
the 429 at once). The job renews the lease while it runs and releases it when it
finishes, fails, or never starts. Per-org overrides replace the seed's management
commands::

    export QUORATE_NODES=http://127.0.0.1:7101,http://127.0.0.1:7102,http://127.0.0.1:7103
    python app.py serve --port 8000
    curl -X POST localhost:8000/orgs/acme/executions          # 202 {"execution_id": ...}
                                           # (org full: waits up to EXECUTION_WAIT s first)
    curl -X POST localhost:8000/executions/<id>/finish        # job completes, slot freed
    python app.py set-limit acme 20      # set_org_rate_limit
    python app.py get-limit acme         # get_org_rate_limit
    python app.py list-limits            # list_org_rate_limits --with-usage
    python app.py delete-limit acme      # delete_org_rate_limit

Jobs here are threads that wait until told to finish (``/finish``, ``?fail=1`` to make
them raise), so tests can hold slots for exactly as long as they need.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

# The Django examples' shared settings live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from django_example import configure, quorate_settings

configure(
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    QUORATE=quorate_settings(),
    LOGGING={
        "version": 1,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "loggers": {"quorate": {"handlers": ["console"], "level": "WARNING"}},
    },
)

from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from quorate import LimitExceeded, Unavailable  # noqa: E402
from quorate.contrib.django import get_client, too_many_requests  # noqa: E402
from quorate.work import WorkSlots  # noqa: E402

log = logging.getLogger("example")

#: A job may run at most this long (the test harness's safety net, not a timer).
JOB_MAX_SECONDS = 120.0
LEASE_TTL = float(os.environ.get("LEASE_TTL", 30))
#: Seconds a start request waits for a slot before answering 429 (0: answer at once).
#: Each waiting request holds one of the server's threads for that long.
EXECUTION_WAIT = float(os.environ.get("EXECUTION_WAIT", 30))


class Job:
    def __init__(self, execution_id: str, org: str) -> None:
        self.execution_id = execution_id
        self.org = org
        self.state = "queued"
        self.fail = False
        self.finish = threading.Event()


JOBS: dict[str, Job] = {}


def gate() -> WorkSlots:
    # GLOBAL_KEY lets tests use a private global cap; in production it is "global".
    return WorkSlots(
        get_client(),
        ttl=LEASE_TTL,
        global_key=os.environ.get("GLOBAL_KEY", "global"),
        wait=EXECUTION_WAIT or None,
    )


def run_job(job: Job, lease_id: str | None) -> None:
    """The background job: holds (renews) the lease; released on every exit path."""
    try:
        with gate().hold(lease_id):
            job.state = "running"
            job.finish.wait(JOB_MAX_SECONDS)
            if job.fail:
                raise RuntimeError(f"execution {job.execution_id} failed")
        job.state = "completed"
    except Exception as e:  # the job's failure is recorded; the slot is already released
        job.state = "failed"
        log.warning("job %s: %s", job.execution_id, e)


def enqueue(job: Job, lease_id: str | None, broken: bool) -> None:
    if broken:
        raise ConnectionError("queue unavailable")
    threading.Thread(target=run_job, args=(job, lease_id), daemon=True).start()


@csrf_exempt
def start_execution(request: HttpRequest, org: str) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse({"error": "method_not_allowed"}, status=405)
    execution_id = request.GET.get("execution_id") or str(uuid.uuid4())
    job = Job(execution_id, org)
    try:
        # The execution id is the lease id: a retried request cannot take a 2nd slot
        # (or a 2nd place in the queue). A full org waits here for its turn.
        with gate().admit(org, job_id=execution_id, holder=f"pid-{os.getpid()}") as lease:
            enqueue(job, WorkSlots.lease_id(lease), broken=request.GET.get("enqueue_fail") == "1")
    except LimitExceeded as e:
        return too_many_requests(
            e.retry_after,
            f"concurrency limit reached on {', '.join(e.blocked_by)}",
            blocked_by=e.blocked_by,
            usage={s.key: {"used": s.used, "limit": s.limit} for s in e.slots},
            queue_position=e.queue_position,
        )
    except Unavailable:
        return JsonResponse({"error": "unavailable"}, status=503, headers={"Retry-After": "1"})
    except ConnectionError as e:
        return JsonResponse({"error": "enqueue_failed", "message": str(e)}, status=500)
    JOBS[execution_id] = job
    return JsonResponse(
        {
            "execution_id": execution_id,
            "pid": os.getpid(),
            "fencing_token": None if lease is None else lease.fencing_token,
            "waited": 0.0 if lease is None else lease.waited,
            "degraded": lease is None,
        },
        status=202,
    )


@csrf_exempt
def finish_execution(request: HttpRequest, execution_id: str) -> HttpResponse:
    job = JOBS.get(execution_id)
    if job is None:
        return JsonResponse({"error": "not_found"}, status=404)
    job.fail = request.GET.get("fail") == "1"
    job.finish.set()
    return JsonResponse({"execution_id": execution_id, "finishing": True})


def execution(request: HttpRequest, execution_id: str) -> HttpResponse:
    job = JOBS.get(execution_id)
    if job is None:
        return JsonResponse({"error": "not_found"}, status=404)
    return JsonResponse({"execution_id": execution_id, "state": job.state, "org": job.org})


def usage(request: HttpRequest, org: str) -> HttpResponse:
    return JsonResponse({s.key: {"used": s.used, "limit": s.limit} for s in gate().usage(org)})


def health(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok", "pid": os.getpid()})


urlpatterns = [
    path("healthz", health),
    path("orgs/<str:org>/executions", start_execution),
    path("orgs/<str:org>/usage", usage),
    path("executions/<str:execution_id>", execution),
    path("executions/<str:execution_id>/finish", finish_execution),
]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="seed 000: concurrency slots per org")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the app (Django's threaded dev server)")
    serve.add_argument("--port", type=int, default=8000)
    s = sub.add_parser("set-limit", help="per-org concurrency limit override")
    s.add_argument("org")
    s.add_argument("limit", type=int)
    g = sub.add_parser("get-limit")
    g.add_argument("org")
    sub.add_parser("list-limits", help="overrides and orgs in use, with usage")
    d = sub.add_parser("delete-limit", help="back to the policy default")
    d.add_argument("org")
    args = parser.parse_args(argv)
    client = get_client()
    if args.cmd == "serve":
        from django.core.management import call_command

        call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False, use_threading=True)
    elif args.cmd == "set-limit":
        print(f"org:{args.org} limit set to {client.set_limit(f'org:{args.org}', args.limit)}")
    elif args.cmd == "get-limit":
        info = client.get_limit(f"org:{args.org}")
        print(f"{info.key}: {info.used}/{info.limit} in use (source: {info.source})")
    elif args.cmd == "list-limits":
        for row in client.list_limits("org:").limits:
            print(f"{row.key}\tlimit {row.limit}\t{row.source}\tused {row.used}")
    elif args.cmd == "delete-limit":
        deleted: Any = client.delete_limit(f"org:{args.org}")
        print("deleted" if deleted else "no override")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
