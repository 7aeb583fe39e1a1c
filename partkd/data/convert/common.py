"""What every converter shares: its error, its report, and writing one side of a dataset, optionally paired.

A converter reads its source into :class:`~partkd.data.schema.Sample`\\ s that carry one side (``hq`` or ``lq``) and
:class:`Skipped` entries for what it could not use, and hands both to :func:`write_dataset`. That function writes
through :class:`~partkd.data.shards.DatasetWriter` (every sample checked, shards renamed into place when complete,
``dataset.json`` marked incomplete if writing stops), pairs the new side with the other side of an existing dataset
by ``sample_id`` when asked (DESIGN §4: "two datasets pair by sample_id"), and returns a :class:`ConvertReport`.

Missing joints follow the shard convention everywhere: coordinates 0 and score 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from partkd.data.schema import SIDES, Sample
from partkd.data.shards import DatasetWriter, iter_samples, verify_dataset

Progress = Callable[[int, int], None]  # (done, total) -> None; total 0 when unknown
UNLABELLED = -1  # a sample whose label comes from the dataset it is paired with


class ConvertError(ValueError):
    """A source that cannot be read as its format; the message names the file and the line, frame or field."""

    def __init__(self, file: str | os.PathLike, message: str, where: str | None = None):
        self.file, self.where = str(file), where
        super().__init__(f"{file}: {where}: {message}" if where else f"{file}: {message}")


@dataclass(frozen=True)
class WriteOptions:
    """How a converter writes its dataset, the same for every format."""

    overwrite: bool = False  # replace the shards of an existing dataset in the output directory
    rows_per_shard: int = 1024
    pair_with: str | os.PathLike | None = None  # a dataset whose other side pairs with this one by sample_id
    skip_bad: bool = False  # list unreadable source files in the report instead of stopping at the first
    progress: Progress | None = None


DEFAULT_WRITE = WriteOptions()


@dataclass(frozen=True)
class Skipped:
    """A source item that produced no sample, and why (listed in the report, never silently dropped)."""

    source: str
    reason: str


@dataclass
class ConvertReport:
    """What a conversion wrote and what it left out; ``text()`` is what the command line prints."""

    format: str
    out: str
    written: int
    class_names: list[str]
    per_class: list[int]
    paired: int = 0
    hq_only: int = 0
    solitary: int = 0
    shards: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self, max_skipped: int = 50) -> str:
        lines = [
            f"{self.format}: {self.written} samples written to {self.out} ({self.shards} shard(s)); "
            f"paired={self.paired} hq-only={self.hq_only} solitary={self.solitary}; skipped {len(self.skipped)}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        if self.skipped:
            reasons: dict[str, int] = {}
            for s in self.skipped:
                reasons[s.reason] = reasons.get(s.reason, 0) + 1
            lines.append("skipped:")
            lines += [f"  {s.source}: {s.reason}" for s in self.skipped[:max_skipped]]
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more")
                lines += [f"  {count:>6} x {reason}" for reason, count in sorted(reasons.items(), key=lambda x: -x[1])]
        empty = sum(c == 0 for c in self.per_class)
        without = f", {empty} without samples" if empty else ""
        lines.append(f"per class ({len(self.class_names)} classes{without}):")
        width = min(max((len(n) for n in self.class_names), default=5), 40)
        lines += [f"  {k:>4} {name[:width]:<{width}} {count:>7}"
                  for k, (name, count) in enumerate(zip(self.class_names, self.per_class)) if count]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- helpers


def guarded(source: str | os.PathLike, read: Callable[[], Sample | Skipped], skip_bad: bool) -> Sample | Skipped:
    """``read()``, or with ``skip_bad`` a :class:`Skipped` carrying the :class:`ConvertError` it raised. Any other
    error a reader did not foresee (a field of the wrong type, say) becomes a ConvertError naming ``source`` too."""
    try:
        return read()
    except ConvertError as err:
        if not skip_bad:
            raise
        return Skipped(str(source), str(err))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as err:
        unforeseen = ConvertError(source, f"cannot be read ({type(err).__name__}: {str(err)[:200]})")
        if not skip_bad:
            raise unforeseen from err
        return Skipped(str(source), str(unforeseen))


def side_sample(side: str, coords: np.ndarray, score: np.ndarray, **fields) -> Sample:
    """A :class:`Sample` with ``coords`` [M, T, V, C] and ``score`` [M, T, V] as its ``side``; missing joints zeroed."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    score = np.asarray(score, dtype=np.float32)
    coords = np.where((score > 0)[..., None], coords, 0.0).astype(np.float32)  # (M, T, V, C)
    return Sample(frames=int(coords.shape[1]), **{side: coords, f"{side}_score": score}, **fields)


def check_inputs(inputs: Sequence[str | os.PathLike], kind: str = "file or folder") -> list[Path]:
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConvertError("<inputs>", f"no input given; expected a {kind}")
    for path in paths:
        if not path.exists():
            raise ConvertError(path, f"does not exist (expected a {kind})")
    return paths


def files_in(inputs: Sequence[Path], pattern: str) -> list[Path]:
    """Files matching ``pattern`` in the given folders (not recursive) plus the given files, sorted, no duplicates."""
    found: set[Path] = set()
    for path in inputs:
        found.update(path.glob(pattern) if path.is_dir() else [path])
    return sorted(found, key=lambda p: (p.name, str(p)))


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines ignored), in label order."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ConvertError(path, "holds no class names (expected one name per line, in label order)")
    if len(set(names)) != len(names):
        raise ConvertError(path, "lists a class name twice")
    return names


_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


def parse_ntu_name(name: str) -> dict[str, int] | None:
    """``{"setup", "camera", "subject", "replication", "action"}`` (1-based, as written) from an NTU name, or None."""
    match = _NTU_NAME.fullmatch(name)
    if match is None:
        return None
    return dict(zip(("setup", "camera", "subject", "replication", "action"), (int(g) for g in match.groups())))


# --------------------------------------------------------------------------------------------------- pairing


@dataclass
class _OtherSide:
    """The other side of an existing dataset, held in memory by ``sample_id`` for pairing."""

    path: str
    side: str
    layout: str
    class_names: list[str]
    info: dict
    samples: dict[str, Sample]


def _load_other_side(path: str | os.PathLike, side: str) -> _OtherSide:
    info = verify_dataset(path)  # the side paired in must be whole: complete, checksums, ids
    layout = info.get(f"{side}_layout")
    if layout is None:
        raise ConvertError(path, f"has no {side} side to pair with (its dataset.json declares no {side}_layout)")
    samples = {}
    for s in iter_samples(path):
        if getattr(s, side) is None:
            continue
        keep = {other: None for other in SIDES if other != side}
        samples[s.sample_id] = replace(s, **keep, **{f"{k}_score": None for k in keep})
    return _OtherSide(str(path), side, layout, list(info["class_names"]), info, samples)


def _label_map(ours: list[str] | None, theirs: list[str], where: str) -> np.ndarray | None:
    """Our label -> their label by class name (None: labels come from the paired dataset)."""
    if ours is None:
        return None
    if ours == theirs:
        return np.arange(len(ours))
    missing = [name for name in ours if name not in theirs]
    if missing:
        raise ConvertError(where, f"cannot pair: classes {missing[:5]} are not among the paired dataset's classes "
                                  f"{theirs[:5]}...; give the same class names (e.g. --class-names)")
    return np.array([theirs.index(name) for name in ours])


def merge_sides(first: Sample, second: Sample) -> tuple[Sample, bool]:
    """One row from two samples of the same instance that hold different sides, and whether frames were cut.

    Id columns come from ``first`` where set, else from ``second``. A row has one ``frames`` (tensors are stored
    unpadded), so where the two lengths differ both sides are cut to the shorter one.
    """
    if first.label != second.label:
        raise ConvertError(first.sample_id, f"label {first.label} on one side, {second.label} on the other")
    cut = first.frames != second.frames
    if cut:
        frames = min(first.frames, second.frames)
        first, second = _cut(first, frames), _cut(second, frames)
    ids = {k: getattr(first, k) if getattr(first, k) is not None else getattr(second, k)
           for k in ("subject", "camera", "setup", "replication", "split")}
    sides = {}
    for side in SIDES:
        a, b = getattr(first, side), getattr(second, side)
        if a is not None and b is not None:
            raise ConvertError(first.sample_id, f"both samples to pair have an {side} side")
        owner = first if a is not None else second
        sides[side], sides[f"{side}_score"] = getattr(owner, side), getattr(owner, f"{side}_score")
    return replace(first, **ids, **sides), cut


def _merge(ours: Sample, theirs: Sample | None, label_map: np.ndarray | None) -> tuple[Sample | Skipped, bool]:
    label = ours.label if label_map is None or ours.label == UNLABELLED else int(label_map[ours.label])
    if theirs is None:
        if label == UNLABELLED:
            return Skipped(ours.sample_id, "no label: not in the labels file and not in the paired dataset"), False
        return replace(ours, label=label), False
    if label != UNLABELLED and label != theirs.label:
        raise ConvertError(ours.sample_id, f"label {label} differs from label {theirs.label} of the same sample in "
                                           "the paired dataset")
    return merge_sides(replace(ours, label=theirs.label), theirs)


def _cut(sample: Sample, frames: int) -> Sample:
    sides = {}
    for side in SIDES:
        if getattr(sample, side) is not None:
            sides[side] = getattr(sample, side)[:, :frames]
            sides[f"{side}_score"] = getattr(sample, f"{side}_score")[:, :frames]
    return replace(sample, frames=frames, **sides)


# --------------------------------------------------------------------------------------------------- writing


def write_dataset(
    out: str | os.PathLike,
    items: Iterable[Sample | Skipped],
    *,
    fmt: str,
    name: str,
    class_names: list[str] | None,
    layouts: dict[str, str],
    info: dict,
    total: int = 0,
    write: WriteOptions = DEFAULT_WRITE,
    notes: Iterable[str] = (),
) -> ConvertReport:
    """Write the samples (sides and their layouts in ``layouts``) to the dataset directory ``out`` and report.

    ``total`` is the number of items expected, for progress. With ``write.pair_with`` (a dataset directory;
    ``layouts`` then names one side), each sample gets the other side of
    the row with the same ``sample_id`` there; rows of that dataset that the source does not have are written with
    their side only (solitary or HQ-only). Labels are matched by class name; ``class_names=None`` takes the paired
    dataset's classes and labels (samples then carry ``UNLABELLED``). The paired dataset's side is held in memory.
    """
    unknown = sorted(set(layouts) - set(SIDES))
    if unknown or not layouts:
        raise ValueError(f"layouts must map sides {SIDES} to layout names, got {layouts}")
    other = None
    if write.pair_with is not None:
        if len(layouts) != 1:
            raise ValueError("pairing with another dataset needs a source of one side")
        (side,) = layouts
        other_side = next(s for s in SIDES if s != side)
        other = _load_other_side(write.pair_with, other_side)
        layouts = {side: layouts[side], other_side: other.layout}
    if class_names is None and other is None:
        raise ConvertError(out, "no class names: give labels (e.g. a labels file) or a dataset to pair with")
    names = other.class_names if other is not None else list(class_names)
    label_map = _label_map(class_names, other.class_names, str(out)) if other is not None else None
    if other is not None:
        info = {**info, "paired_with": {"path": other.path, "name": other.info.get("name"), "side": other_side,
                                        "fingerprint": other.info.get("fingerprint")}}
    skipped: list[Skipped] = []
    done, stats = 0, {"matched": 0, "cut": 0, "other_only": 0}
    with DatasetWriter(out, name=name, class_names=names, hq_layout=layouts.get("hq"), lq_layout=layouts.get("lq"),
                       rows_per_shard=write.rows_per_shard, overwrite=write.overwrite, info=info) as writer:
        for item in _paired(items, other, label_map, stats):
            done += 1
            if isinstance(item, Skipped):
                skipped.append(item)
            else:
                if item.label == UNLABELLED:
                    skipped.append(Skipped(item.sample_id, "no label"))
                else:
                    writer.write(item)
            if write.progress is not None:
                write.progress(done, total)
    summary = writer.summary
    counts = summary["counts"]
    notes = list(notes)
    if other is not None:
        notes.append(f"paired with {other.path} ({other.side}): {stats['matched']} matched by sample_id, "
                     f"{stats['other_only']} only there (kept with their {other.side} side only)")
        if stats["cut"]:
            notes.append(f"{stats['cut']} paired samples had different frame counts on the two sides; both sides "
                         "were cut to the shorter one")
    return ConvertReport(
        format=fmt, out=str(out), written=counts["samples"], class_names=names, per_class=counts["per_class"],
        paired=counts["paired"], hq_only=counts["hq_only"], solitary=counts["solitary"],
        shards=len(summary["shards"]), skipped=skipped, notes=notes,
    )


def _paired(items: Iterable[Sample | Skipped], other: _OtherSide | None, label_map, stats: dict[str, int]
            ) -> Iterator[Sample | Skipped]:
    if other is None:
        yield from items
        return
    for item in items:
        if isinstance(item, Skipped):
            yield item
            continue
        theirs = other.samples.pop(item.sample_id, None)
        merged, cut = _merge(item, theirs, label_map)
        stats["matched"] += theirs is not None
        stats["cut"] += cut
        yield merged
    stats["other_only"] = len(other.samples)
    yield from other.samples.values()  # rows the source lacks keep their side only
