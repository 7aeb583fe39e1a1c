"""Split protocols as functions of the shard columns, pushed down as Parquet filters (DESIGN §4).

A protocol puts a row in ``train`` when one id column takes one of its training values, else in ``test``. The
synthetic generator draws subjects 1..40 and cameras 1..3 as NTU does, so NTU's protocols apply to it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

SPLITS = ("train", "test")

# Shahroudy et al., NTU RGB+D (CVPR 2016), Sec. 3.2: the 20 training subjects of the cross-subject benchmark.
NTU_XSUB_TRAIN_SUBJECTS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)


@dataclass(frozen=True)
class Protocol:
    name: str
    column: str
    train_values: frozenset
    description: str

    def filter(self, split: str) -> pc.Expression:
        """A ``pyarrow.compute`` expression selecting the rows of ``split``."""
        _check_split(split)
        in_train = pc.field(self.column).isin(sorted(self.train_values, key=str))
        return in_train if split == "train" else (~in_train) & pc.field(self.column).is_valid()

    def ray_filter(self, split: str):
        """The same selection as a ``ray.data.expressions`` predicate, for ``Dataset.filter(expr=...)``."""
        from ray.data.expressions import col

        _check_split(split)
        in_train = col(self.column).is_in(sorted(self.train_values, key=str))
        return in_train if split == "train" else (~in_train) & col(self.column).is_not_null()

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


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown split protocol {name!r}; known protocols: {', '.join(sorted(PROTOCOLS))}") from None


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
