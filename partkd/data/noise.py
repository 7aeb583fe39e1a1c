"""Estimator-like degradation of 2D skeletons: named noise profiles and their vectorised application.

Used by the synthetic generator (DESIGN §5) and by ``partkd data degrade``. All magnitudes are fractions of the
person's height in the image, so a profile means the same thing at any resolution. Missing joints follow the shard
convention: coordinates 0 and score 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from partkd.layouts import Layout, get_grouping


@dataclass(frozen=True)
class NoiseProfile:
    """What a pose estimator gets wrong, and how often."""

    name: str
    jitter: float = 0.0  # per-frame Gaussian noise, std as a fraction of body height (doubled at wrists/ankles)
    bias: float = 0.0  # per-joint constant offset for the whole sample, std as a fraction of body height
    swap_prob: float = 0.0  # per frame, chance that a left/right confusion starts (lasts 3-12 frames)
    drop_prob: float = 0.0  # per joint and frame, chance that the joint is missing
    part_occlusion_prob: float = 0.0  # per sample, chance that one limb is missing for a 30-70% stretch of frames
    frame_drop_prob: float = 0.0  # per frame, chance that the whole skeleton is missing
    extremity_factor: float = 2.0  # jitter multiplier at wrists and ankles

    def __post_init__(self):
        for name in ("swap_prob", "drop_prob", "part_occlusion_prob", "frame_drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"noise profile {self.name}: {name} must be in [0, 1]")


# "bottom-up-2d": a fast bottom-up 2D estimator (OpenPose, OpenPifPaf) on one person, its parameters set from
# published measurements only, before any KD result was looked at (issue 13):
# - Ronchi & Perona, "Benchmarking and Error Diagnosis in Multi-Instance Pose Estimation", ICCV 2017
#   (arXiv:1707.05388; code github.com/matteorr/coco-analyze, Params.jitterKsThrs = [.5, .85]): a keypoint is
#   good at keypoint similarity ks > .85, jitter at .5 <= ks < .85, inversion (left/right) or miss otherwise; about
#   25 % of predicted keypoints of state-of-the-art methods have a localisation error (Ronchi's thesis, Caltech,
#   Sec. 6.5, Fig. 6.6a).
# - COCO keypoint evaluation (cocodataset.org/#keypoints-eval, Sec. 4), CMU's bottom-up OpenPose at OKS .9: AP .327,
#   +.088 with misses fixed, +.033 swaps, +.097 inversions, +.314 jitter. We split the 25 % in proportion to these
#   AP gains (a proxy: the shares themselves are only in the paper's pie charts): jitter 14.8 %, inversion 4.6 %,
#   miss 4.1 % of keypoints, swap 1.6 % (onto another person: none with one person, left out).
# - ks = exp(-d^2 / (2 s^2 k^2)), k = 2 sigma, sigma the COCO per-keypoint constants (.025-.107, mean .067 over the
#   17 keypoints): ks = .85 at d = 0.570 k s = 0.076 s. Jitter 14.8 % beyond that distance: a 2D Gaussian of
#   per-axis std 0.076 s / sqrt(2 ln(1 / 0.148)) = 0.039 s. s^2 is the person's segment area; with s = 0.4 h for an
#   upright person (our assumption: a silhouette of about 16 % of h^2) that is 0.016 h, all of it per frame (no
#   published split of per-frame and per-person error, so bias 0); the same at every joint (extremity_factor 1:
#   COCO's sigma is no larger at wrists and ankles, and doubling there would put 26 %, not 14.8 %, past ks = .85).
# - inversion: 4.6 % of keypoints = swapped frames x 16/17 keypoints with a left/right partner; a burst lasts 7.5
#   frames on average, so 0.046 / (7.5 * 16 / 17) = 0.0065 per frame. Miss: drop_prob 0.041.
# - nothing published for whole-limb occlusion or frames without a detection on these datasets: 0 (a dataset's own
#   invisible joints stay missing on the LQ side).
BOTTOM_UP_2D = NoiseProfile("bottom-up-2d", jitter=0.016, bias=0.0, swap_prob=0.0065, drop_prob=0.041,
                            extremity_factor=1.0)

NOISE_PROFILES: dict[str, NoiseProfile] = {
    p.name: p
    for p in (
        NoiseProfile("none"),
        NoiseProfile("mild", jitter=0.008, bias=0.01, swap_prob=0.002, drop_prob=0.02, part_occlusion_prob=0.1,
                     frame_drop_prob=0.01),
        NoiseProfile("fast-estimator", jitter=0.02, bias=0.03, swap_prob=0.01, drop_prob=0.08,
                     part_occlusion_prob=0.35, frame_drop_prob=0.03),
        NoiseProfile("heavy", jitter=0.04, bias=0.05, swap_prob=0.03, drop_prob=0.18, part_occlusion_prob=0.7,
                     frame_drop_prob=0.08),
        BOTTOM_UP_2D,
    )
}


def get_noise_profile(name: str) -> NoiseProfile:
    try:
        return NOISE_PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown noise profile {name!r}; known profiles: {', '.join(NOISE_PROFILES)}") from None


_EXTREMITIES = ("left_wrist", "right_wrist", "left_ankle", "right_ankle", "left_hand", "right_hand")


def _swap_mask(frames: int, prob: float, rng: np.random.Generator) -> np.ndarray:
    """[T] bool: frames inside a left/right confusion burst."""
    mask = np.zeros(frames, dtype=bool)
    for start in np.flatnonzero(rng.random(frames) < prob):
        mask[start:start + rng.integers(3, 13)] = True
    return mask


def apply_noise(
    coords: np.ndarray, score: np.ndarray, layout: Layout, profile: NoiseProfile, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Degrade clean 2D skeletons ``coords`` [M, T, V, 2] with ``score`` [M, T, V] (1 where the joint exists).

    Returns new ``(coords, score)``; the score of a present joint falls with its displacement, as an estimator's
    confidence does, and missing joints get coordinates 0 and score 0.
    """
    persons, frames, joints, _ = coords.shape
    present = score > 0  # (M, T, V)
    out = coords.astype(np.float64, copy=True)
    # body height per person from the clean joints, the unit of every magnitude
    masked = np.where(present[..., None], coords, np.nan)
    height = np.nanmax(masked[..., 1], axis=(1, 2)) - np.nanmin(masked[..., 1], axis=(1, 2))  # (M,)
    height = np.nan_to_num(height, nan=1.0)
    height = np.where(height > 0, height, 1.0)[:, None, None, None]  # (M, 1, 1, 1)

    extremity = np.ones(joints)
    extremity[[i for i, j in enumerate(layout.joints) if j in _EXTREMITIES]] = profile.extremity_factor
    displacement = rng.normal(size=(persons, frames, joints, 2)) * profile.jitter * extremity[None, None, :, None]
    displacement += rng.normal(size=(persons, 1, joints, 2)) * profile.bias
    out += displacement * height

    if profile.swap_prob > 0:
        flip = np.asarray(layout.flip_index)
        present = present.copy()
        for m in range(persons):
            swapped = _swap_mask(frames, profile.swap_prob, rng)
            out[m, swapped] = out[m, swapped][:, flip]
            present[m, swapped] = present[m, swapped][:, flip]  # a label swapped onto a missing joint is missing

    keep = present & (rng.random((persons, frames, joints)) >= profile.drop_prob)
    keep &= (rng.random((persons, frames, 1)) >= profile.frame_drop_prob)
    if profile.part_occlusion_prob > 0:
        limbs = get_grouping("paper5").part_indices(layout)[1:]  # the four limbs
        for m in range(persons):
            if rng.random() < profile.part_occlusion_prob:
                part = limbs[rng.integers(len(limbs))]
                length = int(frames * rng.uniform(0.3, 0.7))
                start = rng.integers(0, max(frames - length, 0) + 1)
                keep[m, start:start + length, list(part)] = False

    error = np.linalg.norm(out - coords, axis=-1) / height[..., 0]  # (M, T, V) in body heights
    confidence = np.clip(0.95 - 4.0 * error + rng.normal(scale=0.04, size=error.shape), 0.05, 1.0)
    new_score = np.where(keep, confidence, 0.0).astype(np.float32)
    out = np.where(keep[..., None], out, 0.0).astype(np.float32)
    return out, new_score
