"""The paper's pipeline end to end: teacher -> part matrix E -> student without KD -> student with KD -> Table 1.

Used by ``partkd demo`` and ``partkd bench kd``; every stage is also its own command. The whole pipeline is one MLflow
parent run whose children are the training jobs; the parent holds the results table (Markdown and CSV), E and the
confusion matrices.

Two views of the students (:data:`VIEWS`): ``paper``, the paper's protocol, trains one student per (objective, OP),
on LQ skeletons occluded at the OP it is then tested at; ``robustness`` trains one student per objective at
``data.occlusion_prob`` (0 by default) and tests it at every OP. The teacher and E are shared either way. Training
occlusion masks are drawn once per (sample, ``data.seed``) and stay fixed over the epochs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from partkd import tracking
from partkd.data.shards import load_info
from partkd.data.synth import SynthConfig
from partkd.part_matrix import load_part_matrix, part_matrix_spread
from partkd.train.config import DataConfig, JobConfig, load_config
from partkd.train.evaluate import evaluate_checkpoint, part_matrix_for_job, plot_confusion
from partkd.train.jobs import absolute_paths, check_backend, train_student, train_teacher
from partkd.train.objectives import get_objective
from partkd.train.results import results_table
from partkd.train.session import job_device

# Small model, short sequences, one person (the synthetic actions are single-person; DESIGN §9 keeps the paper's
# defaults for real runs): "full" is the synthetic benchmark; "demo" the same with 8 epochs, so that the demo's seven
# jobs (a teacher, a student with and one without KD at each of 3 OPs) take about 6 min on a 2-core CPU; "smoke" the
# same stages in about a minute.
PRESETS = {
    "full": dict(samples=1600, classes=12, frames=64, epochs=10, base=16, blocks="1,1,1", batch=32, milestones="7,9"),
    "demo": dict(samples=1600, classes=12, frames=64, epochs=8, base=16, blocks="1,1,1", batch=32, milestones="6,7"),
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


VIEWS = {
    "paper": "the paper's protocol: each student trained on LQ occluded at the OP it is tested at",
    "robustness": "robustness view: each student trained at one OP (data.occlusion_prob) and tested at every OP",
}


def check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; known views: {', '.join(VIEWS)}")


@dataclass
class PipelineResult:
    rows: list[dict]  # key, model, skeleton, train_op, op, top1, top5
    markdown: str
    csv: str
    run_id: str
    checkpoints: dict[str, str]  # key (paper view: key@training OP) -> local path or URI, as train.storage_path is
    part_matrix: str
    runs: dict[str, str]  # the same keys -> MLflow run id of the training job
    spread: dict  # part_matrix_spread of E: per class "entropy" and "miss_range"


def run_pipeline(job: JobConfig, say: Callable[[str], None] = print, objectives: tuple[str, ...] = ("ce", "pmsc"),
                 backend: str = "ray", view: str = "paper", variants: dict[str, list[str]] | None = None
                 ) -> PipelineResult:
    """Train and evaluate the models of Table 1 on ``job.data.path`` with ``job``'s settings: the teacher, then the
    students of each objective (``ce`` is the student without KD; all four give the paper's Table 4 ablation) as
    ``view`` says (:data:`VIEWS`); ``objective:variant`` adds a student of that objective with the variant's settings
    from ``variants`` (name -> ``section.key=value`` list). ``backend``: ``ray`` (Ray Train jobs) or ``local`` (every
    job in this process)."""
    check_backend(backend)
    check_view(view)
    kinds = student_kinds(objectives, variants)
    job = absolute_paths(job)
    info = load_info(job.data.path)
    uri = job.tracking_uri or tracking.tracking_uri()
    name = job.train.name or f"pipeline-{info['name']}-seed{job.train.seed}"
    with tracking.run(uri, f"partkd/{info['name']}", name, job.flat(),
                      {"kind": "pipeline", "view": view, "dataset_fingerprint": info["fingerprint"]},
                      parent_run_id=job.parent_run_id or None, dataset=(info, job.data.path)) as parent:
        job = replace(job, tracking_uri=uri, parent_run_id=parent)
        result = _stages(job, info, name, say, kinds, backend, view)
        tracking.log_texts(uri, parent, {"results/results.md": result.markdown, "results/results.csv": result.csv})
        tracking.log_metrics(uri, parent, {f"test/top1/{r['key']}/op{r['op']:.1f}": r["top1"] for r in result.rows})
    result.run_id = parent
    return result


@dataclass(frozen=True)
class StudentKind:
    """One kind of student in the table: an objective, optionally with a named variant of settings
    (``pmsc:tuned`` with ``variants={"tuned": ["loss.alpha=4", "loss.tau=0.25"]}``)."""

    objective: str
    variant: str = ""
    sets: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"student_{self.objective}" + (f"_{self.variant}" if self.variant else "")

    @property
    def label(self) -> str:
        label = get_objective(self.objective).label
        return f"{label[:-1]}, {self.variant})" if self.variant else label


def student_kinds(objectives: tuple[str, ...], variants: dict[str, list[str]] | None = None) -> list[StudentKind]:
    """``objective`` or ``objective:variant`` entries, each variant one of ``variants``; checked before any work."""
    kinds = []
    for entry in objectives:
        objective, _, variant = entry.partition(":")
        get_objective(objective)
        if variant and variant not in (variants or {}):
            known = ", ".join(variants or {}) or "none"
            raise ValueError(f"student {entry!r}: no variant {variant!r} (variants: {known})")
        kinds.append(StudentKind(objective, variant, tuple((variants or {}).get(variant, ()))))
    return kinds


def occlusion_plan(data: DataConfig, view: str) -> list[tuple[float, tuple[float, ...]]]:
    """The (training OP, test OPs) of each student of one kind that ``view`` trains."""
    check_view(view)
    if view == "robustness":
        return [(data.occlusion_prob, data.eval_occlusion_probs)]
    return [(op, (op,)) for op in data.eval_occlusion_probs]


def student_plan(job: JobConfig, kinds: list[StudentKind], view: str
                 ) -> list[tuple[StudentKind, float, tuple[float, ...]]]:
    """The students ``view`` trains: (kind, training OP, test OPs) in the order of the table."""
    return [(kind, train_op, test_ops) for kind in kinds for train_op, test_ops in occlusion_plan(job.data, view)]


def _stages(job: JobConfig, info: dict, name: str, say, kinds: list[StudentKind], backend: str,
            view: str) -> PipelineResult:
    plan = student_plan(job, kinds, view)
    stages = 2 + len(plan)
    where = f"{job.train.num_workers} Ray Train worker(s)" if backend == "ray" else "in this process"
    say(f"[1/{stages}] teacher: ST-GCN on HQ {info['hq_layout']} ({job.train.epochs} epochs, {where})")
    teacher = train_teacher(replace(job, train=replace(job.train, name=f"{name}-teacher")), say, backend=backend)
    say(f"      val top-1 {100 * teacher.metrics['val/top1']:.1f}%   checkpoint {teacher.checkpoint}")

    say(f"[2/{stages}] part matrix E ({job.loss.grouping}, temperature {job.loss.part_temperature:g}) from teacher "
        "occlusion tests")
    part_matrix = part_matrix_for_job(teacher.checkpoint, job)
    for file in (part_matrix, part_matrix.removesuffix(".npy") + ".png"):
        tracking.log_artifacts(job.tracking_uri, job.parent_run_id, file, "part_matrix")
    spread = part_matrix_spread(load_part_matrix(part_matrix).numpy(), job.loss.part_temperature)
    tracking.log_metrics(job.tracking_uri, job.parent_run_id, {
        tracking.metric_name(f"E/{stat}/{cls}"): float(value) for stat, values in spread.items()
        for cls, value in zip(info["class_names"], values)})
    say(f"      E rows: entropy/log P {spread['entropy'].min():.3f}-{spread['entropy'].max():.3f}, "
        f"miss-rate spread {spread['miss_range'].min():.2f}-{spread['miss_range'].max():.2f}")

    say(f"students: {VIEWS[view]}")
    if view == "paper" and job.data.occlusion_prob:
        say(f"      data.occlusion_prob={job.data.occlusion_prob:g} is not used: each student trains at its test OP")
    models = [("teacher", "Teacher", teacher, f"HQ {info['hq_layout']}", 0.0, (0.0,))]
    for step, (kind, train_op, test_ops) in enumerate(plan, start=3):
        at = f"-op{train_op:g}" if view == "paper" else ""
        say(f"[{step}/{stages}] {kind.label.lower()}: ST-GCN on LQ {info['lq_layout']} at OP {train_op:g}, "
            f"loss {kind.objective}" + (f", {', '.join(kind.sets)}" if kind.sets else ""))
        student_job = replace(job, teacher_checkpoint=teacher.checkpoint,
                              data=replace(job.data, occlusion_prob=train_op),
                              loss=replace(job.loss, objective=kind.objective),
                              train=replace(job.train, name=f"{name}-{kind.key.replace('_', '-')}{at}"))
        student_job = load_config(student_job, sets=list(kind.sets))
        # E for its grouping and temperature: cached per both, so a student with the job's finds the one made above
        student_job = replace(student_job, part_matrix=part_matrix_for_job(teacher.checkpoint, student_job))
        student = train_student(student_job, say, backend=backend)
        say(f"      val top-1 {100 * student.metrics['val/top1']:.1f}%")
        models.append((kind.key, kind.label, student, f"LQ {info['lq_layout']}", train_op, test_ops))

    say("evaluating on the test split at OP " + ", ".join(f"{p:g}" for p in job.data.eval_occlusion_probs))
    rows, checkpoints, runs = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, label, result, skeleton, train_op, probs in models:
            at = key if view == "robustness" or key == "teacher" else f"{key}@{train_op:g}"
            checkpoints[at], runs[at] = result.checkpoint, result.run_id
            for ev in evaluate_checkpoint(result.checkpoint, occlusion_probs=probs, device=job_device(job.train)):
                rows.append({"key": key, "model": label, "skeleton": skeleton, "train_op": train_op,
                             "op": ev.occlusion_prob, "top1": ev.top1, "top5": ev.top5})
                if ev.occlusion_prob == 0.0:
                    png = Path(tmp) / f"confusion_{key}.png"
                    plot_confusion(ev.confusion, info["class_names"], png, f"{label}, OP 0")
                    tracking.log_artifacts(job.tracking_uri, job.parent_run_id, png, "confusion")
    rows.sort(key=lambda r: (r["key"] != "teacher", r["train_op"]))  # per training OP, each kind beside the others
    markdown, csv = results_table(rows, job.data.protocol)
    return PipelineResult(rows, markdown, csv, "", checkpoints, part_matrix, runs, spread)
