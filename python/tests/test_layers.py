"""The package's imports point one way (see "Package layout" in the README): each
core module imports only modules of lower layers, the slots never import a client,
and neither ``contrib`` nor ``testing`` is imported by the core or by each other.
Read from the source with ``ast``; no cluster needed."""

from __future__ import annotations

import ast
from pathlib import Path

import quorate

PACKAGE = Path(quorate.__file__).parent

#: Core modules, lowest layer first.
LAYERS = [
    "types",
    "_ratelimit_headers",
    "errors",
    "_routes",
    "failure",
    "_calls",
    "_exchange",
    "_stream",
    "_stream_io",
    "slot",
    "client",
    "work",
    "__init__",
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    """Package modules ``path`` imports (relative or ``quorate.``), as dotted names
    under the package (``contrib.common``, ``errors``)."""
    here = module_name(path).split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("quorate"):
                target = node.module.split(".")[1:]
            else:
                continue
            if not node.module:  # `from . import _calls`
                out.update(".".join([*target, a.name]) for a in node.names)
            else:
                out.add(".".join(target))
        elif isinstance(node, ast.Import):
            out.update(
                a.name[len("quorate.") :] for a in node.names if a.name.startswith("quorate.")
            )
    return {m for m in out if m}


def test_core_modules_import_only_lower_layers() -> None:
    rank = {m: i for i, m in enumerate(LAYERS)}
    bad = []
    for name in LAYERS:
        for dep in imports(PACKAGE / f"{name}.py"):
            top = dep.split(".")[0]
            if top not in rank or rank[top] >= rank[name]:
                bad.append(f"{name} imports {dep}")
    assert bad == []


def test_slots_never_import_a_client() -> None:
    assert not {"client", "_exchange", "_calls"} & imports(PACKAGE / "slot.py")


def test_contrib_and_testing_stay_apart() -> None:
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        deps = {d.split(".")[0] for d in imports(path)}
        if name.startswith("contrib"):
            assert "testing" not in deps, name
        if name.startswith("testing"):
            assert "contrib" not in deps, name


def test_the_import_reader_sees_relative_imports() -> None:
    assert {"errors", "failure", "types"} <= imports(PACKAGE / "slot.py")
    assert "contrib.common" in imports(PACKAGE / "contrib" / "asgi.py")
    assert "_calls" in imports(PACKAGE / "client.py")
