"""Backbones (DESIGN §6): input ``(N, M, T, V, C)``, output :class:`ModelOutput` ``(logits, features)``."""

from partkd.models.graph import hop_distance, normalize_digraph, spatial_partition
from partkd.models.heads import ProjectionHead, Student
from partkd.models.inputs import IN_CHANNELS, model_input
from partkd.models.pooling import PartPool, part_membership, part_pool
from partkd.models.registry import MODELS, ModelOutput, create_model, register_model
from partkd.models.stgcn import STGCN, STGCNConfig, stgcn

__all__ = [
    "IN_CHANNELS",
    "MODELS",
    "STGCN",
    "ModelOutput",
    "PartPool",
    "ProjectionHead",
    "STGCNConfig",
    "Student",
    "create_model",
    "hop_distance",
    "model_input",
    "normalize_digraph",
    "part_membership",
    "part_pool",
    "register_model",
    "spatial_partition",
    "stgcn",
]
