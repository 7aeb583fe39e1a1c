"""NTU RGB+D (60 and 120) raw ``.skeleton`` files -> HQ ``ntu25`` 3D (Kinect V2 camera space, metres).

A file is text: the frame count; per frame the number of bodies; per body a 10-value info line (body id first), the
joint count (25) and one line of 12 values per joint (x y z depthX depthY colorX colorY orientW orientX orientY
orientZ trackingState). We keep x, y, z and turn the tracking state into the score: tracked (2) -> 1.0, inferred
(1) -> 0.5, not tracked (0) -> 0 with coordinates 0. The joint order of the files is the ``ntu25`` layout's order.

Where more bodies are tracked than kept (``max_bodies``, 2 as in the paper), the most active ones are kept: motion
energy = the variance over time of each joint coordinate while the body is tracked, summed over joints and axes
(close to the energy of the usual NTU preparation scripts, without their further denoising). Kept bodies come in
order of energy; a body absent from a frame has score 0 there. A file without any body in any frame (NTU lists 302
such samples) is skipped and listed in the report, never an error.

Setup, camera, subject, replication and action come from the name ``SsssCcccPpppRrrrAaaa``; the label is the action
minus 1. Protocols: ``xsub`` (NTU-60 cross-subject), ``xview`` (cameras 2, 3 train), ``xset`` (NTU-120 cross-setup)
apply from the id columns, and ``xsub120`` (:data:`~partkd.data.splits.SOURCE_PROTOCOLS`) for NTU-120 cross-subject.
"""

from __future__ import annotations

import os
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
    files_in,
    guarded,
    parse_ntu_name,
    side_sample,
    write_dataset,
)
from partkd.data.schema import Sample

LAYOUT = "ntu25"
JOINTS = 25
TRACKING_SCORE = np.array([0.0, 0.5, 1.0], dtype=np.float32)  # not tracked, inferred, tracked

# Shahroudy et al. (CVPR 2016) and Liu et al. (TPAMI 2019): actions A001..A120, in order.
NTU_ACTIONS: tuple[str, ...] = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup", "throw", "sitting down",
    "standing up (from sitting position)", "clapping", "reading", "writing", "tear up paper", "wear jacket",
    "take off jacket", "wear a shoe", "take off a shoe", "wear on glasses", "take off glasses", "put on a hat/cap",
    "take off a hat/cap", "cheer up", "hand waving", "kicking something", "reach into pocket",
    "hopping (one foot jumping)", "jump up", "make a phone call/answer phone", "playing with phone/tablet",
    "typing on a keyboard", "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute", "put the palms together",
    "cross hands in front (say stop)", "sneeze/cough", "staggering", "falling", "touch head (headache)",
    "touch chest (stomachache/heart pain)", "touch back (backache)", "touch neck (neckache)",
    "nausea or vomiting condition", "use a fan (with hand or paper)/feeling warm", "punching/slapping other person",
    "kicking other person", "pushing other person", "pat on back of other person", "point finger at the other person",
    "hugging other person", "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    # NTU RGB+D 120 adds A061..A120
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball", "tennis bat swing",
    "juggling table tennis balls", "hush (quite)", "flick hair", "thumb up", "thumb down", "make ok sign",
    "make victory sign", "staple book", "counting money", "cutting nails", "cutting paper (using scissors)",
    "snapping fingers", "open bottle", "sniff (smell)", "squat down", "toss a coin", "fold paper", "ball up paper",
    "play magic cube", "apply cream on face", "apply cream on hand back", "put on bag", "take off bag",
    "put something into a bag", "take something out of a bag", "open a box", "move heavy objects", "shake fist",
    "throw up cap/hat", "hands up (both hands)", "cross arms", "arm circles", "arm swings", "running on the spot",
    "butt kicks (kick backward)", "cross toe touch", "side kick", "yawn", "stretch oneself", "blow nose",
    "hit other person with something", "wield knife towards other person", "knock over other person (hit with body)",
    "grab other person's stuff", "shoot at other person with a gun", "step on foot", "high-five", "cheers and drink",
    "carry something with other person", "take a photo of other person", "follow other person",
    "whisper in other person's ear", "exchange things with other person", "support somebody with hand",
    "finger-guessing game (playing rock-paper-scissors)",
)


class _Lines:
    """A cursor over a file's lines that names the file and the line (1-based) in every error."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConvertError(path, f"cannot be read as text ({err})") from None
        self.pos = 0

    def error(self, message: str, line: int | None = None) -> ConvertError:
        return ConvertError(self.path, message, f"line {(self.pos if line is None else line) + 1}")

    def take(self, count: int, what: str) -> list[str]:
        if self.pos + count > len(self.lines):
            raise ConvertError(self.path, f"file ends early: expected {what} at line {self.pos + 1} "
                                          f"({len(self.lines)} lines in all); the file may be truncated")
        chunk = self.lines[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def int(self, what: str) -> int:
        text = self.take(1, what)[0].strip()
        try:
            return int(text)
        except ValueError:
            raise self.error(f"expected {what} (an integer), found {text[:40]!r}", self.pos - 1) from None

    def floats(self, count: int, per_line: int, what: str) -> np.ndarray:
        """``count`` lines of ``per_line`` numbers each, as a (count, per_line) array."""
        first = self.pos
        chunk = self.take(count, what)
        try:
            values = np.array(" ".join(chunk).split(), dtype=np.float64)
        except ValueError:
            values = None
        if values is None or values.size != count * per_line:
            for i, line in enumerate(chunk):  # find the line to name
                fields = line.split()
                try:
                    [float(f) for f in fields]
                except ValueError:
                    raise self.error(f"{what}: {line.strip()[:60]!r} is not {per_line} numbers", first + i) from None
                if len(fields) != per_line:
                    raise self.error(f"{what}: expected {per_line} values, found {len(fields)}", first + i)
            raise self.error(f"{what}: expected {count} lines of {per_line} numbers", first)
        values = values.reshape(count, per_line)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise self.error(f"{what}: a value is not finite", first + int(bad[0]))
        return values


def read_skeleton_file(path: str | os.PathLike) -> tuple[int, dict[str, tuple[list[int], list[np.ndarray]]]]:
    """Frame count and, per body id, the frames it appears in and its joint rows (25, 12) there, in file order."""
    lines = _Lines(Path(path))
    frames = lines.int("the frame count")
    bodies: dict[str, tuple[list[int], list[np.ndarray]]] = {}
    for t in range(frames):
        count = lines.int(f"the body count of frame {t + 1}")
        for b in range(count):
            where = f"frame {t + 1}, body {b + 1}"
            info = lines.take(1, f"the body info line ({where})")[0].split()
            if len(info) != 10:
                raise lines.error(f"{where}: the body info line has {len(info)} values, expected 10", lines.pos - 1)
            joints = lines.int(f"the joint count ({where})")
            if joints != JOINTS:
                raise lines.error(f"{where}: {joints} joints, an NTU body has {JOINTS}", lines.pos - 1)
            rows = lines.floats(joints, 12, f"joint lines ({where})")
            frames_of, rows_of = bodies.setdefault(info[0], ([], []))
            if frames_of and frames_of[-1] == t:
                continue  # the same body id twice in one frame: keep the first
            frames_of.append(t)
            rows_of.append(rows)
    left = [i for i in range(lines.pos, len(lines.lines)) if lines.lines[i].strip()]
    if left:
        raise lines.error(f"{len(left)} lines after the last of the {frames} frames the header declares; the frame "
                          "count or a body count is wrong", left[0])
    return frames, bodies


def motion_energy(xyz: np.ndarray) -> float:
    """Variance over time of every joint coordinate, summed: xyz (T_b, V, 3) of one body while it is tracked."""
    return float(np.var(xyz, axis=0).sum()) if len(xyz) > 1 else 0.0


def select_bodies(frames: int, bodies: dict[str, tuple[list[int], list[np.ndarray]]], max_bodies: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The ``max_bodies`` most active bodies as coords (M, T, 25, 3) and score (M, T, 25), most active first."""
    tracks = []
    for frames_of, rows_of in bodies.values():
        rows = np.stack(rows_of)  # (T_b, 25, 12)
        tracks.append((motion_energy(rows[:, :, :3]), frames_of, rows))
    tracks.sort(key=lambda track: -track[0])  # stable: equal energies keep file order
    kept = tracks[:max_bodies]
    coords = np.zeros((len(kept), frames, JOINTS, 3), dtype=np.float32)  # (M, T, V, 3)
    score = np.zeros((len(kept), frames, JOINTS), dtype=np.float32)  # (M, T, V)
    for m, (_, frames_of, rows) in enumerate(kept):
        state = rows[:, :, 11].astype(np.int64)  # (T_b, V)
        coords[m, frames_of] = rows[:, :, :3]
        score[m, frames_of] = TRACKING_SCORE[np.clip(state, 0, 2)]
    return coords, score


def read_ntu_sample(path: str | os.PathLike, max_bodies: int = 2, side: str = "hq") -> Sample | Skipped:
    """One ``.skeleton`` file as a sample (or :class:`Skipped` when its name is not NTU's or it holds no body)."""
    path = Path(path)
    sample_id = path.name.split(".")[0]
    ids = parse_ntu_name(sample_id)
    if ids is None:
        return Skipped(str(path), "the file name is not an NTU name SsssCcccPpppRrrrAaaa")
    frames, bodies = read_skeleton_file(path)
    if frames == 0 or not bodies:
        return Skipped(str(path), "no skeleton: no body is tracked in any frame")
    for frames_of, rows_of in bodies.values():
        bad = [t for t, rows in zip(frames_of, rows_of) if not np.isin(rows[:, 11], (0, 1, 2)).all()]
        if bad:
            raise ConvertError(path, "a joint's tracking state is not 0, 1 or 2", f"frame {bad[0] + 1}")
    coords, score = select_bodies(frames, bodies, max_bodies)
    return side_sample(side, coords, score, sample_id=sample_id, label=ids["action"] - 1, subject=ids["subject"],
                       camera=ids["camera"], setup=ids["setup"], replication=ids["replication"])


def convert_ntu(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    max_bodies: int = 2,
    num_classes: int | None = None,
    side: str = "hq",
    name: str = "ntu",
    write: WriteOptions = DEFAULT_WRITE,
) -> ConvertReport:
    """Folders of NTU ``.skeleton`` files (or the files) -> dataset ``out``.

    ``num_classes`` (60 or 120) defaults to 60 unless an action above A060 is present.
    """
    if max_bodies < 1:
        raise ValueError("max_bodies must be at least 1")
    files = files_in(check_inputs(inputs, "folder of .skeleton files"), "*.skeleton")
    if not files:
        raise ConvertError(", ".join(map(str, inputs)), "holds no .skeleton files")
    actions = [ids["action"] for f in files if (ids := parse_ntu_name(f.name.split(".")[0]))]
    largest = max(actions, default=0)
    num_classes = num_classes or (120 if largest > 60 else 60)
    if num_classes not in (60, 120) or largest > num_classes:
        raise ValueError(f"num_classes must be 60 or 120 and cover every action (largest A{largest:03d})")

    def items() -> Iterator[Sample | Skipped]:
        for path in files:
            yield guarded(path, lambda path=path: read_ntu_sample(path, max_bodies, side), write.skip_bad)

    info = {"converter": "ntu", "source": [str(p) for p in inputs], "max_bodies": max_bodies,
            "body_selection": "motion energy", "score": "tracking state: tracked 1.0, inferred 0.5, not tracked 0"}
    return write_dataset(out, items(), fmt="convert ntu", name=name, class_names=list(NTU_ACTIONS[:num_classes]),
                         layouts={side: LAYOUT}, info=info, total=len(files), write=write)
