"""The package's import graph: no cycles, and nothing below the CLI imports the commands.

Imports are read with ``ast`` from the source files, so the check sees imports inside
functions too (the usual way to hide a cycle from Python's import machinery); only imports
under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "deit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every ``deit`` module ``module`` imports, at any depth except TYPE_CHECKING blocks."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` / `from .pkg import module` import submodules by name.
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = _imports(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")
        # Keep only our own modules; a name that is an attribute of a module counts as that module.
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None. A package importing its own
    submodules (``deit/__init__`` -> ``deit.config``) is how packages are built, not a cycle, so
    edges from a submodule up to a package that contains it are ignored."""
    def is_parent(package: str, module: str) -> bool:
        return module.startswith(package + ".")

    edges = {m: {t for t in ts if not is_parent(t, m)} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_the_checker_finds_a_cycle_and_function_level_imports():
    source = "def f():\n    from .b import g\n"
    assert _imports(ast.parse(source), "deit.a", False) == {"deit.b", "deit.b.g"}
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\n"
    assert _imports(ast.parse(typed), "deit.a", False) == {"typing", "typing.TYPE_CHECKING"}
    assert find_cycle({"deit.a": {"deit.b"}, "deit.b": {"deit.c"}, "deit.c": {"deit.a"}}) == ["deit.a", "deit.b", "deit.c", "deit.a"]
    assert find_cycle({"deit": {"deit.a"}, "deit.a": {"deit"}}) is None  # a submodule reading its package


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_the_commands():
    offenders = {
        module: sorted(t for t in targets if t.startswith("deit.commands"))
        for module, targets in import_graph().items()
        if module != "deit.cli" and not module.startswith("deit.commands")
    }
    offenders = {m: t for m, t in offenders.items() if t}
    assert not offenders, f"modules below the CLI import deit.commands: {offenders}"


@pytest.mark.parametrize("module", ["deit.commands.demo", "deit.commands.predict"])
def test_commands_are_found_by_the_graph(module):
    # Guards the test itself: if the walk found no commands, the check above could not fail.
    assert module in import_graph()
