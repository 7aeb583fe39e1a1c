"""Typed job configuration with the paper's defaults in one place (DESIGN §9, STYLE.md §4).

A job is a :class:`JobConfig` of four frozen parts. ``asdict()`` crosses into Ray; ``JobConfig.from_dict`` rebuilds
it on the worker's first line. A TOML/YAML file and ``--set section.key=value`` hold only overrides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from partkd.data.splits import VALIDATION, Protocol, WithValidation, get_protocol, read_split_columns, validation_split
from partkd.data.transforms import OCCLUSION_UNITS, TransformConfig
from partkd.layouts import get_grouping
from partkd.models import MODELS
from partkd.train.objectives import OBJECTIVES

HQ_SOURCES = ("batch", "bank")
CACHE_MODES = ("auto", "memory", "stream")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# what a setting may hold, with the words that say so: checked when a config is built (a file, --set, a dict from
# Ray), so a bad value is refused naming its key before any work starts
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
POSITIVE = (lambda v: _finite(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = (lambda v: _finite(v) and v >= 0, "a finite number >= 0")
UNIT = (lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]")


def one_of(choices) -> tuple:
    """The rule of an enumeration: a value among ``choices``."""
    return (lambda v: v in choices, f"one of {', '.join(choices)}")


def check_ranges(obj, section: str, rules: dict) -> None:
    """Each ``rules[name] = (test, allowed)`` on ``obj.name``; the first value that fails is refused as
    ``<section>.<name> must be <allowed>, got <value>``."""
    for name, (test, allowed) in rules.items():
        value = getattr(obj, name)
        if not test(value):
            raise ValueError(f"{section}.{name} must be {allowed}, got {value!r}")


def check_name(lookup, value: str, key: str) -> None:
    """A registered name (a protocol, a grouping, a model): an unknown one is refused naming ``key`` and the known."""
    try:
        lookup(value)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{key}: {err.args[0] if isinstance(err, KeyError) and err.args else err}") from None


@dataclass(frozen=True)
class DataConfig:
    """Which rows a job reads and how a sample becomes a tensor. Saved in every checkpoint: evaluation and E read a
    model's data through the same spec it was trained with (:meth:`transform`, :meth:`splits`)."""

    path: str = ""  # dataset directory (shards + dataset.json)
    protocol: str = "xsub"  # split protocol: train on its "train" split, evaluate on its "test" split
    val_fraction: float = 0.0  # > 0: validate on this seeded share of the training split instead (tuning: no test)
    val_seed: int = 0  # which validation slice
    frames: int = 300  # T
    persons: int = 2  # M
    occlusion_prob: float = 0.0  # OP of the synthesized occlusion on the LQ side (train and evaluation)
    occlusion_unit: str = "joint-frame"
    eval_occlusion_probs: tuple[float, ...] = (0.0, 0.3, 0.6)  # the paper's Table 1
    batch_size: int = 64  # per worker
    seed: int = 0  # occlusion masks and shuffling
    cache: str = "auto"  # Ray jobs: transformed splits kept in the object store (memory), read again every epoch
    #                      (stream), or memory when they take at most a tenth of the object store (auto)

    def __post_init__(self):
        check_ranges(self, "data", {
            "val_fraction": (lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"), "cache": one_of(CACHE_MODES),
            "frames": AT_LEAST_1, "persons": AT_LEAST_1, "batch_size": AT_LEAST_1, "occlusion_prob": UNIT,
            "eval_occlusion_probs": (lambda v: len(v) > 0 and all(UNIT[0](p) for p in v), "a non-empty list in [0, 1]"),
            "occlusion_unit": one_of(OCCLUSION_UNITS),
        })
        check_name(get_protocol, self.protocol, "data.protocol")

    def transform(self, occlusion_prob: float = 0.0) -> TransformConfig:
        """How every model sees a sample, in training, evaluation and E alike: cropped at the centre or padded to
        ``frames``, at most ``persons``, centred and scaled, occluded with probability ``occlusion_prob``."""
        return TransformConfig(frames=self.frames, persons=self.persons, crop="center", occlusion_prob=occlusion_prob,
                               occlusion_unit=self.occlusion_unit)

    def splits(self) -> Protocol | WithValidation:
        """The rows of ``train`` and ``test`` (and with ``val_fraction``, the seeded ``val`` slice held out of
        ``train``). Without a slice nothing is read; with one, the dataset's ids are."""
        protocol = get_protocol(self.protocol)
        if self.val_fraction == 0.0:
            return protocol
        return validation_split(protocol, read_split_columns(self.path), self.val_fraction, self.val_seed)

    @property
    def validation_split_name(self) -> str:
        """The split a job validates on: the protocol's ``test``, or the ``val`` slice of its training split."""
        return VALIDATION if self.val_fraction > 0.0 else "test"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "stgcn"
    base_channels: int = 64
    stage_blocks: tuple[int, ...] = (4, 3, 3)
    dropout: float = 0.5

    def __post_init__(self):
        check_ranges(self, "model", {
            "name": one_of(MODELS), "base_channels": AT_LEAST_1,
            "stage_blocks": (lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of block counts >= 1"),
            "dropout": (lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
        })


@dataclass(frozen=True)
class LossConfig:
    objective: str = "pmsc"  # ce (no KD) | kl | global_msc | pmsc
    alpha: float = 1.0  # weight of the distillation term: L = L_c + alpha L_kd (Eq. 4)
    w: float = 0.5  # weight of the positive set (Eq. 8)
    tau: float = 1.0  # temperature of the similarity (1 = paper)
    kl_temperature: float = 4.0
    grouping: str = "paper5"
    # temperature of E's softmax over parts (Eq. 13; 1 = paper; < 1 sharpens E's rows), where partkd computes E: a
    # part_matrix given to a job is read as it is
    part_temperature: float = 1.0
    hq_source: str = "bank"  # batch (paper: HQ of the mini-batch, gathered across ranks) | bank (teacher features)
    bank_negatives: int = 64  # bank mode: HQ entries sampled per step besides the batch's own pairs
    mask_missing: bool = False  # leave score-0 joints out of the part mean (paper: off)

    def __post_init__(self):
        check_ranges(self, "loss", {"objective": one_of(OBJECTIVES), "hq_source": one_of(HQ_SOURCES),
                                    "alpha": NON_NEGATIVE, "w": UNIT, "tau": POSITIVE, "kl_temperature": POSITIVE,
                                    "part_temperature": POSITIVE,
                                    "bank_negatives": (lambda v: v >= 0, "at least 0")})
        check_name(get_grouping, self.grouping, "loss.grouping")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (30, 40, 50)
    gamma: float = 0.1
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # leave CPUs for Ray Data: on a 2-core laptop, 2 workers x 0.5
    gpus_per_worker: float = 1.0  # with use_gpu; a fraction (< 1) lets one-worker jobs (study trials) share a GPU
    bf16: bool = True  # bf16 autocast where the device computes it natively (CUDA; CPUs with AVX512-BF16 or AMX)
    compile: bool = False  # torch.compile the model (eager where it cannot compile)
    max_failures: int = 1
    storage_path: str = "runs/ray"
    name: str = ""  # Ray Train run name; a job started again with the same name resumes
    fail_at_epoch: int = -1  # testing: one worker raises once after this epoch's checkpoint
    hold_at_epoch: int = -1  # testing: one worker waits after this epoch's checkpoint, until its `held` file is gone

    def __post_init__(self):
        check_ranges(self, "train", {
            "epochs": AT_LEAST_1, "lr": POSITIVE, "momentum": (lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
            "weight_decay": NON_NEGATIVE, "gamma": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
            "milestones": (lambda v: all(m >= 1 for m in v) and list(v) == sorted(set(v)),
                           "epochs >= 1 in increasing order"),
            "num_workers": AT_LEAST_1, "cpus_per_worker": POSITIVE,
            "max_failures": (lambda v: v >= -1, "at least -1 (-1: no limit)"),
            "gpus_per_worker": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
        })
        if self.gpus_per_worker < 1.0 and self.num_workers > 1:
            raise ValueError(f"train.gpus_per_worker={self.gpus_per_worker:g} with {self.num_workers} "
                             "workers: DDP ranks must not share a GPU (NCCL needs one GPU per rank); a fraction is "
                             "for one-worker jobs only")


@dataclass(frozen=True)
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_checkpoint: str = ""  # student jobs: the teacher's checkpoint directory
    part_matrix: str = ""  # student jobs with pmsc: E as .npy
    tracking_uri: str = ""
    mlflow_run_id: str = ""  # set by the driver: the job's run, where rank 0 logs
    parent_run_id: str = ""  # nest the job's run under this one (a demo, a study)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> JobConfig:
        return build_settings(cls, values, "")

    def flat(self) -> dict[str, object]:
        """``section.key`` -> value, for MLflow params."""
        out = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


def _coerce(tp, value, where: str):
    """``value`` (from JSON, TOML or a ``--set`` string) as the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table of settings, got {value!r}")
        return build_settings(tp, value, where + ".")
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(inner, v, where) for v in value)
    if tp is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{where}: expected true or false, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None


def build_settings(cls, values: dict, prefix: str):
    """The dataclass ``cls`` from a table of settings (strings coerced to the annotated types); an unknown key is an
    error naming it and the known ones, each prefixed with ``prefix``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown setting {prefix}{unknown[0]}; known: {', '.join(prefix + n for n in sorted(names))}")
    return cls(**{k: _coerce(hints[k], v, prefix + k) for k, v in values.items()})


def read_settings_file(path: str) -> dict:
    """A TOML, YAML or JSON file as nested tables."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = file.read_text()
    if file.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: config files are .toml, .yaml or .json")
    try:
        values = _parse_settings(text, file.suffix)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table of settings at the top, got {type(values).__name__}")
    return values


def _parse_settings(text: str, suffix: str):
    """The text of a settings file; a syntax error is a ValueError saying where in the text."""
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        return tomllib.loads(text)  # TOMLDecodeError is a ValueError with line and column
    if suffix == ".json":
        return json.loads(text)  # JSONDecodeError is a ValueError with line and column
    try:
        import yaml
    except ImportError:  # pragma: no cover
        raise ValueError("YAML needs PyYAML (pip install pyyaml), or use TOML") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(base: JobConfig | None = None, file: str | None = None, sets: list[str] = (),
                table: dict | None = None) -> JobConfig:
    """``base`` (default: the paper's) overridden by a config file, then by a ``table`` of settings (a section of a
    larger file, e.g. a study's ``[job]``), then by ``section.key=value`` strings."""
    values = (base or JobConfig()).to_dict()
    if file:
        values = _merge(values, read_settings_file(file))
    if table:
        values = _merge(values, table)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        *sections, name = key.strip().split(".")
        target = values
        for section in sections:
            if not isinstance(target.get(section), dict):
                raise ValueError(f"--set {item!r}: unknown section {section!r}")
            target = target[section]
        target[name] = value.strip()
    return JobConfig.from_dict(values)
