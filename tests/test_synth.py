"""Synthetic generator: determinism, the paired/solitary split, ids for protocols, noise, and part-level pairs."""

import math

import numpy as np
import pytest

from partkd.data import iter_samples, validate_dataset
from partkd.data.noise import NOISE_PROFILES, apply_noise
from partkd.data.synth import (
    ACTIONS,
    BODY_JOINTS,
    PART_PAIRS,
    Motion,
    SynthConfig,
    forward_kinematics,
    make_sample,
    write_synthetic,
)
from partkd.layouts import get_grouping, get_layout


def test_same_seed_gives_byte_identical_shards(tmp_path):
    cfg = SynthConfig(samples=40, classes=12, frames=30, seed=7)
    write_synthetic(tmp_path / "a", cfg, rows_per_shard=16)
    write_synthetic(tmp_path / "b", cfg, rows_per_shard=16)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["dataset.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = SynthConfig(samples=40, classes=12, frames=30, seed=8)
    write_synthetic(tmp_path / "c", other, rows_per_shard=16)
    assert (tmp_path / "a" / files[1]).read_bytes() != (tmp_path / "c" / files[1]).read_bytes()


def test_the_deprecated_cli_writer_writes_the_same_dataset(tmp_path):
    """``partkd.cli.synthesize`` (before 0.2 the only writer) still works for one release, with a warning."""
    from partkd.cli import synthesize

    cfg = SynthConfig(samples=20, classes=4, frames=16, seed=1)
    write_synthetic(tmp_path / "new", cfg)
    with pytest.warns(DeprecationWarning, match="use partkd.data.synth.write_synthetic"):
        synthesize(tmp_path / "old", cfg, overwrite=False, quiet=True)
    for name in ("dataset.json", "part-00000.parquet"):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name


def test_dataset_shape_ids_and_pairing(tmp_path):
    cfg = SynthConfig(samples=300, classes=18, frames=40, seed=1, paired_fraction=0.7, two_person=True)
    info = write_synthetic(tmp_path / "ds", cfg)
    assert validate_dataset(tmp_path / "ds").ok
    samples = list(iter_samples(tmp_path / "ds"))
    assert info["hq_layout"] == "ntu25" and info["lq_layout"] == "coco17"
    assert info["counts"]["per_class"] == [17] * 12 + [16] * 6
    solitary = sum(s.hq is None for s in samples)
    assert info["counts"]["solitary"] == solitary
    assert abs(solitary / 300 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 300)  # binomial bound
    assert all(s.lq is not None for s in samples)
    assert {s.subject for s in samples} <= set(range(1, 41)) and len({s.subject for s in samples}) > 30
    assert {s.camera for s in samples} == {1, 2, 3}
    assert set(info["splits"]) == {"xsub", "xview", "xset"}
    two_person = {16, 17}  # the two-person classes take the last labels
    for s in samples:
        assert 24 <= s.frames <= 40
        persons = 2 if s.label in two_person else 1
        assert s.lq.shape == (persons, s.frames, 17, 2) and s.lq_score.shape == (persons, s.frames, 17)
        if s.hq is not None:
            assert s.hq.shape == (persons, s.frames, 25, 3)
        missing = s.lq_score == 0
        assert np.all(s.lq[missing] == 0), "a missing joint has coordinates 0"


def test_noise_profiles_degrade_in_order():
    layout = get_layout("coco17")
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 500, size=(2, 400, 17, 2))
    score = np.ones((2, 400, 17))
    dropped, errors = {}, {}
    for name in ("none", "mild", "fast-estimator", "heavy"):
        noisy, new_score = apply_noise(clean, score, layout, NOISE_PROFILES[name], np.random.default_rng(1))
        kept = new_score > 0
        dropped[name] = 1 - kept.mean()
        errors[name] = np.median(np.linalg.norm(noisy - clean, axis=-1)[kept])
    assert dropped["none"] == 0 and errors["none"] < 1e-3  # float32 rounding only
    assert dropped["mild"] < dropped["fast-estimator"] < dropped["heavy"]
    assert errors["mild"] < errors["fast-estimator"] < errors["heavy"]
    # drop rate at least the independent per-joint rate of the profile
    assert dropped["heavy"] >= NOISE_PROFILES["heavy"].drop_prob


def test_no_noise_lq_is_the_exact_projection_of_the_body():
    # with noise 'none' every LQ joint is present and the scores are the clean confidence (~0.95)
    s = make_sample(3, SynthConfig(samples=10, classes=10, frames=50, noise="none", paired_fraction=1.0))
    assert np.all(s.lq_score > 0.5)
    # left and right shoulders of the projection are where the HQ ones are, mirrored through the pinhole model:
    # the 2D distance between shoulders is positive and plausible in pixels for a person 2.5-4.5 m away
    coco = get_layout("coco17")
    width = np.linalg.norm(s.lq[0, :, coco.index("left_shoulder")] - s.lq[0, :, coco.index("right_shoulder")], axis=-1)
    assert 20 < np.median(width) < 200


# semantic parts the action angles belong to, for checking the pairs that differ in one part
def _moving_joints(angles_a: dict, angles_b: dict, frames: int) -> set[str]:
    scale = np.ones(len(BODY_JOINTS))
    pos_a = forward_kinematics(angles_a, scale, frames)
    pos_b = forward_kinematics(angles_b, scale, frames)
    diff = np.abs(pos_a - pos_b).max(axis=(0, 2))  # (J,)
    return {BODY_JOINTS[j] for j in np.flatnonzero(diff > 1e-3)}


@pytest.mark.parametrize("first, second, part", PART_PAIRS)
def test_class_pairs_differ_in_one_part_only(first, second, part):
    actions = {name: fn for name, fn, _, _ in ACTIONS}
    cycles = {name: c for name, _, _, c in ACTIONS}
    u = np.linspace(0, 1, 120)
    # same style for both, cycles of the first (the difference must not come from timing elsewhere)
    motion = Motion(u, amplitude=1.0, cycles=cycles[first], phase=0.3)
    moved = _moving_joints(actions[first](motion), actions[second](motion), len(u))
    paper5 = get_grouping("paper5")
    allowed = dict(paper5.parts)[part]
    assert moved, "the two classes must differ"
    assert moved <= allowed, f"{first} vs {second} also differ in {sorted(moved - allowed)}"


def test_generator_offers_ten_classes_and_four_one_part_pairs():
    assert len(ACTIONS) >= 10 and len(PART_PAIRS) >= 3
    names = [a[0] for a in ACTIONS]
    for first, second, _ in PART_PAIRS:
        assert names.index(first) < 8 and names.index(second) < 8
    with pytest.raises(ValueError, match="between 2 and 16"):
        SynthConfig(classes=17)
