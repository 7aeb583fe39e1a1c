"""The shard schema (DESIGN §4): one row per action instance, tensors stored flat with their shape.

Parquet has no variable-shape tensor type that every reader understands, so a tensor column ``hq`` is a flat
``list<float32>`` in C order plus ``hq_shape`` = ``[M, T, V, C]`` (persons, frames, joints, coordinates); its
scores ``hq_score`` are the flat ``[M, T, V]``. ``T`` equals the row's ``frames`` (tensors are stored unpadded).
A side (``hq`` or ``lq``) is either entirely present or entirely null; every row has at least one side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
SIDES = ("hq", "lq")
METADATA_KEY = b"partkd"  # Parquet key-value metadata: JSON with schema version and the layout of each side
ID_COLUMNS = ("subject", "camera", "setup", "replication")


def _side_fields(side: str) -> list[pa.Field]:
    return [
        pa.field(side, pa.list_(pa.float32()), nullable=True),
        pa.field(f"{side}_shape", pa.list_(pa.int32()), nullable=True),
        pa.field(f"{side}_score", pa.list_(pa.float32()), nullable=True),
    ]


SCHEMA = pa.schema(
    [pa.field("sample_id", pa.string(), nullable=False), pa.field("label", pa.int32(), nullable=False)]
    + [pa.field(name, pa.int32(), nullable=True) for name in ID_COLUMNS]
    + [pa.field("split", pa.string(), nullable=True)]  # the source's own train/test flag (Penn Action), if any
    + [pa.field("frames", pa.int32(), nullable=False)]
    + _side_fields("hq")
    + _side_fields("lq")
)


class ShardError(ValueError):
    """A shard or dataset that does not match the schema; the message names the file, the sample and the column."""

    def __init__(self, file: str, message: str, sample_id: str | None = None, column: str | None = None):
        self.file, self.sample_id, self.column = file, sample_id, column
        where = [file]
        if sample_id is not None:
            where.append(f"sample {sample_id!r}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{': '.join(where)}: {message}")


class ShardSchemaError(ShardError):
    """Columns, types or layouts of a shard differ from what the dataset declares."""


class ShardDataError(ShardError):
    """A row's values are wrong: tensor shape against the layout, non-finite values, label range, duplicates."""


class ShardChecksumError(ShardError):
    """A shard's bytes differ from the SHA-256 recorded in dataset.json."""


@dataclass
class Sample:
    """One action instance. Tensors are ``[M, T, V, C]`` (scores ``[M, T, V]``) cut to the true length ``frames``.

    ``hq is None`` marks a solitary sample (LQ only, D_sol in the paper); ``lq is None`` a sample whose LQ side does
    not exist yet (e.g. before ``partkd data degrade``).
    """

    sample_id: str
    label: int
    frames: int
    hq: np.ndarray | None = None
    hq_score: np.ndarray | None = None
    lq: np.ndarray | None = None
    lq_score: np.ndarray | None = None
    subject: int | None = None
    camera: int | None = None
    setup: int | None = None
    replication: int | None = None
    split: str | None = None  # "train"/"test" where the source dataset fixes it

    @property
    def paired(self) -> bool:
        return self.hq is not None and self.lq is not None


def side_problem(
    side: str, shape, num_values: int, num_scores: int, frames: int, layout
) -> tuple[str, str] | None:
    """``(column, message)`` if a side's stored shape disagrees with its values, ``frames`` or the layout, else None."""
    if len(shape) != 4:
        return f"{side}_shape", f"shape {list(shape)} is not [M, T, V, C]"
    persons, length, joints, dims = (int(s) for s in shape)
    if joints != layout.num_joints:
        return side, f"has {joints} joints, layout {layout.name} expects {layout.num_joints}"
    if dims != layout.dims:
        return side, f"has {dims} coordinates per joint, layout {layout.name} expects {layout.dims}"
    if persons < 1:
        return side, f"has {persons} persons, expected at least 1"
    if length != frames:
        return side, f"has {length} frames but the row's 'frames' is {frames}"
    if num_values != persons * length * joints * dims:
        return side, f"holds {num_values} values, shape {list(shape)} needs {persons * length * joints * dims}"
    if num_scores != persons * length * joints:
        return f"{side}_score", f"holds {num_scores} scores, shape {list(shape[:3])} needs {persons * length * joints}"
    return None
