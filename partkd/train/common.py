"""What teacher, student and evaluation share: model input, models from checkpoints, optimiser, checkpoints.

A checkpoint is a directory: ``model.pt`` (the model's state dict), ``train_state.pt`` (optimiser, scheduler, epoch)
and ``meta.json`` (what rebuilds the model: name, layout, classes, width, depth). Everything loads with
``torch.load(..., weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from partkd.layouts import Layout
from partkd.losses import ProjectionHead
from partkd.models import create_model
from partkd.train.config import ModelConfig, TrainConfig

IN_CHANNELS = 3  # (x, y, z) for 3D layouts, (x, y, score) for 2D ones, as ST-GCN on OpenPose


def model_input(x: Tensor, score: Tensor, layout: Layout) -> Tensor:
    """The backbone's input ``(N, M, T, V, 3)``: 3D coordinates, or 2D coordinates with the score as 3rd channel."""
    if layout.dims == 3:
        return x
    return torch.cat([x, score[..., None]], dim=-1)  # (N, M, T, V, 2 + 1)


def model_meta(model_cfg: ModelConfig, layout: str, num_classes: int, class_names: list[str]) -> dict:
    return {"name": model_cfg.name, "layout": layout, "num_classes": num_classes, "in_channels": IN_CHANNELS,
            "base_channels": model_cfg.base_channels, "stage_blocks": list(model_cfg.stage_blocks),
            "dropout": model_cfg.dropout, "class_names": class_names}


def build_model(meta: dict) -> nn.Module:
    """The model a meta describes; a student (``teacher_channels`` set) carries its projection to the teacher."""
    backbone = create_model(meta["name"], layout=meta["layout"], num_classes=meta["num_classes"],
                            in_channels=meta["in_channels"], base_channels=meta["base_channels"],
                            stage_blocks=tuple(meta["stage_blocks"]), dropout=meta["dropout"])
    if meta.get("teacher_channels"):
        return Student(backbone, meta["teacher_channels"])
    return backbone


class Student(nn.Module):
    """The student backbone and the projection to the teacher's width, trained and checkpointed together.

    The projection is the identity (no parameters) when both widths agree, as in the paper.
    """

    def __init__(self, backbone: nn.Module, teacher_channels: int):
        super().__init__()
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.out_channels, teacher_channels)

    def forward(self, x: Tensor):
        return self.backbone(x)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, object]:
    """The paper's SGD (momentum 0.9, weight decay 1e-4) with lr x gamma at each milestone epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return optimizer, scheduler


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(directory: Path, model: nn.Module, meta: dict, optimizer=None, scheduler=None,
                    epoch: int | None = None, extra: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(unwrap(model).state_dict(), directory / "model.pt")
    if optimizer is not None:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch},
                   directory / "train_state.pt")
    (directory / "meta.json").write_text(json.dumps({**meta, **(extra or {})}, indent=2))
    return directory


def load_meta(directory: str | Path) -> dict:
    file = Path(directory) / "meta.json"
    if not file.exists():
        raise FileNotFoundError(f"{directory} is not a partkd checkpoint (no meta.json)")
    return json.loads(file.read_text())


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Model and meta of a checkpoint directory, in eval mode on ``device``."""
    meta = load_meta(directory)
    model = build_model(meta)
    model.load_state_dict(torch.load(Path(directory) / "model.pt", map_location="cpu", weights_only=True))
    return model.to(device).eval(), meta


def load_frozen_teacher(directory: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The teacher, frozen: eval mode, no gradients. The one place a teacher is made frozen (STYLE.md)."""
    teacher, meta = load_model(directory, device)
    teacher.requires_grad_(False)
    return teacher, meta


def restore_train_state(directory: str | Path, model: nn.Module, optimizer, scheduler) -> int:
    """Load model, optimiser and scheduler from a checkpoint; returns the epoch to start from."""
    unwrap(model).load_state_dict(torch.load(Path(directory) / "model.pt", map_location="cpu", weights_only=True))
    state = torch.load(Path(directory) / "train_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum over DDP ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values
