"""Result tables: the paper's Table 1 for one run, and its mean ± std over seeds with paired gains.

A row is ``{"key", "model", "skeleton", "op", "top1", "top5"}`` (plus ``"seed"`` over seeds): ``key`` names the
model (``teacher``, ``student_<objective>``), ``model`` is its label in the table.
"""

from __future__ import annotations

import numpy as np


def results_table(rows: list[dict], protocol: str) -> tuple[str, str]:
    """Table 1 of the paper as Markdown and CSV: one row per (model, OP) with top-1/top-5 in %."""
    header = ["model", "skeleton", "OP", f"top-1 ({protocol})", f"top-5 ({protocol})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv = [",".join(header)]
    for r in rows:
        cells = [r["model"], r["skeleton"], f"{r['op']:.1f}", f"{100 * r['top1']:.2f}", f"{100 * r['top5']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
        csv.append(",".join(cells))
    return "\n".join(lines) + "\n", "\n".join(csv) + "\n"


def _mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.2f} ± {std:.2f}"


def summarise(rows: list[dict], baseline: tuple[str, str] = ("student_ce", "w/o KD")) -> tuple[str, str]:
    """Markdown (mean ± std over seeds, with each student's gains over the ``baseline`` key, named by its label,
    paired by seed) and CSV (every seed's row)."""
    base_key, base_label = baseline
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["key"], r["op"], r["seed"]): r for r in rows}
    groups = list(dict.fromkeys((r["key"], r["model"], r["skeleton"], r["op"]) for r in rows))
    lines = [f"| model | skeleton | OP | top-1 % | top-5 % | top-1 gain over {base_label} (points) |",
             "|---|---|---|---|---|---|"]
    for key, model, skeleton, op in groups:
        top1 = [by[key, op, s]["top1"] for s in seeds]
        top5 = [by[key, op, s]["top5"] for s in seeds]
        gain = ""
        if key.startswith("student_") and key != base_key and all((base_key, op, s) in by for s in seeds):
            gain = _mean_std([by[key, op, s]["top1"] - by[base_key, op, s]["top1"] for s in seeds])
        lines.append(f"| {model} | {skeleton} | {op:.1f} | {_mean_std(top1)} | {_mean_std(top5)} | {gain} |")
    lines.append(f"\nmean ± std (sample std) over {len(seeds)} seeds: {', '.join(map(str, seeds))}")
    csv = ["seed,model,skeleton,op,top1,top5"]
    csv += [f"{r['seed']},{r['model']},{r['skeleton']},{r['op']:.1f},{r['top1']:.6f},{r['top5']:.6f}" for r in rows]
    return "\n".join(lines) + "\n", "\n".join(csv) + "\n"
