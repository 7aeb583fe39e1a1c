"""Training-path throughput (``partkd bench train``, ``python -m partkd.bench``): each entry runs the code a job runs.

- ``teacher_step``: :func:`~partkd.train.loop.train_step` of a teacher (ST-GCN on ``ntu25`` HQ skeletons,
  cross-entropy, Eq. 2) with the job's optimiser (:func:`~partkd.train.loop.make_optimizer`);
- ``student_kd_batch``: a student's step (ST-GCN on ``coco17`` LQ skeletons, 2D + score) with PMSC against the
  frozen teacher's forward on the paired HQ batch (``loss.hq_source=batch``, the paper; Eq. 4);
- ``student_kd_bank``: the same with the teacher's part features from the feature bank (``loss.hq_source=bank``,
  the default): the batch's pairs plus ``loss.bank_negatives`` entries drawn on the device;
- ``inference``: the evaluation forward (eval mode, no gradient);
- ``part_matrix``: E's occlusion tests (every part zeroed in turn, ``P x batch`` clips a forward), in clips/s, and
  the seconds 40,000 clips would take at that rate;
- ``data_path``: Ray Data's read + transform of a job's training split delivered to the device as batches
  (:meth:`~partkd.train.session.JobInputs.ray_datasets`, streamed), per number of CPUs it may use, beside the
  teacher step's rate: the data path keeps up where it is faster.

Each runs at the precision training takes on the device (``train.bf16``: bf16 autocast where the device computes it
natively) unless ``--dtypes`` asks for others, and with ``train.compile`` off unless ``--compile on`` (rows of both
with ``--compile off,on``). Figures are samples per second from the median of ``--steps`` timed repetitions after
``--warmup``, and TFLOP/s from each step's FLOP count (``torch.utils.flop_counter``, counted once per kind). No test
asserts them. ``--json FILE`` writes the object ``../shared/anchors/bench_vs_reference.py`` reads: one entry per kind
at the training precision and compile setting, the first shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from partkd.layouts import get_grouping, get_layout
from partkd.part_matrix import occlusion_predictions
from partkd.train.checkpoint import CheckpointMeta, ModelSpec, save_checkpoint
from partkd.train.config import DataConfig, JobConfig, LossConfig, ModelConfig, TrainConfig
from partkd.train.loop import StudentTask, TeacherTask, make_optimizer, seed_epoch, train_step
from partkd.train.session import WorkerSession, compiled, default_device, step_precision, torch_batch_options

TEACHER_LAYOUT, STUDENT_LAYOUT, NUM_CLASSES = "ntu25", "coco17", 60
E_CLIPS = 40_000  # the part-matrix bar: E of 40,000 HQ clips


@dataclass(frozen=True)
class BenchShape:
    """A batch shape and the model size it runs with (``model`` overrides :class:`ModelConfig`'s defaults)."""

    batch: int
    frames: int
    persons: int = 2
    model: dict = field(default_factory=dict)


SHAPES: dict[str, BenchShape] = {
    "ntu": BenchShape(batch=64, frames=300),  # the paper's setting
    "cpu": BenchShape(batch=16, frames=64),  # full model, a CPU-sized batch
    "tiny": BenchShape(batch=4, frames=16, model=dict(base_channels=8, stage_blocks=(1, 1, 1))),  # smoke test
}


class BenchSession(WorkerSession):
    """The training loop's session around one batch on the device: ``batches`` serves it ``bank_batches`` times with
    distinct keys (what a student's feature bank is built from)."""

    def __init__(self, job: JobConfig, device: torch.device, batch: dict, bank_batches: int = 4):
        super().__init__(job, 0, 1, device)
        self.batch, self.bank_batches = batch, bank_batches

    def batches(self, split: str, epoch: int, shuffle: bool):
        size = len(self.batch["label"])
        for i in range(self.bank_batches):
            yield {**self.batch, "key": self.batch["key"] + i * size}

    def prepare_model(self, model):
        return compiled(model.to(self.device), self.job.train)


def _batch(shape: BenchShape, device: torch.device) -> dict:
    """A job's batch as the transform makes it: HQ ``(N, M, T, 25, 3)``, LQ ``(N, M, T, 17, 2)`` with scores."""
    n, m, t = shape.batch, shape.persons, shape.frames
    hq, lq = get_layout(TEACHER_LAYOUT), get_layout(STUDENT_LAYOUT)
    batch = {"hq_x": torch.randn(n, m, t, hq.num_joints, hq.dims), "hq_score": torch.ones(n, m, t, hq.num_joints),
             "lq_x": torch.randn(n, m, t, lq.num_joints, lq.dims), "lq_score": torch.rand(n, m, t, lq.num_joints),
             "label": torch.randint(NUM_CLASSES, (n,)), "has_hq": torch.ones(n, dtype=torch.bool),
             "key": torch.arange(n, dtype=torch.long)}
    return {k: v.to(device) for k, v in batch.items()}


def _job(shape: BenchShape, dtype: str, compile_: bool, hq_source: str, folder: Path) -> JobConfig:
    return JobConfig(data=DataConfig(frames=shape.frames, persons=shape.persons, batch_size=shape.batch),
                     model=ModelConfig(**shape.model), loss=LossConfig(objective="pmsc", hq_source=hq_source),
                     train=TrainConfig(bf16=dtype == "bf16", compile=compile_),
                     teacher_checkpoint=str(folder / "teacher"), part_matrix=str(folder / "E.npy"))


def _frozen_teacher(job: JobConfig, folder: Path) -> ModelSpec:
    """A teacher checkpoint and an E for the student's distiller to load (random weights: speed, not accuracy)."""
    spec = ModelSpec.for_job(job.model, TEACHER_LAYOUT, [f"c{k}" for k in range(NUM_CLASSES)])
    if not (folder / "teacher").exists():
        save_checkpoint(folder / "teacher", spec.build(), CheckpointMeta(spec, "hq", job.data))
        parts = get_grouping(job.loss.grouping).num_parts
        np.save(folder / "E.npy", torch.softmax(torch.randn(NUM_CLASSES, parts), 1).numpy())
    return spec


def _training_step(kind: str, shape: BenchShape, dtype: str, compile_: bool, device: torch.device, folder: Path):
    """``teacher_step``, ``student_kd_batch`` or ``student_kd_bank``: one :func:`train_step` of that job."""
    job = _job(shape, dtype, compile_, "bank" if kind == "student_kd_bank" else "batch", folder)
    teacher_spec = _frozen_teacher(job, folder)
    session = BenchSession(job, device, _batch(shape, device))
    if kind == "teacher_step":
        model = session.prepare_model(teacher_spec.build())
        task = TeacherTask(get_layout(TEACHER_LAYOUT), session)
    else:
        spec = ModelSpec.for_job(job.model, STUDENT_LAYOUT, list(teacher_spec.class_names),
                                 teacher_spec.build().out_channels)
        model = session.prepare_model(spec.build())
        task = StudentTask(get_layout(STUDENT_LAYOUT), session, job, model)
    model.train()
    optimizer, _ = make_optimizer(model, job.train)
    generator = seed_epoch(job.train, 0, 0, device)
    return lambda: train_step(model, optimizer, task, session.batch, generator)


def _teacher_on_device(shape: BenchShape, dtype: str, compile_: bool, device: torch.device, folder: Path):
    """The session, job and frozen-teacher model that evaluation and E run (a bank job: nothing else is read)."""
    job = _job(shape, dtype, compile_, "bank", folder)
    session = BenchSession(job, device, _batch(shape, device))
    return session, job, session.prepare_model(_frozen_teacher(job, folder).build())


def _inference(kind: str, shape: BenchShape, dtype: str, compile_: bool, device: torch.device, folder: Path):
    """The evaluation forward (eval mode, no gradient), as evaluation runs it."""
    session, _, model = _teacher_on_device(shape, dtype, compile_, device, folder)
    model.eval()

    def step():
        with torch.no_grad(), session.autocast():
            model(session.batch["hq_x"])

    return step


def _part_matrix(kind: str, shape: BenchShape, dtype: str, compile_: bool, device: torch.device, folder: Path):
    """E's occlusion tests over one batch of clips (:func:`occlusion_predictions`, each part zeroed in turn)."""
    session, job, model = _teacher_on_device(shape, dtype, compile_, device, folder)
    batches = [(session.batch["hq_x"], session.batch["label"])]

    def step():
        with session.autocast():
            occlusion_predictions(model, batches, job.loss.grouping, TEACHER_LAYOUT, device)

    return step


# the JSON entries bench_vs_reference.py prints, in this order (data_path is measured apart: it needs Ray)
STEP_KINDS = {"teacher_step": _training_step, "student_kd_batch": _training_step, "student_kd_bank": _training_step,
              "inference": _inference, "part_matrix": _part_matrix}


def _time_steps(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def step_flops(step) -> int:
    """The FLOPs of one call of ``step`` (matmuls and convolutions, forward and backward), as PyTorch counts them."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def check_dtypes(dtypes: Sequence[str], device: torch.device) -> None:
    """bf16 only where the device computes it natively (elsewhere a job trains in fp32: nothing to time)."""
    if "bf16" in dtypes and step_precision(device) != "bf16":
        raise ValueError(f"{device.type} computes no bf16 natively (training runs fp32 there): leave bf16 out")


def run_train_bench(
    shapes: Sequence[str] = ("cpu",),
    dtypes: Sequence[str] | None = None,
    steps: int = 5,
    warmup: int = 2,
    device: str | torch.device | None = None,
    compile_modes: Sequence[bool] = (False,),
    kinds: Sequence[str] = tuple(STEP_KINDS),
) -> list[dict]:
    """Time the training path's steps; one row per (shape, dtype, compile, kind).

    ``dtypes`` defaults to the training precision on the device (``--dtypes bf16,fp32`` for both). Each row
    holds the median, minimum and maximum of ``steps`` timed repetitions (after ``warmup`` untimed ones) and
    ``samples_per_s`` from the median (clips for ``part_matrix``).
    """
    device = torch.device(device) if device else default_device()
    dtypes = dtypes or [step_precision(device)]
    check_dtypes(dtypes, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape_name in shapes:
            shape = SHAPES[shape_name]
            for dtype in dtypes:
                for compile_ in compile_modes:
                    folder = Path(tmp) / f"{shape_name}-{dtype}-{compile_}"
                    for kind in kinds:
                        build = STEP_KINDS[kind]
                        torch.manual_seed(0)
                        step = build(kind, shape, dtype, compile_, device, folder)
                        times = _time_steps(step, steps, warmup, device)  # the warm-up compiles, if asked
                        flops = step_flops(step)
                        median = statistics.median(times)
                        rows.append(
                            dict(step=kind, shape=shape_name, batch=shape.batch, frames=shape.frames,
                                 persons=shape.persons, dtype=dtype, compile=compile_, device=str(device),
                                 threads=torch.get_num_threads(), steps=steps, step_ms=1e3 * median,
                                 step_ms_min=1e3 * min(times), step_ms_max=1e3 * max(times),
                                 samples_per_s=shape.batch / median, gflop_per_sample=flops / shape.batch / 1e9,
                                 tflops=flops / median / 1e12)
                        )  # fmt: skip
                        if kind == "part_matrix":
                            rows[-1]["seconds_for_40k_clips"] = E_CLIPS / rows[-1]["samples_per_s"]
    return rows


def run_data_path_bench(shape_name: str, device: str | torch.device | None = None, cpus: Sequence[int] = (),
                        epochs: int = 3, batches: int = 16, path: str | Path | None = None) -> list[dict]:
    """Ray Data to the device: a job's training split (both sides, at the shape) read, transformed and delivered as
    batches on ``device``, streamed as a job with ``data.cache=stream`` reads it every epoch. One row per CPU count
    Ray Data may use (default: 1, 2, 4, ... up to the cluster's); ``samples_per_s`` is the median over ``epochs``.
    ``path``: a dataset to read (default: ``batches`` batches of synthetic samples at the shape, written for it)."""
    import logging

    import ray
    import ray.data

    from partkd.bench.data import write_shaped_dataset
    from partkd.data.shards import load_info
    from partkd.train.jobs import ensure_ray, job_inputs

    device = torch.device(device) if device else default_device()
    shape = SHAPES[shape_name]
    ensure_ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one "Starting execution" line per epoch otherwise
    total = int(ray.cluster_resources().get("CPU", 1))
    cpus = list(cpus) or sorted({min(2**i, total) for i in range(total.bit_length() + 1)})
    context = ray.data.DataContext.get_current()
    limits = context.execution_options.resource_limits
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = path or write_shaped_dataset(Path(tmp) / "data", samples=shape.batch * batches, frames=shape.frames,
                                            persons=shape.persons)
        job = JobConfig(data=DataConfig(path=str(path), protocol="xsub", frames=shape.frames, persons=shape.persons,
                                        batch_size=shape.batch, cache="stream"))
        dataset = job_inputs(job, load_info(path), ("hq", "lq"), "lq").ray_datasets()["train"]
        try:
            for count in cpus:
                context.execution_options.resource_limits = limits.copy(cpu=count)
                times, samples = [], 0
                for _ in range(epochs):
                    start, samples = time.perf_counter(), 0
                    for batch in dataset.iter_torch_batches(batch_size=shape.batch, **torch_batch_options(device)):
                        samples += len(batch["label"])
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times.append(time.perf_counter() - start)
                rows.append(dict(step="data_path", shape=shape_name, batch=shape.batch, frames=shape.frames,
                                 persons=shape.persons, device=str(device), cpus=count, epochs=epochs,
                                 samples=samples, samples_per_s=samples / statistics.median(times),
                                 epoch_s_min=min(times), epoch_s_max=max(times)))
        finally:
            context.execution_options.resource_limits = limits
    return rows


ENTRY_KEYS = ("samples_per_s", "tflops", "gflop_per_sample", "step_ms", "step_ms_min", "step_ms_max", "steps", "batch",
              "frames", "persons", "compile", "seconds_for_40k_clips")


def json_report(rows: list[dict], data_rows: list[dict], device: torch.device) -> dict:
    """The object ``bench_vs_reference.py`` reads: per kind, the first shape's figures as a job trains by default
    (the training dtype, compile off); ``data_path`` with its rate per CPU count and the fewest CPUs that keep up
    with the teacher step."""
    dtype = step_precision(device)
    chosen = [r for r in rows if r["dtype"] == dtype and not r["compile"]]
    shape = chosen[0]["shape"] if chosen else None
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": dtype,
              "compile": False, "shape": shape, "not_measured": {}}
    for r in chosen:
        if r["shape"] == shape:
            report[r["step"]] = {k: r[k] for k in ENTRY_KEYS if k in r}
    data = [r for r in data_rows if r["shape"] == shape]
    if not data:
        report["not_measured"]["data_path"] = "not asked for (--no-data-path)"
        return report
    step = report.get("teacher_step", {}).get("samples_per_s", 0.0)
    best = max(data, key=lambda r: r["samples_per_s"])
    keeping_up = [r["cpus"] for r in data if r["samples_per_s"] >= step]
    report["data_path"] = {"samples_per_s": best["samples_per_s"], "cpus": best["cpus"],
                           "per_cpus": {str(r["cpus"]): r["samples_per_s"] for r in data},
                           "over_teacher_step": best["samples_per_s"] / step if step else None,
                           "cpus_to_keep_up": min(keeping_up) if keeping_up else None,
                           "batch": best["batch"], "frames": best["frames"], "persons": best["persons"],
                           "epochs": best["epochs"]}
    return report


def format_rows(rows: list[dict], data_rows: Sequence[dict] = ()) -> str:
    header = f"{'step':<16} {'shape':<5} {'N':>3} {'T':>4} {'M':>2} {'dtype':<5} {'comp':<4} {'device':<7} "
    header += f"{'ms/step':>9} {'(min-max)':>17} {'samples/s':>10} {'TFLOP/s':>8}"
    lines = [header]
    for r in rows:
        line = (f"{r['step']:<16} {r['shape']:<5} {r['batch']:>3} {r['frames']:>4} {r['persons']:>2} "
                f"{r['dtype']:<5} {'on' if r['compile'] else 'off':<4} {r['device']:<7} {r['step_ms']:>9.1f} "
                f"{r['step_ms_min']:>8.1f}-{r['step_ms_max']:<8.1f} {r['samples_per_s']:>10.1f} {r['tflops']:>8.3f}")
        if "seconds_for_40k_clips" in r:
            line += f"  (40k clips: {r['seconds_for_40k_clips']:.0f} s)"
        lines.append(line)
    for r in data_rows:
        lines.append(f"{'data_path':<16} {r['shape']:<5} {r['batch']:>3} {r['frames']:>4} {r['persons']:>2} "
                     f"{r['cpus']:>2} CPU{'s' if r['cpus'] > 1 else ' '}  {r['device']:<7} "
                     f"{1e3 * r['batch'] / r['samples_per_s']:>9.1f} {'':>17} {r['samples_per_s']:>10.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="partkd bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: cpu, +ntu on GPU)")
    parser.add_argument("--dtypes", default=None, help="comma list of bf16, fp32 (default: the training precision "
                                                       "on the device)")
    parser.add_argument("--compile", default="off", help="off, on or off,on: train.compile for the steps")
    parser.add_argument("--kinds", default=",".join(STEP_KINDS), help="comma list of the entries to time (default: "
                                                                      "all)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-data-path", action="store_true", help="leave out the Ray Data measurement (it "
                                                                    "starts Ray)")
    parser.add_argument("--data-cpus", default=None, help="comma list of CPU counts for the data path "
                                                          "(default 1, 2, 4, ... up to the cluster's)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures at the training precision as JSON "
                                                       "(the object ../shared/anchors/bench_vs_reference.py reads)")
    args = parser.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    shapes = args.shapes.split(",") if args.shapes else (["ntu", "cpu"] if device.type == "cuda" else ["cpu"])
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    modes = {"off": False, "on": True}
    if any(m not in modes for m in args.compile.split(",")):
        parser.error(f"--compile takes off, on or off,on, not {args.compile!r}")
    compile_modes = [modes[m] for m in args.compile.split(",")]
    kinds = args.kinds.split(",")
    if any(k not in STEP_KINDS for k in kinds):
        parser.error(f"--kinds takes a comma list of {', '.join(STEP_KINDS)}")
    dtypes = args.dtypes.split(",") if args.dtypes else None
    try:
        check_dtypes(dtypes or [], device)
    except ValueError as err:
        parser.error(str(err))
    if args.json and dtypes and step_precision(device) not in dtypes:
        parser.error(f"--json reports the training precision on {device.type}, {step_precision(device)}: "
                     "include it in --dtypes")
    if args.json and False not in compile_modes:
        parser.error("--json reports the default path (train.compile off): include off in --compile")
    rows = run_train_bench(shapes, dtypes, args.steps, args.warmup, device, compile_modes, kinds)
    data_rows = [] if args.no_data_path else run_data_path_bench(
        shapes[0], device, [int(c) for c in args.data_cpus.split(",")] if args.data_cpus else ())
    print(format_rows(rows, data_rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(json_report(rows, data_rows, device), file, indent=2)
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
