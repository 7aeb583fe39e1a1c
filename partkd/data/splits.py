"""Split protocols as functions of the shard columns, pushed down as Parquet filters (DESIGN §4).

A fixed :class:`Protocol` puts a row in ``train`` when one id column takes one of its training values, else in
``test``. The synthetic generator draws subjects 1..40 and cameras 1..3 as NTU does, so NTU's protocols apply to it
unchanged. Seeded splits drawn from one dataset's rows (:class:`IdSplit`: SYSU-style half per class or half of the
subjects) and a validation slice held out of any training split (:class:`WithValidation`) select rows by
``sample_id``. Every kind states a split as :data:`Clause`\\ s, from which one function makes the pyarrow expression
and one the Ray Data predicate, so the two always select the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

SPLITS = ("train", "test")
VALIDATION = "val"

# Shahroudy et al., NTU RGB+D (CVPR 2016), Sec. 3.2: the 20 training subjects of the cross-subject benchmark.
NTU_XSUB_TRAIN_SUBJECTS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
# Liu et al., NTU RGB+D 120 (TPAMI 2019), Sec. 4.1: the 53 training subjects of the cross-subject benchmark. The
# first 20 are NTU-60's, so on NTU-60 data this protocol equals ``xsub``.
NTU120_XSUB_TRAIN_SUBJECTS = NTU_XSUB_TRAIN_SUBJECTS + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94,
    95, 97, 98, 100, 103,
)
# Li et al., Action recognition based on a bag of 3D points (CVPRW 2010): MSR Action3D's cross-subject test, subjects
# 1, 3, 5, 7, 9 train; the usual cross-subject protocol for UTKinect-Action3D too.
MSR_XSUB_TRAIN_SUBJECTS = (1, 3, 5, 7, 9)

Clause = tuple[str, frozenset, bool]  # (column, values, inside): rows whose column is (is not) among the values


def _combine(clauses: list[Clause], member: Callable, valid: Callable):
    """AND of the clauses, from ``member(column, values)`` and ``valid(column)``; "not among" never admits a null."""
    expression = None
    for column, values, inside in clauses:
        term = member(column, sorted(values, key=str))
        term = term if inside else (~term) & valid(column)
        expression = term if expression is None else expression & term
    return expression


class _Selection:
    """``filter`` and ``ray_filter`` of a split kind that states its splits as clauses."""

    def clauses(self, split: str) -> list[Clause]:
        raise NotImplementedError

    def filter(self, split: str) -> pc.Expression:
        """A ``pyarrow.compute`` expression selecting the rows of ``split``."""
        return _combine(self.clauses(split), lambda c, v: pc.field(c).isin(v), lambda c: pc.field(c).is_valid())

    def ray_filter(self, split: str):
        """The same selection as a ``ray.data.expressions`` predicate, for ``Dataset.filter(expr=...)``."""
        from ray.data.expressions import col

        return _combine(self.clauses(split), lambda c, v: col(c).is_in(v), lambda c: col(c).is_not_null())


@dataclass(frozen=True)
class Protocol(_Selection):
    name: str
    column: str
    train_values: frozenset
    description: str

    def clauses(self, split: str) -> list[Clause]:
        _check_split(split)
        return [(self.column, self.train_values, split == "train")]

    def assign(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """``"train"``/``"test"`` for each row, given its column values as arrays (``None`` never counts as train)."""
        values = rows[self.column]
        in_train = np.array([v is not None and v in self.train_values for v in values], dtype=bool)
        return np.where(in_train, "train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("xsub", "subject", frozenset(NTU_XSUB_TRAIN_SUBJECTS), "NTU cross-subject: 20 training subjects"),
        Protocol("xview", "camera", frozenset({2, 3}), "NTU cross-view: cameras 2 and 3 train, camera 1 tests"),
        Protocol("xset", "setup", frozenset(range(2, 33, 2)), "NTU-120 cross-setup: even setup ids train"),
        Protocol("official", "split", frozenset({"train"}), "the source dataset's own train/test flag"),
    )
}
# Protocols for one source dataset: found by name like the others, but left out of dataset.json's per-protocol
# counts (which list every protocol of PROTOCOLS whose column is set on every row).
SOURCE_PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("xsub120", "subject", frozenset(NTU120_XSUB_TRAIN_SUBJECTS),
                 "NTU-120 cross-subject: 53 training subjects"),
        Protocol("msr-xsub", "subject", frozenset(MSR_XSUB_TRAIN_SUBJECTS),
                 "MSR Action3D / UTKinect cross-subject: subjects 1, 3, 5, 7, 9 train"),
    )
}


def get_protocol(name: str) -> Protocol:
    """A fixed protocol by name, from :data:`PROTOCOLS` or :data:`SOURCE_PROTOCOLS`."""
    known = {**PROTOCOLS, **SOURCE_PROTOCOLS}
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"unknown split protocol {name!r}; known protocols: {', '.join(sorted(known))}") from None


def split_filter(protocol: str, split: str) -> pc.Expression:
    """pyarrow expression for ``iter_samples(..., filter=...)``."""
    return get_protocol(protocol).filter(split)


def split_ray_filter(protocol: str, split: str):
    """Ray Data predicate for ``read_shards(..., filter=...)``."""
    return get_protocol(protocol).ray_filter(split)


def applicable_protocols(rows: dict[str, np.ndarray]) -> list[Protocol]:
    """Protocols whose column is set on every row (so every row lands in train or test)."""
    return [
        p for p in PROTOCOLS.values()
        if len(rows.get(p.column, ())) and all(v is not None for v in rows[p.column])
    ]


@dataclass(frozen=True)
class IdSplit(_Selection):
    """A split drawn at random from one dataset's ids: train and test as sets of ``sample_id``.

    The same interface as :class:`Protocol` (``filter``, ``ray_filter``, ``assign``). Rows in neither set (e.g.
    added to the dataset later) belong to no split.
    """

    name: str
    train_ids: frozenset[str]
    test_ids: frozenset[str]
    description: str = ""

    def clauses(self, split: str) -> list[Clause]:
        _check_split(split)
        return [("sample_id", self.train_ids if split == "train" else self.test_ids, True)]

    def assign(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """``"train"``/``"test"`` per row, ``""`` for a row in neither set."""
        return np.array(["train" if sid in self.train_ids else "test" if sid in self.test_ids else ""
                         for sid in rows["sample_id"]], dtype=object)


@dataclass(frozen=True)
class WithValidation(_Selection):
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
    import pyarrow.dataset as pads

    from partkd.data.shards import shard_paths  # shards imports this module: import when called

    columns = ["sample_id", "label", "subject", "camera", "setup", "replication", "split"]
    table = pads.dataset([str(p) for p in shard_paths(path)], format="parquet").to_table(columns=columns)
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


def _draw(ids: np.ndarray, count: int, rng: np.random.Generator) -> list:
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
        train.update(_draw(members, (len(members) + 1) // 2, rng))
    return IdSplit(name or f"half-per-class-{seed}", frozenset(train), frozenset(ids.tolist()) - frozenset(train),
                   description=f"half of each class trains (seed {seed}); SYSU setting 1")


def half_subjects(rows_or_path, seed: int = 0, name: str | None = None) -> IdSplit:
    """SYSU 3D HOI setting 2: the samples of half of the subjects train (the larger half if odd), the rest test."""
    rows = _rows(rows_or_path)
    ids, subjects = rows["sample_id"], rows["subject"]
    if any(s is None for s in subjects):
        raise ValueError("half_subjects needs the subject of every sample; some rows have none")
    subjects = np.asarray(subjects, dtype=np.int64)
    chosen = _draw(np.unique(subjects), (len(np.unique(subjects)) + 1) // 2, np.random.default_rng([seed, 2]))
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
            val += _draw(ids[labels == label], int(count), rng)
    elif by == "subject":
        subjects = rows["subject"][in_train]
        if any(s is None for s in subjects):
            raise ValueError("a validation slice by subject needs the subject of every training sample")
        subjects = np.asarray(subjects, dtype=np.int64)
        pool = np.unique(subjects)
        chosen = _draw(pool, max(1, int(round(fraction * len(pool)))), rng)
        val = ids[np.isin(subjects, chosen)].tolist()
    else:
        raise ValueError(f"by must be 'sample' or 'subject', got {by!r}")
    if len(val) == len(ids):
        raise ValueError(f"the validation slice would take the whole training split of {protocol.name}")
    return WithValidation(protocol, frozenset(val), f"{protocol.name}+val{fraction:g}-{seed}",
                          f"{protocol.name} with {len(val)} training samples held out by {by} (seed {seed})")
