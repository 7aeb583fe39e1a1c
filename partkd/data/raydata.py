"""The bulk reading path: shards through Ray Data, transformed into fixed-shape numpy batches.

``read_shards`` checks every shard's footer (schema, layouts) on the driver, so a mismatched shard fails fast with
its name, then reads with ``ray.data.read_parquet`` (split filters pushed down). ``SideTransform`` is the
``map_batches`` step: it decodes each side, checks every row against the layout, and applies
:func:`~partkd.data.transforms.transform_batch` with per-sample randomness, so a sample comes out the same on any
worker and in any batch.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from partkd.data.schema import SIDES
from partkd.data.shards import check_rows, decode_side, load_info, open_shard, shard_paths
from partkd.data.transforms import TransformConfig, transform_batch
from partkd.layouts import get_layout

PATH_COLUMN = "path"  # added by read_parquet(include_paths=True): names the shard in errors raised by workers


def read_shards(path: str | os.PathLike, *, filter=None, **read_args):
    """A ``ray.data.Dataset`` of the shard rows of dataset ``path``.

    ``filter`` is a ``ray.data.expressions`` predicate (e.g. ``splits.split_ray_filter("xsub", "train")``); Ray
    pushes it down into the Parquet read.
    """
    import ray.data

    info = load_info(path)
    files = shard_paths(path)
    for file in files:
        open_shard(file, info)
    # Ray Data's default Parquet reader (DataSourceV2) reads every footer again, through a pool of up to 32 actors
    # started for each read: for partkd's few shards, whose footers were just checked here, the V1 reader (metadata
    # on the driver, the same predicate pushdown) reads a 192-row dataset in 0.5 s against 3-7 s (2-core machine).
    context = ray.data.DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        # each page's CRC verified as it is read (by the footer pass and by every read task's scan options, which
        # Ray otherwise sets without it): a flipped bit fails the read instead of reaching training
        ds = ray.data.read_parquet(files, include_paths=True, **read_args,
                                   dataset_kwargs={"page_checksum_verification": True},
                                   fragment_scan_options=pads.ParquetFragmentScanOptions(
                                       use_buffered_stream=True, buffer_size=8 << 20,
                                       page_checksum_verification=True))
    finally:
        context.use_datasource_v2 = v2
    return ds if filter is None else ds.filter(expr=filter)


def sample_key(sample_id: str) -> int:
    """A stable signed 64-bit key for a sample id (tensors carry numbers, not strings)."""
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little", signed=True)


class SideTransform:
    """``map_batches`` callable (``batch_format="pyarrow"``): shard rows -> numpy training/evaluation batch.

    Output keys: ``label`` (N,), ``key`` (N,) a stable int64 hash of the sample id, and for each side asked for
    ``{side}_x`` (N, M, T, V, C), ``{side}_score`` (N, M, T, V) and ``has_{side}`` (N,) — rows without that side get
    zeros and ``has_{side} = False``. ``cfg`` is one :class:`TransformConfig` for every side or one per side (e.g.
    occlusion on the LQ side only). With ``keep_ids`` the ``sample_id``s come along (not for
    ``iter_torch_batches``, which takes numbers only). Every row is checked as it is decoded (:func:`check_rows`,
    :func:`decode_side`: labels in ``[0, num_classes)``, a side present, shapes, finite values, scores in [0, 1]), and
    a bad one stops the job with a :class:`ShardDataError` naming the shard, the sample and the column.
    """

    def __init__(self, layouts: dict[str, str], cfg: TransformConfig | dict[str, TransformConfig], seed: int,
                 keep_ids: bool = False, num_classes: int | None = None):
        unknown = sorted(set(layouts) - set(SIDES))
        if unknown:
            raise ValueError(f"unknown sides {unknown}; sides are {SIDES}")
        self.layouts = {side: get_layout(name) for side, name in layouts.items()}
        self.cfgs = {side: cfg[side] if isinstance(cfg, dict) else cfg for side in layouts}
        self.seed, self.keep_ids, self.num_classes = seed, keep_ids, num_classes

    def row_bytes(self) -> int:
        """Bytes of one output row: each side's coordinates and scores (float32) and flag, the label and the key."""
        return 16 + sum(1 + 4 * self.cfgs[side].persons * self.cfgs[side].frames * layout.num_joints * (layout.dims + 1)
                        for side, layout in self.layouts.items())

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Ray Data's ``map_batches`` step: the shard is named by the ``path`` column ``read_shards`` adds."""
        has_path = PATH_COLUMN in table.column_names and table.num_rows
        return self.transform(table, table.column(PATH_COLUMN)[0].as_py() if has_path else "<batch>")

    def transform(self, table: pa.Table | pa.RecordBatch, file: str) -> dict[str, np.ndarray]:
        """Rows of one shard ``file`` (named in errors) -> the batch of arrays described in the class docstring."""
        table = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table.combine_chunks()
        n = table.num_rows
        ids = table.column("sample_id").to_pylist()
        out: dict[str, np.ndarray] = {"label": table.column("label").to_numpy().astype(np.int64),
                                      "key": np.array([sample_key(sid) for sid in ids], dtype=np.int64)}
        batch = table.to_batches()[0] if n else None
        if n:
            check_rows(batch, file, self.num_classes)
        for side, layout in self.layouts.items():
            cfg = self.cfgs[side]
            shape = (n, cfg.persons, cfg.frames, layout.num_joints)
            x = np.zeros((*shape, layout.dims), dtype=np.float32)  # (N, M, T, V, C)
            score = np.zeros(shape, dtype=np.float32)  # (N, M, T, V)
            rows = decode_side(batch, side, layout, file) if n else []
            present = np.array([r is not None for r in rows], dtype=bool)
            if present.any():
                kept = [r for r in rows if r is not None]
                kept_ids = [sid for sid, p in zip(ids, present) if p]
                x[present], score[present] = transform_batch(
                    [r[0] for r in kept], [r[1] for r in kept], layout, cfg, self.seed, sample_ids=kept_ids
                )
            out[f"{side}_x"], out[f"{side}_score"], out[f"has_{side}"] = x, score, present
        if self.keep_ids:
            out["sample_id"] = np.array(ids, dtype=object)
        return out
