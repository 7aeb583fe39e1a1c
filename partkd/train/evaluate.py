"""Evaluation of any checkpoint, and the part matrix of a teacher (DESIGN §8-9).

Evaluation reads the protocol's test split in-process (no Ray needed), transforms it exactly as training did, and
occludes the evaluated side with probability OP using per-sample seeded masks: every model sees the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from partkd.data.shards import decode_side, iter_batches, load_info
from partkd.data.splits import Protocol, get_protocol, validation_split
from partkd.data.transforms import TransformConfig, transform_batch
from partkd.layouts import get_grouping, get_layout
from partkd.part_matrix import compute_part_matrix, save_part_matrix
from partkd.train.common import load_frozen_teacher, load_model, model_input


def side_batches(path: str, side: str, layout_name: str, cfg: TransformConfig, seed: int, protocol: str | Protocol,
                 split: str, batch_size: int = 64):
    """``(x, score, labels)`` numpy batches of one side of a split (of a protocol, or of a split object such as a
    :func:`~partkd.data.splits.validation_split`), transformed with per-sample randomness."""
    layout = get_layout(layout_name)
    splits = get_protocol(protocol) if isinstance(protocol, str) else protocol
    for batch, _, file in iter_batches(path, filter=splits.filter(split), batch_size=batch_size):
        rows = decode_side(batch, side, layout, file)
        ids = batch.column("sample_id").to_pylist()
        labels = batch.column("label").to_numpy()
        keep = [i for i, r in enumerate(rows) if r is not None]
        if not keep:
            continue
        x, score = transform_batch([rows[i][0] for i in keep], [rows[i][1] for i in keep], layout, cfg, seed,
                                   sample_ids=[ids[i] for i in keep])
        yield x, score, labels[keep]


@dataclass
class Evaluation:
    occlusion_prob: float
    top1: float
    top5: float
    per_class: np.ndarray  # (K,) accuracy, NaN for a class without test samples
    confusion: np.ndarray  # (K, K) rows true, columns predicted
    samples: int


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | Path, data_path: str, protocol: str, occlusion_probs=(0.0, 0.3, 0.6),
                        frames: int = 300, persons: int = 2, seed: int = 0, batch_size: int = 64,
                        occlusion_unit: str = "joint-frame", device: str = "cpu") -> list[Evaluation]:
    """Top-1/top-5, per-class accuracy and confusion matrix on the test split, one :class:`Evaluation` per OP."""
    model, meta = load_model(checkpoint, device)
    side, layout = meta["side"], get_layout(meta["layout"])
    num_classes = meta["num_classes"]
    results = []
    for prob in occlusion_probs:
        cfg = TransformConfig(frames=frames, persons=persons, crop="center", occlusion_prob=prob,
                              occlusion_unit=occlusion_unit)
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        top5_hits = 0
        for x, score, labels in side_batches(data_path, side, layout.name, cfg, seed, protocol, "test", batch_size):
            inputs = model_input(torch.from_numpy(x), torch.from_numpy(score), layout).to(device)
            logits = model(inputs).logits.float().cpu()
            top = logits.topk(min(5, num_classes), dim=1).indices.numpy()  # (N, 5)
            np.add.at(confusion, (labels, top[:, 0]), 1)
            top5_hits += int((top == labels[:, None]).any(1).sum())
        total = int(confusion.sum())
        if total == 0:
            raise ValueError(f"{data_path}: the {protocol} test split has no sample with a {side} side")
        with np.errstate(invalid="ignore"):
            per_class = np.diag(confusion) / confusion.sum(1)
        results.append(Evaluation(prob, float(np.trace(confusion) / total), top5_hits / total, per_class, confusion,
                                  total))
    return results


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    from matplotlib.figure import Figure

    size = max(4.0, 0.35 * len(class_names) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def part_matrix_for_teacher(teacher_checkpoint: str | Path, data_path: str, protocol: str, grouping: str,
                            frames: int = 300, persons: int = 2, batch_size: int = 32, temperature: float = 1.0,
                            device: str = "cpu", overwrite: bool = False, val_fraction: float = 0.0,
                            val_seed: int = 0) -> Path:
    """E for (teacher, grouping) from the HQ training samples, cached beside the checkpoint as .npy + heatmap PNG.

    With ``val_fraction`` the seeded validation slice (as in ``data.val_fraction``) is left out, so a study's
    objective is measured on samples that shaped neither the teacher nor E. The cache file names every input that
    changes E: grouping, temperature, protocol (and slice), frames and persons.
    """
    splits = (validation_split(protocol, data_path, val_fraction, val_seed) if val_fraction
              else get_protocol(protocol))
    name = f"part_matrix_{grouping}_t{temperature:g}_{splits.name}_T{frames}_M{persons}.npy"
    target = Path(teacher_checkpoint) / name
    if target.exists() and not overwrite:
        return target
    teacher, meta = load_frozen_teacher(teacher_checkpoint, torch.device(device))
    if meta.get("side") != "hq":
        raise ValueError(f"{teacher_checkpoint} is not a teacher checkpoint (side {meta.get('side')})")
    info = load_info(data_path)
    layout = get_layout(meta["layout"])
    cfg = TransformConfig(frames=frames, persons=persons, crop="center")
    batches = (
        (model_input(torch.from_numpy(x), torch.from_numpy(score), layout), torch.from_numpy(labels))
        for x, score, labels in side_batches(data_path, "hq", layout.name, cfg, 0, splits, "train", batch_size)
    )
    grouping_obj = get_grouping(grouping)
    matrix = compute_part_matrix(teacher, batches, grouping_obj, layout, meta["num_classes"], temperature,
                                 torch.device(device))
    npy, _ = save_part_matrix(matrix, target, info["class_names"], list(grouping_obj.part_names))
    return Path(npy)


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
