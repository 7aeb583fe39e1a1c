"""Pose-estimator output for videos (OpenPifPaf, OpenPose JSON) -> LQ ``coco17`` (or another 2D layout).

Inputs, each one video or a folder of videos:

* **OpenPifPaf video output**: a ``.jsonl`` (or ``.openpifpaf.json``) file, one line per frame
  ``{"frame": i, "predictions": [{"keypoints": [x, y, c] * 17, "bbox": [x, y, w, h], "score": s}, ...]}``; a
  ``.json`` file holding a list of such records is read the same way. The video id is the file name without its
  suffixes (``clip.mp4.openpifpaf.json`` -> ``clip``; NTU's ``<name>_rgb`` -> ``<name>``, which pairs with the
  skeleton files and fills setup, camera, subject and replication).
* **Per-frame JSON files** in a folder (the video id is the folder's name), in the order of the last number in their
  names: OpenPifPaf ``*.predictions.json`` (a list of predictions as above) or OpenPose ``*_keypoints.json``
  (``{"people": [{"pose_keypoints_2d": [x, y, c] * 25 or 18}]}``; BODY_25 and COCO-18 are told apart by length).

A folder given as input is searched recursively: every ``.jsonl``/``.openpifpaf.json`` file is a video, and every
folder with other ``.json`` files is a video of those frames. Frames are the records in frame order (gaps in the
numbering are not filled). Joints map by name into ``layout`` (COCO-18 and BODY_25 hold every ``coco17`` and
``openpose18`` joint). Persons are tracked across frames by greedy box overlap (IoU >= ``iou_threshold`` with the
box where a track was last seen; OpenPose boxes come from the visible joints), and the ``max_persons`` tracks with
the highest summed detection score are kept, most confident first. A frame where a kept person is not detected, and
a joint with confidence 0, become score-0 joints (coordinates 0). Confidences are clipped to [0, 1].

Labels come from a CSV ``video_id,label`` (labels as integers, or class names — then sorted alphabetically into
labels), optionally with a header naming further columns ``split``, ``subject``, ``camera``, ``setup``,
``replication``; or, with ``WriteOptions.pair_with``, from the dataset the videos pair with.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partkd.data.convert.common import (
    DEFAULT_WRITE,
    UNLABELLED,
    ConvertError,
    ConvertReport,
    Skipped,
    WriteOptions,
    check_inputs,
    guarded,
    parse_ntu_name,
    side_sample,
    write_dataset,
)
from partkd.data.schema import ID_COLUMNS, Sample
from partkd.layouts import COCO17, OPENPOSE18, get_layout

# joint names of each estimator format, in its order (None: a joint with no name in the shared vocabulary)
SOURCE_JOINTS: dict[str, tuple[str | None, ...]] = {
    "coco17": COCO17.joints,
    "openpose-coco18": OPENPOSE18.joints,
    "openpose-body25": (
        "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
        "spine_base", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye",
        "left_eye", "right_ear", "left_ear", None, None, None, None, None, None,  # MidHip as spine_base; toes, heels
    ),
}
_OPENPOSE_BY_LENGTH = {25 * 3: "openpose-body25", 18 * 3: "openpose-coco18"}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class Detection:
    """One person in one frame, already in the target layout: keypoints (V, 2), scores (V,), box (x0, y0, x1, y1)."""

    keypoints: np.ndarray
    scores: np.ndarray
    box: np.ndarray
    score: float


# --------------------------------------------------------------------------------------------------- parsing


def _joint_index(source: str, layout_name: str, where: str) -> np.ndarray:
    """Source row of each target joint; refuses a target joint the source format does not have."""
    names = SOURCE_JOINTS[source]
    layout = get_layout(layout_name)
    missing = [j for j in layout.joints if j not in names]
    if missing:
        raise ConvertError(where, f"{source} output has no {', '.join(missing)}, which layout {layout_name} needs")
    return np.array([names.index(j) for j in layout.joints])


def _detection(values, source: str, layout: str, box, score, where: str) -> Detection | None:
    try:
        triples = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConvertError(where, f"keypoints are not numbers ({err})") from None
    if triples.size != 3 * len(SOURCE_JOINTS[source]):
        raise ConvertError(where, f"{triples.size} keypoint values, expected {3 * len(SOURCE_JOINTS[source])} "
                                  f"({source}: x, y, c per joint)")
    triples = triples.reshape(-1, 3)[_joint_index(source, layout, where)]  # (V, 3) in the target layout
    if not np.isfinite(triples).all():
        raise ConvertError(where, "non-finite keypoint value")
    conf = np.clip(triples[:, 2], 0.0, 1.0)  # a confidence; heatmap estimators give values a little over 1
    seen = conf > 0
    if not seen.any():
        return None
    xy = triples[:, :2]
    if box is None:
        lo, hi = xy[seen].min(axis=0), xy[seen].max(axis=0)
        box = np.concatenate([lo, hi])
    else:
        if np.size(box) != 4:
            raise ConvertError(where, f"bbox {box!r} is not [x, y, width, height]")
        try:
            x, y, w, h = (float(v) for v in box)  # OpenPifPaf: x, y, width, height
        except (TypeError, ValueError):
            raise ConvertError(where, f"bbox {box!r} is not numbers [x, y, width, height]") from None
        box = np.array([x, y, x + w, y + h])
    try:
        score = float(conf[seen].mean()) if score is None else float(score)
    except (TypeError, ValueError):
        raise ConvertError(where, f"score {score!r} is not a number") from None
    return Detection(np.where(seen[:, None], xy, 0.0), conf, box, score)


def frame_detections(doc, layout: str, where: str) -> list[Detection]:
    """The persons of one frame: an OpenPose frame dict, an OpenPifPaf predictions list or a video record."""
    if isinstance(doc, dict) and "people" in doc:
        if not isinstance(doc["people"], list):
            raise ConvertError(where, f"'people' is {type(doc['people']).__name__}, expected a list of persons")
        people = []
        for p, person in enumerate(doc["people"]):
            values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
            if not isinstance(values, list):
                raise ConvertError(where, f"people[{p}] has no 'pose_keypoints_2d' list")
            source = _OPENPOSE_BY_LENGTH.get(len(values))
            if source is None:
                raise ConvertError(where, f"people[{p}]: {len(values)} keypoint values is neither BODY_25 (75) nor "
                                          "COCO-18 (54)")
            people.append(_detection(values, source, layout, None, None, f"{where}: people[{p}]"))
        return [d for d in people if d is not None]
    predictions = doc.get("predictions") if isinstance(doc, dict) else doc
    if not isinstance(predictions, list):
        raise ConvertError(where, "is neither OpenPose output ({'people': [...]}) nor OpenPifPaf predictions "
                                  "(a list, or {'predictions': [...]})")
    found = []
    for p, pred in enumerate(predictions):
        if not isinstance(pred, dict) or "keypoints" not in pred:
            raise ConvertError(where, f"predictions[{p}] has no 'keypoints'")
        found.append(_detection(pred["keypoints"], "coco17", layout, pred.get("bbox"), pred.get("score"),
                                f"{where}: predictions[{p}]"))
    return [d for d in found if d is not None]


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        hint = " (several JSON documents: a whole video in JSON Lines should be named .jsonl)" \
            if err.msg == "Extra data" else ""
        raise ConvertError(path, f"is not valid JSON: {err.msg}{hint}", f"line {err.lineno}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConvertError(path, f"cannot be read ({err})") from None


MAX_EMPTY_PER_RECORD = 16  # frame numbers may leave at most this many empty frames per record (and 1024 more)


def read_video_file(path: Path, layout: str) -> tuple[list[list[Detection]], int]:
    """An OpenPifPaf video file (JSON Lines, or a JSON list of frame records) as detections per frame, and how many
    frames no record names.

    A record with a ``frame`` number stands at ``frame - first frame``; frames no record names are empty (no
    person), so gaps keep time. Records without a number take their position in the file.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConvertError(path, f"cannot be read ({err})") from None
    records = []
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = [(i, r) for i, r in enumerate(json.loads(text), start=1)]
        except json.JSONDecodeError as err:
            raise ConvertError(path, f"is not valid JSON: {err.msg}", f"line {err.lineno}") from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ConvertError(path, f"is not valid JSON: {err.msg} (the file may be truncated)",
                                       f"line {number}") from None
    placed: dict[int, list[Detection]] = {}
    lines: dict[int, int] = {}
    for position, (number, record) in enumerate(records):
        if not isinstance(record, dict) or "predictions" not in record:
            raise ConvertError(path, "a frame record needs 'predictions'", f"line {number}")
        frame = record.get("frame", position)
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise ConvertError(path, f"frame {frame!r} is not an integer", f"line {number}")
        if frame in placed:
            raise ConvertError(path, f"frame {frame} appears twice (first at line {lines[frame]})", f"line {number}")
        placed[frame] = frame_detections(record["predictions"], layout, f"{path}: line {number}")
        lines[frame] = number
    if not placed:
        return [], 0
    first, last = min(placed), max(placed)
    span = last - first + 1
    if span > len(placed) * (MAX_EMPTY_PER_RECORD + 1) + 1024:
        raise ConvertError(path, f"frame numbers run from {first} to {last} ({span} frames) for {len(placed)} "
                                 "records: too sparse to fill with empty frames; the numbers may be damaged",
                           f"line {lines[last]}")
    return [placed.get(t, []) for t in range(first, last + 1)], span - len(placed)


def _frame_number(path: Path) -> tuple[int, str]:
    numbers = re.findall(r"\d+", path.name)
    return (int(numbers[-1]) if numbers else -1, path.name)


def read_frame_folder(files: list[Path], layout: str) -> list[list[Detection]]:
    """Per-frame JSON files (OpenPose or OpenPifPaf) as detections per frame, in frame-number order."""
    return [frame_detections(_load_json(f), layout, str(f)) for f in sorted(files, key=_frame_number)]


def _video_id(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl", ".json", ".openpifpaf", ".predictions", *VIDEO_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return _ntu_video(name)


def _ntu_video(name: str) -> str:
    """NTU's RGB videos are ``<NTU name>_rgb.avi``: their id is the NTU name, so they pair with the skeleton files."""
    return name[: -len("_rgb")] if name.endswith("_rgb") and parse_ntu_name(name[: -len("_rgb")]) else name


def _is_video_file(path: Path) -> bool:
    return path.name.endswith(".jsonl") or path.name.endswith(".openpifpaf.json")


def find_videos(inputs: Sequence[Path]) -> dict[str, tuple[str, Path | list[Path]]]:
    """video id -> ("file", path) or ("frames", [per-frame files]); refuses two videos with the same id."""
    videos: dict[str, tuple[str, Path | list[Path]]] = {}
    places: dict[str, str] = {}

    def add(video_id: str, kind: str, source, place: str):
        if video_id in videos:
            raise ConvertError(place, f"video id {video_id!r} also comes from {places[video_id]}; ids must be unique")
        videos[video_id], places[video_id] = (kind, source), place

    for path in inputs:
        if path.is_file():
            add(_video_id(path), "file", path, str(path))
            continue
        for folder, _, names in sorted(os.walk(path)):
            folder = Path(folder)
            frame_files = []
            for name in sorted(names):
                file = folder / name
                if _is_video_file(file):
                    add(_video_id(file), "file", file, str(file))
                elif name.endswith(".json"):
                    frame_files.append(file)
            if frame_files:
                add(_ntu_video(folder.name), "frames", frame_files, str(folder))
    return videos


# --------------------------------------------------------------------------------------------------- tracking


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (N, 4) and b (K, 4), (x0, y0, x1, y1) -> (N, K)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, K, 2)
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0.0, None).prod(-1)  # (N, K)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None).prod(-1)


def track_persons(frames: list[list[Detection]], max_persons: int, iou_threshold: float, joints: int
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Greedy IoU tracking; the ``max_persons`` most confident tracks as (M, T, V, 2) and scores (M, T, V)."""
    tracks: list[dict] = []  # {"box": last box, "frames": {t: Detection}, "total": summed detection score}
    for t, detections in enumerate(frames):
        if not detections:
            continue
        free_tracks = list(range(len(tracks)))
        free_dets = list(range(len(detections)))
        if tracks:
            iou = box_iou(np.stack([d.box for d in detections]), np.stack([tr["box"] for tr in tracks]))  # (N, K)
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                d, k = divmod(int(flat), iou.shape[1])
                if iou[d, k] < iou_threshold:
                    break
                if d in free_dets and k in free_tracks:
                    _extend(tracks[k], t, detections[d])
                    free_dets.remove(d)
                    free_tracks.remove(k)
        for d in free_dets:
            tracks.append({"box": None, "frames": {}, "total": 0.0})
            _extend(tracks[-1], t, detections[d])
    if not tracks:
        return None
    kept = sorted(tracks, key=lambda tr: -tr["total"])[:max_persons]
    coords = np.zeros((len(kept), len(frames), joints, 2), dtype=np.float32)  # (M, T, V, 2)
    score = np.zeros((len(kept), len(frames), joints), dtype=np.float32)  # (M, T, V)
    for m, track in enumerate(kept):
        for t, det in track["frames"].items():
            coords[m, t], score[m, t] = det.keypoints, det.scores
    return coords, score


def _extend(track: dict, t: int, det: Detection) -> None:
    track["box"], track["total"] = det.box, track["total"] + det.score
    track["frames"][t] = det


# --------------------------------------------------------------------------------------------------- labels


def read_labels_csv(path: str | os.PathLike, class_names: list[str] | None
                    ) -> tuple[dict[str, dict], list[str]]:
    """video id -> {"label", and any of split/subject/camera/setup/replication}, and the class names."""
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConvertError(path, f"cannot be read as CSV ({err})") from None
    rows = [(n, r) for n, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]
    if not rows:
        raise ConvertError(path, "holds no rows (expected video_id,label)")
    columns = ["video_id", "label"]
    first = rows[0][1]
    if len(first) > 1 and first[1].strip().lower() == "label":
        columns = [c.strip().lower() for c in rows[0][1]]
        unknown = sorted(set(columns) - {"video_id", "label", "split", *ID_COLUMNS})
        if columns[:2] != ["video_id", "label"] or unknown:
            raise ConvertError(path, f"header must start video_id,label and may add split, "
                                     f"{', '.join(ID_COLUMNS)}; found {','.join(columns)}", "line 1")
        rows = rows[1:]
    entries: dict[str, dict] = {}
    for number, row in rows:
        if len(row) != len(columns):
            raise ConvertError(path, f"{len(row)} fields, expected {len(columns)} ({','.join(columns)})",
                               f"line {number}")
        values = dict(zip(columns, (c.strip() for c in row)))
        video = values.pop("video_id")
        if video in entries:
            raise ConvertError(path, f"video {video!r} is listed twice", f"line {number}")
        for key in ID_COLUMNS:
            if key in values:
                try:
                    values[key] = int(values[key]) if values[key] else None
                except ValueError:
                    raise ConvertError(path, f"{key} {values[key]!r} is not an integer", f"line {number}") from None
        if "split" in values:
            if values["split"] not in ("", "train", "test"):
                raise ConvertError(path, f"split {values['split']!r} is not train or test", f"line {number}")
            values["split"] = values["split"] or None
        entries[video] = values
    return _label_entries(entries, class_names, path)


def _label_entries(entries: dict[str, dict], class_names: list[str] | None, path: Path
                   ) -> tuple[dict[str, dict], list[str]]:
    labels = [e["label"] for e in entries.values()]
    numeric = all(re.fullmatch(r"-?\d+", label) for label in labels)
    if numeric:
        top = max(int(label) for label in labels)
        names = class_names or [f"class {k}" for k in range(top + 1)]
        for video, e in entries.items():
            e["label"] = int(e["label"])
            if not 0 <= e["label"] < len(names):
                raise ConvertError(path, f"video {video!r}: label {e['label']} outside [0, {len(names)})")
        return entries, names
    names = class_names or sorted(set(labels))
    for video, e in entries.items():
        if e["label"] not in names:
            raise ConvertError(path, f"video {video!r}: class {e['label']!r} is not among the class names")
        e["label"] = names.index(e["label"])
    return entries, names


# --------------------------------------------------------------------------------------------------- converting


def read_video(video_id: str, kind: str, source, layout: str, labels: dict[str, dict] | None, max_persons: int,
               iou_threshold: float, side: str, gaps: list[int] | None = None) -> Sample | Skipped:
    """One video as a sample; the number of empty frames that filled gaps in its frame numbers is appended to
    ``gaps`` when it has any."""
    if kind == "file":
        frames, empty = read_video_file(source, layout)
        if empty and gaps is not None:
            gaps.append(empty)
    else:
        frames = read_frame_folder(source, layout)
    place = str(source if kind == "file" else source[0].parent)
    if not frames:
        return Skipped(place, "no frames")
    tracked = track_persons(frames, max_persons, iou_threshold, get_layout(layout).num_joints)
    if tracked is None:
        return Skipped(place, "no person detected in any frame")
    entry = dict(labels[video_id]) if labels is not None else {"label": UNLABELLED}
    for key, value in (parse_ntu_name(video_id) or {}).items():  # NTU names carry the ids the protocols need
        if key != "action" and entry.get(key) is None:
            entry[key] = value
    return side_sample(side, *tracked, sample_id=video_id, **entry)


def convert_pose_json(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    class_names: list[str] | None = None,
    layout: str = "coco17",
    max_persons: int = 2,
    iou_threshold: float = 0.3,
    side: str = "lq",
    name: str = "pose-json",
    write: WriteOptions = DEFAULT_WRITE,
) -> ConvertReport:
    """Pose-estimator JSON for videos -> dataset ``out``; labels from the ``labels`` CSV or the ``write.pair_with``
    dataset."""
    if get_layout(layout).dims != 2:
        raise ValueError(f"pose-estimator output is 2D; layout {layout} is {get_layout(layout).dims}D")
    if max_persons < 1 or not 0.0 < iou_threshold <= 1.0:
        raise ValueError("max_persons must be at least 1 and iou_threshold in (0, 1]")
    if labels is None and write.pair_with is None:
        raise ValueError("pose-json needs labels: a CSV video_id,label (--labels) or a dataset to pair with")
    videos = find_videos(check_inputs(inputs, "JSON file or folder of pose-estimator output"))
    if not videos:
        raise ConvertError(", ".join(map(str, inputs)), "holds no pose JSON (.json, .jsonl)")
    label_entries, names = read_labels_csv(labels, class_names) if labels is not None else (None, None)
    notes, gaps = [], []
    if label_entries is not None:
        missing = sorted(set(label_entries) - set(videos))
        if missing:
            notes.append(f"{len(missing)} videos of the labels file have no pose output, e.g. {', '.join(missing[:3])}")

    def items() -> Iterator[Sample | Skipped]:
        for video_id, (kind, source) in videos.items():
            if label_entries is not None and video_id not in label_entries:
                yield Skipped(video_id, "no label in the labels file")
                continue
            yield guarded(video_id, lambda v=video_id, k=kind, s=source: read_video(
                v, k, s, layout, label_entries, max_persons, iou_threshold, side, gaps), write.skip_bad)
        if gaps:
            notes.append(f"{sum(gaps)} empty frames (no person) filled gaps in the frame numbers of {len(gaps)} "
                         "video(s)")

    info = {"converter": "pose-json", "source": [str(p) for p in inputs], "labels": labels and str(labels),
            "max_persons": max_persons, "iou_threshold": iou_threshold,
            "tracking": "greedy box IoU, tracks ranked by summed detection score"}
    return write_dataset(out, items(), fmt="convert pose-json", name=name, class_names=names,
                         layouts={side: layout}, info=info, total=len(videos), write=write, notes=notes)
