"""Synthetic paired skeletons that imitate the paper's setting (DESIGN §5).

Each action class is a small program of joint angles over normalised time (which body parts move, and how); a
sample draws a subject (body size and proportions), speed, amplitude, phase, length and a camera, animates a 3D body
by forward kinematics, and renders it twice:

* **HQ**: clean 3D ``ntu25`` in Kinect camera coordinates (metres), as a depth sensor would give;
* **LQ**: a heterogeneous 2D ``coco17`` perspective projection (pixels of a 1920x1080 image) from a perturbed camera,
  degraded by a :class:`~partkd.data.noise.NoiseProfile` (jitter, bias, left/right swaps, dropped joints, occluded
  limbs, dropped frames).

Classes come in pairs that differ in one body part only (drink water / eat meal in the right arm, nod / shake in the
head, kick / knee raise in the left leg, wave / punch in the left arm): a noisy or missing part then costs accuracy,
which is where part-level guidance helps. Every sample has its own random stream (seed, index), so the same seed
gives byte-identical shards whatever the order of generation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from partkd.data.noise import NoiseProfile, apply_noise, get_noise_profile
from partkd.data.schema import Sample
from partkd.data.shards import DatasetWriter
from partkd.layouts import get_layout

HQ_LAYOUT, LQ_LAYOUT = "ntu25", "coco17"
NUM_SUBJECTS, NUM_CAMERAS, NUM_SETUPS = 40, 3, 32
CAMERA_YAW_DEG = {1: 0.0, 2: 45.0, 3: -45.0}  # NTU-like: three views of the same performance
IMAGE_SIZE, FOCAL_PX = (1920.0, 1080.0), 1050.0

# ---------------------------------------------------------------------------------------------- the body

# joint -> (parent, rest offset from the parent in metres). Body frame: x the person's left, y up, z the way they face.
_BODY: dict[str, tuple[str | None, tuple[float, float, float]]] = {"spine_base": (None, (0.0, 0.95, 0.0))}


for _name, _parent, _offset in [
    ("spine_mid", "spine_base", (0.0, 0.25, 0.0)),
    ("spine_shoulder", "spine_mid", (0.0, 0.25, 0.0)),
    ("neck", "spine_shoulder", (0.0, 0.07, 0.0)),
    ("head", "neck", (0.0, 0.13, 0.0)),
    ("nose", "head", (0.0, -0.02, 0.10)),
]:
    _BODY[_name] = (_parent, _offset)
for _side, _sign in (("left", 1.0), ("right", -1.0)):
    for _name, _parent, (_x, _y, _z) in [
        ("eye", "head", (0.035, 0.02, 0.085)),
        ("ear", "head", (0.075, 0.0, 0.0)),
        ("shoulder", "spine_shoulder", (0.18, -0.03, 0.0)),
        ("elbow", "shoulder", (0.0, -0.28, 0.0)),
        ("wrist", "elbow", (0.0, -0.25, 0.0)),
        ("hand", "wrist", (0.0, -0.07, 0.0)),
        ("hand_tip", "hand", (0.0, -0.07, 0.0)),
        ("thumb", "hand", (-0.02, -0.03, 0.04)),
        ("hip", "spine_base", (0.09, -0.05, 0.0)),
        ("knee", "hip", (0.0, -0.42, 0.0)),
        ("ankle", "knee", (0.0, -0.40, 0.0)),
        ("foot", "ankle", (0.0, -0.05, 0.12)),
    ]:
        parent = _parent if _parent in ("head", "spine_shoulder", "spine_base") else f"{_side}_{_parent}"
        _BODY[f"{_side}_{_name}"] = (parent, (_sign * _x, _y, _z))

BODY_JOINTS = tuple(_BODY)  # topological order: a parent always comes before its children
_BODY_INDEX = {j: i for i, j in enumerate(BODY_JOINTS)}
_REST = np.array([_BODY[j][1] for j in BODY_JOINTS])  # (J, 3)
_LIMB_SCALE_GROUP = {j: ("arm" if any(k in j for k in ("elbow", "wrist", "hand", "thumb")) else
                         "leg" if any(k in j for k in ("knee", "ankle", "foot")) else "trunk") for j in BODY_JOINTS}


def rest_bone(joint: str) -> tuple[str | None, tuple[float, float, float]]:
    """``(parent, offset from the parent)`` of a joint of the synthetic body at rest, in metres along the person's
    (left, up, forward) axes."""
    return _BODY[joint]


def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotation matrices about x (0), y (1) or z (2) for each angle; (T,) -> (T, 3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((*np.shape(angle), 3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    out[..., axis, axis] = 1.0
    out[..., i, i], out[..., i, j], out[..., j, i], out[..., j, j] = c, -s, s, c
    return out


def forward_kinematics(angles: dict[str, np.ndarray], bone_scale: np.ndarray, frames: int) -> np.ndarray:
    """Joint positions (T, J, 3) in the body frame from the motion's angles.

    A rotation keyed by a joint turns the bone from its parent to it, and everything below it: ``left_elbow`` is the
    left shoulder's rotation, ``left_wrist`` the left elbow's, ``left_knee`` the hip's, ``spine_mid`` bends the trunk.
    """
    zero = np.zeros(frames)
    local = {
        "spine_mid": _rot(0, angles.get("bow", zero)),
        "head": _rot(1, angles.get("head_yaw", zero)) @ _rot(0, angles.get("head_pitch", zero)),
    }
    for side, sign in (("left", 1.0), ("right", -1.0)):
        s = side[0]
        shoulder_abduct, shoulder_flex = angles.get(f"{s}_abduct", zero), angles.get(f"{s}_flex", zero)
        local[f"{side}_elbow"] = _rot(2, sign * shoulder_abduct) @ _rot(0, -shoulder_flex)
        local[f"{side}_wrist"] = _rot(0, -(0.15 + angles.get(f"{s}_elbow", zero)))
        local[f"{side}_knee"] = _rot(0, -angles.get(f"{s}_hip", zero))
        local[f"{side}_ankle"] = _rot(0, angles.get(f"{s}_knee", zero))
    offsets = _REST * bone_scale[:, None]  # (J, 3)
    world_rot = np.empty((len(BODY_JOINTS), frames, 3, 3))
    pos = np.empty((frames, len(BODY_JOINTS), 3))
    root = np.stack([angles.get("root_x", zero), angles.get("root_y", zero), angles.get("root_z", zero)], -1)
    pos[:, 0] = offsets[0] + root  # (T, 3)
    world_rot[0] = np.eye(3)
    for j, name in enumerate(BODY_JOINTS[1:], start=1):
        p = _BODY_INDEX[_BODY[name][0]]
        world_rot[j] = world_rot[p] @ local[name] if name in local else world_rot[p]
        pos[:, j] = pos[:, p] + np.einsum("tab,b->ta", world_rot[j], offsets[j])  # (T, 3)
    return pos


# ---------------------------------------------------------------------------------------------- the actions


@dataclass(frozen=True)
class Motion:
    """Per-sample style of a performance: how big, how fast, when."""

    u: np.ndarray  # (T,) normalised time in [0, 1]
    amplitude: float
    cycles: float
    phase: float

    @property
    def envelope(self) -> np.ndarray:
        """0 at rest at both ends, 1 in the middle: actions start and end standing."""
        ramp = np.clip(np.minimum(self.u, 1.0 - self.u) / 0.15, 0.0, 1.0)
        return ramp * ramp * (3.0 - 2.0 * ramp)

    def osc(self, cycles: float | None = None) -> np.ndarray:
        return np.sin(2.0 * math.pi * (cycles or self.cycles) * self.u + self.phase)


Action = Callable[[Motion], dict[str, np.ndarray]]


def _drink(m: Motion) -> dict:  # right hand brought to the mouth and held there
    e = m.envelope
    return {"r_flex": 0.55 * e * m.amplitude, "r_abduct": 0.15 * e, "r_elbow": 2.3 * e}


def _eat(m: Motion) -> dict:  # right hand going to the mouth again and again
    e, lift = m.envelope, 0.5 + 0.5 * m.osc()
    return {"r_flex": 0.55 * e * m.amplitude * lift, "r_abduct": 0.15 * e, "r_elbow": (0.9 + 1.4 * lift) * e}


def _nod(m: Motion) -> dict:
    return {"head_pitch": 0.35 * m.amplitude * m.envelope * m.osc()}


def _shake(m: Motion) -> dict:
    return {"head_yaw": 0.5 * m.amplitude * m.envelope * m.osc()}


def _kick_left(m: Motion) -> dict:  # fast swings of a straight leg
    swing = np.clip(m.osc(), 0.0, None) ** 2 * m.envelope
    return {"l_hip": 1.2 * m.amplitude * swing, "l_knee": 0.3 * swing}


def _knee_raise_left(m: Motion) -> dict:  # thigh up with the knee bent, held
    e = m.envelope
    return {"l_hip": 1.4 * m.amplitude * e, "l_knee": 1.6 * e}


def _wave_left(m: Motion) -> dict:  # arm raised to the side, forearm swinging
    e = m.envelope
    return {"l_abduct": 2.4 * e, "l_elbow": (0.8 + 0.5 * m.amplitude * m.osc()) * e}


def _punch_left(m: Motion) -> dict:  # arm forward, elbow extending repeatedly
    e, hit = m.envelope, 0.5 + 0.5 * m.osc()
    return {"l_flex": 1.45 * e, "l_elbow": 1.9 * (1.0 - hit) * e * m.amplitude}


def _bow(m: Motion) -> dict:
    e = m.envelope
    return {"bow": 0.9 * m.amplitude * e, "l_flex": 0.3 * e, "r_flex": 0.3 * e}


def _jump(m: Motion) -> dict:
    hop = np.clip(m.osc(), 0.0, None) * m.envelope
    crouch = np.clip(-m.osc(), 0.0, None) * m.envelope
    return {"root_y": 0.25 * m.amplitude * hop - 0.15 * crouch, "l_hip": 0.8 * crouch, "r_hip": 0.8 * crouch,
            "l_knee": 1.5 * crouch, "r_knee": 1.5 * crouch, "l_flex": 2.2 * hop, "r_flex": 2.2 * hop}


def _squat(m: Motion) -> dict:
    e = m.envelope * m.amplitude
    return {"root_y": -0.35 * e, "l_hip": 1.3 * e, "r_hip": 1.3 * e, "l_knee": 2.0 * e, "r_knee": 2.0 * e,
            "bow": 0.35 * e, "l_flex": 1.4 * e, "r_flex": 1.4 * e}


def _clap(m: Motion) -> dict:
    e = m.envelope
    spread = (0.25 + 0.35 * m.amplitude * (0.5 + 0.5 * m.osc())) * e
    return {"l_flex": 1.3 * e, "r_flex": 1.3 * e, "l_abduct": spread - 0.35 * e, "r_abduct": spread - 0.35 * e,
            "l_elbow": 0.6 * e, "r_elbow": 0.6 * e}


def _walk(m: Motion) -> dict:
    e, s = m.envelope * m.amplitude, m.osc()
    return {"l_hip": 0.5 * e * np.clip(s, 0, None), "r_hip": 0.5 * e * np.clip(-s, 0, None),
            "l_knee": 0.9 * e * np.clip(s, 0, None), "r_knee": 0.9 * e * np.clip(-s, 0, None),
            "l_flex": -0.35 * e * s, "r_flex": 0.35 * e * s}


def _hands_up(m: Motion) -> dict:
    e = m.envelope
    return {"l_abduct": 2.8 * e * m.amplitude, "r_abduct": 2.8 * e * m.amplitude}


def _kick_right(m: Motion) -> dict:
    swing = np.clip(m.osc(), 0.0, None) ** 2 * m.envelope
    return {"r_hip": 1.2 * m.amplitude * swing, "r_knee": 0.3 * swing}


def _touch_head(m: Motion) -> dict:  # right hand on the top of the head
    e = m.envelope
    return {"r_flex": 1.0 * e * m.amplitude, "r_abduct": 0.9 * e, "r_elbow": 2.5 * e}


def _handshake(m: Motion) -> dict:  # each person reaches the right hand forward and pumps it
    e = m.envelope
    return {"r_flex": (0.9 + 0.15 * m.amplitude * m.osc(3.0)) * e, "r_elbow": 0.5 * e, "root_z": 0.3 * e}


def _push(m: Motion) -> dict:  # both arms shoved forward
    e = m.envelope
    shove = np.clip(m.osc(), 0, None) * e
    return {"l_flex": 1.4 * e, "r_flex": 1.4 * e, "l_elbow": 1.5 * (1 - shove), "r_elbow": 1.5 * (1 - shove),
            "root_z": 0.35 * shove * m.amplitude}


def _pushed(m: Motion) -> dict:  # the other person steps back with the shove
    e = m.envelope
    shove = np.clip(m.osc(), 0, None) * e
    return {"root_z": -0.3 * shove * m.amplitude, "bow": -0.15 * shove}


# name, motion of person 1, motion of person 2 (two-person classes), cycles per sequence. Pairs that differ in one
# part come first so that any --classes >= 8 keeps all four pairs.
ACTIONS: tuple[tuple[str, Action, Action | None, float], ...] = (
    ("drink water", _drink, None, 1.0),
    ("eat meal", _eat, None, 3.0),
    ("nod head", _nod, None, 3.0),
    ("shake head", _shake, None, 3.0),
    ("kick with left leg", _kick_left, None, 2.0),
    ("raise left knee", _knee_raise_left, None, 1.0),
    ("wave left hand", _wave_left, None, 3.0),
    ("punch with left hand", _punch_left, None, 3.0),
    ("bow", _bow, None, 1.0),
    ("jump up", _jump, None, 2.0),
    ("squat down", _squat, None, 1.0),
    ("clap", _clap, None, 4.0),
    ("walk in place", _walk, None, 3.0),
    ("hands up", _hands_up, None, 1.0),
    ("kick with right leg", _kick_right, None, 2.0),
    ("touch head", _touch_head, None, 1.0),
)
TWO_PERSON_ACTIONS: tuple[tuple[str, Action, Action | None, float], ...] = (
    ("shake hands", _handshake, _handshake, 1.0),
    ("push other person", _push, _pushed, 2.0),
)
PART_PAIRS = (("drink water", "eat meal", "right_arm"), ("nod head", "shake head", "head"),
              ("kick with left leg", "raise left knee", "left_leg"), ("wave left hand", "punch with left hand",
                                                                      "left_arm"))


def action_table(num_classes: int, two_person: bool = False) -> tuple:
    """The first ``num_classes`` actions (two-person classes, if asked, take the last places)."""
    extra = TWO_PERSON_ACTIONS if two_person else ()
    available = len(ACTIONS) + len(extra)
    if not 2 <= num_classes <= available:
        raise ValueError(f"--classes must be between 2 and {available} (with two-person classes: "
                         f"{len(ACTIONS) + len(TWO_PERSON_ACTIONS)}), got {num_classes}")
    return ACTIONS[: num_classes - len(extra)] + extra


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class SynthConfig:
    samples: int = 1000
    classes: int = 16
    seed: int = 0
    frames: int = 300  # nominal length; each sample lasts 60-100% of it
    paired_fraction: float = 0.8  # share of samples that keep their HQ side; the rest are solitary (LQ only)
    noise: str = "fast-estimator"
    two_person: bool = False

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError("--samples must be at least 1")
        if self.frames < 8:
            raise ValueError("--frames must be at least 8")
        if not 0.0 <= self.paired_fraction <= 1.0:
            raise ValueError("--paired-fraction must be in [0, 1]")
        action_table(self.classes, self.two_person)
        get_noise_profile(self.noise)


def _subject_body(seed: int, subject: int) -> tuple[np.ndarray, float]:
    """A subject's bone scales (J,) and habitual speed, fixed across their samples."""
    rng = np.random.default_rng([seed, 1_000_003, subject])
    height = rng.uniform(0.85, 1.15)
    group_scale = {g: rng.uniform(0.93, 1.07) for g in ("arm", "leg", "trunk")}
    scale = np.array([height * group_scale[_LIMB_SCALE_GROUP[j]] for j in BODY_JOINTS])
    return scale, rng.uniform(0.85, 1.15)


def _to_camera(body: np.ndarray, yaw: float, pitch: float, distance: float, lateral: float) -> np.ndarray:
    """Body-frame points (..., 3) to camera coordinates (x right, y up, z away from the camera), facing the camera."""
    # the person faces the camera (body +z towards camera -z) turned by the view's yaw
    turn = _rot(1, np.array(math.pi + yaw))  # (3, 3)
    tilt = _rot(0, np.array(pitch))
    pts = body @ turn.T @ tilt.T  # (..., 3)
    return pts + np.array([lateral, -1.0, distance])


def project_pinhole(points: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera points (..., 3) to pixels (..., 2), image y pointing down."""
    z = np.clip(points[..., 2], 0.3, None)
    u = IMAGE_SIZE[0] / 2 + FOCAL_PX * points[..., 0] / z
    v = IMAGE_SIZE[1] / 2 - FOCAL_PX * points[..., 1] / z
    return np.stack([u, v], axis=-1)


_HQ_IDX = [_BODY_INDEX[j] for j in get_layout(HQ_LAYOUT).joints]
_LQ_IDX = [_BODY_INDEX[j] for j in get_layout(LQ_LAYOUT).joints]


def make_sample(index: int, cfg: SynthConfig, noise: NoiseProfile | None = None) -> Sample:
    """Sample ``index`` of the dataset ``cfg``; depends only on (cfg, index)."""
    noise = noise or get_noise_profile(cfg.noise)
    rng = np.random.default_rng([cfg.seed, index])
    table = action_table(cfg.classes, cfg.two_person)
    label = index % len(table)
    _, action, partner_action, cycles = table[label]
    subject = int(rng.integers(1, NUM_SUBJECTS + 1))
    camera = int(rng.integers(1, NUM_CAMERAS + 1))
    bone_scale, habitual_speed = _subject_body(cfg.seed, subject)
    frames = int(rng.integers(int(0.6 * cfg.frames), cfg.frames + 1))
    u = np.linspace(0.0, 1.0, frames)

    bodies = []
    actors = [(action, bone_scale)]
    if partner_action is not None:
        partner_scale, _ = _subject_body(cfg.seed, (subject % NUM_SUBJECTS) + 1)
        actors.append((partner_action, partner_scale))
    for person, (act, scale) in enumerate(actors):
        motion = Motion(u, amplitude=rng.uniform(0.8, 1.2), cycles=cycles * habitual_speed * rng.uniform(0.8, 1.25),
                        phase=rng.uniform(0.0, 2.0 * math.pi) if cycles > 1 else -0.5 * math.pi)
        angles = act(motion)
        # idle sway: a slow random drift of the trunk and head that every performance has
        for key, size in (("bow", 0.04), ("head_pitch", 0.05), ("head_yaw", 0.06)):
            drift = np.cumsum(rng.normal(scale=size / math.sqrt(frames), size=frames))
            angles[key] = angles.get(key, 0.0) + drift
        pos = forward_kinematics(angles, scale, frames)  # (T, J, 3)
        if person == 1:  # partners face each other a metre apart
            pos = pos @ _rot(1, np.array(math.pi)).T + np.array([0.0, 0.0, 1.0])
        bodies.append(pos)
    body = np.stack(bodies)  # (M, T, J, 3)
    body -= np.array([0.0, 0.0, 0.5 * (len(bodies) - 1)])  # centre a pair on the spot the camera looks at

    view_yaw = math.radians(CAMERA_YAW_DEG[camera]) + rng.normal(scale=math.radians(5))
    hq = _to_camera(body, view_yaw, 0.0, rng.uniform(2.5, 3.5), rng.uniform(-0.3, 0.3))[:, :, _HQ_IDX]
    hq = hq + rng.normal(scale=0.004, size=hq.shape)  # depth-sensor jitter: a few millimetres

    # the LQ camera: the same view seen from a slightly different, random place (a separate RGB camera)
    lq_view = _to_camera(body, view_yaw + rng.normal(scale=math.radians(12)), rng.normal(scale=math.radians(8)),
                         rng.uniform(2.5, 4.5), rng.uniform(-0.4, 0.4))
    lq_clean = project_pinhole(lq_view[:, :, _LQ_IDX])  # (M, T, 17, 2)
    lq, lq_score = apply_noise(lq_clean, np.ones(lq_clean.shape[:3]), get_layout(LQ_LAYOUT), noise, rng)

    solitary = rng.random() >= cfg.paired_fraction
    persons = len(bodies)
    return Sample(
        sample_id=f"syn{index:07d}",
        label=label,
        frames=frames,
        hq=None if solitary else hq.astype(np.float32),
        hq_score=None if solitary else np.ones((persons, frames, hq.shape[2]), dtype=np.float32),
        lq=lq,
        lq_score=lq_score,
        subject=subject,
        camera=camera,
        setup=int(rng.integers(1, NUM_SETUPS + 1)),
        replication=int(rng.integers(1, 3)),
    )


def generate(cfg: SynthConfig, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
    noise = get_noise_profile(cfg.noise)
    for index in range(start, cfg.samples if stop is None else stop):
        yield make_sample(index, cfg, noise)


def class_names(cfg: SynthConfig) -> list[str]:
    return [name for name, *_ in action_table(cfg.classes, cfg.two_person)]


def synth_info(cfg: SynthConfig) -> dict:
    """What ``dataset.json`` records of a synthetic dataset's making (its generator settings): two datasets with the
    same record are the same bytes."""
    return {"generator": "partkd.data.synth", **asdict(cfg), "simulated_lq": True}


def write_synthetic(out: str | os.PathLike, cfg: SynthConfig, *, overwrite: bool = False, rows_per_shard: int = 1024,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate ``cfg``'s samples into a dataset directory ``out``; returns its ``dataset.json`` content.

    ``progress(done, total)`` is called every 5% of the samples.
    """
    step = max(cfg.samples // 20, 1)
    with DatasetWriter(out, name=f"synth-{cfg.seed}", class_names=class_names(cfg), hq_layout=HQ_LAYOUT,
                       lq_layout=LQ_LAYOUT, rows_per_shard=rows_per_shard, overwrite=overwrite,
                       info=synth_info(cfg)) as writer:
        for done, sample in enumerate(generate(cfg), start=1):
            writer.write(sample)
            if progress is not None and (done % step == 0 or done == cfg.samples):
                progress(done, cfg.samples)
    return writer.summary
