"""Training-step throughput: a teacher step and student KD steps (``partkd bench train``, ``python -m partkd.bench``).

Teacher step: ST-GCN on ``ntu25`` high-quality skeletons, cross-entropy (Eq. 2), SGD. Student KD step: ST-GCN on
``coco17`` low-quality skeletons (2D + score), the frozen teacher's forward on the paired high-quality batch, part
pooling on both sides, ``L_c + alpha L_pmsc`` (Eq. 4), SGD.
``student_kd_bank``: the same with the teacher's part features looked up from a precomputed bank instead of the
teacher's forward (``loss.hq_source=bank``). ``inference``: the teacher's evaluation forward, no gradient.
Figures are samples per second from the median step time, and TFLOP/s from each step's FLOP count
(``torch.utils.flop_counter``, counted once per step kind). No test asserts them; they are printed for the record.
``--json FILE`` writes the object ``../shared/anchors/bench_vs_reference.py`` reads: one entry per step kind at the
precision training takes on that device (bf16 autocast on CUDA, as ``train.bf16`` defaults; fp32 elsewhere).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from partkd.losses import pmsc_loss
from partkd.models import create_model, part_pool

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BenchShape:
    """A batch shape and the model size it runs with (``model`` overrides ``create_model``'s defaults)."""

    batch: int
    frames: int
    persons: int = 2
    model: dict = field(default_factory=dict)


SHAPES: dict[str, BenchShape] = {
    "ntu": BenchShape(batch=64, frames=300),  # the paper's setting
    "cpu": BenchShape(batch=16, frames=64),  # full model, a CPU-sized batch
    "tiny": BenchShape(batch=4, frames=16, model=dict(base_channels=8, stage_blocks=(1, 1, 1))),  # smoke test
}


@dataclass(frozen=True)
class _Setup:
    teacher_layout: str = "ntu25"
    student_layout: str = "coco17"
    grouping: str = "paper5"
    num_classes: int = 60
    alpha: float = 1.0
    bank_negatives: int = 64  # LossConfig's default


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)  # paper's SGD, small lr


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


def _teacher_step(shape: BenchShape, setup: _Setup, autocast_dtype, device: torch.device):
    teacher = create_model("stgcn", layout=setup.teacher_layout, num_classes=setup.num_classes, **shape.model)
    teacher = teacher.to(device).train()
    optimizer = _optimizer(teacher)
    num_joints = teacher.layout.num_joints
    x = torch.randn(shape.batch, shape.persons, shape.frames, num_joints, 3, device=device)  # (N, M, T, V, C)
    labels = torch.randint(setup.num_classes, (shape.batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, _ = teacher(x)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _inference(shape: BenchShape, setup: _Setup, autocast_dtype, device: torch.device):
    """The teacher's evaluation forward (eval mode, no gradient), as evaluation and E run it."""
    teacher = create_model("stgcn", layout=setup.teacher_layout, num_classes=setup.num_classes, **shape.model)
    teacher = teacher.to(device).eval()
    x = torch.randn(shape.batch, shape.persons, shape.frames, teacher.layout.num_joints, 3, device=device)

    def step():
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            teacher(x)

    return step


def step_flops(step) -> int:
    """The FLOPs of one call of ``step`` (matmuls and convolutions, forward and backward), as PyTorch counts them."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _student_step(shape: BenchShape, setup: _Setup, autocast_dtype, device: torch.device, hq_source: str = "batch"):
    """``batch``: the frozen teacher's forward on the paired HQ batch every step (the paper). ``bank``: the teacher's
    part features looked up from a bank computed once (the batch's pairs plus ``bank_negatives`` random entries)."""
    teacher = create_model("stgcn", layout=setup.teacher_layout, num_classes=setup.num_classes, **shape.model)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = create_model("stgcn", layout=setup.student_layout, num_classes=setup.num_classes, **shape.model)
    student = student.to(device).train()
    optimizer = _optimizer(student)
    n, m, t = shape.batch, shape.persons, shape.frames
    x_hq = torch.randn(n, m, t, teacher.layout.num_joints, 3, device=device)  # (N, M, T, V_H, 3)
    x_lq = torch.randn(n, m, t, student.layout.num_joints, 3, device=device)  # (N, M, T, V_L, 2 + score)
    labels = torch.randint(setup.num_classes, (n,), device=device)
    pair_index = torch.arange(n, device=device)  # every sample paired with its own HQ skeleton
    part_matrix = torch.softmax(torch.randn(setup.num_classes, 5, device=device), dim=1)  # (K, P)
    with torch.no_grad():
        bank = part_pool(teacher(x_hq).features, setup.grouping, teacher.layout).float()  # (N, P, C) stands for all
    bank_labels = labels

    def teacher_side():
        if hq_source == "bank":
            rows = torch.cat([pair_index, torch.randint(len(bank), (setup.bank_negatives,), device=device)])
            return bank[rows], bank_labels[rows]
        with torch.no_grad():
            return part_pool(teacher(x_hq).features, setup.grouping, teacher.layout), labels  # (N, P, C)

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            teacher_parts, teacher_labels = teacher_side()
            logits, features = student(x_lq)
            student_parts = part_pool(features, setup.grouping, student.layout)  # (N, P, C)
        loss_pmsc = pmsc_loss(student_parts, teacher_parts, labels, teacher_labels, pair_index, part_matrix)
        loss = F.cross_entropy(logits.float(), labels) + setup.alpha * loss_pmsc
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# the JSON entries bench_vs_reference.py prints, in this order
STEP_KINDS = {"teacher_step": _teacher_step, "student_kd_batch": _student_step,
              "student_kd_bank": partial(_student_step, hq_source="bank"), "inference": _inference}


def run_train_bench(
    shapes: Sequence[str] = ("cpu",),
    dtypes: Sequence[str] | None = None,
    steps: int = 5,
    warmup: int = 2,
    device: str | torch.device | None = None,
) -> list[dict]:
    """Time teacher and student KD training steps; one row per (shape, dtype, step kind).

    ``dtypes`` defaults to fp32, plus bf16 autocast on a CUDA device that supports it. Each row holds the median,
    minimum and maximum of ``steps`` timed steps (after ``warmup`` untimed ones) and ``samples_per_s`` from the median.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtypes is None:
        dtypes = ["fp32"] + (["bf16"] if device.type == "cuda" and torch.cuda.is_bf16_supported() else [])
    setup, rows = _Setup(), []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        for dtype_name in dtypes:
            for kind, build in STEP_KINDS.items():
                torch.manual_seed(0)
                step = build(shape, setup, DTYPES[dtype_name], device)
                flops = step_flops(step)  # also one more warm-up step
                times = _time_steps(step, steps, warmup, device)
                median = statistics.median(times)
                rows.append(
                    dict(step=kind, shape=shape_name, batch=shape.batch, frames=shape.frames, persons=shape.persons,
                         dtype=dtype_name, device=str(device), threads=torch.get_num_threads(), steps=steps,
                         step_ms=1e3 * median, step_ms_min=1e3 * min(times), step_ms_max=1e3 * max(times),
                         samples_per_s=shape.batch / median, gflop_per_sample=flops / shape.batch / 1e9,
                         tflops=flops / median / 1e12)
                )  # fmt: skip
    return rows


def training_dtype(device: torch.device) -> str:
    """The precision a training job takes on ``device`` with the default settings (``train.bf16``: autocast on CUDA)."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def json_report(rows: list[dict], device: torch.device) -> dict:
    """The object ``bench_vs_reference.py`` reads: per step kind, the first shape's figures at the training dtype."""
    dtype = training_dtype(device)
    chosen = [r for r in rows if r["dtype"] == dtype]
    shape = chosen[0]["shape"] if chosen else None
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": dtype,
              "shape": shape, "not_measured": {"part_matrix": "not in this benchmark yet (issue 12)",
                                               "data_path": "not in this benchmark yet (issue 12)"}}
    for r in chosen:
        if r["shape"] == shape:
            report[r["step"]] = {k: r[k] for k in ("samples_per_s", "tflops", "gflop_per_sample", "step_ms",
                                                   "step_ms_min", "step_ms_max", "steps", "batch", "frames",
                                                   "persons")}
    return report


def format_rows(rows: list[dict]) -> str:
    header = f"{'step':<15} {'shape':<5} {'N':>3} {'T':>4} {'M':>2} {'dtype':<5} {'device':<7} {'ms/step':>9} "
    header += f"{'(min-max)':>17} {'samples/s':>10} {'TFLOP/s':>8}"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['step']:<15} {r['shape']:<5} {r['batch']:>3} {r['frames']:>4} {r['persons']:>2} {r['dtype']:<5} "
            f"{r['device']:<7} {r['step_ms']:>9.1f} {r['step_ms_min']:>8.1f}-{r['step_ms_max']:<8.1f} "
            f"{r['samples_per_s']:>10.1f} {r['tflops']:>8.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: cpu, +ntu on GPU)")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32, bf16 (default: fp32, +bf16 on GPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", metavar="FILE", help="also write the figures at the training precision as JSON "
                                                       "(the object ../shared/anchors/bench_vs_reference.py reads)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = args.shapes.split(",") if args.shapes else (["ntu", "cpu"] if device.type == "cuda" else ["cpu"])
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    dtypes = args.dtypes.split(",") if args.dtypes else None
    if args.json and dtypes and training_dtype(device) not in dtypes:
        parser.error(f"--json reports the training precision on {device.type}, {training_dtype(device)}: "
                     "include it in --dtypes")
    rows = run_train_bench(shapes, dtypes, args.steps, args.warmup, device)
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(json_report(rows, device), file, indent=2)
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
