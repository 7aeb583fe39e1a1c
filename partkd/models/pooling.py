"""Part features from joint features (paper Sec. 3.3.1): average over time and over each part's joints."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from partkd.layouts import Grouping, Layout, get_grouping, get_layout


def part_membership(grouping: Grouping, layout: Layout) -> np.ndarray:
    """0/1 matrix ``(P, V)``: joint ``v`` of ``layout`` belongs to part ``p`` of ``grouping``."""
    members = np.zeros((grouping.num_parts, layout.num_joints), dtype=np.float32)
    for p, joints in enumerate(grouping.part_indices(layout)):
        members[p, list(joints)] = 1.0
    return members


def pool_parts(features: Tensor, members: Tensor, scores: Tensor | None = None) -> Tensor:
    """Part features ``(N, P, C)`` from joint features ``(N, C, T', V)`` and a 0/1 membership ``(P, V)``.

    Without ``scores`` (the paper, the default): ``f[n, p] = mean_{t, v in part p} z[n, :, t, v]``.
    With ``scores`` (``(N, ..., V)``, e.g. ``(N, M, T, V)``; pass them only when masking missing joints is wanted),
    each joint is weighted by the share of its entries with a score above 0, so a joint never seen is left out of
    its part's mean; a part whose joints are all unseen falls back to the plain mean, which keeps it finite.
    """
    n, _, _, v = features.shape
    members = members.to(features.dtype)
    plain = members / members.sum(1, keepdim=True)  # (P, V) rows sum to 1
    joint_feats = features.mean(2)  # (N, C, V)
    if scores is None:
        return torch.einsum("ncv,pv->npc", joint_feats, plain)  # (N, P, C)
    if scores.shape[0] != n or scores.shape[-1] != v:
        raise ValueError(f"scores {tuple(scores.shape)} do not fit features {tuple(features.shape)}: want (N, ..., V)")
    seen = (scores > 0).to(features.dtype).reshape(n, -1, v).mean(1)  # (N, V) share of frames/persons seen
    weights = members * seen[:, None, :]  # (N, P, V)
    total = weights.sum(-1, keepdim=True)  # (N, P, 1)
    weights = torch.where(total > 0, weights / total.clamp_min(torch.finfo(total.dtype).tiny), plain)  # (N, P, V)
    return torch.einsum("ncv,npv->npc", joint_feats, weights)  # (N, P, C)


class PartPool(nn.Module):
    """:func:`pool_parts` for one (grouping, layout), its membership a buffer built once: a training step only
    multiplies (no lookup, no host copy, nothing that breaks a ``torch.compile`` graph)."""

    def __init__(self, grouping: Grouping | str, layout: Layout | str):
        super().__init__()
        self.grouping = get_grouping(grouping) if isinstance(grouping, str) else grouping
        self.layout = get_layout(layout) if isinstance(layout, str) else layout
        self.register_buffer("members", _membership(self.grouping, self.layout).clone(), persistent=False)  # (P, V)

    def forward(self, features: Tensor, scores: Tensor | None = None) -> Tensor:
        return pool_parts(features, self.members, scores)


@lru_cache(maxsize=64)
def _membership(grouping: Grouping, layout: Layout) -> Tensor:
    return torch.from_numpy(part_membership(grouping, layout))  # (P, V), built once per pair


def part_pool(features: Tensor, grouping: Grouping | str, layout: Layout | str, scores: Tensor | None = None) -> Tensor:
    """:func:`pool_parts` by names, for one-off use and tests (a training step holds a :class:`PartPool`)."""
    grouping = get_grouping(grouping) if isinstance(grouping, str) else grouping
    layout = get_layout(layout) if isinstance(layout, str) else layout
    return pool_parts(features, _membership(grouping, layout).to(features.device), scores)
