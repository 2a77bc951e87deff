"""Every request the package can make is a route the server documents.

``quorate._routes.ROUTES`` is the one place the package declares methods and paths;
these tests hold it to ``proto/openapi.json`` (generated from the server's route
table, with its own drift test on the Rust side), the decision stream's upgrade
(``UPGRADES``, outside that document) to the route table itself, and make sure no
other module writes a path of its own. No cluster needed.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

import quorate
from quorate import _calls, _routes
from quorate._routes import ROUTES, UPGRADES, Route

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(quorate.__file__).parent


def openapi_operations() -> set[tuple[str, str]]:
    doc = json.loads((ROOT / "proto" / "openapi.json").read_text())
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.pattern}")
def test_every_route_is_in_openapi(route: Route) -> None:
    assert (route.method, route.pattern) in openapi_operations()


@pytest.mark.parametrize("route", UPGRADES, ids=lambda r: f"{r.method} {r.pattern}")
def test_every_upgrade_is_in_the_route_table(route: Route) -> None:
    """Upgrades answer 101, not JSON, so the OpenAPI document leaves them out; the
    route table declares each as ``upgrade(RouteId::X, "/path")``, always a POST."""
    table = (ROOT / "proto" / "src" / "routes.rs").read_text()
    assert route.method == "POST"
    assert re.search(rf'upgrade\(RouteId::\w+, "{re.escape(route.pattern)}"\)', table)


def test_routes_are_declared_once() -> None:
    assert len(set(ROUTES + UPGRADES)) == len(ROUTES) + len(UPGRADES)
    declared = {v for v in vars(_routes).values() if isinstance(v, Route)}
    assert declared == set(ROUTES) | set(UPGRADES), "a Route constant is missing from ROUTES"


def test_no_module_writes_a_path_of_its_own() -> None:
    """Paths come from ``_routes`` only: no other module of the package (contrib and
    testing included) holds a string literal that looks like an API path."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_routes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and (text.startswith("/v1/") or text == "/v1"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_path_parameters_are_one_encoded_segment() -> None:
    assert _routes.SLOTS.path("org:a/b?c") == "/v1/slots/org:a%2Fb%3Fc"
    with pytest.raises(TypeError):
        _routes.SLOTS.path()
    call = _calls.delete_policy("x y")
    assert (call.method, call.path) == ("DELETE", "/v1/policies/x%20y")


def schema_fields(name: str) -> set[str]:
    doc = json.loads((ROOT / "proto" / "openapi.json").read_text())
    return set(doc["components"]["schemas"][name]["properties"])


def test_the_waiting_acquire_speaks_the_documented_fields() -> None:
    """What the package sends and reads for a waiting acquire is in the server's
    schemas (the server refuses unknown request fields, so a typo here is a 400)."""
    body = _calls.acquire_body(["k"], 1.0, "id", "me", wait=2.5)
    assert body["wait_ms"] == 2500
    assert set(body) <= schema_fields("AcquireRequest")
    assert "waited_ms" in schema_fields("AcquireGranted")
    assert "queue_position" in schema_fields("AcquireDenied")
    assert "queue" in schema_fields("SlotsResponse")
    assert {"length", "waiters"} <= schema_fields("QueueInfo")
    waiter = {f.name for f in dataclasses.fields(quorate.Waiter)}
    assert waiter <= schema_fields("WaiterInfo")
