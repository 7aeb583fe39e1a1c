"""``partkd data subset``: a smaller training split of a dataset, its other rows kept whole.

``train_per_class`` training rows of each class (the training split of a fixed ``protocol``; which rows, drawn with
``seed`` and independent of storage order) and every row outside that split, written to a NEW dataset directory: the
same test split with less to learn from, for a small-dataset benchmark or a learning curve. A class with fewer
training rows keeps them all, and the report says so. ``dataset.json`` records the source's fingerprint, the protocol,
the count and the seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from partkd.data.convert.common import ConvertReport, Progress, WriteOptions, write_dataset
from partkd.data.shards import iter_samples, shard_dataset, verify_dataset
from partkd.data.splits import draw, get_protocol


def training_subset(path: str | os.PathLike, info: dict, protocol: str, per_class: int, seed: int
                    ) -> tuple[set[str], set[str], list[str]]:
    """The training ids kept, every training id, and the classes (with their counts) short of ``per_class``, of the
    dataset at ``path`` whose ``dataset.json`` is ``info``."""
    try:
        selection = get_protocol(protocol)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    table = shard_dataset(path).to_table(columns=["sample_id", "label"], filter=selection.filter("train"))
    ids = np.array(table.column("sample_id").to_pylist(), dtype=object)
    labels = table.column("label").to_numpy()
    if not len(ids):
        raise ValueError(f"{path}: protocol {protocol} ({selection.description}) selects no training rows; "
                         f"check the dataset's protocols with partkd data info")
    rng = np.random.default_rng([seed, 0x50B5E7])
    keep: set[str] = set()
    short = []
    for label, name in enumerate(info["class_names"]):
        members = ids[labels == label]
        if len(members) < per_class:
            short.append(f"{name} ({len(members)})")
        keep.update(draw(members, per_class, rng))  # which ones does not depend on storage order
    return keep, set(ids), short


def subset_dataset(src: str | os.PathLike, out: str | os.PathLike, *, protocol: str, train_per_class: int,
                   seed: int = 0, name: str | None = None, overwrite: bool = False, rows_per_shard: int = 1024,
                   progress: Progress | None = None) -> ConvertReport:
    """``src`` -> new dataset ``out``: ``train_per_class`` training rows per class under ``protocol``, every other
    row as it is."""
    if train_per_class < 1:
        raise ValueError(f"training rows per class (--train-per-class) must be at least 1, got {train_per_class}")
    if Path(out).resolve() == Path(src).resolve():
        raise ValueError(f"{out}: subset writes a new dataset; the output must not be the input {src}")
    info = verify_dataset(src)
    keep, training, short = training_subset(src, info, protocol, train_per_class, seed)
    notes = [f"{protocol} training split: {len(keep)} of its {len(training)} rows kept ({train_per_class} per class, "
             f"seed {seed}); the {len(training) - len(keep)} others left out, every other row kept"]
    if short:
        notes.append(f"classes with fewer than {train_per_class} training rows (how many), all kept: "
                     f"{', '.join(short)}")

    def items():
        for sample in iter_samples(src):
            if sample.sample_id in keep or sample.sample_id not in training:
                yield sample

    layouts = {side: info[f"{side}_layout"] for side in ("hq", "lq") if info.get(f"{side}_layout")}
    provenance = {"subset_of": str(src), "source_name": info.get("name"), "source_fingerprint": info.get("fingerprint"),
                  "protocol": protocol, "train_per_class": train_per_class, "seed": seed,
                  "source_info": info.get("info", {})}
    write = WriteOptions(overwrite=overwrite, rows_per_shard=rows_per_shard, progress=progress)
    return write_dataset(out, items(), fmt="subset", name=name or f"{info.get('name')}-{train_per_class}pc",
                         class_names=list(info["class_names"]), layouts=layouts, info=provenance,
                         total=info["counts"]["samples"] - len(training) + len(keep), write=write, notes=notes)
