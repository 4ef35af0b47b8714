"""The shape of the code, read from its imports: one-way between the top-level packages.

Every import counts, at module level or inside a function, since a lazy import is a dependency all
the same. A node is a top-level package or module of hidream_service (api, jobs, models, server, ...)
or the webhooks package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hidream_service", "webhooks")
#: The job core and the model code know no wire protocol and no web framework plumbing.
CORE = {"jobs", "webhooks", "inference"}
EDGES = {"api", "dialects"}


def node_of(module: str) -> str | None:
    """hidream_service.jobs.worker -> jobs; webhooks.outbox -> webhooks; anything else -> None."""
    parts = module.split(".")
    if parts[0] == "webhooks":
        return "webhooks"
    if parts[0] == "hidream_service" and len(parts) > 1:
        return parts[1]
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path) -> str:
    """What a relative import in `path` is relative to."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def imported(source: str, package: str) -> Iterator[str]:
    """Every module a source file imports, wherever the import statement is."""
    for statement in ast.walk(ast.parse(source)):
        if isinstance(statement, ast.Import):
            yield from (alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            if statement.level:
                base = package.split(".")[: len(package.split(".")) - statement.level + 1]
                yield ".".join([*base, statement.module or ""]).rstrip(".")
            elif statement.module is not None:
                yield statement.module


def import_graph() -> dict[str, dict[str, list[str]]]:
    """node -> imported node -> the modules that import it (for the failure message)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = node_of(module_name(path))
            if source is None:  # hidream_service/__init__.py: the package itself
                continue
            graph.setdefault(source, {})
            for name in imported(path.read_text(), package_of(path)):
                target = node_of(name)
                if target is not None and target != source:
                    graph[source].setdefault(target, []).append(module_name(path))
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_cycle_between_top_level_packages() -> None:
    graph = import_graph()

    found = cycles(graph)

    assert {"api", "dialects", "jobs", "models", "inference", "webhooks", "server"} <= set(graph)  # it did look
    details = [
        f"{' <-> '.join(component)}: "
        + "; ".join(f"{a} -> {b} in {graph[a][b][0]}" for a in component for b in component if b in graph[a])
        for component in found
    ]
    assert found == [], "\n".join(details)


@pytest.mark.parametrize("core", sorted(CORE))
def test_the_core_imports_no_edge(core: str) -> None:
    graph = import_graph()

    reached = {target: modules for target, modules in graph[core].items() if target in EDGES}

    assert reached == {}, f"{core} imports {reached}"


def test_the_walk_sees_lazy_and_relative_imports_too() -> None:
    source = "def f():\n    from hidream_service.api import state\n    import webhooks.outbox\nfrom . import pool\n"

    assert {node_of(name) for name in imported(source, "hidream_service.jobs")} == {"api", "webhooks", "jobs"}


def compared_strings(source: str) -> Iterator[str]:
    """The string constants any comparison in `source` holds (`x == "a"`, `x in ("a", "b")`)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                for part in ast.walk(operand):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        yield part.value


def test_only_a_family_compares_its_names_and_only_a_dialect_its_id() -> None:
    from hidream_service.dialects.registry import DIALECTS
    from hidream_service.models.registry import DEFAULT_REGISTRY

    family_names = {family.name for family in DEFAULT_REGISTRY.families} | set(DEFAULT_REGISTRY.models)
    dialect_ids = {dialect.id for dialect in DIALECTS}
    found = []
    for path in [ROOT / "modal_app.py", *sorted((ROOT / "hidream_service").rglob("*.py"))]:
        node = node_of(module_name(path))
        names = set(compared_strings(path.read_text()))
        if node != "models":
            found += [f"{module_name(path)} compares {name!r}" for name in sorted(names & family_names)]
        if node != "dialects":
            found += [f"{module_name(path)} compares {name!r}" for name in sorted(names & dialect_ids)]

    assert found == []


def test_the_comparison_walk_finds_names_in_tuples_too() -> None:
    source = "if family == 'noop' or variant in ('full', 'dev'):\n    pass\n"

    assert set(compared_strings(source)) == {"noop", "full", "dev"}
