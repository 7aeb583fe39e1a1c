"""The synthetic benchmark: the pipeline over seeds, summarised as mean ± std per model and OP (``partkd bench kd``).

Each seed is a dataset of its own (generator seed), its own training runs and its own occlusion masks. Nothing is
chosen on the test split: every model is its last epoch's checkpoint, with the preset's fixed settings. Besides each
model's accuracy, the table gives each student's gain over the student without KD, paired by seed: mean ± std of
the per-seed differences, their 95 % t interval and the seeds where KD wins, which is what the method claims. The
pair shares everything but the objective: the dataset, the teacher and E, the training and test occlusion masks
(both drawn per sample from ``data.seed``), the initial weights of the backbone (``train.seed``) and the order of the
batches. Students follow the paper's protocol (trained at the OP they are tested at) unless ``view="robustness"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from partkd import tracking
from partkd.data.shards import load_info
from partkd.data.synth import synth_info, write_synthetic
from partkd.train.config import JobConfig, load_config
from partkd.train.pipeline import (
    VIEWS,
    StudentKind,
    check_view,
    preset_job,
    preset_synth,
    run_pipeline,
    student_kinds,
)
from partkd.train.results import Table, summarise
from partkd.train.schedule import choose_schedule, choose_settings


def synthetic_dataset(out: Path, preset: str, seed: int, paired_fraction: float,
                      say: Callable[[str], None] = print) -> Path:
    """The preset's synthetic dataset of ``seed`` in ``out/data-seed<seed>``, generated unless an identical one is
    already there."""
    cfg = preset_synth(preset, seed, paired_fraction)
    path = out / f"data-seed{seed}"
    try:
        reuse = load_info(path).get("info", {}) == synth_info(cfg)
    except (FileNotFoundError, ValueError):
        reuse = False
    if not reuse:
        say(f"[data] seed {seed}: {cfg.samples} samples, {cfg.paired_fraction:.0%} paired -> {path}")
        write_synthetic(path, cfg, overwrite=True)
    return path


# what a paired student must share: the data and masks, the backbone's shape and seed (the same initial weights), the
# schedule
PAIRED = ("data.", "model.name", "model.base_channels", "model.stage_blocks", "train.seed", "train.epochs",
          "train.milestones")
SCHEDULES = {
    "preset": "the preset's epochs, lr and model",
    "epochs": "the preset's lr and model, epochs from a pilot teacher's validation curve",
    "auto": "lr, then width, from probe teachers, then epochs from a pilot's validation curve",
}


def check_variant(kind: StudentKind, job: JobConfig) -> None:
    """A variant's settings must load on ``job`` and leave what pairs it with the other students alone: the data,
    its occlusion and masks, the model (the same initial backbone), the seed and the schedule."""
    load_config(job, sets=list(kind.sets))
    shared = [item.split("=")[0].strip() for item in kind.sets if item.strip().startswith(PAIRED)]
    if shared:
        raise ValueError(f"student {kind.objective}:{kind.variant}: a variant may not change {', '.join(shared)}; "
                         f"its students are paired with the others by the same data, masks, model, seed and schedule")


def check_kd_bench(job: JobConfig, objectives: tuple[str, ...], view: str, schedule: str,
                   variants: dict[str, list[str]] | None) -> None:
    """Everything about a benchmark that can be refused before any data is made or job run."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    check_view(view)
    for kind in student_kinds(objectives, variants):
        check_variant(kind, job)


def run_kd_bench(out: Path, datasets: dict[int, Path], objectives: tuple[str, ...], preset: str,
                 sets: list[str] = (), say: Callable[[str], None] = print, view: str = "paper",
                 backend: str = "ray", schedule: str = "preset", variants: dict[str, list[str]] | None = None) -> str:
    """Run the pipeline for each ``seed -> dataset`` and write ``out/results.md`` and ``out/results.csv``.

    The benchmark is an MLflow run ``bench-kd-<out>``; each seed's pipeline is nested under it, each training job
    under its pipeline. ``schedule`` (:data:`SCHEDULES`): ``"epochs"`` replaces the preset's epochs and milestones by
    the schedule a pilot teacher on the first seed's data chooses on a validation slice
    (:func:`~partkd.train.schedule.choose_schedule`); ``"auto"`` first chooses the lr and the model's width by probes
    (:func:`~partkd.train.schedule.choose_settings`); the same for every seed. ``"preset"`` keeps the preset's.
    """
    out = Path(out).resolve()
    first = preset_job(preset, datasets[min(datasets)], out / "ray", min(datasets), out.name, sets)
    check_kd_bench(first, objectives, view, schedule, variants)
    uri = first.tracking_uri or tracking.tracking_uri()
    info = load_info(datasets[min(datasets)])
    params = {**first.flat(), "bench.seeds": ",".join(map(str, datasets)), "bench.objectives": ",".join(objectives),
              "bench.preset": preset, "bench.view": view, "bench.schedule": schedule}
    rows, runs, spreads = [], {}, {}
    tags = {"kind": "benchmark", "view": view}
    with tracking.run(uri, f"partkd/{info['name']}", f"bench-kd-{out.name}", params, tags) as bench:
        note = (f"schedule: the {preset} preset's, {first.train.epochs} epochs, lr {first.train.lr:g}, width "
                f"{first.model.base_channels}")
        if schedule != "preset":
            pilot_job = replace(first, tracking_uri=uri, parent_run_id=bench)
            settings = choose_settings(pilot_job, say, backend) if schedule == "auto" else None
            chosen = choose_schedule(pilot_job, say, backend, settings=settings)
            sets = [*sets, *chosen.sets()]
            schedule_tags = {"schedule.epochs": chosen.epochs, "schedule.rule": chosen.rule}
            if settings:
                schedule_tags.update({"schedule.lr": settings.lr, "schedule.base_channels": settings.base_channels})
                probes = settings.table()
                (out / "schedule_probes.csv").write_text(probes)
                tracking.log_texts(uri, bench, {"results/schedule_probes.csv": probes})
            tracking.set_tags(uri, bench, schedule_tags)
            for epoch, value in enumerate(chosen.curve):
                tracking.log_epoch_metrics(uri, bench, {"schedule/val_top1": value}, epoch)
            scheduled = load_config(first, sets=chosen.sets())
            note = (f"schedule: {chosen.epochs} epochs, lr {scheduled.train.lr:g} x 0.1 at epochs "
                    f"{','.join(map(str, chosen.milestones))}, width {scheduled.model.base_channels}, chosen by "
                    f"{chosen.rule}")
        for seed, data in datasets.items():
            began = time.perf_counter()
            say(f"=== seed {seed}: {data}")
            job = preset_job(preset, data, out / "ray", seed, f"{out.name}-seed{seed}", sets)
            result = run_pipeline(replace(job, tracking_uri=uri, parent_run_id=bench), say, objectives, backend, view,
                                  variants)
            rows += [{**r, "seed": seed} for r in result.rows]
            runs[seed] = result.runs
            spreads[seed] = result.spread
            (out / "part_matrix_spread.csv").write_text(spread_csv(spreads, info["class_names"]))
            say(f"=== seed {seed} done in {time.perf_counter() - began:.0f} s")
            markdown, csv = summarise(rows)
            markdown += f"\nstudents: {VIEWS[view]}; {note}\n"
            (out / "results.md").write_text(markdown)  # after every seed: an interrupted benchmark keeps what it did
            (out / "results.csv").write_text(csv)
        tracking.log_texts(uri, bench, {"results/results.md": markdown, "results/results.csv": csv})
        curves = term_curves(uri, runs)
        if curves:
            (out / "curves.csv").write_text(curves_csv(curves))
            plot_term_curves(curves, out / "curves.png")
            for file in ("curves.csv", "curves.png"):
                tracking.log_artifacts(uri, bench, out / file, "results")
    say("\n" + markdown)
    return markdown


CURVES = ("loss/ce", "loss/kd", "grad/ce", "grad/kd", "grad/cos")


def term_curves(uri: str, runs: dict[int, dict[str, str]]) -> dict[str, dict[str, np.ndarray]]:
    """Per student of a distilling objective (``key@training OP``): each epoch's CE and distillation term, the
    gradient norms of CE and of alpha times the term, and their cosine, as (seeds, epochs) arrays. The term's own
    name (``loss/pmsc``, ``loss/kl``...) is read as ``kd``."""
    out: dict[str, dict[str, list]] = {}
    for by_key in runs.values():
        for key, run_id in by_key.items():
            history = tracking.metric_histories(uri, run_id, "loss/", "grad/")
            kd = [name for name in history if name.startswith("grad/") and name not in ("grad/ce", "grad/cos")]
            if not kd:
                continue  # the teacher and students without KD have one term
            term = kd[0].removeprefix("grad/")
            renamed = {"loss/ce": "loss/ce", f"loss/{term}": "loss/kd", "grad/ce": "grad/ce", f"grad/{term}": "grad/kd",
                       "grad/cos": "grad/cos"}
            for name, curve in renamed.items():
                out.setdefault(key, {}).setdefault(curve, []).append(history[name])
    return {key: {name: np.asarray(v) for name, v in curves.items()} for key, curves in out.items()}


def curves_csv(curves: dict[str, dict[str, np.ndarray]]) -> str:
    """Mean and std over seeds per (student, epoch) of every curve."""
    header = ["student", "epoch", *(f"{c}_{stat}" for c in CURVES for stat in ("mean", "std"))]
    rows = []
    for key, by_name in curves.items():
        for epoch in range(by_name["loss/ce"].shape[1]):
            stats = [f"{reduce(by_name[c][:, epoch]):.6g}" for c in CURVES for reduce in (np.mean, np.std)]
            rows.append([key, str(epoch + 1), *stats])
    return Table.of(header, rows).csv()


def spread_csv(spreads: dict[int, dict[str, np.ndarray]], class_names: list[str]) -> str:
    """E's rows per seed (:attr:`~partkd.train.pipeline.PipelineResult.spread`): how sharply each class singles out
    parts."""
    rows = ([str(seed), name, f"{entropy:.6f}", f"{miss:.6f}"] for seed, spread in spreads.items()
            for name, entropy, miss in zip(class_names, spread["entropy"], spread["miss_range"]))
    return Table.of(["seed", "class", "entropy_over_log_p", "miss_rate_range"], rows).csv()


def plot_term_curves(curves: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Three panels over epochs, mean over seeds per student: the loss terms, the gradient norms of CE and of the
    weighted KD term, and their cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = plt.get_cmap("tab10")
    for index, (key, by_name) in enumerate(curves.items()):
        epochs = np.arange(1, by_name["loss/ce"].shape[1] + 1)
        colour = colours(index % 10)
        for ax, names in ((axes[0], ("loss/ce", "loss/kd")), (axes[1], ("grad/ce", "grad/kd"))):
            for name, style in zip(names, ("-", "--")):
                ax.plot(epochs, by_name[name].mean(0), style, color=colour, label=f"{key} {name}")
        axes[2].plot(epochs, by_name["grad/cos"].mean(0), color=colour, label=key)
    titles = ("loss terms (solid CE, dashed KD unweighted)", "gradient norm: CE (solid), alpha x KD (dashed)",
              "cosine of the two gradients")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    axes[1].set_yscale("log")
    axes[2].axhline(0.0, color="grey", linewidth=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
