"""Penn Action ``labels/*.mat`` -> HQ ``penn13`` 2D (image pixels), visibility as the score.

Each file holds one video's human annotation: ``x``, ``y``, ``visibility`` [T, 13] in the ``penn13`` joint order
(head, shoulders, elbows, wrists, hips, knees, ankles; left before right), ``action``, ``train`` (1 train, -1 test)
and ``nframes``. The sample id is the file stem (``0001``); ``split`` is the dataset's own flag, so the ``official``
protocol gives Penn's train/test split; labels are the 15 action names sorted alphabetically.

Scores: a visible joint scores 1. An invisible joint (about 22% of all joints: self-occluded or out of the frame)
scores ``invisible_score``: 0 by default, which by the shard convention makes it missing (coordinates 0) — the
annotators' guess of its position is dropped. A positive ``invisible_score`` (e.g. 0.5, as a Kinect "inferred"
joint) keeps that guess. A joint annotated at exactly (0, 0) is missing either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from partkd.data.convert.common import (
    DEFAULT_WRITE,
    ConvertError,
    ConvertReport,
    Skipped,
    WriteOptions,
    check_inputs,
    files_in,
    guarded,
    side_sample,
    write_dataset,
)
from partkd.data.schema import Sample

LAYOUT = "penn13"
JOINTS = 13
PENN_ACTIONS: tuple[str, ...] = tuple(sorted((
    "baseball_pitch", "baseball_swing", "bench_press", "bowl", "clean_and_jerk", "golf_swing", "jump_rope",
    "jumping_jacks", "pullup", "pushup", "situp", "squat", "strum_guitar", "tennis_forehand", "tennis_serve",
)))
TRAIN_FLAG = {1: "train", -1: "test"}
_FIELDS = ("x", "y", "visibility", "action", "train")


def _scalar(mat: dict, key: str, path: Path):
    value = np.asarray(mat[key]).ravel()
    if value.size != 1:
        raise ConvertError(path, f"field {key!r} holds {value.size} values, expected one")
    return value[0]


def _numbers(mat: dict, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(mat[key], dtype=np.float64)
    except (TypeError, ValueError):
        kind = np.asarray(mat[key]).dtype
        raise ConvertError(path, f"field {key!r} holds {kind} values, expected numbers") from None


def read_penn_file(path: str | os.PathLike, invisible_score: float = 0.0, side: str = "hq") -> Sample | Skipped:
    """One Penn Action label file as a one-person sample (skipped if no joint is ever visible, e.g. ``1516``)."""
    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError... on a damaged file
        raise ConvertError(path, f"cannot be read as a MATLAB file ({type(err).__name__}: {err})") from None
    for key in _FIELDS:
        if key not in mat:
            raise ConvertError(path, f"has no field {key!r} (a Penn Action label file has {', '.join(_FIELDS)})")
    x, y, visibility = (_numbers(mat, key, path) for key in ("x", "y", "visibility"))
    for key, value in (("x", x), ("y", y), ("visibility", visibility)):
        if value.ndim != 2 or value.shape[1] != JOINTS:
            raise ConvertError(path, f"field {key!r} has shape {list(value.shape)}, expected [frames, {JOINTS}]")
    if not x.shape == y.shape == visibility.shape:
        raise ConvertError(path, f"fields 'x', 'y', 'visibility' disagree in shape: {list(x.shape)}, "
                                 f"{list(y.shape)}, {list(visibility.shape)}")
    frames = x.shape[0]
    if frames == 0:
        raise ConvertError(path, "has no frames")
    if "nframes" in mat and int(_scalar(mat, "nframes", path)) != frames:
        raise ConvertError(path, f"'nframes' says {int(_scalar(mat, 'nframes', path))} frames, 'x' has {frames} rows")
    bad = ~np.isfinite(x) | ~np.isfinite(y)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise ConvertError(path, f"joint {j + 1} has a non-finite coordinate", f"frame {t + 1}")
    action = str(_scalar(mat, "action", path))
    if action not in PENN_ACTIONS:
        raise ConvertError(path, f"action {action!r} is not one of the 15 Penn Action classes")
    flag = int(_scalar(mat, "train", path))
    if flag not in TRAIN_FLAG:
        raise ConvertError(path, f"'train' is {flag}, expected 1 (train) or -1 (test)")
    coords = np.stack([x, y], axis=-1)[None]  # (1, T, 13, 2)
    score = np.where(visibility > 0, 1.0, invisible_score)[None]  # (1, T, 13)
    score = np.where((coords == 0).all(-1), 0.0, score)
    if not score.any():
        return Skipped(str(path), "no skeleton: no joint is visible in any frame")
    return side_sample(side, coords, score, sample_id=path.stem, label=PENN_ACTIONS.index(action),
                       split=TRAIN_FLAG[flag])


def convert_penn(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    invisible_score: float = 0.0,
    side: str = "hq",
    name: str = "penn-action",
    write: WriteOptions = DEFAULT_WRITE,
) -> ConvertReport:
    """Penn Action's ``labels/`` folder (or the dataset folder holding it, or ``.mat`` files) -> dataset ``out``."""
    if not 0.0 <= invisible_score <= 1.0:
        raise ValueError(f"invisible_score must be in [0, 1], got {invisible_score}")
    paths = check_inputs(inputs, "Penn Action labels/ folder")
    paths = [p / "labels" if p.is_dir() and (p / "labels").is_dir() else p for p in paths]
    files = files_in(paths, "*.mat")
    if not files:
        raise ConvertError(", ".join(map(str, inputs)), "holds no .mat label files")

    def items() -> Iterator[Sample | Skipped]:
        for path in files:
            yield guarded(path, lambda path=path: read_penn_file(path, invisible_score, side), write.skip_bad)

    invisible = "missing" if invisible_score == 0 else f"{invisible_score} (annotated position kept)"
    info = {"converter": "penn", "source": [str(p) for p in inputs], "invisible_score": invisible_score,
            "score": f"visibility: visible 1, invisible {invisible}"}
    return write_dataset(out, items(), fmt="convert penn", name=name, class_names=list(PENN_ACTIONS),
                         layouts={side: LAYOUT}, info=info, total=len(files), write=write)
