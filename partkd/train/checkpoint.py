"""Checkpoints: a directory that rebuilds a trained model and says how it saw its data.

``model.pt`` (the model's state dict), ``train_state.pt`` (optimiser, scheduler, epoch; absent in a final one) and
``meta.json`` (a :class:`CheckpointMeta`: the model's spec, the side it reads, its job's data settings and all its
settings). A checkpoint may lie in a local folder or an object store (:mod:`partkd.storage`). Everything loads
with ``torch.load(..., weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from partkd import storage
from partkd.models import IN_CHANNELS, Student, create_model
from partkd.train.config import DataConfig, ModelConfig, build_settings

SIDES = {"hq": "teacher", "lq": "student"}


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a trained model."""

    name: str
    layout: str
    num_classes: int
    class_names: tuple[str, ...]
    in_channels: int = IN_CHANNELS
    base_channels: int = 64
    stage_blocks: tuple[int, ...] = (4, 3, 3)
    dropout: float = 0.5
    teacher_channels: int = 0  # a student's projection to the teacher's width (0: no projection)

    @classmethod
    def for_job(cls, model: ModelConfig, layout: str, class_names: list[str], teacher_channels: int = 0) -> ModelSpec:
        return cls(model.name, layout, len(class_names), tuple(class_names), IN_CHANNELS, model.base_channels,
                   tuple(model.stage_blocks), model.dropout, teacher_channels)

    def build(self) -> nn.Module:
        """The model, freshly initialised; a student (``teacher_channels`` set) carries its projection head."""
        backbone = create_model(self.name, layout=self.layout, num_classes=self.num_classes,
                                in_channels=self.in_channels, base_channels=self.base_channels,
                                stage_blocks=tuple(self.stage_blocks), dropout=self.dropout)
        return Student(backbone, self.teacher_channels) if self.teacher_channels else backbone


@dataclass(frozen=True)
class CheckpointMeta:
    """``meta.json``: the model, the side it reads (``hq`` a teacher, ``lq`` a student) and the job behind it."""

    model: ModelSpec
    side: str
    data: DataConfig  # how the model saw its data: evaluation and E read it the same way
    settings: dict = field(default_factory=dict)  # the job's flat settings: a resumed run must agree with them
    metrics: dict = field(default_factory=dict)  # the epoch's, in a per-epoch checkpoint
    mlflow_run_id: str = ""  # in a final checkpoint: the run that trained it

    @property
    def role(self) -> str:
        return SIDES[self.side]

    def to_json(self) -> dict:
        """The model's fields at the top level (as every partkd checkpoint has had them), then the rest."""
        return {**json.loads(json.dumps(dataclasses.asdict(self.model))), "side": self.side,
                "data": json.loads(json.dumps(dataclasses.asdict(self.data))), "job": self.settings,
                "metrics": self.metrics, "mlflow_run_id": self.mlflow_run_id}

    @classmethod
    def from_json(cls, values: dict, where: str = "meta.json") -> CheckpointMeta:
        """Also reads the checkpoints of earlier releases (fewer data settings, no ``teacher_channels``)."""
        try:
            names = {f.name for f in dataclasses.fields(ModelSpec)}
            model = build_settings(ModelSpec, {k: v for k, v in values.items() if k in names}, "")
            data = build_settings(DataConfig, values.get("data", {}), "data.")
            return cls(model, values["side"], data, values.get("job", {}), values.get("metrics", {}),
                       values.get("mlflow_run_id", ""))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: not a partkd checkpoint description ({err})") from None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its ``torch.compile`` and DDP wrappers (``train.compile``, several workers)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class CheckpointError(OSError):
    """A checkpoint that could not be written (a full disk, a quota); the message names the job, the epoch, the place
    and the last checkpoint kept."""


def save_checkpoint(directory: Path, model: nn.Module, meta: CheckpointMeta, optimizer=None, scheduler=None,
                    epoch: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    _save(unwrap(model).state_dict(), directory / "model.pt")
    if optimizer is not None:
        _save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch},
              directory / "train_state.pt")
    write_meta(directory, meta)
    return directory


def _save(tensors: dict, file: Path) -> None:
    """``torch.save`` through memory: on a full disk its own file writer fails with a bare RuntimeError ("unexpected
    pos"); Python's file write raises the OSError (ENOSPC) that says what happened."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    file.write_bytes(buffer.getbuffer())


def write_meta(directory: str | Path, meta: CheckpointMeta) -> None:
    storage.write_text(storage.join(directory, "meta.json"), json.dumps(meta.to_json(), indent=2))


def load_meta(directory: str | Path) -> CheckpointMeta:
    """The description of checkpoint ``directory`` (a local folder or an object-store location)."""
    file = storage.join(directory, "meta.json")
    if not storage.exists(file):
        raise FileNotFoundError(f"{directory} is not a partkd checkpoint (no meta.json)")
    return CheckpointMeta.from_json(json.loads(storage.read_text(file)), file)


def _load_tensors(directory: str | Path, name: str) -> dict:
    data = io.BytesIO(storage.read_bytes(storage.join(directory, name)))
    return torch.load(data, map_location="cpu", weights_only=True)


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Model and meta of a checkpoint directory, in eval mode on ``device``."""
    meta = load_meta(directory)
    model = meta.model.build()
    model.load_state_dict(_load_tensors(directory, "model.pt"))
    return model.to(device).eval(), meta


def load_frozen_teacher(directory: str | Path, device: torch.device | str) -> tuple[nn.Module, CheckpointMeta]:
    """The teacher, frozen: eval mode, no gradients. The one place a teacher is made frozen (STYLE.md)."""
    teacher, meta = load_model(directory, device)
    if meta.side != "hq":
        raise ValueError(f"{directory} is not a teacher checkpoint (it reads the {meta.side} side)")
    teacher.requires_grad_(False)
    return teacher, meta


def restore_train_state(directory: str | Path, model: nn.Module, optimizer, scheduler) -> int:
    """Load model, optimiser and scheduler from a checkpoint; returns the epoch to start from."""
    unwrap(model).load_state_dict(_load_tensors(directory, "model.pt"))
    state = _load_tensors(directory, "train_state.pt")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1
