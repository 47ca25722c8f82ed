"""The package's import graph: no cycles, and nothing below the CLI imports the commands.

Imports are read with ``ast`` from the source files, so the check sees imports inside
functions too (the usual way to hide a cycle from Python's import machinery). Imports under
``if TYPE_CHECKING:`` never run, so the runtime graph leaves them out; but a module that names
another in its annotations depends on it all the same, and the second way to hide a loop is a
function-level import one way and a type-only import back (``modeling`` -> ``checkpoint`` in
``from_pretrained``, ``checkpoint`` -> ``modeling`` for a type): the layering test counts them.
"""

from __future__ import annotations

import ast
import re
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


def _imports(tree: ast.AST, module: str, is_package: bool, type_checking: bool = False) -> set[str]:
    """Every module ``module`` imports, at any depth; in TYPE_CHECKING blocks only if ``type_checking``."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if not type_checking and _is_type_checking_block(node):
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


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """Our modules and the modules of ours each imports (with the type-only imports if ``type_checking``)."""
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = _imports(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py", type_checking)
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


def _reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    """The modules ``start`` imports, directly or through others (parent packages left out, as above)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        for target in graph[module]:
            if target not in seen and not module.startswith(target + "."):
                seen.add(target)
                todo.append(target)
    return seen


def test_the_layering_checker_sees_type_only_imports():
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import g\n"
    assert "deit.b" in _imports(ast.parse(typed), "deit.a", False, type_checking=True)
    graph = {"deit.a": {"deit.b"}, "deit.b": {"deit.c"}, "deit.c": set(), "deit.k": {"deit.a"}}
    assert _reachable(graph, {"deit.k"}) == {"deit.a", "deit.b", "deit.c"}


def test_no_import_cycle_even_through_type_only_imports():
    """A loop closed by a type-only import is a loop of the design (each side knows the other),
    whatever Python's import order makes of it."""
    cycle = find_cycle(import_graph(type_checking=True))
    assert cycle is None, "import cycle (counting TYPE_CHECKING imports): " + " -> ".join(cycle)


def test_the_model_rules_import_no_framework():
    """deit.model_rules is what PyTorch and Keras share: it imports neither (nor numpy)."""
    path = SRC / PACKAGE / "model_rules.py"
    imported = _imports(ast.parse(path.read_text()), "deit.model_rules", False, type_checking=True)
    frameworks = {name for name in imported if name.split(".")[0] in ("torch", "keras", "tensorflow", "jax", "numpy")}
    assert not frameworks, f"deit.model_rules imports {sorted(frameworks)}"


# The PyTorch side of the package: models, their Hugging Face API, losses, the fast inference
# model and its kernels, training. The Keras models may read checkpoint files (deit.checkpoint
# returns their tensors) but reach none of these.
PYTORCH_MODEL_MODULES = ("deit.modeling", "deit.hf_api", "deit.losses", "deit.auto", "deit.optimize", "deit.kernels",
                         "deit.export", "deit.explain", "deit.train")


def test_keras_imports_no_pytorch_model_module():
    graph = import_graph(type_checking=True)
    assert any(m.startswith("deit.keras.") for m in graph), "the walk found no Keras module"
    reached = _reachable(graph, {m for m in graph if m == "deit.keras" or m.startswith("deit.keras.")})
    offenders = sorted(m for m in reached if any(m == p or m.startswith(p + ".") for p in PYTORCH_MODEL_MODULES))
    assert not offenders, f"deit.keras reaches PyTorch model modules: {offenders}"


ARCHITECTURE = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"


def architecture_layers(text: str) -> dict[str, int]:
    """Module (or package) -> layer number, from the rows ``| <n> <name> | `deit.x`, ... | ... |``."""
    layers: dict[str, int] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].split(" ")[0].isdigit():
            for name in re.findall(r"`(deit[\w.]*)`", cells[1]):
                layers[name] = int(cells[0].split(" ")[0])
    return layers


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of ``module``: its own row, or that of the listed package that holds it."""
    while module:
        if module in layers:
            return layers[module]
        module = module.rpartition(".")[0]
    return None


def layering_violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    problems = [f"{m} is in no layer of ARCHITECTURE.md" for m in sorted(graph) if m != PACKAGE and _layer_of(m, layers) is None]
    for module, targets in sorted(graph.items()):
        own = _layer_of(module, layers)
        if module == PACKAGE or own is None:
            continue  # the package re-exports every layer
        for target in sorted(targets):
            layer = _layer_of(target, layers)
            if not module.startswith(target + ".") and layer is not None and layer > own:
                problems.append(f"{module} (layer {own}) imports {target} (layer {layer})")
    return problems


def test_the_layer_checker_finds_upward_imports_and_unlisted_modules():
    layers = architecture_layers("| 1 ground | `deit.a` | x |\n| 2 top | `deit.b`, `deit.pkg` | y |\n")
    assert layers == {"deit.a": 1, "deit.b": 2, "deit.pkg": 2}
    assert layering_violations({"deit.b": {"deit.a"}, "deit.pkg.m": {"deit.b"}, "deit.a": set()}, layers) == []
    assert layering_violations({"deit.a": {"deit.pkg.m"}, "deit.pkg.m": set(), "deit.c": set()}, layers) == [
        "deit.c is in no layer of ARCHITECTURE.md", "deit.a (layer 1) imports deit.pkg.m (layer 2)",
    ]


def test_architecture_md_layers_hold():
    """ARCHITECTURE.md lists every module in a layer, and no module imports from a layer below it."""
    layers = architecture_layers(ARCHITECTURE.read_text())
    assert len(set(layers.values())) >= 5, "no layer table found in ARCHITECTURE.md"
    problems = layering_violations(import_graph(type_checking=True), layers)
    assert not problems, "ARCHITECTURE.md and the imports disagree:\n" + "\n".join(problems)
