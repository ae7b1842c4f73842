"""The shape of ``observability/``, as its package docstring states it: rooms by responsibility, imports that
run one way, nothing that reaches into the project that uses it, and modules small enough to read.

Read from the source (every import, module-level or inside a function), so a lazy import counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "observability"
#: The rooms (sub-packages) and the top-level modules, each a node of the dependency graph.
ROOMS = ("messaging", "deadletters", "telemetry", "logs", "sentry", "brokers")
#: What each room and top-level module may import from ``observability`` (besides itself). Django's entry
#: points (``models``, ``admin``, ``management``) point into the rooms and are left out of the graph.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "backoff": set(),
    "failure": set(),
    "delivery": set(),
    "redis_client": set(),
    "brokers": {"redis_client", "telemetry"},
    "logs": set(),
    "telemetry": {"delivery", "logs"},
    "sentry": {"failure", "logs"},
    "beat": {"logs", "redis_client", "telemetry"},
    "results": {"telemetry"},
    "publishing": {"telemetry"},
    "task": {"backoff", "brokers", "delivery", "errors", "beat", "redis_client", "results", "sentry", "telemetry"},
    "deadletters": {"errors", "failure", "logs", "task", "telemetry", "sentry"},
    "messaging": {"brokers", "delivery", "errors", "failure", "deadletters", "redis_client", "telemetry"},
    "control": {"logs"},
    "wiring": {"control", "logs", "sentry", "telemetry"},
    "apps": {"logs"},
}
#: Longest module, in lines: past it a module is usually two rooms (``../shared/STYLE.md``).
MAX_LINES = 400


def _modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" not in path.parts:
            yield path


def _node(path: Path) -> str | None:
    """The graph node a file belongs to: its room, or its top-level module's name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[0] in ROOMS:
        return parts[0]
    if parts[0] in {"__init__", "models", "admin", "management"}:
        return None
    return parts[0]


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, absolute names, wherever in the file the import stands."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _target(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "observability" or len(parts) < 2:
        return None
    return parts[1]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        node = _node(path)
        if node is None:
            continue
        targets = graph.setdefault(node, set())
        for name in _imports(path):
            target = _target(name)
            if target is not None and target != node and target in {*ROOMS, *ALLOWED}:
                targets.add(target)
    return graph


def test_nothing_in_observability_imports_the_project_that_uses_it():
    """``observability`` is the project's reliability layer, not part of its domain or wiring: health checks
    and the Celery app live in ``marketplace``, and receive nothing from it."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules()
        for name in _imports(path)
        if name.split(".")[0] in {"marketplace", "promotions"}
    ]
    assert offenders == []


def test_each_room_imports_only_what_its_docstring_allows():
    """The dependency rules of ``observability/__init__.py``: a new edge is a design decision, made here."""
    graph = _graph()
    assert set(graph) == set(ALLOWED) | set(ROOMS), "a new room or top-level module: give it its rules here"
    breaches = {node: sorted(targets - ALLOWED[node]) for node, targets in graph.items() if targets - ALLOWED[node]}
    assert breaches == {}


def test_the_rooms_import_each_other_without_a_circle():
    graph = _graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, f"import circle: {' -> '.join([*visiting[visiting.index(node) :], node])}"
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_says_what_it_owns_and_what_it_may_import(room):
    docstring = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text())) or ""
    assert "Owns" in docstring or "owns" in docstring, room
    assert "May import" in docstring or "Imports nothing" in docstring, room


def test_every_module_opens_with_a_docstring_and_stays_short():
    """A module states what it is for; one past ``MAX_LINES`` is usually two rooms."""
    paths = [*_modules(), *(ROOT / "marketplace").rglob("*.py"), *(ROOT / "promotions").rglob("*.py")]
    paths = [path for path in paths if "migrations" not in path.parts and path.stat().st_size]
    missing = [str(p.relative_to(ROOT)) for p in paths if not ast.get_docstring(ast.parse(p.read_text()))]
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert missing == []
    assert long == {}
