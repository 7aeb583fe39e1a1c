"""Fixed split protocols (DESIGN §4): a row is in ``train`` when one id column takes one of the protocol's training
values, else in ``test``. Each split is stated as :data:`Clause`\\ s, from which one function makes the pyarrow
expression and one the Ray Data predicate, so the two always select the same rows.

Pure functions of the shard columns: the shards module counts every applicable protocol in ``dataset.json``, and
:mod:`partkd.data.splits` adds the seeded splits drawn from a dataset's rows.
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


class Selection:
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
class Protocol(Selection):
    name: str
    column: str
    train_values: frozenset
    description: str

    def clauses(self, split: str) -> list[Clause]:
        check_split(split)
        return [(self.column, self.train_values, split == "train")]

    def assign(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """``"train"``/``"test"`` for each row, given its column values as arrays (``None`` never counts as train)."""
        values = rows[self.column]
        in_train = np.array([v is not None and v in self.train_values for v in values], dtype=bool)
        return np.where(in_train, "train", "test")


def check_split(split: str) -> None:
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
