"""The house has no import circles: every import inside the installed packages, at module level
or inside a function (a lazy import hides a circle, it does not remove it), forms a graph without
cycles. Importing ``a.b.c`` also runs the ``__init__`` of ``a.b``, so that package counts as
imported too. Imports under ``if TYPE_CHECKING:`` never run and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"lit_defense": ROOT / "lit_defense", "lit_defense_callbacks": ROOT / "callbacks"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (directly, or through a package's ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)
        own = set(_ancestors(name)) | {name}
        edges = set()
        for target in targets:
            for candidate in [*_ancestors(target), target]:
                if candidate in modules and candidate not in own:
                    edges.add(candidate)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_packages_have_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30, "the walk found too few modules: the test would pass on nothing"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walker_sees_lazy_and_package_level_cycles():
    # the circles this test was written against: a function-level import, and a cycle that only
    # exists because importing a submodule runs its package's __init__
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    graph = import_graph()
    assert "lit_defense.attacks" in graph["lit_defense.modules.adversarial"]  # package __init__ edge
    assert "lit_defense.report" in graph["lit_defense.audit.run"]  # lazy import inside run_audit


def test_the_core_never_imports_the_callbacks():
    graph = import_graph()
    offenders = sorted(m for m, deps in graph.items() if m.startswith("lit_defense.") or m == "lit_defense"
                       for d in deps if d.startswith("lit_defense_callbacks"))
    assert not offenders, f"lit_defense imports the callbacks: {offenders}"


def test_result_types_sit_below_producers_and_reporters():
    graph = import_graph()
    # the ground floor: the result types read only the statistics, the per-sample outcome, the
    # roles and the checklist's verdict, which read nothing of the package but the binomial tails
    assert graph["lit_defense.results"] == {"lit_defense.stats", "lit_defense.per_sample", "lit_defense.roles",
                                            "lit_defense.verdict"}
    assert graph["lit_defense.verdict"] == {"lit_defense.stats"}
    assert graph["lit_defense.stats"] == {"lit_defense.binomial"}
    for module in ("lit_defense.binomial", "lit_defense.per_sample", "lit_defense.roles"):
        assert graph[module] == set(), module
    for module in ("lit_defense.report", "lit_defense.plots"):
        assert not any(d.startswith("lit_defense.audit") for d in graph[module]), f"{module} imports the audit"
    # the checklist reads results: it runs no attack and imports neither the attacks' runner nor the audit
    checklist = [m for m in graph if m == "lit_defense.diagnostics" or m.startswith("lit_defense.diagnostics.")]
    assert {"lit_defense.diagnostics.mechanism", "lit_defense.diagnostics.outcome",
            "lit_defense.diagnostics.registry"} <= set(checklist)
    for module in checklist:
        assert not {"lit_defense.evaluation", "lit_defense.audit"} & graph[module], module
