"""The synthetic benchmark: the pipeline over seeds, summarised as mean ± std per model and OP (`partkd bench kd`).

Each seed is a dataset of its own (generator seed), its own training runs and its own occlusion masks. Nothing is
chosen on the test split: every model is its last epoch's checkpoint, with the preset's fixed settings. Besides each
model's accuracy, the table gives each student's gain over the student without KD, paired by seed (mean ± std of
the per-seed differences), which is what the method claims.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from partkd import tracking
from partkd.data.shards import load_info
from partkd.train.pipeline import preset_job, run_pipeline


def _mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.2f} ± {std:.2f}"


def summarise(rows: list[dict], baseline: tuple[str, str] = ("student_ce", "w/o KD")) -> tuple[str, str]:
    """Markdown (mean ± std over seeds, with each student's gains over the ``baseline`` key, named by its label) and
    CSV (every seed's row)."""
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


def run_kd_study(out: Path, datasets: dict[int, Path], objectives: tuple[str, ...], preset: str,
                 sets: list[str] = (), say: Callable[[str], None] = print) -> str:
    """Run the pipeline for each ``seed -> dataset`` and write ``out/results.md`` and ``out/results.csv``.

    The study is an MLflow run; each seed's pipeline is nested under it, each training job under its pipeline.
    """
    out = Path(out).resolve()
    first = preset_job(preset, datasets[min(datasets)], out / "ray", min(datasets), out.name, sets)
    uri = first.tracking_uri or tracking.tracking_uri()
    info = load_info(datasets[min(datasets)])
    study = tracking.start_run(uri, f"partkd/{info['name']}", f"study-{out.name}",
                               {**first.flat(), "study.seeds": ",".join(map(str, datasets)),
                                "study.objectives": ",".join(objectives), "study.preset": preset},
                               {"kind": "study"})
    rows = []
    try:
        for seed, data in datasets.items():
            began = time.perf_counter()
            say(f"=== seed {seed}: {data}")
            job = preset_job(preset, data, out / "ray", seed, f"{out.name}-seed{seed}", sets)
            job = replace(job, tracking_uri=uri, parent_run_id=study)
            result = run_pipeline(job, say, objectives)
            rows += [{**r, "seed": seed} for r in result.rows]
            say(f"=== seed {seed} done in {time.perf_counter() - began:.0f} s")
            markdown, csv = summarise(rows)
            (out / "results.md").write_text(markdown)  # after every seed: an interrupted study keeps what it did
            (out / "results.csv").write_text(csv)
    except BaseException:
        tracking.end_run(uri, study, "FAILED")
        raise
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "results.md").write_text(markdown)
        (Path(tmp) / "results.csv").write_text(csv)
        tracking.log_artifacts(uri, study, tmp, "results")
    tracking.end_run(uri, study)
    say("\n" + markdown)
    return markdown
