"""Part features from joint features (paper Sec. 3.3.1): average over time and over each part's joints."""

from __future__ import annotations

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


class PartPool(nn.Module):
    """Part features ``(N, P, C)`` from joint features ``(N, C, T', V)`` for one (grouping, layout).

    The membership is a buffer, built once: a training step only multiplies (no lookup, no host copy, nothing that
    breaks a ``torch.compile`` graph). Without ``scores`` (the paper, the default):
    ``f[n, p] = mean_{t, v in part p} z[n, :, t, v]``. With ``scores`` (``(N, ..., V)``, e.g. ``(N, M, T, V)``; pass
    them only when masking missing joints is wanted), each joint is weighted by the share of its entries with a score
    above 0, so a joint never seen is left out of its part's mean; a part whose joints are all unseen falls back to
    the plain mean, which keeps it finite.
    """

    def __init__(self, grouping: Grouping | str, layout: Layout | str):
        super().__init__()
        self.grouping = get_grouping(grouping) if isinstance(grouping, str) else grouping
        self.layout = get_layout(layout) if isinstance(layout, str) else layout
        members = torch.from_numpy(part_membership(self.grouping, self.layout))  # (P, V)
        self.register_buffer("members", members, persistent=False)
        self.register_buffer("plain", members / members.sum(1, keepdim=True), persistent=False)  # rows sum to 1

    def forward(self, features: Tensor, scores: Tensor | None = None) -> Tensor:
        n, _, _, v = features.shape
        joint_feats = features.mean(2)  # (N, C, V)
        plain = self.plain.to(features.dtype)
        if scores is None:
            return torch.einsum("ncv,pv->npc", joint_feats, plain)  # (N, P, C)
        if scores.shape[0] != n or scores.shape[-1] != v:
            raise ValueError(f"scores {tuple(scores.shape)} do not fit features {tuple(features.shape)}: "
                             "want (N, ..., V)")
        seen = (scores > 0).to(features.dtype).reshape(n, -1, v).mean(1)  # (N, V) share of frames/persons seen
        weights = self.members.to(features.dtype) * seen[:, None, :]  # (N, P, V)
        total = weights.sum(-1, keepdim=True)  # (N, P, 1)
        weights = torch.where(total > 0, weights / total.clamp_min(torch.finfo(total.dtype).tiny), plain)
        return torch.einsum("ncv,npv->npc", joint_feats, weights)  # (N, P, C)


def part_pool(features: Tensor, grouping: Grouping | str, layout: Layout | str, scores: Tensor | None = None) -> Tensor:
    """:class:`PartPool` in one call (builds the membership each time: for tests and one-off use; a training step
    holds a :class:`PartPool`)."""
    return PartPool(grouping, layout).to(features.device)(features, scores)
