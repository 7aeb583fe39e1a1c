"""Split protocols as functions of the shard columns, pushed down as Parquet filters (DESIGN §4).

The fixed protocols (:class:`Protocol`: NTU cross-subject/-view/-setup, NTU-120, MSR, the source's own flag) live in
:mod:`partkd.data.protocols` and are re-exported here. The synthetic generator draws subjects 1..40 and cameras 1..3
as NTU does, so NTU's protocols apply to it unchanged. This module adds the seeded splits drawn from one dataset's
rows (:class:`IdSplit`: SYSU-style half per class or half of the subjects) and a validation slice held out of any
training split (:class:`WithValidation`), which select rows by ``sample_id``. Every kind states a split as clauses,
from which one function makes the pyarrow expression and one the Ray Data predicate, so the two always select the
same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from partkd.data.protocols import (
    MSR_XSUB_TRAIN_SUBJECTS,
    NTU120_XSUB_TRAIN_SUBJECTS,
    NTU_XSUB_TRAIN_SUBJECTS,
    PROTOCOLS,
    SOURCE_PROTOCOLS,
    SPLITS,
    VALIDATION,
    Clause,
    Protocol,
    Selection,
    applicable_protocols,
    check_split,
    get_protocol,
    split_filter,
    split_ray_filter,
)
from partkd.data.shards import shard_dataset

__all__ = [
    "MSR_XSUB_TRAIN_SUBJECTS", "NTU120_XSUB_TRAIN_SUBJECTS", "NTU_XSUB_TRAIN_SUBJECTS", "PROTOCOLS",
    "SOURCE_PROTOCOLS", "SPLITS", "VALIDATION", "Clause", "IdSplit", "Protocol", "WithValidation", "allocate",
    "applicable_protocols", "draw", "get_protocol", "half_per_class", "half_subjects", "random_splits",
    "read_split_columns",
    "split_filter", "split_ray_filter", "validation_split",
]


@dataclass(frozen=True)
class IdSplit(Selection):
    """A split drawn at random from one dataset's ids: train and test as sets of ``sample_id``.

    The same interface as :class:`Protocol` (``filter``, ``ray_filter``, ``assign``). Rows in neither set (e.g.
    added to the dataset later) belong to no split.
    """

    name: str
    train_ids: frozenset[str]
    test_ids: frozenset[str]
    description: str = ""

    def clauses(self, split: str) -> list[Clause]:
        check_split(split)
        return [("sample_id", self.train_ids if split == "train" else self.test_ids, True)]

    def assign(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """``"train"``/``"test"`` per row, ``""`` for a row in neither set."""
        return np.array(["train" if sid in self.train_ids else "test" if sid in self.test_ids else ""
                         for sid in rows["sample_id"]], dtype=object)


@dataclass(frozen=True)
class WithValidation(Selection):
    """A protocol with a validation slice ``"val"`` held out of its training split: train, val and test are disjoint."""

    base: Protocol | IdSplit
    val_ids: frozenset[str]
    name: str
    description: str = ""

    def clauses(self, split: str) -> list[Clause]:
        if split == VALIDATION:
            return [("sample_id", self.val_ids, True)]
        extra = [("sample_id", self.val_ids, False)] if split == "train" else []
        return self.base.clauses(split) + extra

    def assign(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        assigned = np.array(self.base.assign(rows), dtype=object)
        assigned[np.array([sid in self.val_ids for sid in rows["sample_id"]], dtype=bool)] = VALIDATION
        return assigned


# --------------------------------------------------------------------------------------------------- seeded choices


def read_split_columns(path) -> dict[str, np.ndarray]:
    """``sample_id``, ``label``, the id columns and ``split`` of a dataset directory, as arrays (None for null)."""
    columns = ["sample_id", "label", "subject", "camera", "setup", "replication", "split"]
    table = shard_dataset(path).to_table(columns=columns)
    return {name: np.array(table.column(name).to_pylist(), dtype=object) for name in columns}


def _rows(rows_or_path) -> dict[str, np.ndarray]:
    return rows_or_path if isinstance(rows_or_path, dict) else read_split_columns(rows_or_path)


def allocate(sizes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Counts per group summing to ``round(fraction * sizes.sum())``: floors, then the largest remainders get one more
    (ties drawn from ``rng``) — a stratified share that is exact overall and within one of the share in each group."""
    quota = fraction * np.asarray(sizes, dtype=np.float64)
    counts = np.floor(quota).astype(np.int64)
    extra = int(round(fraction * float(np.sum(sizes)))) - int(counts.sum())
    order = np.lexsort((rng.random(len(counts)), -(quota - counts)))  # largest remainder first
    counts[order[:max(extra, 0)]] += 1
    return counts


def draw(ids: np.ndarray, count: int, rng: np.random.Generator) -> list:
    """``count`` of ``ids`` at random, independent of the order they came in."""
    return rng.permutation(np.sort(ids))[:count].tolist()


def half_per_class(rows_or_path, seed: int = 0, name: str | None = None) -> IdSplit:
    """SYSU 3D HOI setting 1: half of the samples of each class train (the larger half if odd), the rest test."""
    rows = _rows(rows_or_path)
    ids, labels = rows["sample_id"], np.asarray(rows["label"], dtype=np.int64)
    rng = np.random.default_rng([seed, 1])
    train: set[str] = set()
    for label in np.unique(labels):
        members = ids[labels == label]
        train.update(draw(members, (len(members) + 1) // 2, rng))
    return IdSplit(name or f"half-per-class-{seed}", frozenset(train), frozenset(ids.tolist()) - frozenset(train),
                   description=f"half of each class trains (seed {seed}); SYSU setting 1")


def half_subjects(rows_or_path, seed: int = 0, name: str | None = None) -> IdSplit:
    """SYSU 3D HOI setting 2: the samples of half of the subjects train (the larger half if odd), the rest test."""
    rows = _rows(rows_or_path)
    ids, subjects = rows["sample_id"], rows["subject"]
    if any(s is None for s in subjects):
        raise ValueError("half_subjects needs the subject of every sample; some rows have none")
    subjects = np.asarray(subjects, dtype=np.int64)
    chosen = draw(np.unique(subjects), (len(np.unique(subjects)) + 1) // 2, np.random.default_rng([seed, 2]))
    in_train = np.isin(subjects, chosen)
    return IdSplit(name or f"half-subjects-{seed}", frozenset(ids[in_train].tolist()),
                   frozenset(ids[~in_train].tolist()),
                   description=f"subjects {sorted(chosen)} train (seed {seed}); SYSU setting 2")


RANDOM_SETTINGS = {"sysu1": half_per_class, "half-per-class": half_per_class,
                   "sysu2": half_subjects, "half-subjects": half_subjects}


def random_splits(setting: str, rows_or_path, count: int = 30, seed: int = 0) -> list[IdSplit]:
    """``count`` seeded random splits of one setting (the paper reports the mean over SYSU's 30)."""
    try:
        make = RANDOM_SETTINGS[setting]
    except KeyError:
        raise KeyError(f"unknown random setting {setting!r}; known: {', '.join(RANDOM_SETTINGS)}") from None
    rows = _rows(rows_or_path)
    return [make(rows, seed=seed * 1_000_003 + i, name=f"{setting}-{i}") for i in range(count)]


def validation_split(base: str | Protocol | IdSplit, rows_or_path, fraction: float = 0.1, seed: int = 0,
                     by: str = "sample") -> WithValidation:
    """Hold a seeded ``fraction`` of ``base``'s training split out as ``"val"`` (for tuning, never the test split).

    ``by="sample"`` takes the share from each class (exact overall, within one sample per class); ``by="subject"``
    holds out whole training subjects, so validation subjects are unseen in training as in a cross-subject test.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    protocol = get_protocol(base) if isinstance(base, str) else base
    rows = _rows(rows_or_path)
    in_train = np.asarray(protocol.assign(rows)) == "train"
    ids = rows["sample_id"][in_train]
    rng = np.random.default_rng([seed, 3])
    if by == "sample":
        labels = np.asarray(rows["label"], dtype=np.int64)[in_train]
        classes, sizes = np.unique(labels, return_counts=True)
        val: list[str] = []
        for label, count in zip(classes, allocate(sizes, fraction, rng)):
            val += draw(ids[labels == label], int(count), rng)
    elif by == "subject":
        subjects = rows["subject"][in_train]
        if any(s is None for s in subjects):
            raise ValueError("a validation slice by subject needs the subject of every training sample")
        subjects = np.asarray(subjects, dtype=np.int64)
        pool = np.unique(subjects)
        chosen = draw(pool, max(1, int(round(fraction * len(pool)))), rng)
        val = ids[np.isin(subjects, chosen)].tolist()
    else:
        raise ValueError(f"by must be 'sample' or 'subject', got {by!r}")
    if len(val) == len(ids):
        raise ValueError(f"the validation slice would take the whole training split of {protocol.name}")
    return WithValidation(protocol, frozenset(val), f"{protocol.name}+val{fraction:g}-{seed}",
                          f"{protocol.name} with {len(val)} training samples held out by {by} (seed {seed})")
