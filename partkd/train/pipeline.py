"""The paper's pipeline end to end: teacher -> part matrix E -> student without KD -> student with KD -> Table 1.

Used by ``partkd demo`` and ``partkd bench kd``; every stage is also its own command. The whole pipeline is one MLflow
parent run whose children are the training jobs; the parent holds the results table (Markdown and CSV), E and the
confusion matrices.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from partkd import tracking
from partkd.data.shards import load_info
from partkd.data.synth import SynthConfig
from partkd.train.config import JobConfig, load_config
from partkd.train.evaluate import evaluate_checkpoint, part_matrix_for_teacher, plot_confusion
from partkd.train.jobs import JobResult, absolute_paths, check_backend, train_student, train_teacher
from partkd.train.objectives import get_objective
from partkd.train.results import results_table
from partkd.train.session import job_device

# Small model, short sequences, one person (the synthetic actions are single-person; DESIGN §9 keeps the paper's
# defaults for real runs): "full" is the demo and the synthetic benchmark, "smoke" the same stages in about a minute.
PRESETS = {
    "full": dict(samples=1600, classes=12, frames=64, epochs=10, base=16, blocks="1,1,1", batch=32, milestones="7,9"),
    "smoke": dict(samples=96, classes=6, frames=24, epochs=2, base=8, blocks="1,1,1", batch=16, milestones="10"),
}


def preset_synth(preset: str, seed: int, paired_fraction: float = 0.8) -> SynthConfig:
    p = PRESETS[preset]
    return SynthConfig(samples=p["samples"], classes=p["classes"], frames=p["frames"], seed=seed,
                       paired_fraction=paired_fraction)


def preset_job(preset: str, data: Path, storage: Path, seed: int, name: str, sets: list[str] = ()) -> JobConfig:
    """The preset's job on ``data`` (seeded training and occlusion masks), then ``sets`` (``section.key=value``)."""
    p = PRESETS[preset]
    return load_config(sets=[
        f"data.path={data}", f"data.frames={p['frames']}", "data.persons=1", f"data.batch_size={p['batch']}",
        f"model.base_channels={p['base']}", f"model.stage_blocks={p['blocks']}", "model.dropout=0.1",
        f"train.epochs={p['epochs']}", f"train.milestones={p['milestones']}", "train.lr=0.05", f"train.seed={seed}",
        f"data.seed={seed}", f"train.storage_path={storage}", "train.cpus_per_worker=1", f"train.name={name}",
        *sets,
    ])


@dataclass
class PipelineResult:
    rows: list[dict]  # key, model, skeleton, op, top1, top5
    markdown: str
    csv: str
    run_id: str
    checkpoints: dict[str, str]  # local paths or URIs, as train.storage_path is
    part_matrix: str


def run_pipeline(job: JobConfig, say: Callable[[str], None] = print, objectives: tuple[str, ...] = ("ce", "pmsc"),
                 backend: str = "ray") -> PipelineResult:
    """Train and evaluate the models of Table 1 on ``job.data.path`` with ``job``'s settings: the teacher, then a
    student per objective (``ce`` is the student without KD; all four give the paper's Table 4 ablation).
    ``backend``: ``ray`` (Ray Train jobs) or ``local`` (every job in this process)."""
    check_backend(backend)
    job = absolute_paths(job)
    info = load_info(job.data.path)
    uri = job.tracking_uri or tracking.tracking_uri()
    name = job.train.name or f"pipeline-{info['name']}-seed{job.train.seed}"
    with tracking.run(uri, f"partkd/{info['name']}", name, job.flat(),
                      {"kind": "pipeline", "dataset_fingerprint": info["fingerprint"]},
                      parent_run_id=job.parent_run_id or None, dataset=(info, job.data.path)) as parent:
        job = replace(job, tracking_uri=uri, parent_run_id=parent)
        result = _stages(job, info, name, say, objectives, backend)
        tracking.log_texts(uri, parent, {"results/results.md": result.markdown, "results/results.csv": result.csv})
        tracking.log_metrics(uri, parent, {f"test/top1/{r['key']}/op{r['op']:.1f}": r["top1"] for r in result.rows})
    result.run_id = parent
    return result


def _stages(job: JobConfig, info: dict, name: str, say, objectives: tuple[str, ...], backend: str) -> PipelineResult:
    stages = 2 + len(objectives)
    say(f"[1/{stages}] teacher: ST-GCN on HQ {info['hq_layout']} ({job.train.epochs} epochs, "
        f"{job.train.num_workers} Ray Train worker(s))")
    teacher = train_teacher(replace(job, train=replace(job.train, name=f"{name}-teacher")), say, backend=backend)
    say(f"      val top-1 {100 * teacher.metrics['val/top1']:.1f}%   checkpoint {teacher.checkpoint}")

    say(f"[2/{stages}] part matrix E ({job.loss.grouping}) from teacher occlusion tests")
    part_matrix = part_matrix_for_teacher(teacher.checkpoint, job.data, job.loss.grouping,
                                          device=job_device(job.train))
    for file in (part_matrix, part_matrix.removesuffix(".npy") + ".png"):
        tracking.log_artifacts(job.tracking_uri, job.parent_run_id, file, "part_matrix")

    students: dict[str, JobResult] = {}
    for step, objective in enumerate(map(get_objective, objectives), start=3):
        say(f"[{step}/{stages}] {objective.label.lower()}: ST-GCN on LQ {info['lq_layout']}, loss {objective.name}")
        student_job = replace(job, teacher_checkpoint=teacher.checkpoint, part_matrix=part_matrix,
                              loss=replace(job.loss, objective=objective.name),
                              train=replace(job.train, name=f"{name}-student-{objective.name}"))
        students[objective.name] = train_student(student_job, say, backend=backend)
        say(f"      val top-1 {100 * students[objective.name].metrics['val/top1']:.1f}%")

    say("evaluating on the test split at OP " + ", ".join(f"{p:g}" for p in job.data.eval_occlusion_probs))
    models = [("teacher", "Teacher", teacher, f"HQ {info['hq_layout']}", (0.0,))]
    models += [(f"student_{o}", get_objective(o).label, students[o], f"LQ {info['lq_layout']}",
                job.data.eval_occlusion_probs) for o in objectives]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, label, result, skeleton, probs in models:
            for ev in evaluate_checkpoint(result.checkpoint, occlusion_probs=probs, device=job_device(job.train)):
                rows.append({"key": key, "model": label, "skeleton": skeleton, "op": ev.occlusion_prob,
                             "top1": ev.top1, "top5": ev.top5})
                if ev.occlusion_prob == 0.0:
                    png = Path(tmp) / f"confusion_{key}.png"
                    plot_confusion(ev.confusion, info["class_names"], png, f"{label}, OP 0")
                    tracking.log_artifacts(job.tracking_uri, job.parent_run_id, png, "confusion")
    markdown, csv = results_table(rows, job.data.protocol)
    checkpoints = {"teacher": teacher.checkpoint, **{f"student_{k}": v.checkpoint for k, v in students.items()}}
    return PipelineResult(rows, markdown, csv, "", checkpoints, part_matrix)
