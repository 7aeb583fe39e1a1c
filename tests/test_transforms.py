"""Transforms against literal per-sample implementations, and the occlusion rate against OP."""

import math

import numpy as np
import pytest

from partkd.data.transforms import (
    TransformConfig,
    center_and_scale,
    occlude,
    occlusion_mask,
    pack,
    random_rotate_scale,
    sample_rng,
    transform_batch,
)
from partkd.layouts import get_layout


def ragged(rng, lengths, persons, joints=25, dims=3):
    tensors = [rng.normal(size=(m, t, joints, dims)).astype(np.float32) for t, m in zip(lengths, persons)]
    scores = [rng.uniform(0.1, 1, size=(m, t, joints)).astype(np.float32) for t, m in zip(lengths, persons)]
    return tensors, scores


def test_pack_crops_pads_and_keeps_persons_like_a_loop():
    rng = np.random.default_rng(0)
    tensors, scores = ragged(rng, lengths=[3, 10, 7], persons=[1, 3, 2])
    x, score = pack(tensors, scores, frames=7, persons=2, crop="center")
    assert x.shape == (3, 2, 7, 25, 3) and score.shape == (3, 2, 7, 25)
    np.testing.assert_array_equal(x[0, 0, :3], tensors[0][0])  # short: padded with zeros after
    assert not x[0, 0, 3:].any() and not score[0, 0, 3:].any() and not x[0, 1].any()
    np.testing.assert_array_equal(x[1], tensors[1][:2, 1:8])  # long: centre 7 of 10, first 2 of 3 persons
    np.testing.assert_array_equal(score[1], scores[1][:2, 1:8])
    np.testing.assert_array_equal(x[2], tensors[2])
    x_start, _ = pack(tensors, scores, frames=7, persons=2, crop="start")
    np.testing.assert_array_equal(x_start[1], tensors[1][:2, :7])
    offsets = set()
    for seed in range(20):
        x_rand, _ = pack(tensors, scores, frames=7, persons=2, crop="random", rngs=np.random.default_rng(seed))
        start = [s for s in range(4) if np.array_equal(x_rand[1], tensors[1][:2, s:s + 7])]
        assert len(start) == 1
        offsets.add(start[0])
    assert offsets == {0, 1, 2, 3}


def _center_and_scale_loop(x, score, center):
    out = np.zeros_like(x, dtype=np.float64)
    for n in range(x.shape[0]):
        valid = score[n] > 0
        c_valid = valid[0, :, center]
        if c_valid.any():
            c = x[n, 0, c_valid, center].astype(np.float64).mean(0)
        elif valid[0].any():
            c = x[n, 0][valid[0]].astype(np.float64).mean(0)
        else:
            c = np.zeros(x.shape[-1])
        d = (x[n] - c) * valid[..., None]
        r = math.sqrt((d ** 2).sum() / max(valid.sum(), 1)) or 1.0
        out[n] = d / r
    return out


@pytest.mark.parametrize("layout_name", ["ntu25", "coco17"])
def test_center_and_scale_matches_a_loop(layout_name):
    layout = get_layout(layout_name)
    rng = np.random.default_rng(1)
    x = rng.normal(loc=5.0, size=(4, 2, 9, layout.num_joints, layout.dims)).astype(np.float32)
    score = (rng.random((4, 2, 9, layout.num_joints)) > 0.3).astype(np.float32)
    score[2, 0, :, layout.center] = 0  # centre never seen: falls back to the person's mean
    score[3] = 0  # an empty sample stays zeros
    x *= score[..., None] > 0
    out = center_and_scale(x, score, layout)
    np.testing.assert_allclose(out, _center_and_scale_loop(x, score, layout.center), rtol=1e-5, atol=1e-5)
    assert not out[3].any()
    valid = score[0] > 0
    assert np.sqrt((out[0][valid] ** 2).sum(-1).mean()) == pytest.approx(1.0, rel=1e-5)


def test_rotation_keeps_height_and_radius_and_scale_scales():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 1, 5, 25, 3)).astype(np.float32)
    score = np.ones((6, 1, 5, 25), dtype=np.float32)
    rotated = random_rotate_scale(x, score, 30.0, (1.0, 1.0), np.random.default_rng(0))
    np.testing.assert_allclose(rotated[..., 1], x[..., 1], atol=1e-6)  # vertical axis untouched
    np.testing.assert_allclose(np.hypot(rotated[..., 0], rotated[..., 2]), np.hypot(x[..., 0], x[..., 2]), rtol=1e-5)
    assert not np.allclose(rotated, x)
    scaled = random_rotate_scale(x, score, 0.0, (2.0, 2.0), np.random.default_rng(0))
    np.testing.assert_allclose(scaled, 2 * x, rtol=1e-6)
    flat = random_rotate_scale(x[..., :2], score, 45.0, (1.0, 1.0), np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(flat, axis=-1), np.linalg.norm(x[..., :2], axis=-1), rtol=1e-5)


@pytest.mark.parametrize("prob", [0.1, 0.3, 0.6])
def test_joint_frame_occlusion_rate_matches_op(prob):
    shape = (400, 2, 50, 17)  # 680,000 joint-frames
    mask = occlusion_mask(shape, prob, "joint-frame", np.random.default_rng(0))
    n = np.prod(shape)
    assert abs(mask.mean() - prob) < 5 * math.sqrt(prob * (1 - prob) / n)  # < 0.003
    # independent per frame: consecutive frames agree only as often as chance says
    same = (mask[:, :, 1:] == mask[:, :, :-1]).mean()
    assert abs(same - (prob ** 2 + (1 - prob) ** 2)) < 0.01


@pytest.mark.parametrize("prob", [0.3, 0.6])
def test_joint_occlusion_covers_whole_sequences(prob):
    shape = (2000, 2, 30, 25)
    mask = occlusion_mask(shape, prob, "joint", np.random.default_rng(1))
    assert (mask == mask[:, :, :1]).all(), "a joint is occluded for every frame or none"
    n = shape[0] * shape[1] * shape[3]
    assert abs(mask[:, :, 0].mean() - prob) < 5 * math.sqrt(prob * (1 - prob) / n)


def test_occlude_zeroes_coordinates_and_scores_and_per_sample_masks_ignore_batching():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 1, 8, 17, 2)).astype(np.float32)
    score = np.ones((3, 1, 8, 17), dtype=np.float32)
    ids = ["a", "b", "c"]
    mask = occlusion_mask(score.shape, 0.5, "joint-frame", [sample_rng(i, 7) for i in ids])
    out, out_score = occlude(x, score, mask)
    assert not out[mask].any() and not out_score[mask].any()
    np.testing.assert_array_equal(out[~mask], x[~mask])
    # sample "b" alone, or in another order, gets the same mask
    alone = occlusion_mask((1, 1, 8, 17), 0.5, "joint-frame", [sample_rng("b", 7)])
    np.testing.assert_array_equal(alone[0], mask[1])
    other_seed = occlusion_mask((1, 1, 8, 17), 0.5, "joint-frame", [sample_rng("b", 8)])
    assert not np.array_equal(other_seed[0], mask[1])


def test_transform_batch_is_seeded_and_marks_occlusions():
    rng = np.random.default_rng(4)
    tensors, scores = ragged(rng, lengths=[20, 35, 12], persons=[1, 2, 1], joints=17, dims=2)
    layout = get_layout("coco17")
    cfg = TransformConfig(frames=30, persons=2, crop="random", occlusion_prob=0.4, rotate_deg=10,
                          scale_range=(0.9, 1.1))
    a = transform_batch(tensors, scores, layout, cfg, seed=5)
    b = transform_batch(tensors, scores, layout, cfg, seed=5)
    c = transform_batch(tensors, scores, layout, cfg, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    x, score = a
    assert x.shape == (3, 2, 30, 17, 2) and x.dtype == np.float32
    assert not x[score == 0].any(), "occluded and padded joints are all zero"
    real = np.zeros_like(score, dtype=bool)
    real[0, 0, :20] = real[1, :, :30] = real[2, 0, :12] = True
    assert abs((score[real] == 0).mean() - 0.4) < 0.05


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="occlusion_unit"):
        TransformConfig(occlusion_unit="frame")
    with pytest.raises(ValueError, match="crop"):
        TransformConfig(crop="middle")


def test_per_sample_randomness_does_not_depend_on_the_batch():
    rng = np.random.default_rng(5)
    tensors, scores = ragged(rng, lengths=[40, 25, 33], persons=[1, 2, 1])
    layout = get_layout("ntu25")
    cfg = TransformConfig(frames=20, persons=2, crop="random", occlusion_prob=0.3, rotate_deg=30,
                          scale_range=(0.8, 1.2))
    ids = ["a", "b", "c"]
    x, score = transform_batch(tensors, scores, layout, cfg, seed=9, sample_ids=ids)
    for i in (2, 0):  # alone, and in another order
        xi, si = transform_batch([tensors[i]], [scores[i]], layout, cfg, seed=9, sample_ids=[ids[i]])
        np.testing.assert_array_equal(xi[0], x[i])
        np.testing.assert_array_equal(si[0], score[i])
    x_next, _ = transform_batch(tensors, scores, layout, cfg, seed=10, sample_ids=ids)
    assert not np.array_equal(x_next, x), "another epoch seed gives other augmentations"
