"""Run example apps as real OS processes and drive them over HTTP.

:class:`App` starts ``python <example>/app.py ... --port N`` with the environment a
test gives it (cluster URLs, failure policy, limits), waits for ``/healthz`` with a
deadline, and stops it (SIGTERM, then SIGKILL) at the end. Two ``App`` instances of the
same example are two worker processes sharing nothing but the quorate cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from quorate_cluster import free_ports, poll

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class App:
    def __init__(self, example: str, env: dict[str, str], args: Sequence[str] = ()) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix=f"{example}-", suffix=".log")[1])
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(EXAMPLES / example / "app.py"),
                    *args,
                    "--port",
                    str(self.port),
                ],
                cwd=EXAMPLES / example,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=15.0, trust_env=False)

    def wait_ready(self, deadline: float = 30.0) -> App:
        def ready() -> bool | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return True if self.http.get("/healthz").status_code == 200 else None
            except httpx.HTTPError:
                return None

        poll(f"{self.url}/healthz", ready, deadline)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.unlink(missing_ok=True)


def start_apps(
    example: str, env: dict[str, str], n: int = 1, args: Sequence[str] = ()
) -> list[App]:
    """Start ``n`` worker processes of an example (in parallel) and wait for them."""
    apps = [App(example, env, args) for _ in range(n)]
    try:
        for a in apps:
            a.wait_ready()
    except BaseException:
        for a in apps:
            print(a.output())
            a.stop()
        raise
    return apps


class Workers:
    """The workers of one example that a test started (the ``apps`` fixture): every one
    is stopped when the test ends, whatever the end."""

    def __init__(self, example: str, args: Sequence[str] = ()) -> None:
        self.example = example
        self.args = args
        self.started: list[App] = []

    def start(self, env: dict[str, str], n: int = 1) -> list[App]:
        """Start ``n`` workers with ``env`` (see :func:`start_apps`)."""
        apps = start_apps(self.example, env, n, self.args)
        self.started.extend(apps)
        return apps

    def start_closed_and_open(self, env: dict[str, str]) -> tuple[App, App]:
        """One fail-closed and one fail-open worker, otherwise alike."""
        (closed,) = self.start({**env, "QUORATE_FAILURE_POLICY": "closed"})
        (opened,) = self.start({**env, "QUORATE_FAILURE_POLICY": "open"})
        return closed, opened

    def stop(self) -> None:
        for a in self.started:
            a.stop()


def spread(
    apps: Iterable[App],
    requests: int,
    send: Callable[[httpx.Client, int], httpx.Response],
    threads: int = 6,
) -> list[httpx.Response]:
    """Send ``requests`` requests round-robin across the apps from ``threads`` threads
    (real concurrency across real processes)."""
    apps = list(apps)
    clients = [httpx.Client(base_url=a.url, timeout=20.0, trust_env=False) for a in apps]
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda i: send(clients[i % len(clients)], i), range(requests)))
    finally:
        for c in clients:
            c.close()


def statuses(responses: Iterable[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


def app_env(urls: Sequence[str], **extra: Any) -> dict[str, str]:
    env = {"QUORATE_NODES": ",".join(urls), "QUORATE_FAILURE_POLICY": "closed"}
    env.update({k: str(v) for k, v in extra.items()})
    return env
