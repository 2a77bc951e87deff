"""The Grafana dashboard (``docs/grafana/quorate.json``) asks only for metrics a node
exports: a real cluster is scraped and every metric name in the dashboard's queries
must be among the series of ``/metrics``. A renamed or removed metric fails here
instead of leaving an empty panel in someone's Grafana.

A labelled family has no series (and is not rendered at all) until something
happened, so the test first makes every kind of traffic the dashboard charts happen:
decisions and denials, a write forwarded by a follower, a refused peer request, and an
Envoy ``ShouldRateLimit`` call (gRPC over HTTP/2, an empty message: answered and
counted, whatever its verdict)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from quorate_cluster import ROOT, Cluster, find_binary

from quorate import Client

DASHBOARD = ROOT / "docs" / "grafana" / "quorate.json"
_NAME = re.compile(r"\bquorate_[a-z0-9_]+\b")
# A family declared as `# TYPE name kind` exports these sample names (OpenMetrics).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text of the dashboard: panel targets and template queries."""
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for var in dashboard["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            out.append(q["query"])
    return out


def used_names(dashboard: dict[str, Any]) -> set[str]:
    return {m for q in queries(dashboard) for m in _NAME.findall(q)}


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            names.update(family + s for s in _SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_name_check_can_fail() -> None:
    text = "# TYPE quorate_x counter\nquorate_x_total 1\nquorate_g 2\n"
    assert exported_names(text) == {"quorate_x_total", "quorate_x_created", "quorate_g"}
    board = {"panels": [{"targets": [{"expr": "rate(quorate_y_total[1m]) + quorate_g"}]}]}
    board["templating"] = {"list": []}  # type: ignore[assignment]
    assert used_names(board) - exported_names(text) == {"quorate_y_total"}


@pytest.fixture(scope="module")
def grpc_cluster(request: pytest.FixtureRequest) -> Any:
    c = Cluster(find_binary(), name="dash", grpc=True)
    try:
        c.start()
        yield c
    finally:
        if request.session.testsfailed:
            print(c.tails(40))
        c.close()


def make_every_kind_of_traffic(c: Cluster, uid: str) -> None:
    leader = c.leader_id()
    follower = next(n for n in c.nodes if n != leader)
    # Decisions, a denial (429) and a write forwarded by a follower to the leader.
    with Client([c.url(follower)]) as client:
        client.release(client.acquire([f"org:dash-{uid}"], ttl=5).lease_id)
        client.check(f"ip:dash-{uid}", limit=1, period=60)
        client.check(f"ip:dash-{uid}", limit=1, period=60)
    # A peer request without the cluster id header: refused and counted.
    raft = c.nodes[leader][1]
    r = httpx.post(f"http://{raft}/raft/probe", content=b"", timeout=5.0)
    assert r.status_code in (400, 401, 403), r.status_code
    # One Envoy ShouldRateLimit call: gRPC is a 5-byte frame header (no compression,
    # length 0) and the empty message, over HTTP/2 with prior knowledge.
    with httpx.Client(http1=False, http2=True, timeout=5.0) as h2:
        r = h2.post(
            f"http://{c.grpc[leader]}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            content=b"\x00\x00\x00\x00\x00",
            headers={"content-type": "application/grpc", "te": "trailers"},
        )
        assert r.status_code == 200, r.status_code


def test_dashboard_uses_only_exported_metrics(grpc_cluster: Cluster, uid: str) -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used = used_names(board)
    assert len(used) >= 20, sorted(used)
    make_every_kind_of_traffic(grpc_cluster, uid)
    exported: set[str] = set()
    for url in grpc_cluster.urls:
        r = httpx.get(url + "/metrics", timeout=5.0)
        assert r.status_code == 200
        exported |= exported_names(r.text)
    missing = sorted(used - exported)
    assert missing == [], f"the dashboard queries metrics no node exports: {missing}"


@pytest.mark.parametrize("needle", ["quorate_raft_term", "quorate_state_cap", "429", "503"])
def test_dashboard_covers_the_issue_list(needle: str) -> None:
    assert needle in DASHBOARD.read_text()
