"""A real three-node quorate cluster on loopback, for tests.

Mirrors ``tests/common/mod.rs`` of the Rust workspace: pick free ports, write a
``cluster.toml`` with short Raft timeouts into a temporary directory, run
``quorate serve --config <file> --node <id>`` per node, and poll ``/readyz`` with a
deadline (never a blind sleep) until every node knows a leader. Nodes can be killed
with SIGKILL (a crash) and restarted on the same data directory. Each node logs to
``<dir>/node-<id>.log``; :meth:`Cluster.tails` shows the end of every log for failure
messages.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

#: How long to wait for a cluster to become ready or elect a leader.
DEADLINE = 30.0

#: The repository's root (its ``cluster.toml`` holds the seed policies and tiers).
ROOT = Path(__file__).resolve().parents[2]


def seed_policies(path: Path = ROOT / "cluster.toml") -> str:
    """The ``[[policies]]`` and ``[tiers]`` tables of the repository's ``cluster.toml``,
    as TOML text: the seeds every test cluster starts with (as in tests/common/mod.rs)."""
    kept: list[str] = []
    keep = False
    for line in path.read_text().splitlines():
        if line.startswith("["):
            keep = line.strip() in ("[[policies]]", "[tiers]")
        if keep:
            kept.append(line)
    return "\n".join(kept) + "\n"


DEFAULT_POLICIES = seed_policies()


def tokens_toml(tokens: dict[str, tuple[str, str]]) -> str:
    """An `[auth]` section with one token per entry: name -> (role, secret)."""
    parts = ["\n[auth]"]
    for name, (role, secret) in tokens.items():
        parts.append(f'[[auth.tokens]]\nname = "{name}"\nrole = "{role}"\ntoken = "{secret}"\n')
    return "\n".join(parts)


def find_binary() -> Path:
    """``$QUORATE_BIN``, else the workspace's debug, else release binary. Fails loudly
    (never skips): Python tests without a server would prove nothing."""
    env = os.environ.get("QUORATE_BIN")
    if env:
        p = Path(env)
        if not p.is_file():
            raise RuntimeError(f"QUORATE_BIN={env} does not exist")
        return p
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for flavour in ("debug", "release"):
        p = target / flavour / "quorate"
        if p.is_file():
            return p
    raise RuntimeError(
        "no quorate binary: set QUORATE_BIN or run `cargo build --bin quorate` "
        "(scripts/test_python.sh does this for you)"
    )


def free_ports(n: int) -> list[int]:
    """Free loopback ports (bound together, then released for the nodes to take)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def poll(
    what: str, fn: Callable[[], T | None], deadline: float = DEADLINE, every: float = 0.05
) -> T:
    """Call ``fn`` until it returns something other than None; fail at the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = fn()
        if value is not None:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(every)


class Cluster:
    """A running test cluster; :meth:`close` kills every node and removes the files."""

    def __init__(
        self,
        binary: Path,
        nodes: int = 3,
        *,
        policies_toml: str = DEFAULT_POLICIES,
        heartbeat_ms: int = 50,
        election_min_ms: int = 300,
        election_max_ms: int = 600,
        request_timeout_ms: int = 2000,
        expire_interval_ms: int = 300,
        default_ttl_ms: int = 60_000,
        name: str = "py",
        grpc: bool = False,
    ) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix=f"quorate-{name}-"))
        ports = free_ports(nodes * 3)
        self.nodes = {
            i + 1: (f"127.0.0.1:{ports[3 * i]}", f"127.0.0.1:{ports[3 * i + 1]}")
            for i in range(nodes)
        }
        #: Each node's Envoy rate limit service address (``grpc=True`` only).
        self.grpc = {i + 1: f"127.0.0.1:{ports[3 * i + 2]}" for i in range(nodes)} if grpc else {}
        self.request_timeout = request_timeout_ms / 1000
        lines = ['cluster_id = "pytest"', 'data_dir = "data"', ""]
        for nid, (api, raft) in self.nodes.items():
            lines += [
                "[[nodes]]",
                f"id = {nid}",
                f'api_addr = "{api}"',
                f'raft_addr = "{raft}"',
                *([f'grpc_addr = "{self.grpc[nid]}"'] if grpc else []),
                "",
            ]
        lines += [
            "[raft]",
            f"heartbeat_interval_ms = {heartbeat_ms}",
            f"election_timeout_min_ms = {election_min_ms}",
            f"election_timeout_max_ms = {election_max_ms}",
            "",
            "[limits]",
            f"default_ttl_ms = {default_ttl_ms}",
            "",
            "[server]",
            f"request_timeout_ms = {request_timeout_ms}",
            f"expire_interval_ms = {expire_interval_ms}",
            "drain_timeout_ms = 2000",
            "",
            policies_toml,
        ]
        self.config_path = self.dir / "cluster.toml"
        self.config_path.write_text("\n".join(lines))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(timeout=2.0, trust_env=False)

    # -- processes --------------------------------------------------------------------

    def start(self) -> Cluster:
        for nid in self.nodes:
            self.spawn(nid)
        self.wait_all_ready()
        return self

    def spawn(self, nid: int) -> None:
        assert nid not in self.procs, f"node {nid} is already running"
        log = open(self.log_path(nid), "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ)
        env.pop("QUORATE_DATA_DIR", None)
        env.update(QUORATE_LOG="info,openraft=warn", QUORATE_LOG_COLOR="never")
        self.procs[nid] = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config_path), "--node", str(nid)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()

    def kill(self, nid: int) -> None:
        """SIGKILL: a crash, no drain, no flush."""
        p = self.procs.pop(nid, None)
        if p is not None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=DEADLINE)

    def restart(self, nid: int) -> None:
        self.kill(nid)
        self.spawn(nid)
        self.wait_ready(nid)

    def running(self) -> list[int]:
        return [nid for nid, p in self.procs.items() if p.poll() is None]

    def close(self) -> None:
        for nid in list(self.procs):
            self.kill(nid)
        self.http.close()
        if os.environ.get("QUORATE_TEST_KEEP"):
            print(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- addresses --------------------------------------------------------------------

    def url(self, nid: int) -> str:
        return f"http://{self.nodes[nid][0]}"

    @property
    def urls(self) -> list[str]:
        return [self.url(n) for n in self.nodes]

    def log_path(self, nid: int) -> Path:
        return self.dir / f"node-{nid}.log"

    def tail(self, nid: int, lines: int = 30) -> str:
        try:
            text = self.log_path(nid).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            text = []
        # Probes of a node that is not ready yet say nothing new; keep the rest.
        text = [t for t in text if "route=/readyz" not in t]
        return f"----- node {nid} log (last {lines} lines) -----\n" + "\n".join(text[-lines:])

    def tails(self, lines: int = 30) -> str:
        return "\n".join(self.tail(n, lines) for n in self.nodes)

    # -- waits ------------------------------------------------------------------------

    def _ready(self, nid: int) -> bool | None:
        try:
            return True if self.http.get(self.url(nid) + "/readyz").status_code == 200 else None
        except httpx.HTTPError:
            return None

    def wait_ready(self, nid: int, deadline: float = DEADLINE) -> None:
        try:
            poll(f"node {nid} /readyz", lambda: self._ready(nid), deadline)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.tail(nid, 40)}") from None

    def wait_all_ready(self, deadline: float = DEADLINE) -> None:
        for nid in self.running():
            self.wait_ready(nid, deadline)

    def view(self, nid: int) -> dict[str, Any] | None:
        """``GET /v1/cluster`` on one node (None if it does not answer 200)."""
        try:
            r = self.http.get(self.url(nid) + "/v1/cluster")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        return body

    def leader_id(self, deadline: float = DEADLINE) -> int:
        """The leader, once every running node names the same running leader."""

        def agreed() -> int | None:
            running = self.running()
            leaders = set()
            for nid in running:
                v = self.view(nid)
                leaders.add(None if v is None else v.get("leader_id"))
            if len(leaders) == 1:
                (leader,) = leaders
                if leader in running:
                    return int(leader)
            return None

        try:
            return poll("an agreed leader", agreed, deadline)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.tails()}") from None

    def leader_url_from_members(self) -> str:
        """The leader's API URL as the cluster reports it (``members[].api_addr``)."""
        leader = self.leader_id()
        view = self.view(leader)
        assert view is not None
        for m in view["members"]:
            if m["id"] == leader:
                return f"http://{m['api_addr']}"
        raise AssertionError(f"leader {leader} not among members {view['members']}")

    def heal(self) -> None:
        """Start every node that is not running and wait for an agreed leader."""
        for nid in self.nodes:
            p = self.procs.get(nid)
            if p is not None and p.poll() is not None:
                self.procs.pop(nid)
            if nid not in self.procs:
                self.spawn(nid)
        self.wait_all_ready()
        self.leader_id()
