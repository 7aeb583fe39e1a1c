"""Result tables: the paper's Table 1 for one run, and its mean ± std over seeds with paired gains.

A row is ``{"key", "model", "skeleton", "train_op", "op", "top1", "top5"}`` (plus ``"seed"`` over seeds): ``key``
names the model (``teacher``, ``student_<objective>``), ``model`` is its label in the table, ``train_op`` the OP of
the synthesized occlusion it was trained on and ``op`` the one it was tested at. One format for the README, MLflow
and the closing notes: :func:`summarise`. Every table partkd writes is a :class:`Table`, so a label with a comma or
a quote in it ("Student (w/ KD, tuned)") stays one field of its CSV row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Table:
    """A table of formatted cells: one header, rows of as many cells, written as Markdown and as CSV."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"a table row has {len(row)} cells, its header {len(self.header)} "
                                 f"({', '.join(self.header)}): {row!r}")

    @classmethod
    def of(cls, header: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
        return cls(tuple(header), tuple(tuple(row) for row in rows))

    def markdown(self) -> str:
        """A pipe table (a ``|`` inside a cell escaped, so it stays one cell)."""
        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

        lines = [line(self.header), "|" + "---|" * len(self.header), *(line(row) for row in self.rows)]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """Comma-separated through the csv module: a cell with a comma, a quote or a line break is quoted."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return text.getvalue()


def results_table(rows: list[dict], protocol: str, baseline: tuple[str, str] = ("student_ce", "w/o KD")
                  ) -> tuple[str, str]:
    """Table 1 of the paper as Markdown and CSV: one row per (model, training OP, test OP) with top-1/top-5 in %; when
    the rows hold the ``baseline`` student, each other student's top-1 gain over it at the same training and test OP
    (one run: a single paired difference, no interval; :func:`summarise` gives them over seeds)."""
    base_key, base_label = baseline
    base = {(r["train_op"], r["op"]): r["top1"] for r in rows if r["key"] == base_key}
    header = ["model", "skeleton", "trained at OP", "OP", f"top-1 ({protocol})", f"top-5 ({protocol})"]
    cells = [[r["model"], r["skeleton"], f"{r['train_op']:.1f}", f"{r['op']:.1f}", f"{100 * r['top1']:.2f}",
              f"{100 * r['top5']:.2f}"] for r in rows]
    if base:
        header.append(f"top-1 gain over {base_label} (points)")
        for r, row in zip(rows, cells):
            paired = r["key"].startswith("student_") and r["key"] != base_key and (r["train_op"], r["op"]) in base
            row.append(f"{100 * (r['top1'] - base[r['train_op'], r['op']]):+.2f}" if paired else "")
    table = Table.of(header, cells)
    return table.markdown(), table.csv()


def paired_gain(differences: list[float] | np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Statistics of per-seed paired differences (student - baseline, same data, masks and seed): mean, sample std,
    the Student-t confidence interval of the mean (none for one seed) and the number of seeds where it is > 0."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else 0.0
    if n > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / np.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = float("nan")
    return {"n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high, "wins": int((d > 0).sum())}


def _mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.2f} ± {std:.2f}"


def _gain_cells(gain: dict) -> list[str]:
    ci = "" if gain["n"] < 2 else f"[{gain['ci_low']:+.2f}, {gain['ci_high']:+.2f}]"
    return [f"{gain['mean']:+.2f} ± {gain['std']:.2f}", ci, f"{gain['wins']}/{gain['n']}"]


def summarise(rows: list[dict], baseline: tuple[str, str] = ("student_ce", "w/o KD")) -> tuple[str, str]:
    """Markdown (mean ± std over seeds; each student's gain over the ``baseline`` key, named by its label, paired
    by seed and by training and test OP: mean ± std, 95 % t interval, wins) and CSV (every seed's row)."""
    base_key, base_label = baseline
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["key"], r["train_op"], r["op"], r["seed"]): r for r in rows}
    groups = list(dict.fromkeys((r["key"], r["model"], r["skeleton"], r["train_op"], r["op"]) for r in rows))
    header = ["model", "skeleton", "trained at OP", "OP", "top-1 %", "top-5 %",
              f"top-1 gain over {base_label} (points)", f"{CONFIDENCE:.0%} CI", "wins"]
    cells = []
    for key, model, skeleton, train_op, op in groups:
        top1 = [by[key, train_op, op, s]["top1"] for s in seeds]
        top5 = [by[key, train_op, op, s]["top5"] for s in seeds]
        gain = ["", "", ""]
        if key.startswith("student_") and key != base_key and all((base_key, train_op, op, s) in by for s in seeds):
            gain = _gain_cells(paired_gain([100 * (by[key, train_op, op, s]["top1"]
                                                   - by[base_key, train_op, op, s]["top1"]) for s in seeds]))
        cells.append([model, skeleton, f"{train_op:.1f}", f"{op:.1f}", _mean_std(top1), _mean_std(top5), *gain])
    note = (f"mean ± std (sample std) over {len(seeds)} seeds: {', '.join(map(str, seeds))}; gain: the per-seed "
            f"difference from {base_label} at the same training and test OP (same data, occlusion masks and initial "
            f"weights), its {CONFIDENCE:.0%} Student-t interval and the seeds where it is > 0")
    per_seed = Table.of(["seed", "model", "skeleton", "train_op", "op", "top1", "top5"],
                        ([str(r["seed"]), r["model"], r["skeleton"], f"{r['train_op']:.1f}", f"{r['op']:.1f}",
                          f"{r['top1']:.6f}", f"{r['top5']:.6f}"] for r in rows))
    return Table.of(header, cells).markdown() + f"\n{note}\n", per_seed.csv()
