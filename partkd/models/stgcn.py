"""ST-GCN (Yan et al., AAAI 2018) as used for teacher and student in the paper (Sec. 3.2, Fig. 4).

A data batch-norm, then ten blocks (the input block plus nine) of spatial graph convolution over the layout's
spatial-partition graph followed by a temporal convolution, channels 64-64-64-64-128-128-128-256-256-256 with stride 2
entering the 128 and 256 stages, learnable edge importance per block, global average pooling and a linear classifier.
The graph comes from a layout, so teacher and student differ only in ``layout`` and ``in_channels``.

Shapes: input ``(N, M, T, V, C)``; inside the backbone ``(N*M, C, T, V)``; features ``(N, C', T', V)`` averaged over
the ``M`` persons. With the defaults (``ntu25``, 60 classes, 3 channels) the model has the reference implementation's
3,098,832 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from partkd.layouts import get_layout
from partkd.models.graph import spatial_partition
from partkd.models.registry import ModelOutput, register_model


@dataclass(frozen=True)
class STGCNConfig:
    """Defaults are the paper's model. ``base_channels`` and ``stage_blocks`` shrink it for CPU tests and demos."""

    layout: str = "ntu25"
    num_classes: int = 60
    in_channels: int = 3
    base_channels: int = 64  # width: stage s has base_channels * 2**s channels
    stage_blocks: tuple[int, ...] = (4, 3, 3)  # depth: blocks per stage, the input block counted in the first
    temporal_kernel: int = 9
    dropout: float = 0.5  # reference NTU config; the input block has none
    edge_importance: bool = True

    def __post_init__(self):
        if not self.stage_blocks or min(self.stage_blocks) < 1:
            raise ValueError(f"stage_blocks must be non-empty with every stage >= 1 block, got {self.stage_blocks}")
        if self.temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd to keep T aligned, got {self.temporal_kernel}")
        object.__setattr__(self, "stage_blocks", tuple(self.stage_blocks))  # a list from JSON/YAML becomes a tuple


class GraphConv(nn.Module):
    """Spatial graph convolution: a 1x1 conv to ``K * C_out`` channels, then each partition mixes the joints.

    The mixing stays an einsum, the most readable of the three forms measured (forward + backward of the op alone,
    ``(32, 3, C, T, 25)``, 2-core AMX CPU, medians of 20): in bf16, the CPU's training precision, einsum, a reshaped
    matmul and one flattened ``(K*V, V)`` matmul were within 2 % of each other (48-49 ms); in fp32 the matmuls were
    4-24 % faster on this op, a few per cent of a step. On a GPU: not measured.
    """

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int):
        super().__init__()
        self.num_subsets = num_subsets
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        nm, _, t, v = x.shape
        x = self.conv(x).view(nm, self.num_subsets, -1, t, v)  # (NM, K, C_out, T, V)
        return torch.einsum("nkctv,kvw->nctw", x, adjacency)  # (NM, C_out, T, V)


class STGCNBlock(nn.Module):
    """One spatial-temporal block: graph conv, BN-ReLU-temporal conv-BN-dropout, residual, ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        adjacency: Tensor,
        stride: int = 1,
        temporal_kernel: int = 9,
        dropout: float = 0.0,
        residual: bool = True,
        edge_importance: bool = True,
    ):
        super().__init__()
        self.register_buffer("adjacency", adjacency.clone(), persistent=False)  # (K, V, V), rebuilt from the layout
        # Learnable mask over every entry of A, as the reference (ones, so training starts from the plain graph).
        self.edge_importance = nn.Parameter(torch.ones_like(adjacency)) if edge_importance else None
        self.gcn = GraphConv(in_channels, out_channels, adjacency.shape[0])
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1), ((temporal_kernel - 1) // 2, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout),
        )
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:  # match channels and stride
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)), nn.BatchNorm2d(out_channels)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        adjacency = self.adjacency if self.edge_importance is None else self.adjacency * self.edge_importance
        out = self.tcn(self.gcn(x, adjacency))  # (NM, C_out, T', V)
        if self.residual is not None:
            out = out + self.residual(x)
        return self.relu(out)


class STGCN(nn.Module):
    """ST-GCN backbone and classifier; forward ``(N, M, T, V, C) -> ModelOutput(logits, features)``."""

    def __init__(self, config: STGCNConfig):
        super().__init__()
        self.config = config
        self.layout = get_layout(config.layout)
        adjacency = torch.from_numpy(spatial_partition(self.layout))  # (3, V, V)
        self.data_bn = nn.BatchNorm1d(config.in_channels * self.layout.num_joints)  # over (V, C), shared by persons
        blocks, channels = [], config.in_channels
        for stage, num_blocks in enumerate(config.stage_blocks):
            out_channels = config.base_channels * 2**stage
            for i in range(num_blocks):
                is_input = not blocks
                blocks.append(
                    STGCNBlock(
                        channels,
                        out_channels,
                        adjacency,
                        stride=2 if stage > 0 and i == 0 else 1,
                        temporal_kernel=config.temporal_kernel,
                        dropout=0.0 if is_input else config.dropout,
                        residual=not is_input,
                        edge_importance=config.edge_importance,
                    )
                )
                channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels
        self.head = nn.Linear(channels, config.num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        n, m, t, v, c = x.shape
        if (v, c) != (self.layout.num_joints, self.config.in_channels):
            raise ValueError(
                f"input (N, M, T, V, C) = {tuple(x.shape)} does not fit layout {self.layout.name} "
                f"(V={self.layout.num_joints}) with in_channels={self.config.in_channels}"
            )
        x = x.permute(0, 1, 3, 4, 2).reshape(n * m, v * c, t)  # (NM, V*C, T)
        x = self.data_bn(x)
        x = x.view(n * m, v, c, t).permute(0, 2, 3, 1).contiguous()  # (NM, C, T, V)
        for block in self.blocks:
            x = block(x)  # (NM, C', T', V)
        # The pooling reads fp32: under bf16 autocast, torch.compile (2.11, Triton, H200) fuses a bf16 mean over
        # persons, T' and V at the NTU shape into a reduction kernel that faults with an illegal memory access; in
        # fp32 it compiles and runs (samples/s: README, Performance). The features and the losses are fp32 anyway.
        features = x.float().view(n, m, *x.shape[1:]).mean(1)  # (N, C', T', V)
        logits = self.head(features.mean((2, 3)))  # (N, num_classes); GAP over T', V and persons
        return ModelOutput(logits, features)


@register_model
def stgcn(**overrides) -> STGCN:
    """The paper's backbone; ``create_model("stgcn", layout="ntu25", num_classes=60, in_channels=3)``."""
    return STGCN(STGCNConfig(**overrides))
