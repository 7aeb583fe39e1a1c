"""One-way layering (STYLE.md §5): layouts -> data -> models -> losses -> part_matrix -> train -> cli."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "partkd"
RANK = {"layouts": 0, "data": 1, "models": 2, "losses": 3, "part_matrix": 4, "bench": 5, "train": 5,
        "tracking": 5, "cli": 6, "cli_data": 6}
# stricter than rank: the models see only layouts (and themselves); the losses are pure tensor functions
ONLY = {"models": {"layouts", "models"}, "losses": set()}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_import_only_lower_layers(path):
    own = _layer(path)
    assert own in RANK, f"add {own} to the layer table"
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in ("tuning", "cluster"), f"{path.name} imports {name}: partkd never imports {top}"
        if top == "partkd" and "." in name:
            target = name.split(".")[1]
            assert RANK[target] <= RANK[own], f"{path.relative_to(PACKAGE)} imports upward: {name}"
            assert own not in ONLY or target in ONLY[own], f"{path.relative_to(PACKAGE)} may not import {name}"
        elif top == "partkd":
            assert own not in ONLY, f"{path.relative_to(PACKAGE)} may not import {name}"
