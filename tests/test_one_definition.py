"""A constant is defined once in the package and imported where it is used: no two module-level
tuple or list literals of ``src/deit`` hold the same values (a copy drifts, as the ImageNet
mean/std, the distillation types and the fast-kernel settings once were copied). Read from the
source (AST)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import deit

PACKAGE = Path(deit.__file__).parent


def literal_constants(paths: list[Path], root: Path) -> dict[str, list[str]]:
    """The module-level assignments of tuple/list literals (two items or more) in ``paths``:
    ``repr(value) -> ["file:line NAME", ...]``."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        for node in ast.parse(path.read_text(), str(path)).body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or not isinstance(node.value, (ast.Tuple, ast.List)):
                continue
            if len(node.value.elts) < 2:
                continue
            try:
                value = ast.literal_eval(node.value)
            except ValueError:  # names or calls inside: not a literal
                continue
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            found[repr(value)].append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(target)}")
    return found


def copies(paths: list[Path], root: Path) -> list[list[str]]:
    return [places for places in literal_constants(paths, root).values() if len(places) > 1]


def test_the_scan_finds_a_copied_constant(tmp_path):
    (tmp_path / "a.py").write_text("MEAN = (0.485, 0.456, 0.406)\nOTHER = ('x', 'y')\n")
    (tmp_path / "b.py").write_text("from a import OTHER\nIMAGENET_MEAN = (0.485, 0.456, 0.406)\n")
    assert copies(sorted(tmp_path.glob("*.py")), tmp_path) == [["a.py:1 MEAN", "b.py:2 IMAGENET_MEAN"]]


def test_each_constant_is_defined_once():
    found = copies(sorted(PACKAGE.rglob("*.py")), PACKAGE)
    assert found == [], "define each once and import it: " + "; ".join(" = ".join(places) for places in found)
