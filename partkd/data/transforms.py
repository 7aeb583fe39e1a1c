"""Batch transforms on skeleton tensors (DESIGN §4): numpy, vectorised over the batch, seeded.

A batch is ``x`` (N, M, T, V, C) with ``score`` (N, M, T, V); a joint is missing where its score is 0, and then its
coordinates are 0 too. The steps, in the order :func:`transform_batch` applies them:

1. :func:`pack` — ragged rows to fixed ``T`` frames (crop, or pad with zeros as the paper) and ``M`` persons;
2. :func:`center_and_scale` — subtract the layout's centre joint, divide by the body's RMS radius;
3. :func:`random_rotate_scale` — optional augmentation for training;
4. :func:`occlude` — random occlusion with probability OP, per joint and frame (default) or per joint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from partkd.layouts import Layout

OCCLUSION_UNITS = ("joint-frame", "joint")
CROP_MODES = ("start", "center", "random")


@dataclass(frozen=True)
class TransformConfig:
    frames: int = 300  # T, the paper's length
    persons: int = 2  # M
    crop: str = "center"  # where a longer sequence is cut: start | center | random (training)
    occlusion_prob: float = 0.0  # OP
    occlusion_unit: str = "joint-frame"
    rotate_deg: float = 0.0  # augmentation: max rotation (about the vertical axis in 3D, in-plane in 2D)
    scale_range: tuple[float, float] = (1.0, 1.0)  # augmentation: uniform random scale factor

    def __post_init__(self):
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}")
        if self.occlusion_unit not in OCCLUSION_UNITS:
            raise ValueError(f"occlusion_unit must be one of {', '.join(OCCLUSION_UNITS)}, got {self.occlusion_unit!r}")
        if not 0.0 <= self.occlusion_prob <= 1.0:
            raise ValueError(f"occlusion_prob must be in [0, 1], got {self.occlusion_prob}")
        if self.frames < 1 or self.persons < 1:
            raise ValueError("frames and persons must be at least 1")


def sample_rng(sample_id: str, seed: int) -> np.random.Generator:
    """A generator that depends only on (sample_id, seed): the same masks for a sample whatever its batch."""
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


Rngs = np.random.Generator | Sequence[np.random.Generator]


def _uniform(rngs: Rngs, n: int, low: float, high: float) -> np.ndarray:
    """(N,) uniform draws: from one generator for the batch, or one draw from each sample's own generator."""
    if isinstance(rngs, np.random.Generator):
        return rngs.uniform(low, high, size=n)
    return np.array([rng.uniform(low, high) for rng in rngs], dtype=np.float64).reshape(n)


def pack(
    tensors: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    frames: int,
    persons: int,
    crop: str = "center",
    rngs: Rngs | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ``[M_i, T_i, V, C]`` rows to ``x`` (N, M, T, V, C) and ``score`` (N, M, T, V).

    Keeps the first ``persons`` persons; pads missing persons and frames with zeros (score 0); cuts a longer
    sequence at its start, centre or a random offset (``rngs`` needed).
    """
    if crop == "random" and rngs is None:
        raise ValueError("crop='random' needs an rng")
    n = len(tensors)
    draws = _uniform(rngs, n, 0.0, 1.0) if crop == "random" else np.zeros(n)
    joints, dims = tensors[0].shape[2], tensors[0].shape[3]
    x = np.zeros((n, persons, frames, joints, dims), dtype=np.float32)  # (N, M, T, V, C)
    score = np.zeros((n, persons, frames, joints), dtype=np.float32)  # (N, M, T, V)
    for i, (tensor, sc) in enumerate(zip(tensors, scores)):
        m, length = min(tensor.shape[0], persons), tensor.shape[1]
        keep = min(length, frames)
        extra = length - keep
        start = 0 if crop == "start" else extra // 2 if crop == "center" else int(draws[i] * (extra + 1))
        x[i, :m, :keep] = tensor[:m, start:start + keep]
        score[i, :m, :keep] = sc[:m, start:start + keep]
    return x, score


def center_and_scale(x: np.ndarray, score: np.ndarray, layout: Layout) -> np.ndarray:
    """Centre each sample on its first person's mean centre joint and divide by the RMS radius of its joints.

    x (N, M, T, V, C), score (N, M, T, V). Where the centre joint is never seen, the mean of the first person's
    joints is the centre. Missing joints stay 0. Returns a new array.
    """
    valid = score > 0  # (N, M, T, V)
    w_center = valid[:, 0, :, layout.center].astype(x.dtype)  # (N, T)
    sum_center = np.einsum("nt,ntc->nc", w_center, x[:, 0, :, layout.center])  # (N, C)
    w_person = valid[:, 0].astype(x.dtype)  # (N, T, V)
    sum_person = np.einsum("ntv,ntvc->nc", w_person, x[:, 0], optimize=True)  # (N, C)
    n_center, n_person = w_center.sum(1)[:, None], w_person.sum((1, 2))[:, None]  # (N, 1)
    center = np.where(n_center > 0, sum_center / np.maximum(n_center, 1), sum_person / np.maximum(n_person, 1))
    out = x - center[:, None, None, None, :].astype(x.dtype)  # (N, M, T, V, C)
    out *= valid[..., None]
    n_valid = valid.sum((1, 2, 3))  # (N,)
    sq = np.square(out).reshape(len(out), -1).sum(1, dtype=np.float64)  # (N,)
    radius = np.sqrt(sq / np.maximum(n_valid, 1))  # (N,)
    radius = np.where(radius > 0, radius, 1.0)
    out /= radius[:, None, None, None, None].astype(x.dtype)
    return out


def _rotation(angle: np.ndarray, dims: int) -> np.ndarray:
    """(N,) angles -> (N, C, C): about the vertical (y) axis in 3D, in the image plane in 2D."""
    c, s = np.cos(angle), np.sin(angle)
    if dims == 2:
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1), np.stack([-s, zero, c], -1)], -2)


def random_rotate_scale(
    x: np.ndarray, score: np.ndarray, max_deg: float, scale_range: tuple[float, float], rngs: Rngs
) -> np.ndarray:
    """Rotate each sample by a uniform angle in ±max_deg and scale it by a uniform factor; missing joints stay 0."""
    n, dims = x.shape[0], x.shape[-1]
    angle = np.deg2rad(_uniform(rngs, n, -max_deg, max_deg))
    factor = _uniform(rngs, n, scale_range[0], scale_range[1])
    rot = (_rotation(angle, dims) * factor[:, None, None]).astype(x.dtype)  # (N, C, C)
    out = np.matmul(x.reshape(n, -1, dims), rot.transpose(0, 2, 1)).reshape(x.shape)  # (N, M*T*V, C) -> (N, M, T, V, C)
    return out * (score > 0)[..., None]


def occlusion_mask(
    shape: tuple[int, int, int, int], prob: float, unit: str, rngs: Rngs
) -> np.ndarray:
    """Bool (N, M, T, V), True where a joint is occluded.

    ``unit="joint-frame"`` draws every joint of every frame independently; ``unit="joint"`` draws once per joint and
    person for the whole sequence. ``rngs`` is one generator for the batch, or one per sample (see
    :func:`sample_rng`) so that a sample gets the same mask in any batch.
    """
    if unit not in OCCLUSION_UNITS:
        raise ValueError(f"occlusion unit must be one of {', '.join(OCCLUSION_UNITS)}, got {unit!r}")
    n, m, t, v = shape
    per_sample = (m, t if unit == "joint-frame" else 1, v)
    if isinstance(rngs, np.random.Generator):
        draws = rngs.random((n, *per_sample), dtype=np.float32)
    elif n:
        draws = np.stack([rng.random(per_sample, dtype=np.float32) for rng in rngs])
    else:
        draws = np.zeros((0, *per_sample), dtype=np.float32)
    return np.broadcast_to(draws < prob, shape)


def occlude(x: np.ndarray, score: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Set the coordinates and score of masked joints to 0 (the paper's simulated occlusion)."""
    keep = ~mask
    return x * keep[..., None], score * keep


def transform_batch(
    tensors: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    layout: Layout,
    cfg: TransformConfig,
    seed: int,
    sample_ids: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows of one side to a training/evaluation batch ``x`` (N, M, T, V, C), ``score`` (N, M, T, V).

    With ``sample_ids`` every random choice (crop offset, rotation, scale, occlusion mask) comes from the sample's
    own :func:`sample_rng`, so a sample is transformed the same way in any batch, on any worker, for every model:
    evaluation masks are shared, and a resumed job sees the same data. Vary ``seed`` per epoch for fresh
    augmentation. Without ``sample_ids`` one generator seeded by ``seed`` serves the batch.
    """
    rngs: Rngs = np.random.default_rng(seed) if sample_ids is None else [sample_rng(sid, seed) for sid in sample_ids]
    x, score = pack(tensors, scores, cfg.frames, cfg.persons, cfg.crop, rngs)
    x = center_and_scale(x, score, layout)
    if cfg.rotate_deg > 0 or cfg.scale_range != (1.0, 1.0):
        x = random_rotate_scale(x, score, cfg.rotate_deg, cfg.scale_range, rngs)
    if cfg.occlusion_prob > 0:
        x, score = occlude(x, score, occlusion_mask(score.shape, cfg.occlusion_prob, cfg.occlusion_unit, rngs))
    return x, score
