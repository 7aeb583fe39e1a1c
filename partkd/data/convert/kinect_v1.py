"""Kinect V1 20-joint text files -> HQ ``kinect20`` 3D: MSR Action3D and UTKinect-Action3D.

The folder's file names say which dataset it is:

* **MSR Action3D** ``aXX_sYY_eZZ_skeleton3D.txt``: per frame 20 lines ``x y z confidence`` in MSR's own joint
  order (:data:`MSR_JOINTS`), mapped by joint name to the Kinect SDK order of ``kinect20``. The dataset's notes call
  the confidence column "not useful" (it does not follow the SDK's tracking states), so it is ignored: a joint
  scores 1 unless all three coordinates are 0 (no skeleton in that frame), which scores 0. Action ``XX`` gives the
  label (``XX - 1``), ``YY`` the subject and ``ZZ`` the replication; the sample id is the file stem. The line count
  alone cannot tell joints from frames (19 joints a frame over 20k lines read as 19k frames of shifted joints), and
  the confidence column carries nothing to tell them by, so the bones do: a body's bone lengths change by a few
  percent from one frame to the next, those of joints read into the wrong slots by about half their length. A file
  whose median change is over :data:`MAX_BONE_CHANGE` is refused as misaligned (:func:`bone_change`).
* **UTKinect-Action3D** ``joints_sXX_eYY.txt``: per line a frame number then 20 x 3 coordinates in the Kinect SDK
  order (``kinect20``'s); ``actionLabel.txt`` segments each sequence into its ten actions (``walk: 252 390``, frame
  numbers inclusive). A segment is one sample with id ``<stem>_<action>`` (``joints_s01_e01_walk``); a segment whose
  range is ``NaN`` or holds no frame is skipped and reported. Scores as for MSR (the files carry no confidence).

Subject ids are set for both, so the ``msr-xsub`` protocol (:data:`~partkd.data.splits.SOURCE_PROTOCOLS`: subjects
1, 3, 5, 7, 9 train, the cross-subject test of Li et al. 2010) and the seeded half-subject splits apply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from partkd.data.convert.common import (
    DEFAULT_WRITE,
    ConvertError,
    ConvertReport,
    Skipped,
    WriteOptions,
    check_inputs,
    guarded,
    side_sample,
    write_dataset,
)
from partkd.data.schema import Sample
from partkd.layouts import get_layout

LAYOUT = "kinect20"
JOINTS = 20

# MSR Action3D's joint order (0-based), as its skeleton files list the joints.
MSR_JOINTS: tuple[str, ...] = (
    "right_shoulder", "left_shoulder", "spine_shoulder", "spine_mid", "right_hip", "left_hip", "spine_base",
    "right_elbow", "left_elbow", "right_wrist", "left_wrist", "right_hand", "left_hand", "right_knee", "left_knee",
    "right_ankle", "left_ankle", "right_foot", "left_foot", "head",
)
MSR_TO_KINECT20 = np.array([MSR_JOINTS.index(j) for j in get_layout(LAYOUT).joints])  # kinect20 joint <- MSR row
MSR_ACTIONS: tuple[str, ...] = (
    "high arm wave", "horizontal arm wave", "hammer", "hand catch", "forward punch", "high throw", "draw x",
    "draw tick", "draw circle", "hand clap", "two hand wave", "side-boxing", "bend", "forward kick", "side kick",
    "jogging", "tennis swing", "tennis serve", "golf swing", "pick up & throw",
)
UTK_ACTIONS: tuple[str, ...] = (
    "walk", "sitDown", "standUp", "pickUp", "carry", "throw", "push", "pull", "waveHands", "clapHands",
)
_MSR_NAME = re.compile(r"a(\d+)_s(\d+)_e(\d+)_skeleton3D\.txt", re.IGNORECASE)
_UTK_NAME = re.compile(r"joints_s(\d+)_e(\d+)\.txt", re.IGNORECASE)
_UTK_SEQUENCE = re.compile(r"s\d+_e\d+")
_UTK_LABELS = "actionLabel.txt"


def _numeric_rows(path: Path, per_line: int | None) -> np.ndarray:
    """The non-blank lines of a text file as a float array (lines, per_line); errors name the line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConvertError(path, f"cannot be read as text ({err})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if per_line is not None and len(fields) != per_line:
            raise ConvertError(path, f"expected {per_line} values, found {len(fields)}", f"line {number}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise ConvertError(path, f"{line.strip()[:60]!r} is not {per_line} numbers", f"line {number}") from None
    if any(not np.isfinite(r).all() for r in rows):
        number = next(i for i, r in enumerate(rows) if not np.isfinite(r).all())
        raise ConvertError(path, "holds a non-finite value", f"data line {number + 1}")
    return np.array(rows, dtype=np.float64).reshape(len(rows), per_line or 0)


def _score_nonzero(coords: np.ndarray) -> np.ndarray:
    """1 for a joint with any non-zero coordinate, 0 for (0, 0, 0): coords (..., V, 3) -> (..., V)."""
    return (coords != 0).any(axis=-1).astype(np.float32)


# --------------------------------------------------------------------------------------------------- MSR Action3D

# The median relative change of a bone's length between consecutive frames above which a file's lines do not group
# into frames of 20 joints. Measured on 20 sequences of partkd's synthetic motion: 0.02-0.03 read right, 0.30-0.59
# with one joint line a frame missing (slots shifted by a line a frame); real Kinect V1 tracking is noisier than the
# synthetic, so the bar sits well above the first and below the second.
MAX_BONE_CHANGE = 0.2


def bone_change(coords: np.ndarray) -> float | None:
    """The median over ``kinect20``'s bones and consecutive frames (both with a skeleton) of
    ``|L(t+1) - L(t)| / L(t)``, for coords (T, 20, 3) in ``kinect20`` order; None with fewer than 2 such frames."""
    seen = (coords != 0).any(axis=-1).all(axis=-1)  # (T,): every joint there
    pairs = seen[:-1] & seen[1:]
    if not pairs.any():
        return None
    edges = np.array(get_layout(LAYOUT).edges)
    lengths = np.linalg.norm(coords[:, edges[:, 0]] - coords[:, edges[:, 1]], axis=-1)  # (T, bones)
    change = np.abs(lengths[1:] - lengths[:-1]) / np.maximum(lengths[:-1], 1e-6)
    return float(np.median(change[pairs]))


def read_msr_file(path: str | os.PathLike, side: str = "hq") -> Sample | Skipped:
    path = Path(path)
    match = _MSR_NAME.fullmatch(path.name)
    if match is None:
        return Skipped(str(path), "the file name is not aXX_sYY_eZZ_skeleton3D.txt")
    action, subject, replication = (int(g) for g in match.groups())
    if not 1 <= action <= len(MSR_ACTIONS):
        return Skipped(str(path), f"action a{action:02d} is not one of MSR Action3D's {len(MSR_ACTIONS)}")
    rows = _numeric_rows(path, 4)
    if len(rows) % JOINTS:
        raise ConvertError(path, f"has {len(rows)} joint lines, not a multiple of {JOINTS}: frame "
                                 f"{len(rows) // JOINTS + 1} is incomplete (the file may be truncated)")
    coords = rows[:, :3].reshape(-1, JOINTS, 3)[:, MSR_TO_KINECT20][None]  # (1, T, 20, 3) in kinect20 order
    change = bone_change(coords[0])
    if change is not None and change > MAX_BONE_CHANGE:
        raise ConvertError(path, f"its {len(rows)} lines do not group into frames of {JOINTS} joints: read so, the "
                                 f"bone lengths change by a median {change:.0%} from one frame to the next (a body's "
                                 f"by a few %); are there {JOINTS} joint lines per frame?")
    score = _score_nonzero(coords)
    if not score.any():
        return Skipped(str(path), "no skeleton: every joint of every frame is (0, 0, 0)")
    return side_sample(side, coords, score, sample_id=path.stem, label=action - 1, subject=subject,
                       replication=replication)


# --------------------------------------------------------------------------------------------------- UTKinect


def read_utk_labels(path: str | os.PathLike) -> dict[str, list[tuple[str, float, float]]]:
    """``actionLabel.txt``: sequence (``s01_e01``) -> [(action, first frame, last frame)]; NaN for a missing range."""
    path = Path(path)
    segments: dict[str, list[tuple[str, float, float]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if ":" not in text:
            if not _UTK_SEQUENCE.fullmatch(text):
                raise ConvertError(path, f"expected a sequence name (s01_e01) or 'action: first last', found "
                                         f"{text[:60]!r}", f"line {number}")
            current = text
            segments.setdefault(current, [])
            continue
        action, _, rest = text.partition(":")
        fields = rest.split()
        if current is None or len(fields) != 2:
            raise ConvertError(path, f"expected a sequence name (s01_e01) or 'action: first last', found "
                                     f"{text[:60]!r}", f"line {number}")
        try:
            first, last = float(fields[0]), float(fields[1])
        except ValueError:
            raise ConvertError(path, f"frame range {rest.strip()!r} is not two numbers", f"line {number}") from None
        if action.strip() not in UTK_ACTIONS:
            raise ConvertError(path, f"action {action.strip()!r} is not one of {', '.join(UTK_ACTIONS)}",
                               f"line {number}")
        segments[current].append((action.strip(), first, last))
    return segments


def read_utk_file(path: str | os.PathLike, segments: list[tuple[str, float, float]], side: str = "hq"
                  ) -> list[Sample | Skipped]:
    """The action segments of one UTKinect sequence file as samples."""
    path = Path(path)
    subject, replication = (int(g) for g in _UTK_NAME.fullmatch(path.name).groups())
    rows = _numeric_rows(path, 1 + 3 * JOINTS)
    frame_numbers = rows[:, 0].astype(np.int64)
    coords = rows[:, 1:].reshape(-1, JOINTS, 3)  # (T_file, 20, 3), Kinect SDK order = kinect20
    out: list[Sample | Skipped] = []
    for action, first, last in segments:
        sample_id = f"{path.stem}_{action}"
        if not (np.isfinite(first) and np.isfinite(last)):
            out.append(Skipped(sample_id, "actionLabel.txt gives no frame range (NaN)"))
            continue
        rows_in = np.flatnonzero((frame_numbers >= first) & (frame_numbers <= last))
        # a frame number listed twice keeps its first line
        _, first_of_each = np.unique(frame_numbers[rows_in], return_index=True)
        rows_in = rows_in[np.sort(first_of_each)]
        segment = coords[rows_in][None]  # (1, T, 20, 3)
        score = _score_nonzero(segment)
        if not score.any():
            out.append(Skipped(sample_id, f"no skeleton in frames {int(first)}-{int(last)}"))
            continue
        out.append(side_sample(side, segment, score, sample_id=sample_id, label=UTK_ACTIONS.index(action),
                               subject=subject, replication=replication))
    return out


# --------------------------------------------------------------------------------------------------- the folder


def detect_dataset(files: Sequence[Path]) -> str:
    """``"msr-action3d"`` or ``"utkinect"`` from the file names; refuses a folder that mixes or has neither."""
    msr = any(_MSR_NAME.fullmatch(f.name) for f in files)
    utk = any(_UTK_NAME.fullmatch(f.name) for f in files)
    if msr and utk:
        raise ConvertError(files[0].parent, "mixes MSR Action3D (aXX_sYY_eZZ_skeleton3D.txt) and UTKinect "
                                            "(joints_sXX_eYY.txt) files; convert them separately")
    if not (msr or utk):
        raise ConvertError(files[0].parent if files else "<inputs>", "holds neither MSR Action3D files "
                           "(aXX_sYY_eZZ_skeleton3D.txt) nor UTKinect files (joints_sXX_eYY.txt)")
    return "msr-action3d" if msr else "utkinect"


def convert_kinect_v1(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    side: str = "hq",
    name: str | None = None,
    write: WriteOptions = DEFAULT_WRITE,
) -> ConvertReport:
    """A folder of MSR Action3D or UTKinect-Action3D skeleton files -> dataset ``out`` (``kinect20``)."""
    paths = check_inputs(inputs, "folder of Kinect V1 skeleton files")
    files = sorted({f for p in paths for f in (p.glob("*.txt") if p.is_dir() else [p])}, key=lambda f: f.name)
    dataset = detect_dataset(files)
    if dataset == "msr-action3d":
        sources = [f for f in files if _MSR_NAME.fullmatch(f.name)]
        class_names = list(MSR_ACTIONS)
        total = len(sources)

        def items() -> Iterator[Sample | Skipped]:
            for path in sources:
                yield guarded(path, lambda path=path: read_msr_file(path, side), write.skip_bad)
    else:
        sources = [f for f in files if _UTK_NAME.fullmatch(f.name)]
        label_files = [f for f in files if f.name == _UTK_LABELS] + [
            p / _UTK_LABELS for p in paths if p.is_dir() and (p / _UTK_LABELS).exists()]
        if not label_files:
            raise ConvertError(paths[0], f"UTKinect files need {_UTK_LABELS} (the action segments) beside them")
        segments = read_utk_labels(label_files[0])
        class_names = list(UTK_ACTIONS)
        total = sum(len(segments.get(f.stem[len("joints_"):], [None])) for f in sources)

        def items() -> Iterator[Sample | Skipped]:
            for path in sources:
                sequence = path.stem[len("joints_"):]
                if sequence not in segments:
                    yield Skipped(str(path), f"sequence {sequence} is not in {_UTK_LABELS}")
                    continue
                try:
                    yield from read_utk_file(path, segments[sequence], side)
                except ConvertError as err:
                    if not write.skip_bad:
                        raise
                    yield Skipped(str(path), str(err))

    info = {"converter": "kinect-v1", "dataset": dataset, "source": [str(p) for p in inputs],
            "score": "1 for a joint with coordinates, 0 for (0, 0, 0); MSR's confidence column is not used"}
    return write_dataset(out, items(), fmt=f"convert kinect-v1 ({dataset})", name=name or dataset,
                         class_names=class_names, layouts={side: LAYOUT}, info=info, total=total, write=write)
