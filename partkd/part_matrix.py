"""The action-specific high-efficiency part matrix E (paper Sec. 3.3.3, Eq. 12-13; DESIGN §8).

E[c, p] is the share of class-c high-quality training samples that the frozen teacher misclassifies once every joint
of part p is zeroed (Eq. 12), turned into a distribution over parts by a softmax per class (Eq. 13). Rows sum to 1.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from partkd import storage
from partkd.layouts import Grouping, Layout, get_grouping, get_layout
from partkd.models import part_membership


def part_matrix_from_predictions(
    labels: Tensor, occluded_preds: Tensor, num_classes: int, temperature: float = 1.0
) -> Tensor:
    """E ``(K, P)`` from true labels ``(N,)`` and the teacher's predictions with part p occluded ``(N, P)``.

    Eq. 12: ``miss[c, p] = #{i : y_i = c, yhat_{i,p} != c} / #{i : y_i = c}``;
    Eq. 13: ``E[c] = softmax(miss[c] / temperature)`` (``temperature`` = 1 is the paper). A class without samples
    gets a uniform row, with a warning naming it.
    """
    labels, occluded_preds = torch.as_tensor(labels).cpu(), torch.as_tensor(occluded_preds).cpu()
    if occluded_preds.ndim != 2 or occluded_preds.shape[0] != labels.shape[0]:
        raise ValueError(f"occluded_preds {tuple(occluded_preds.shape)} must be (N, P) with N = {labels.shape[0]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).double()  # (N, K)
    wrong = (occluded_preds != labels[:, None]).double()  # (N, P)
    counts = one_hot.sum(0)  # (K,)
    miss_rate = (one_hot.T @ wrong) / counts.clamp(min=1)[:, None]  # (K, P), Eq. 12; 0 for empty classes
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        warnings.warn(f"part matrix: classes {empty} have no samples; their rows are uniform", stacklevel=2)
    return torch.softmax(miss_rate / temperature, dim=1).float()  # (K, P), Eq. 13


def part_matrix_spread(matrix: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """How much each class's row of E tells the parts apart, per class ``(K,)``:

    - ``entropy``: the row's entropy over log P (1 = uniform, no part singled out);
    - ``miss_range``: the spread of the Eq. 12 miss rates behind the row, ``max - min``, recovered exactly from E
      since ``log E[c, p] = miss[c, p] / temperature - const_c``. With the paper's temperature 1 a miss-rate
      spread of at most 1 bounds the row: no part weighs more than e (2.7) times another, so E is never far from
      uniform; a small ``miss_range`` means the teacher hardly depends on any one part for that class.
    """
    log = np.log(np.asarray(matrix, dtype=np.float64))  # (K, P)
    p = np.exp(log)
    entropy = -(p * log).sum(1) / np.log(log.shape[1])
    return {"entropy": entropy, "miss_range": temperature * (log.max(1) - log.min(1))}


def occlude_parts(x: Tensor, members: Tensor) -> Tensor:
    """All single-part occlusions of a batch: ``(N, M, T, V, C) -> (P, N, M, T, V, C)``, part p's joints zeroed.

    Every channel of an occluded joint is zeroed: coordinates and, where the data carries one, the score channel.
    """
    keep = 1 - members.to(x.dtype)  # (P, V)
    return x[None] * keep[:, None, None, None, :, None]  # (P, N, M, T, V, C)


@torch.no_grad()
def occlusion_predictions(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    grouping: Grouping | str,
    layout: Layout | str,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``model`` on every sample with each part zeroed in turn; returns labels ``(N,)`` and predictions ``(N, P)``.

    ``batches`` yields ``(x (N, M, T, V, C), labels (N,))`` of high-quality training samples; the P occluded copies
    of a batch go through the model as one ``(P * N)`` batch, so size the batches for that. The model runs in eval
    mode under ``no_grad`` and is put back in its previous mode afterwards.
    """
    grouping = get_grouping(grouping) if isinstance(grouping, str) else grouping
    layout = get_layout(layout) if isinstance(layout, str) else layout
    if device is None:  # where the model lives; CPU for a model without tensors
        device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    device = torch.device(device)
    members = torch.as_tensor(part_membership(grouping, layout), device=device)  # (P, V)
    was_training = model.training
    model.eval()
    all_labels, all_preds = [], []
    try:
        for x, labels in batches:
            x = x.to(device, non_blocking=True)
            occluded = occlude_parts(x, members)  # (P, N, M, T, V, C)
            out = model(occluded.flatten(0, 1))  # (P*N, M, T, V, C) in
            logits = out[0] if isinstance(out, tuple) else out  # (P*N, K)
            preds = logits.argmax(-1).view(members.shape[0], -1).T  # (N, P)
            all_labels.append(torch.as_tensor(labels))
            all_preds.append(preds)  # stays on the device: no wait per batch
    finally:
        model.train(was_training)
    return torch.cat(all_labels).cpu(), torch.cat(all_preds).cpu()


def compute_part_matrix(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    grouping: Grouping | str,
    layout: Layout | str,
    num_classes: int,
    temperature: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """E ``(K, P)`` of a (frozen) teacher over high-quality batches: :func:`occlusion_predictions`, then Eq. 12-13."""
    labels, preds = occlusion_predictions(model, batches, grouping, layout, device)
    return part_matrix_from_predictions(labels, preds, num_classes, temperature)


def save_part_matrix(
    part_matrix: Tensor | np.ndarray, path: str | Path, class_names: Sequence[str], part_names: Sequence[str]
) -> tuple[Path, Path]:
    """Write E as ``<path>.npy`` and as a heatmap ``<path>.png`` (classes on rows, parts on columns)."""
    matrix = np.asarray(torch.as_tensor(part_matrix).detach().cpu(), dtype=np.float32)  # (K, P)
    if matrix.shape != (len(class_names), len(part_names)):
        raise ValueError(f"part matrix {matrix.shape} does not fit {len(class_names)} classes, {len(part_names)} parts")
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    npy_path, png_path = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".png")
    np.save(npy_path, matrix)
    plot_part_matrix(matrix, class_names, part_names).savefig(png_path, dpi=120, bbox_inches="tight")
    return npy_path, png_path


def load_part_matrix(location: str | Path) -> Tensor:
    """E ``(K, P)`` from a ``.npy`` written by :func:`save_part_matrix`: a local path or an object-store URI, with or
    without its ``.npy`` suffix."""
    location = str(location).removesuffix(".npy").removesuffix(".png") + ".npy"
    return torch.from_numpy(np.load(io.BytesIO(storage.read_bytes(location))))


def _stem(path: str | Path) -> Path:
    """``runs/E.paper5.npy`` and ``runs/E.paper5`` both name the pair ``runs/E.paper5.{npy,png}``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npy", ".png") else path


def plot_part_matrix(matrix: np.ndarray, class_names: Sequence[str], part_names: Sequence[str]):
    """Heatmap of E as a matplotlib ``Figure`` (no pyplot state, so it works headless and in Ray workers)."""
    from matplotlib.figure import Figure  # plotting stays out of the import path of training code

    num_classes, num_parts = matrix.shape
    fig = Figure(figsize=(2.5 + 0.9 * num_parts, 1.2 + 0.22 * num_classes))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", aspect="auto", vmin=0.0, vmax=max(float(matrix.max()), 1e-6))
    ax.set_xticks(range(num_parts), labels=list(part_names), rotation=45, ha="right")
    ax.set_yticks(range(num_classes), labels=list(class_names), fontsize=7 if num_classes > 20 else 9)
    ax.set_xlabel("part")
    ax.set_title("action-specific part matrix E")
    fig.colorbar(image, ax=ax, fraction=0.05)
    return fig
