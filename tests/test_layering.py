"""One-way layering (STYLE.md §5): layouts -> data -> models -> losses -> part_matrix -> train -> (bench, cli), tuning
beside cli. Every import counts, the ones inside functions too, and no module sits in a cycle."""

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# partkd's top-level layers, lowest first: a module imports only its own layer or lower ones
RANK = {"layouts": 0, "storage": 0, "data": 1, "models": 2, "losses": 3, "part_matrix": 4, "tracking": 4, "train": 5,
        "bench": 6, "cli": 7}
# the same inside the packages that have several layers of their own
INNER = {
    "data": {"schema": 0, "noise": 0, "transforms": 0, "protocols": 0, "shards": 1, "splits": 2, "synth": 2,
             "validate": 2, "raydata": 2, "show": 2, "convert": 3, "degrade": 4, "subset": 4},
    "train": {"objectives": 0, "results": 0, "ingest": 0, "config": 1, "checkpoint": 2, "session": 3, "distill": 4,
              "loop": 5, "evaluate": 6, "jobs": 6, "pipeline": 7, "schedule": 7},
    "cli": {"progress": 0, "data": 1, "train": 1, "bench": 1, "ui": 1, "demo": 2, "__main__": 3},
}
# stricter than rank: the models see only layouts (and themselves); the losses are pure tensor functions
ONLY = {"models": {"layouts", "models"}, "losses": set()}
# deprecated aliases, each a lazy import that goes with the alias in 0.3.0
DEPRECATED = {("partkd.losses", "partkd.models.heads")}
# tuning drives partkd's training: it may use these and what they stand on, never the command line or benchmarks
TUNING_MAY_IMPORT = {"partkd", "layouts", "storage", "data", "train", "tracking"}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {_module_name(p): p for root in ("partkd", "tuning") for p in sorted((REPO / root).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function: ``from a.b import c`` names ``a.b``
    and, where it is a module, ``a.b.c``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n in MODULES}


GRAPH = {name: {d for d in _imports(path) if d != name and not d.startswith(name + ".")}
         for name, path in MODULES.items()}


def test_no_import_cycles():
    try:
        list(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as err:
        pytest.fail("import cycle: " + " -> ".join(err.args[1]))


def _layers(name: str) -> tuple[str, str | None]:
    parts = name.split(".")
    return (parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else None)


PARTKD = sorted(n for n in MODULES if n.startswith("partkd."))


@pytest.mark.parametrize("name", PARTKD)
def test_partkd_modules_import_only_lower_layers(name):
    layer, inner = _layers(name)
    assert layer in RANK, f"add {layer} to the layer table"
    if layer in INNER and inner is not None:
        assert inner in INNER[layer], f"add {inner} to the {layer} layer table"
    for target in GRAPH[name]:
        assert not target.startswith("tuning"), f"{name} imports {target}: partkd never imports tuning"
        if (name, target) in DEPRECATED or target == "partkd":
            continue
        other, other_inner = _layers(target)
        assert RANK[other] <= RANK[layer], f"{name} imports upward: {target}"
        assert layer not in ONLY or other in ONLY[layer], f"{name} may not import {target}"
        if other == layer and layer in INNER and inner is not None and other_inner is not None:
            assert INNER[layer][other_inner] <= INNER[layer][inner], f"{name} imports upward in {layer}: {target}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("tuning")))
def test_tuning_uses_training_never_the_command_line(name):
    for target in GRAPH[name]:
        if target.startswith("partkd"):
            assert (_layers(target)[0] or "partkd") in TUNING_MAY_IMPORT, f"{name} may not import {target}"


def test_the_checks_can_fail():
    """The graph is what the files say: a known edge and a known inner import are seen."""
    assert "partkd.data.shards" in GRAPH["partkd.data.splits"]
    assert "partkd.train.jobs" in GRAPH["partkd.cli.train"]  # imported inside a function
