"""``partkd data degrade``: a simulated LQ side for an HQ dataset that has no pose-estimator output (DESIGN §4).

For each sample with an HQ side, in a NEW dataset directory (the input is never modified):

1. **view** (3D HQ, ``ntu25``/``kinect20``): a random camera looks at the scene centre (the mean of the centre joint)
   from a yaw of up to ``max_yaw_deg`` either side of the recording camera, a small random pitch, 2.5-4.5 m away with
   a lateral offset, and a pinhole projects to pixels of a 1920x1080 image with the synthetic generator's
   conventions (:data:`~partkd.data.synth.FOCAL_PX`, :data:`~partkd.data.synth.IMAGE_SIZE`; image ``u`` grows with
   camera ``x`` as NTU's ``colorX`` does, image ``v`` points down). 2D HQ (``penn13``, ``coco17``...) keeps its pixels.
2. **joints** map by name into the target 2D layout. A target joint the source lacks is refused with the list of
   missing joints (``mark_missing=True`` keeps it, never seen: score 0, listed in ``info.missing_joints``), except
   that a 3D source can approximate the face, which Kinect does not track: nose, eyes and
   ears are placed at the synthetic body's offsets from the head along the person's own axes (up = neck or spine
   shoulder -> head, left = right -> left shoulder), and a missing ``neck`` is the spine-shoulder joint. Approximated
   joints are listed in ``dataset.json`` (``info.approximated_joints``); ``approximate=False`` refuses them instead.
3. **noise**: :func:`~partkd.data.noise.apply_noise` with a named profile (``mild``, ``fast-estimator``, ``heavy``:
   jitter, bias, left/right swaps, dropped joints, occluded limbs, dropped frames).

``paired_fraction`` keeps the HQ side of that share of the samples, spread evenly over the classes and chosen with
``seed``, making the rest solitary (the paper's D_sol). Every sample draws from its own stream (sample id, seed), so
the result does not depend on the order of the rows. ``dataset.json`` records ``simulated_lq: true``, the profile,
the seed and the source's fingerprint.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from partkd.data.convert.common import ConvertReport, Progress, Skipped, WriteOptions, write_dataset
from partkd.data.noise import NoiseProfile, apply_noise, get_noise_profile
from partkd.data.schema import Sample
from partkd.data.shards import iter_samples, shard_dataset, verify_dataset
from partkd.data.splits import allocate, draw
from partkd.data.synth import FOCAL_PX, IMAGE_SIZE, project_pinhole, rest_bone
from partkd.data.transforms import sample_rng
from partkd.layouts import Layout, get_layout

DEFAULT_TARGET = {"ntu25": "coco17", "kinect20": "coco17"}  # 2D sources default to their own layout

# Offsets from the head in metres along the person's (left, up, forward) axes: the synthetic body's, where the face
# joints are children of the head.
FACE_OFFSETS: dict[str, tuple[float, float, float]] = {
    j: rest_bone(j)[1] for j in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
}
_FACE_NEEDS = ("head", "left_shoulder", "right_shoulder")


@dataclass(frozen=True)
class CameraConfig:
    """Where the random camera of a 3D source may stand, relative to the recording camera."""

    max_yaw_deg: float = 45.0
    pitch_std_deg: float = 8.0
    distance: tuple[float, float] = (2.5, 4.5)  # metres from the scene centre
    lateral: tuple[float, float] = (-0.4, 0.4)  # metres, sideways offset of the scene centre in the image


# --------------------------------------------------------------------------------------------------- joint plan


def joint_plan(source: Layout, target: Layout, approximate: bool = True, mark_missing: bool = False
               ) -> dict[str, str]:
    """How each target joint is obtained: ``"copy"``, ``"approximate"`` or, with ``mark_missing``, ``"missing"``
    (never seen: coordinates 0, score 0, as an estimator's joint that the annotation cannot give); otherwise refuses
    joints that cannot be had."""
    if target.dims != 2:
        raise ValueError(f"degrade makes a 2D LQ side; target layout {target.name} is {target.dims}D")
    approximable = set()
    if approximate and source.dims == 3:
        if all(j in source.joints for j in _FACE_NEEDS) and ("neck" in source.joints or
                                                              "spine_shoulder" in source.joints):
            approximable |= set(FACE_OFFSETS)
        if "spine_shoulder" in source.joints:
            approximable.add("neck")
    plan, missing = {}, []
    for joint in target.joints:
        if joint in source.joints:
            plan[joint] = "copy"
        elif joint in approximable:
            plan[joint] = "approximate"
        else:
            missing.append(joint)
    if missing and mark_missing:
        plan.update(dict.fromkeys(missing, "missing"))
    elif missing:
        how = "" if source.dims == 2 or approximate else " (approximation of face joints is off)"
        raise ValueError(f"cannot map {source.name} to {target.name}: {source.name} has no {', '.join(missing)}{how}"
                         f"; --missing-joints mark keeps them as missing joints")
    return plan


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def approximate_joints(coords: np.ndarray, present: np.ndarray, source: Layout, names: list[str]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """3D positions (M, T, len(names), 3) and presence of approximated joints from coords (M, T, V, 3)."""
    at = {j: coords[..., source.index(j), :] for j in source.joints}  # each (M, T, 3)
    seen = {j: present[..., source.index(j)] for j in source.joints}  # each (M, T)
    base = "neck" if "neck" in at else "spine_shoulder"
    out = np.zeros((*coords.shape[:2], len(names), 3))
    ok = np.zeros((*coords.shape[:2], len(names)), dtype=bool)
    for k, name in enumerate(names):
        if name == "neck":
            out[..., k, :], ok[..., k] = at["spine_shoulder"], seen["spine_shoulder"]
            continue
        up = _unit(at["head"] - at[base])  # (M, T, 3)
        left = at["left_shoulder"] - at["right_shoulder"]
        left = _unit(left - (left * up).sum(-1, keepdims=True) * up)  # orthogonal to up
        forward = np.cross(left, up)  # the person's (left, up, forward) is right-handed
        dx, dy, dz = FACE_OFFSETS[name]
        out[..., k, :] = at["head"] + dx * left + dy * up + dz * forward
        ok[..., k] = seen["head"] & seen[base] & seen["left_shoulder"] & seen["right_shoulder"]
    return out, ok


# --------------------------------------------------------------------------------------------------- the view


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    about_y = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return about_x @ about_y


def scene_centre(coords: np.ndarray, present: np.ndarray, centre_joint: int) -> np.ndarray:
    """Mean position (3,) of the centre joint where seen (else of every seen joint) over persons and frames."""
    seen = present[..., centre_joint]
    if seen.any():
        return coords[..., centre_joint, :][seen].mean(axis=0)
    return coords[present].mean(axis=0) if present.any() else np.zeros(coords.shape[-1])


def random_view(points: np.ndarray, centre: np.ndarray, camera: CameraConfig, rng: np.random.Generator
                ) -> np.ndarray:
    """3D points (M, T, V, 3) seen by a random camera aimed at ``centre`` (3,), as pixels (M, T, V, 2)."""
    yaw = math.radians(rng.uniform(-camera.max_yaw_deg, camera.max_yaw_deg))
    pitch = math.radians(rng.normal(scale=camera.pitch_std_deg))
    shift = np.array([rng.uniform(*camera.lateral), 0.0, rng.uniform(*camera.distance)])
    in_camera = (points - centre) @ _rotation(yaw, pitch).T + shift  # (M, T, V, 3)
    return project_pinhole(in_camera)


# --------------------------------------------------------------------------------------------------- one sample


def degrade_sample(sample: Sample, source: Layout, target: Layout, plan: dict[str, str], profile: NoiseProfile,
                   seed: int, camera: CameraConfig = CameraConfig(), keep_hq: bool = True) -> Sample:
    """``sample`` with a simulated LQ side in ``target`` from its HQ side; HQ dropped unless ``keep_hq``."""
    rng = sample_rng(sample.sample_id, seed)
    coords, present = sample.hq.astype(np.float64), sample.hq_score > 0  # (M, T, V, C), (M, T, V)
    copied = [j for j in target.joints if plan[j] == "copy"]
    approx = [j for j in target.joints if plan[j] == "approximate"]
    points = np.zeros((*coords.shape[:2], target.num_joints, source.dims))
    seen = np.zeros((*coords.shape[:2], target.num_joints), dtype=bool)
    copy_at = [target.index(j) for j in copied]
    points[..., copy_at, :] = coords[..., [source.index(j) for j in copied], :]
    seen[..., copy_at] = present[..., [source.index(j) for j in copied]]
    if approx:
        approx_at = [target.index(j) for j in approx]
        points[..., approx_at, :], seen[..., approx_at] = approximate_joints(coords, present, source, approx)
    if source.dims == 3:
        centre = scene_centre(coords, present, source.center)
        pixels = random_view(points, centre, camera, rng)  # (M, T, V, 2)
    else:
        pixels = points
    with warnings.catch_warnings():  # a person with no joint at all: apply_noise's height falls back to 1
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        lq, lq_score = apply_noise(pixels, seen.astype(np.float32), target, profile, rng)
    hq = {} if keep_hq else {"hq": None, "hq_score": None}
    return replace(sample, lq=lq, lq_score=lq_score, **hq)


# --------------------------------------------------------------------------------------------------- the dataset


def hq_keep_set(path: str | os.PathLike, paired_fraction: float, seed: int) -> set[str]:
    """The ids whose HQ side is kept: ``round(paired_fraction * n)`` of the n HQ samples, spread over the classes.

    Each class keeps ``floor(paired_fraction * n_c)`` of its samples, and the classes with the largest remainders
    one more, until the total is reached (ties drawn with ``seed``); which samples of a class, is drawn too.
    """
    table = shard_dataset(path).to_table(
        columns=["sample_id", "label", "hq_shape"])
    has_hq = np.asarray(table.column("hq_shape").is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    ids = np.array(table.column("sample_id").to_pylist(), dtype=object)[has_hq]
    labels = table.column("label").to_numpy()[has_hq]
    rng = np.random.default_rng([seed, 0x5EED])
    classes, sizes = np.unique(labels, return_counts=True)
    keep: set[str] = set()
    for label, count in zip(classes, allocate(sizes, paired_fraction, rng)):
        keep.update(draw(ids[labels == label], count, rng))  # which ones does not depend on storage order
    return keep


def degrade_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    noise: str = "fast-estimator",
    layout: str | None = None,
    paired_fraction: float = 1.0,
    seed: int = 0,
    approximate: bool = True,
    mark_missing: bool = False,
    camera: CameraConfig = CameraConfig(),
    name: str | None = None,
    overwrite: bool = False,
    rows_per_shard: int = 1024,
    progress: Progress | None = None,
) -> ConvertReport:
    """HQ dataset ``src`` -> new dataset ``out`` with the same rows, a simulated LQ side and some HQ removed."""
    if not 0.0 <= paired_fraction <= 1.0:
        raise ValueError(f"paired_fraction must be in [0, 1], got {paired_fraction}")
    if Path(out).resolve() == Path(src).resolve():
        raise ValueError(f"{out}: degrade writes a new dataset; the output must not be the input {src}")
    info = verify_dataset(src)  # a derived dataset is whole only if its source is: complete, checksums, ids
    if info.get("hq_layout") is None:
        raise ValueError(f"{src}: has no HQ side to degrade (dataset.json declares no hq_layout)")
    source = get_layout(info["hq_layout"])
    target = get_layout(layout or DEFAULT_TARGET.get(source.name, source.name))
    plan = joint_plan(source, target, approximate, mark_missing)
    profile = get_noise_profile(noise)
    keep = hq_keep_set(src, paired_fraction, seed)
    notes = []
    if info.get("lq_layout") is not None and info["counts"]["samples"] - info["counts"]["hq_only"] > 0:
        notes.append(f"the input's own LQ side ({info['lq_layout']}) is replaced by the simulated one")

    def items():
        for sample in iter_samples(src):
            if sample.hq is None:
                yield Skipped(sample.sample_id, "no HQ side to degrade (a solitary sample of the input)")
                continue
            yield degrade_sample(sample, source, target, plan, profile, seed, camera, sample.sample_id in keep)

    approximated = sorted(j for j, how in plan.items() if how == "approximate")
    provenance = {
        "simulated_lq": True, "degrade_noise": profile.name, "noise_profile": asdict(profile), "seed": seed,
        "paired_fraction": paired_fraction, "source_path": str(src), "source_name": info.get("name"),
        "source_fingerprint": info.get("fingerprint"), "projection": None if source.dims == 2 else {
            **asdict(camera), "focal_px": FOCAL_PX, "image_size": list(IMAGE_SIZE)},
        "approximated_joints": {j: "from the head along the person's axes" if j != "neck" else "spine_shoulder"
                                for j in approximated},
        "missing_joints": sorted(j for j, how in plan.items() if how == "missing"),
        "source_info": info.get("info", {}),
    }
    write = WriteOptions(overwrite=overwrite, rows_per_shard=rows_per_shard, progress=progress)
    return write_dataset(out, items(), fmt="degrade", name=name or f"{info.get('name')}-{profile.name}",
                         class_names=list(info["class_names"]), layouts={"hq": source.name, "lq": target.name},
                         info=provenance, total=info["counts"]["samples"], write=write, notes=notes)
