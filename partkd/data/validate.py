"""``partkd data validate``: every check a dataset must pass before training reads it.

Checks the manifest (``dataset.json``), each shard's SHA-256 and page CRCs, columns, types and layouts, and every row:
tensor shapes against the layout, finite values, scores in [0, 1], label range, both-sides-null and duplicate
``sample_id``s. Problems are
collected (not just the first) as :class:`ShardError`s that name the file, the sample and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from partkd.data.schema import SIDES, ShardChecksumError, ShardDataError, ShardError
from partkd.data.shards import decode_side, load_info, open_shard, sha256_file
from partkd.layouts import get_layout


@dataclass
class ValidationReport:
    path: str
    samples: int = 0
    shards: int = 0
    problems: list[ShardError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_rows(file: str, table: pa.Table, info: dict, seen: dict[str, str], report: ValidationReport) -> None:
    ids = table.column("sample_id").to_pylist()
    labels = table.column("label").to_numpy()
    for sid in ids:
        if sid in seen:
            report.problems.append(ShardDataError(file, f"duplicate sample_id (also in {seen[sid]})", sid, "sample_id"))
        seen.setdefault(sid, Path(file).name)
    bad_labels = np.flatnonzero((labels < 0) | (labels >= info["num_classes"]))
    for i in bad_labels[:5]:
        report.problems.append(ShardDataError(
            file, f"label {labels[i]} outside [0, {info['num_classes']})", ids[i], "label"))
    both_null = np.asarray(table.column("hq").is_null().to_numpy(zero_copy_only=False)) & np.asarray(
        table.column("lq").is_null().to_numpy(zero_copy_only=False))
    for i in np.flatnonzero(both_null)[:5]:
        report.problems.append(ShardDataError(file, "has neither an hq nor an lq side", ids[i], "hq"))
    for batch in table.to_batches():
        for side in SIDES:
            name = info.get(f"{side}_layout")
            try:  # shapes, finite values, scores in [0, 1]: the first problem of each batch and side
                decode_side(batch, side, get_layout(name) if name else None, file)
            except ShardError as err:
                report.problems.append(err)


def validate_dataset(path: str | Path) -> ValidationReport:
    """Run every check on the dataset directory ``path``; never raises on bad data, reports it."""
    report = ValidationReport(str(path))
    try:
        info = load_info(path)
    except ShardError as err:
        report.problems.append(err)
        return report
    info_file = str(Path(path) / "dataset.json")
    if not info.get("complete", False):
        report.problems.append(ShardError(info_file, "the writer did not finish (\"complete\": false): the dataset "
                                                     "holds only the rows written before it stopped"))
    seen: dict[str, str] = {}
    for entry in info["shards"]:
        file = Path(path) / entry["file"]
        report.shards += 1
        if not file.exists():
            report.problems.append(ShardError(str(file), "is listed in dataset.json but missing"))
            continue
        digest = sha256_file(file)
        if digest != entry["sha256"]:
            report.problems.append(ShardChecksumError(
                str(file), f"SHA-256 {digest[:12]}… differs from {entry['sha256'][:12]}… in dataset.json"))
        try:
            parquet, _ = open_shard(file, info)
            table = parquet.read()
        except ShardError as err:
            report.problems.append(err)
            continue
        except (OSError, pa.ArrowException) as err:
            report.problems.append(ShardError(str(file), f"cannot be read ({err})"))
            continue
        if table.num_rows != entry["rows"]:
            report.problems.append(ShardError(
                str(file), f"has {table.num_rows} rows, dataset.json says {entry['rows']}"))
        report.samples += table.num_rows
        _check_rows(str(file), table, info, seen, report)
    if report.samples != info["counts"]["samples"] and not report.problems:
        report.problems.append(ShardError(
            info_file, f"counts {info['counts']['samples']} samples, the shards hold {report.samples}"))
    on_disk = {p.name for p in Path(path).glob("part-*.parquet")} - {e["file"] for e in info["shards"]}
    for name in sorted(on_disk):
        report.problems.append(ShardError(str(Path(path) / name), "is not listed in dataset.json"))
    return report
