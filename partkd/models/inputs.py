"""What a backbone reads: a side's coordinates, with the score as a channel where the layout is 2D."""

from __future__ import annotations

import torch
from torch import Tensor

from partkd.layouts import Layout

IN_CHANNELS = 3  # (x, y, z) for 3D layouts, (x, y, score) for 2D ones, as ST-GCN on OpenPose


def model_input(x: Tensor, score: Tensor, layout: Layout) -> Tensor:
    """The backbone's input ``(N, M, T, V, 3)``: 3D coordinates, or 2D coordinates with the score as 3rd channel."""
    if layout.dims == 3:
        return x
    return torch.cat([x, score[..., None]], dim=-1)  # (N, M, T, V, 2 + 1)
