"""Evaluation of any checkpoint, and the part matrix E of a teacher (DESIGN §8-9).

Both read a checkpoint's data through its saved :class:`~partkd.train.config.DataConfig` (or one given), in process,
with the transform training used (:meth:`DataConfig.transform`). Evaluation reads the protocol's test split and
occludes the evaluated side with probability OP using per-sample seeded masks: every model sees the same masks. E
reads the HQ training rows of ``data.splits()``, which leaves the validation slice out whenever the data has one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from partkd import storage
from partkd.data.raydata import SideTransform
from partkd.data.shards import load_info, verify_dataset
from partkd.data.splits import Protocol, WithValidation, get_protocol
from partkd.layouts import get_grouping, get_layout
from partkd.models import model_input
from partkd.part_matrix import compute_part_matrix, save_part_matrix
from partkd.train.checkpoint import load_frozen_teacher, load_meta, load_model
from partkd.train.config import DataConfig, JobConfig
from partkd.train.loop import topk_hits
from partkd.train.session import JobInputs, autocast, default_device, job_device


def side_batches(data: DataConfig, side: str, layout: str, splits: Protocol | WithValidation, split: str,
                 occlusion_prob: float = 0.0, batch_size: int = 64) -> Iterator[tuple[np.ndarray, ...]]:
    """``(x, score, labels)`` numpy batches of the rows of ``split`` that have ``side``, transformed as ``data``
    says (``data.seed`` seeds the per-sample occlusion masks)."""
    info = verify_dataset(data.path)
    transform = SideTransform({side: layout}, data.transform(occlusion_prob), seed=data.seed,
                              num_classes=info["num_classes"])
    inputs = JobInputs(data.path, splits, "test", side, transform, batch_size, "stream", info["counts"]["samples"])
    for arrays in inputs.local_batches(split):
        yield arrays[f"{side}_x"], arrays[f"{side}_score"], arrays["label"]


@dataclass
class Evaluation:
    occlusion_prob: float
    top1: float
    top5: float
    per_class: np.ndarray  # (K,) accuracy, NaN for a class without test samples
    confusion: np.ndarray  # (K, K) rows true, columns predicted
    samples: int


REMOVED_IN = "0.3.0"  # the release the call forms from before 0.2 go in (every deprecation: docs/deprecations.md)

# The loose data settings (now DataConfig fields) each shim's old form ``(checkpoint, data_path, protocol, ...)`` took
# by keyword: accepted with a DeprecationWarning until REMOVED_IN. Any other keyword is an error.
LEGACY_KEYWORDS = {
    "evaluate_checkpoint": ("frames", "persons", "seed", "occlusion_unit"),
    "part_matrix_for_teacher": ("frames", "persons", "val_fraction", "val_seed"),
}


def _legacy_data(function: str, data: DataConfig | str | os.PathLike | None, second, legacy_args: tuple,
                 legacy_kwargs: dict) -> tuple[DataConfig | None, object]:
    """``(data, second)`` of a call: as given in the current form; in the old form ``(checkpoint, data_path,
    protocol, third, **settings)`` a DataConfig of the path, protocol and settings (with a deprecation warning) and
    the third argument.

    A call Python would refuse without the shim is refused as Python does, with a TypeError: a keyword neither form
    has, a loose data setting beside a DataConfig (it would be ignored), a positional argument past either form's."""
    unknown = [name for name in legacy_kwargs if name not in LEGACY_KEYWORDS[function]]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}" if len(unknown) == 1 else
                        f"{function}() got unexpected keyword arguments {', '.join(map(repr, unknown))}")
    old_form = isinstance(data, (str, os.PathLike))
    if len(legacy_args) > int(old_form):
        given = 3 + len(legacy_args)
        raise TypeError(f"{function}() takes from 1 to {3 + int(old_form)} positional arguments but {given} were given"
                        + ("; pass the old form's data settings by keyword" if old_form else ""))
    if not old_form:
        if legacy_kwargs:
            names = ", ".join(f"{name}=" for name in legacy_kwargs)
            verb = "belongs" if len(legacy_kwargs) == 1 else "belong"
            raise TypeError(f"{function}(): {names} {verb} to the deprecated form {function}(checkpoint, data_path, "
                            f"protocol, ...); with a DataConfig, set it there (dataclasses.replace(data, ...))")
        return data, second
    warnings.warn(f"{function}(checkpoint, data_path, protocol, ...) with loose data settings is deprecated and is "
                  f"removed in {REMOVED_IN}: pass a DataConfig (default: the checkpoint's)", DeprecationWarning,
                  stacklevel=3)
    return DataConfig(path=str(data), protocol=second, **legacy_kwargs), legacy_args[0] if legacy_args else None


def _release(device: torch.device) -> None:
    """Hand a GPU's cached memory back after a model is gone (the driver shares the GPU with the job's workers)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _device(device: str | torch.device | None) -> torch.device:
    """``None``: :func:`default_device` (a job passes :func:`job_device` of its settings)."""
    return torch.device(device) if device is not None else default_device()


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | Path, data: DataConfig | None = None,
                        occlusion_probs: Sequence[float] | None = None, *legacy_args,
                        device: str | torch.device | None = None, batch_size: int = 64, bf16: bool | None = None,
                        **legacy_kwargs) -> list[Evaluation]:
    """Top-1/top-5, per-class accuracy and confusion matrix on the test split of ``data.protocol``, one
    :class:`Evaluation` per OP (default ``data.eval_occlusion_probs``). ``data`` defaults to the data settings the
    checkpoint was trained with. The model runs on ``device`` (default: a GPU if there is one) under :func:`autocast`
    with ``bf16`` (default: the checkpoint's ``train.bf16``); the counts stay on the device until the end."""
    # the old form: (checkpoint, data_path, protocol, occlusion_probs, frames=..., ...)
    data, occlusion_probs = _legacy_data("evaluate_checkpoint", data, occlusion_probs, legacy_args, legacy_kwargs)
    device = _device(device)
    model, meta = load_model(checkpoint, device)
    data = data or meta.data
    bf16 = meta.settings.get("train.bf16", True) if bf16 is None else bf16
    side, layout = meta.side, get_layout(meta.model.layout)
    num_classes = meta.model.num_classes
    results = []
    for prob in data.eval_occlusion_probs if occlusion_probs is None else occlusion_probs:
        counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)  # confusion, flattened
        top1 = torch.zeros((), dtype=torch.long, device=device)
        top5 = torch.zeros((), dtype=torch.long, device=device)
        for x, score, labels in side_batches(data, side, layout.name, get_protocol(data.protocol), "test", prob,
                                             batch_size):
            inputs = model_input(torch.from_numpy(x), torch.from_numpy(score), layout).to(device, non_blocking=True)
            labels = torch.from_numpy(labels).to(device, non_blocking=True)
            with autocast(device, bf16):
                logits = model(inputs).logits
            logits = logits.float()
            counts.index_add_(0, labels * num_classes + logits.argmax(1), torch.ones_like(labels))  # no sync (bincount
            # would); the confusion places every row, top-1 and top-5 count a row with a non-finite logit as a miss
            top1 += topk_hits(logits, labels)
            top5 += topk_hits(logits, labels, k=5)
        confusion = counts.view(num_classes, num_classes).cpu().numpy()
        total = int(confusion.sum())
        if total == 0:
            raise ValueError(f"{data.path}: the {data.protocol} test split has no sample with a {side} side")
        with np.errstate(invalid="ignore"):
            per_class = np.diag(confusion) / confusion.sum(1)
        results.append(Evaluation(prob, int(top1) / total, int(top5) / total, per_class, confusion, total))
    _release(device)
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


def part_matrix_for_job(teacher_checkpoint: str | Path, job: JobConfig) -> str:
    """E for a student ``job`` from ``teacher_checkpoint``: on the job's training rows, for its ``loss.grouping``,
    with its ``loss.part_temperature`` on Eq. 13's softmax (cached per grouping and temperature)."""
    return part_matrix_for_teacher(teacher_checkpoint, job.data, job.loss.grouping,
                                   temperature=job.loss.part_temperature, device=job_device(job.train))


def part_matrix_for_teacher(teacher_checkpoint: str | Path, data: DataConfig | None = None, grouping: str = "paper5",
                            *legacy_args, temperature: float = 1.0, device: str | torch.device | None = None,
                            batch_size: int = 32, bf16: bool | None = None, overwrite: bool = False,
                            **legacy_kwargs) -> str:
    """E for (teacher, grouping) from the HQ training rows of ``data`` (default: the data the teacher was trained
    on), cached beside the checkpoint as .npy + heatmap PNG.

    The rows are ``data.splits()``'s training split: with ``data.val_fraction`` the seeded validation slice is left
    out, so a job validated on the slice is measured on samples that shaped neither the teacher nor E. The cache file
    names every input that changes E: grouping, temperature, protocol (and slice), frames and persons. The teacher
    runs on ``device`` (default: a GPU if there is one) under :func:`autocast` with ``bf16`` (default: the
    teacher's ``train.bf16``), the P occluded copies of a batch as one batch of ``P * batch_size``. The precision is
    not in the cache file's name: E from bf16 and fp32 predictions may differ in a few argmaxes.
    """
    # the old form: (teacher, data_path, protocol, grouping, frames=..., ...)
    data, grouping = _legacy_data("part_matrix_for_teacher", data, grouping, legacy_args, legacy_kwargs)
    grouping = "paper5" if grouping is None else grouping
    data = data or load_meta(teacher_checkpoint).data
    splits = data.splits()
    name = f"part_matrix_{grouping}_t{temperature:.12g}_{splits.name}_T{data.frames}_M{data.persons}.npy"
    target = storage.join(teacher_checkpoint, name)
    if storage.exists(target) and not overwrite:
        return target
    device = _device(device)
    teacher, meta = load_frozen_teacher(teacher_checkpoint, device)
    bf16 = meta.settings.get("train.bf16", True) if bf16 is None else bf16
    layout = get_layout(meta.model.layout)
    batches = (
        (model_input(torch.from_numpy(x), torch.from_numpy(score), layout), torch.from_numpy(labels))
        for x, score, labels in side_batches(replace(data, seed=0), "hq", layout.name, splits, "train",
                                             batch_size=batch_size)
    )
    grouping_obj = get_grouping(grouping)
    with autocast(device, bf16):
        matrix = compute_part_matrix(teacher, batches, grouping_obj, layout, meta.model.num_classes, temperature,
                                     device)
    del teacher
    _release(device)
    with storage.staged(teacher_checkpoint) as folder:
        save_part_matrix(matrix, folder / name, load_info(data.path)["class_names"], list(grouping_obj.part_names))
    return target
