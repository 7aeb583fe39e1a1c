"""Part features from joint features (paper Sec. 3.3.1): average over time and over each part's joints."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from partkd.layouts import Grouping, Layout, get_grouping, get_layout


def part_membership(grouping: Grouping, layout: Layout) -> np.ndarray:
    """0/1 matrix ``(P, V)``: joint ``v`` of ``layout`` belongs to part ``p`` of ``grouping``."""
    members = np.zeros((grouping.num_parts, layout.num_joints), dtype=np.float32)
    for p, joints in enumerate(grouping.part_indices(layout)):
        members[p, list(joints)] = 1.0
    return members


@lru_cache(maxsize=64)
def _membership_tensor(grouping: Grouping, layout: Layout, device: torch.device, dtype: torch.dtype) -> Tensor:
    """:func:`part_membership` on a device, built once per (grouping, layout, device, dtype): no copy per step."""
    return torch.as_tensor(part_membership(grouping, layout), dtype=dtype, device=device)


def part_pool(features: Tensor, grouping: Grouping | str, layout: Layout | str, scores: Tensor | None = None) -> Tensor:
    """Part features ``(N, P, C)`` from joint features ``(N, C, T', V)``.

    Without ``scores`` (the paper, the default): ``f[n, p] = mean_{t, v in part p} z[n, :, t, v]``.
    With ``scores`` (``(N, ..., V)``, e.g. ``(N, M, T, V)``; pass them only when masking missing joints is wanted),
    each joint is weighted by the share of its entries with a score above 0, so a joint never seen is left out of
    its part's mean; a part whose joints are all unseen falls back to the plain mean, which keeps it finite.
    """
    grouping = get_grouping(grouping) if isinstance(grouping, str) else grouping
    layout = get_layout(layout) if isinstance(layout, str) else layout
    n, _, _, v = features.shape
    members = _membership_tensor(grouping, layout, features.device, features.dtype)  # (P, V)
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
