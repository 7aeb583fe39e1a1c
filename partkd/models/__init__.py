"""Backbones (DESIGN §6): input ``(N, M, T, V, C)``, output :class:`ModelOutput` ``(logits, features)``."""

from partkd.models.graph import hop_distance, normalize_digraph, spatial_partition
from partkd.models.pooling import part_membership, part_pool
from partkd.models.registry import MODELS, ModelOutput, create_model, register_model
from partkd.models.stgcn import STGCN, STGCNConfig, stgcn

__all__ = [
    "MODELS",
    "STGCN",
    "ModelOutput",
    "STGCNConfig",
    "create_model",
    "hop_distance",
    "normalize_digraph",
    "part_membership",
    "part_pool",
    "register_model",
    "spatial_partition",
    "stgcn",
]
