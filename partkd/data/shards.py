"""Parquet shards and ``dataset.json``: writing, opening with schema checks, and decoding rows (DESIGN §4).

A dataset directory holds ``part-NNNNN.parquet`` shards (zstd, row groups of ``row_group_size`` rows, a CRC per
page) and ``dataset.json`` (name, layouts, class names, counts, SHA-256 of each shard). Writers check every sample
against the layouts before it reaches disk. Readers verify the page CRCs, refuse a shard whose columns, types or
layouts differ from what the dataset declares, and check every row they decode as the writer did (shape, finite
values, scores in [0, 1], label range, a side present), naming the file, the sample and the column; a job checks the
rest once, on its driver (:func:`verify_dataset`: complete, checksums, unique ids). Nothing is dropped silently.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from partkd import storage
from partkd.data.protocols import applicable_protocols
from partkd.data.schema import (
    ID_COLUMNS,
    METADATA_KEY,
    SCHEMA,
    SCHEMA_VERSION,
    SIDES,
    Sample,
    ShardChecksumError,
    ShardDataError,
    ShardError,
    ShardSchemaError,
    side_problem,
)
from partkd.layouts import Layout, UnknownNameError, get_layout

INFO_FILE = "dataset.json"
SHARD_PATTERN = "part-{:05d}.parquet"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- writing


def _flat_list_array(arrays: list[np.ndarray | None]) -> pa.Array:
    """``list<float32>`` column from per-row arrays (flattened in C order); ``None`` rows become nulls."""
    lengths = np.array([0 if a is None else a.size for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [np.ascontiguousarray(a, dtype=np.float32).ravel() for a in arrays if a is not None]
    values = np.concatenate(present) if present else np.zeros(0, dtype=np.float32)
    mask = pa.array([a is None for a in arrays])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=mask)


def _rows_to_table(samples: list[Sample], metadata: dict) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array([s.sample_id for s in samples], pa.string()),
        "label": pa.array([s.label for s in samples], pa.int32()),
    }
    for name in ID_COLUMNS:
        columns[name] = pa.array([getattr(s, name) for s in samples], pa.int32())
    columns["split"] = pa.array([s.split for s in samples], pa.string())
    columns["frames"] = pa.array([s.frames for s in samples], pa.int32())
    for side in SIDES:
        tensors = [getattr(s, side) for s in samples]
        columns[side] = _flat_list_array(tensors)
        columns[f"{side}_shape"] = pa.array([None if t is None else list(t.shape) for t in tensors], SCHEMA.field(
            f"{side}_shape").type)
        columns[f"{side}_score"] = _flat_list_array([getattr(s, f"{side}_score") for s in samples])
    schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return pa.Table.from_pydict(columns, schema=schema)


class DatasetWriter:
    """Write samples to ``part-NNNNN.parquet`` shards and ``dataset.json``, all or nothing.

    Use as a context manager. Each sample is checked against the layouts when written (shape, finite values, scores
    in [0, 1], label range, unique id) and refused with a :class:`ShardDataError` naming it. Everything is written
    into a hidden sibling folder (``.<name>.partial``) and moved to ``out_dir`` when complete, so a dataset already
    there (``overwrite``) is replaced only by a whole one, and an interruption, SIGKILL included, leaves it intact;
    the sibling of a killed run is cleared by the next. One writer a place at a time (a lock on ``.NAME.lock``, a
    file that stays); ``overwrite`` replaces a dataset folder only, never a folder holding other files. If the
    writing stops on an error, the rows accepted so far (if any) are kept with ``"complete": false`` in
    ``dataset.json`` (so nothing written is lost and ``validate`` and every job refuse it): in ``out_dir`` when it
    held no dataset, else in the sibling, which the error names.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        name: str,
        class_names: list[str],
        hq_layout: str | None,
        lq_layout: str | None,
        rows_per_shard: int = 1024,
        row_group_size: int = 128,
        overwrite: bool = False,
        info: dict | None = None,
    ):
        self.out_dir = Path(out_dir).resolve()  # a link: its target is replaced, the link stays
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise FileExistsError(f"{self.out_dir} is a file, not a dataset folder")
        held = sorted(p.name for p in self.out_dir.iterdir()) if self.out_dir.exists() else []
        if held and not overwrite:
            raise FileExistsError(f"{self.out_dir} is not empty; choose another directory or pass overwrite")
        foreign = [name for name in held if not (name == INFO_FILE or fnmatch.fnmatch(name, "part-*.parquet"))]
        if foreign:  # overwrite replaces a dataset, never a folder of other things
            raise FileExistsError(f"{self.out_dir} holds more than a partkd dataset ({', '.join(foreign[:3])}"
                                  f"{', ...' if len(foreign) > 3 else ''}); overwrite replaces only a dataset folder: "
                                  "choose another directory")
        self.name, self.class_names, self.info = name, list(class_names), dict(info or {})
        self.layouts: dict[str, Layout | None] = {
            "hq": get_layout(hq_layout) if hq_layout else None,
            "lq": get_layout(lq_layout) if lq_layout else None,
        }
        self.partial = self.out_dir.with_name(f".{self.out_dir.name}.partial")  # where it is written
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out_dir.with_name(f".{self.out_dir.name}.lock"), "w")
        try:  # one writer a place at a time: a second would delete the first one's rows
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise FileExistsError(f"{self.out_dir} is being written by another process") from None
        self._recover()
        if self.partial.exists():
            shutil.rmtree(self.partial)  # left by a run that was killed
        self.partial.mkdir()
        self.rows_per_shard, self.row_group_size = rows_per_shard, row_group_size
        self._buffer: list[Sample] = []
        self._shards: list[dict] = []
        self._seen_ids: set[str] = set()
        self._rows: dict[str, list] = {k: [] for k in ("label", "has_hq", "has_lq", "split", *ID_COLUMNS)}
        self.summary: dict | None = None  # dataset.json content, once closed

    @property
    def _metadata(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "hq_layout": self.layouts["hq"] and self.layouts["hq"].name,
            "lq_layout": self.layouts["lq"] and self.layouts["lq"].name,
        }

    def _check(self, s: Sample) -> None:
        where = str(self.out_dir)
        if s.sample_id in self._seen_ids:
            raise ShardDataError(where, "duplicate sample_id", s.sample_id, "sample_id")
        if s.split not in (None, "train", "test"):
            raise ShardDataError(where, f"split {s.split!r} is not 'train', 'test' or None", s.sample_id, "split")
        if not 0 <= s.label < len(self.class_names):
            raise ShardDataError(where, f"label {s.label} outside [0, {len(self.class_names)})", s.sample_id, "label")
        if s.hq is None and s.lq is None:
            raise ShardDataError(where, "has neither an hq nor an lq side", s.sample_id, "hq")
        for side in SIDES:
            tensor, score = getattr(s, side), getattr(s, f"{side}_score")
            if tensor is None:
                if score is not None:
                    raise ShardDataError(where, f"has scores but no {side} tensor", s.sample_id, f"{side}_score")
                continue
            layout = self.layouts[side]
            if layout is None:
                raise ShardDataError(where, f"has an {side} side but the dataset declares no {side} layout",
                                     s.sample_id, side)
            if score is None:
                raise ShardDataError(where, f"has an {side} tensor but no scores", s.sample_id, f"{side}_score")
            if score.shape != tensor.shape[:3]:
                raise ShardDataError(where, f"score shape {score.shape} does not match tensor {tensor.shape}",
                                     s.sample_id, f"{side}_score")
            problem = side_problem(side, tensor.shape, tensor.size, score.size, s.frames, layout)
            if problem:
                raise ShardDataError(where, problem[1], s.sample_id, problem[0])
            for column, values in ((side, tensor), (f"{side}_score", score)):
                if not np.isfinite(values).all():
                    raise ShardDataError(where, "holds NaN or infinite values", s.sample_id, column)
            if score.size and not (score.min() >= 0 and score.max() <= 1):
                raise ShardDataError(where, f"holds scores outside [0, 1] ({score.min():g} to {score.max():g})",
                                     s.sample_id, f"{side}_score")

    def write(self, sample: Sample) -> None:
        self._check(sample)
        self._seen_ids.add(sample.sample_id)
        self._buffer.append(sample)
        for key in ("label", "split", *ID_COLUMNS):
            self._rows[key].append(getattr(sample, key))
        self._rows["has_hq"].append(sample.hq is not None)
        self._rows["has_lq"].append(sample.lq is not None)
        if len(self._buffer) >= self.rows_per_shard:
            self._flush()

    def write_all(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self.write(sample)

    def _flush(self) -> None:
        if not self._buffer:
            return
        path = self.partial / SHARD_PATTERN.format(len(self._shards))
        table = _rows_to_table(self._buffer, self._metadata)
        pq.write_table(table, path, compression="zstd", row_group_size=self.row_group_size, write_statistics=True,
                       write_page_checksum=True)  # a CRC per page: a reader that verifies refuses a changed byte
        self._shards.append({"file": path.name, "rows": len(self._buffer), "sha256": sha256_file(path)})
        self._buffer = []

    def close(self, complete: bool = True) -> dict:
        """Flush the last shard and write dataset.json; a second call returns the first call's summary."""
        if self.summary is not None:
            return self.summary
        self._flush()
        info = summarize(
            name=self.name, class_names=self.class_names, metadata=self._metadata, shards=self._shards,
            rows={k: np.array(v) for k, v in self._rows.items()}, info=self.info,
        )
        info["complete"] = complete
        try:
            if not complete and not self._seen_ids:  # stopped before any row: nothing to keep
                shutil.rmtree(self.partial, ignore_errors=True)
                self.summary = info
                return info
            with open(self.partial / INFO_FILE, "w") as f:
                f.write(json.dumps(info, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.summary = info
            if complete or not (self.out_dir.exists() and any(self.out_dir.iterdir())):
                self._publish()
            return info
        finally:
            self._unlock()

    def _recover(self) -> None:
        """A run killed between :meth:`_publish`'s two renames left the old dataset in ``.NAME.old`` and no
        ``out_dir``: the new one goes in place if it was whole, else the old one goes back."""
        old = self.out_dir.with_name(f".{self.out_dir.name}.old")
        if not old.exists():
            return
        if self.out_dir.exists():
            shutil.rmtree(old)  # killed after both renames
            return
        info = self.partial / INFO_FILE
        whole = info.exists() and json.loads(info.read_text()).get("complete") is True
        os.replace(self.partial if whole else old, self.out_dir)
        shutil.rmtree(old, ignore_errors=True)

    def _publish(self) -> None:
        """The finished folder in place of ``out_dir``: the old one (if any) is moved aside, the new one renamed in,
        then the old one deleted; a crash between the two renames leaves both beside ``out_dir``, whole, and the next
        writer there puts the new one in place (:meth:`_recover`)."""
        old = self.out_dir.with_name(f".{self.out_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if self.out_dir.exists():
            os.replace(self.out_dir, old)
        os.replace(self.partial, self.out_dir)
        if old.exists():
            shutil.rmtree(old)

    def _unlock(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)
        if exc is not None and self.partial.exists():  # out_dir held a dataset: kept, the rows written beside it
            exc.add_note(f"{self.out_dir} is left as it was; the {len(self._seen_ids)} rows written before the error "
                         f"are in {self.partial}, marked incomplete")


def _class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).astype(int).tolist() if labels.size else [0] * num_classes


def summarize(*, name: str, class_names: list[str], metadata: dict, shards: list[dict], rows: dict, info: dict) -> dict:
    """The content of ``dataset.json``: counts overall, per split protocol and per class, paired/solitary."""
    labels = rows["label"].astype(np.int64)
    has_hq, has_lq = rows["has_hq"].astype(bool), rows["has_lq"].astype(bool)
    k = len(class_names)

    def counts(mask: np.ndarray) -> dict:
        return {
            "samples": int(mask.sum()),
            "paired": int((mask & has_hq & has_lq).sum()),
            "solitary": int((mask & ~has_hq).sum()),
            "hq_only": int((mask & ~has_lq).sum()),
            "per_class": _class_counts(labels[mask], k),
        }

    split_counts = {}
    for protocol in applicable_protocols(rows):
        assigned = protocol.assign(rows)
        split_counts[protocol.name] = {split: counts(assigned == split) for split in ("train", "test")}
    fingerprint = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()
    return {
        "name": name,
        **metadata,
        "class_names": list(class_names),
        "num_classes": k,
        "counts": counts(np.ones(len(labels), dtype=bool)),
        "splits": split_counts,
        "shards": shards,
        "fingerprint": fingerprint,
        "info": info,
    }


# --------------------------------------------------------------------------------------------------- reading


def load_info(path: str | os.PathLike) -> dict:
    """``dataset.json`` of a dataset directory."""
    file = storage.join(path, INFO_FILE)
    if not storage.exists(file):
        raise ShardError(file, "missing: not a partkd dataset directory (expected dataset.json and shards)")
    try:
        info = json.loads(storage.read_text(file))
    except json.JSONDecodeError as err:
        raise ShardError(str(file), f"is not valid JSON ({err})") from None
    if not isinstance(info, dict):
        raise ShardError(str(file), f"expected a JSON object, got {type(info).__name__}")
    if info.get("schema_version") != SCHEMA_VERSION:
        raise ShardSchemaError(str(file), f"schema version {info.get('schema_version')} is not {SCHEMA_VERSION}",
                               column="schema_version")
    if not isinstance(info.get("shards"), list) or not isinstance(info.get("counts"), dict):
        raise ShardError(str(file), "needs a list \"shards\" and an object \"counts\" (written by partkd's dataset "
                                    "writer); this one lacks them")
    for entry in info["shards"]:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _inside(name):
            raise ShardError(str(file), f"shard entry {entry!r}: a shard is a file name inside the dataset folder "
                                        "(no folder, no '..', not absolute)")
    return info


# dataset -> the (shard, size, mtime) it had when last verified in this process: a pipeline's jobs verify it once
_VERIFIED: dict[str, tuple] = {}


def verify_dataset(path: str | os.PathLike) -> dict:
    """What a job checks once, on its driver, before any worker reads dataset ``path``: ``dataset.json`` says the
    writer finished, every shard it lists is there with the SHA-256 it records, and no ``sample_id`` repeats.
    Returns ``dataset.json``; raises :class:`ShardError` naming the file (and the sample). The rows themselves are
    checked by every reader as it decodes them. Verified again only when a shard's size or time changed."""
    info = load_info(path)
    if not info.get("complete", False):
        raise ShardError(storage.join(path, INFO_FILE), "the writer did not finish (\"complete\": false): the dataset "
                         "holds only the rows written before it stopped; write it again")
    files = shard_paths(path)
    stamps = (info.get("fingerprint"), *((file, storage.stamp(file)) for file in files))
    key = storage.absolute(path)
    if _VERIFIED.get(key) == stamps:
        return info
    for file, found in stamps[1:]:
        if found is None:
            raise ShardError(file, "is listed in dataset.json but missing")
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashing releases the GIL; an object store's reads overlap
        digests = list(pool.map(storage.sha256, files))
    for entry, file, digest in zip(info["shards"], files, digests):
        if digest != entry.get("sha256"):
            raise ShardChecksumError(file, f"SHA-256 {digest[:12]}… differs from {str(entry.get('sha256'))[:12]}… in "
                                           "dataset.json: the shard changed after it was written")
    ids = shard_dataset(path).to_table(columns=["sample_id"]).column("sample_id").to_numpy(zero_copy_only=False)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ShardDataError(str(path), f"duplicate sample_id ({int((counts > 1).sum())} repeated)",
                             str(unique[np.argmax(counts > 1)]), "sample_id")
    _VERIFIED[key] = stamps
    return info


def _inside(name: str) -> bool:
    """A shard's name as dataset.json may give it: a plain file name, so every read stays in the dataset's folder."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def shard_paths(path: str | os.PathLike) -> list[str]:
    """The shard files of a dataset directory (as listed in dataset.json), or ``[path]`` for one shard file (local
    paths or URIs, as ``path`` is)."""
    if storage.is_file(path):
        return [str(path)]
    return [storage.join(path, s["file"]) for s in load_info(path)["shards"]]


def shard_dataset(path: str | os.PathLike) -> pads.Dataset:
    """The shards of dataset ``path`` as one ``pyarrow.dataset`` (for reading a few columns of every row)."""
    files = shard_paths(path)
    fs = storage.resolve(files[0])[0] if files else None
    return pads.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=fs)


def open_shard(path: str | os.PathLike, expected: dict | None = None) -> tuple[pq.ParquetFile, dict]:
    """Open a shard and check its columns, types and layouts; returns the file and its partkd metadata.

    ``expected`` (``dataset.json`` content) adds the check that the shard's layouts are the dataset's.
    """
    name = str(path)
    try:
        fs, located = storage.resolve(path)
        file = pq.ParquetFile(located, filesystem=fs, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as err:
        raise ShardError(name, f"cannot be read as Parquet ({err}); the file may be truncated or corrupt") from None
    schema = file.schema_arrow
    for field in SCHEMA:
        if field.name not in schema.names:
            raise ShardSchemaError(name, "is missing", column=field.name)
        found = schema.field(field.name).type
        if found != field.type:
            raise ShardSchemaError(name, f"has type {found}, expected {field.type}", column=field.name)
    extra = sorted(set(schema.names) - set(SCHEMA.names))
    if extra:
        raise ShardSchemaError(name, "is not in the schema", column=extra[0])
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ShardSchemaError(name, "has no partkd metadata (schema version and layouts)")
    try:
        metadata = json.loads(raw)
        if not isinstance(metadata, dict):
            raise ValueError(f"a JSON {type(metadata).__name__}, not an object")
    except ValueError as err:  # a JSON or Unicode error: the footer is damaged
        raise ShardSchemaError(name, f"its partkd metadata is unreadable ({err})") from None
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise ShardSchemaError(name, f"schema version {metadata.get('schema_version')} is not {SCHEMA_VERSION}")
    for side in SIDES:
        key = f"{side}_layout"
        if metadata.get(key) is not None:
            try:
                get_layout(metadata[key])
            except UnknownNameError as err:
                raise ShardSchemaError(name, str(err), column=side) from None
        if expected is not None and metadata.get(key) != expected.get(key):
            raise ShardSchemaError(
                name, f"{side} layout is {metadata.get(key)}, the dataset declares {expected.get(key)}", column=side
            )
    return file, metadata


def decode_side(batch: pa.RecordBatch, side: str, layout: Layout | None, file: str = "<batch>") -> list:
    """Per-row ``(tensor [M, T, V, C], score [M, T, V])`` views of one side, ``None`` where the side is null.

    Checks each present row's shape against ``layout`` and the row's ``frames``; raises :class:`ShardDataError`.
    """
    values, scores = batch.column(side), batch.column(f"{side}_score")
    shapes_col = batch.column(f"{side}_shape")
    present = ~np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if present.any() and layout is None:
        ids = batch.column("sample_id")
        first = ids[int(np.argmax(present))].as_py()
        raise ShardSchemaError(file, f"has {side} values but no {side} layout is declared", first, side)
    flat = values.values.to_numpy(zero_copy_only=False)
    offsets = values.offsets.to_numpy()
    flat_scores = scores.values.to_numpy(zero_copy_only=False)
    score_offsets = scores.offsets.to_numpy()
    check_values(batch, side, file, (flat, offsets), (flat_scores, score_offsets))
    shape_values = shapes_col.values.to_numpy(zero_copy_only=False)
    shape_offsets = shapes_col.offsets.to_numpy()
    frames = batch.column("frames").to_numpy()
    score_present = ~np.asarray(scores.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    shape_present = ~np.asarray(shapes_col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out: list = []
    for i in range(len(batch)):
        if not present[i]:
            if score_present[i] or shape_present[i]:
                sid = batch.column("sample_id")[i].as_py()
                raise ShardDataError(file, f"{side} is null but its shape or score is not", sid, side)
            out.append(None)
            continue
        if not (score_present[i] and shape_present[i]):
            column = f"{side}_score" if not score_present[i] else f"{side}_shape"
            raise ShardDataError(file, f"is null while {side} is present", batch.column("sample_id")[i].as_py(), column)
        shape = shape_values[shape_offsets[i]:shape_offsets[i + 1]]
        problem = side_problem(
            side, shape, offsets[i + 1] - offsets[i], score_offsets[i + 1] - score_offsets[i], int(frames[i]), layout
        )
        if problem:
            raise ShardDataError(file, problem[1], batch.column("sample_id")[i].as_py(), problem[0])
        shape = tuple(int(d) for d in shape)
        tensor = flat[offsets[i]:offsets[i + 1]].reshape(shape)  # (M, T, V, C)
        score = flat_scores[score_offsets[i]:score_offsets[i + 1]].reshape(shape[:3])  # (M, T, V)
        out.append((tensor, score))
    return out


def first_row_where(flat: np.ndarray, offsets: np.ndarray, bad) -> int | None:
    """The first row of a flat ``list<float32>`` column (its values ``flat``, its row ``offsets``) with a value where
    ``bad(values)`` is true, or None: one vectorised pass, however many rows."""
    hits = np.flatnonzero(bad(flat[offsets[0]:offsets[-1]]))
    return None if hits.size == 0 else int(np.searchsorted(offsets, hits[0] + offsets[0], side="right") - 1)


def _flat(column: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    return column.values.to_numpy(zero_copy_only=False), column.offsets.to_numpy()


def check_values(batch: pa.RecordBatch, side: str, file: str, values=None, scores=None) -> None:
    """A side's coordinates finite and its scores in [0, 1], every row in one vectorised pass (``values`` and
    ``scores``: the columns' flat values and offsets, where the caller has them). Raises :class:`ShardDataError`
    naming the file, the first bad sample and the column."""
    values = values or _flat(batch.column(side))
    scores = scores or _flat(batch.column(f"{side}_score"))
    for column, (flat, offsets), bad, what in (
            (side, values, lambda v: ~np.isfinite(v), "holds NaN or infinite values"),
            (f"{side}_score", scores, lambda v: ~((v >= 0) & (v <= 1)), "holds scores outside [0, 1] or NaN")):
        row = first_row_where(flat, offsets, bad)
        if row is not None:
            raise ShardDataError(file, what, batch.column("sample_id")[row].as_py(), column)


def check_rows(batch: pa.RecordBatch, file: str, num_classes: int | None) -> None:
    """The row checks beside the sides' own (:func:`decode_side`): a label in ``[0, num_classes)`` and at least one
    side. Raises :class:`ShardDataError` naming the file, the first bad sample and the column."""
    labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.float64)  # a null reads as NaN
    bad = np.flatnonzero(~((labels >= 0) & (labels < (np.inf if num_classes is None else num_classes))))
    if bad.size:
        value = "null" if np.isnan(labels[bad[0]]) else int(labels[bad[0]])
        raise ShardDataError(file, f"label {value} outside [0, {num_classes if num_classes is not None else 'inf'})",
                             batch.column("sample_id")[bad[0]].as_py(), "label")
    neither = np.flatnonzero(np.asarray(batch.column("hq").is_null().to_numpy(zero_copy_only=False))
                             & np.asarray(batch.column("lq").is_null().to_numpy(zero_copy_only=False)))
    if neither.size:
        raise ShardDataError(file, "has neither an hq nor an lq side", batch.column("sample_id")[neither[0]].as_py(),
                             "hq")


# Page CRCs verified on every read (pages written without one, by older partkd, are read unverified).
PARQUET_FORMAT = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))


def iter_batches(
    path: str | os.PathLike, *, filter: pc.Expression | None = None, batch_size: int = 256
) -> Iterator[tuple[pa.RecordBatch, dict, str]]:
    """Yield ``(record batch, shard metadata, shard file)`` over a dataset directory or one shard file; a page whose
    CRC does not match raises :class:`ShardChecksumError` naming the shard."""
    expected = load_info(path) if storage.is_dir(path) else None
    for shard in shard_paths(path):
        _, metadata = open_shard(shard, expected)
        fs, located = storage.resolve(shard)
        # pyarrow.dataset pushes the filter down to row-group statistics
        batches = pads.dataset(located, format=PARQUET_FORMAT, filesystem=fs).to_batches(filter=filter,
                                                                                         batch_size=batch_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (OSError, pa.ArrowException) as err:
                raise ShardChecksumError(str(shard), f"cannot be read ({storage.first_line(err)}): the file is "
                                                     "corrupt; restore it or convert the dataset again") from None
            if batch.num_rows:
                yield batch, metadata, str(shard)


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def iter_samples(path: str | os.PathLike, *, filter: pc.Expression | None = None) -> Iterator[Sample]:
    """One :class:`Sample` per row of a dataset directory or a shard file, in storage order.

    ``filter`` is a ``pyarrow.compute`` expression on the scalar columns (e.g. ``splits.split_filter("xsub",
    "train")``). Tensors are copies, safe to modify. A shard that does not match the schema or the layouts raises a
    :class:`ShardError` naming the file, the sample and the column.
    """
    num_classes = load_info(path)["num_classes"] if storage.is_dir(path) else None
    for batch, metadata, file in iter_batches(path, filter=filter):
        check_rows(batch, file, num_classes)
        layouts = {side: metadata.get(f"{side}_layout") for side in SIDES}
        decoded = {
            side: decode_side(batch, side, get_layout(name) if name else None, file) for side, name in layouts.items()
        }
        scalars = batch.select(["sample_id", "label", "frames", "split", *ID_COLUMNS]).to_pylist()
        for i, row in enumerate(scalars):
            sides = {}
            for side in SIDES:
                pair = decoded[side][i]
                sides[side] = None if pair is None else pair[0].copy()
                sides[f"{side}_score"] = None if pair is None else pair[1].copy()
            yield Sample(
                sample_id=row["sample_id"], label=int(row["label"]), frames=int(row["frames"]), split=row["split"],
                **{k: _optional_int(row[k]) for k in ID_COLUMNS}, **sides,
            )
