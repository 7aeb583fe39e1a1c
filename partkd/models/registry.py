"""A small model registry, after timm's ``_registry.py``: ``create_model(name, **overrides)``.

A backbone module registers a builder with ``@register_model``; the builder takes keyword overrides of the model's
config and returns an ``nn.Module`` whose forward maps ``(N, M, T, V, C)`` skeletons to a :class:`ModelOutput`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor, nn

from partkd.layouts import UnknownNameError


class ModelOutput(NamedTuple):
    """What every backbone returns: class scores and joint-level features (paper Eq. 1 and 3)."""

    logits: Tensor  # (N, num_classes)
    features: Tensor  # (N, C, T', V) persons averaged


ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Register ``builder`` under its function name."""
    if builder.__name__ in MODELS:
        raise ValueError(f"model {builder.__name__!r} is registered twice")
    MODELS[builder.__name__] = builder
    return builder


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace fields of its config (``layout``, ``num_classes``)."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return builder(**overrides)
