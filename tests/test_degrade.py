"""degrade: the projection and joint mapping against hand-computed pixels, face approximation, noise-free identity on
2D, the seeded paired fraction, refusals, provenance, and the input left untouched."""

import json
import math

import numpy as np
import pytest

from partkd.data import DatasetWriter, Sample, iter_samples, load_info, validate_dataset
from partkd.data.degrade import CameraConfig, degrade_dataset, joint_plan
from partkd.layouts import get_layout

NTU25, COCO17, PENN13 = get_layout("ntu25"), get_layout("coco17"), get_layout("penn13")
FIXED_CAMERA = CameraConfig(max_yaw_deg=0.0, pitch_std_deg=0.0, distance=(4.0, 4.0), lateral=(0.0, 0.0))
F, CX, CY = 1050.0, 960.0, 540.0  # the synthetic camera: focal length and image centre of 1920x1080


def pixel(point):
    """Hand projection for FIXED_CAMERA aimed at spine_shoulder (0, 0.2, 3): p - centre + (0, 0, 4)."""
    x, y, z = point[0], point[1] - 0.2, point[2] - 3.0 + 4.0
    return [CX + F * x / z, CY - F * y / z]


def standing_body(frames=2):
    """ntu25 person facing the camera (their left at smaller x, as in NTU's files)."""
    rng = np.random.default_rng(0)
    body = np.zeros((1, frames, 25, 3))
    body[...] = rng.uniform(-0.3, 0.3, size=(25, 3)) + [0.0, 0.0, 3.0]
    for name, xyz in {"head": (0, 0.5, 3), "neck": (0, 0.3, 3), "spine_shoulder": (0, 0.2, 3),
                      "left_shoulder": (-0.2, 0.2, 3), "right_shoulder": (0.2, 0.2, 3)}.items():
        body[:, :, NTU25.index(name)] = xyz
    return body


def write(path, samples, classes=("a", "b", "c"), hq="ntu25", lq=None):
    with DatasetWriter(path, name="src", class_names=list(classes), hq_layout=hq, lq_layout=lq) as writer:
        writer.write_all(samples)
    return writer.summary


def test_3d_projection_mapping_and_face_against_hand_values(tmp_path):
    body = standing_body()
    score = np.ones((1, 2, 25), np.float32)
    score[0, 1, NTU25.index("left_wrist")] = 0  # missing in HQ -> missing in LQ
    score[0, 1, NTU25.index("head")] = 0  # no head in frame 2 -> no face there
    write(tmp_path / "src", [Sample("s1", 1, 2, hq=body.astype(np.float32), hq_score=score, subject=3)])
    report = degrade_dataset(tmp_path / "src", tmp_path / "lq", noise="none", camera=FIXED_CAMERA)
    assert report.written == 1 and report.paired == 1
    (s,) = iter_samples(tmp_path / "lq")
    assert s.lq.shape == (1, 2, 17, 2) and s.subject == 3
    np.testing.assert_array_equal(s.hq, body.astype(np.float32))
    hq = body[0, 0].astype(np.float32).astype(np.float64)
    for name in ("left_shoulder", "right_knee", "left_wrist", "right_ankle"):
        np.testing.assert_allclose(s.lq[0, 0, COCO17.index(name)], pixel(hq[NTU25.index(name)]), rtol=1e-5)
    np.testing.assert_allclose(s.lq[0, 0, COCO17.index("left_shoulder")], [CX - F * 0.2 / 4, CY], rtol=1e-6)
    # face from the head along the person's axes: up +y, left -x, forward -z (towards the camera)
    head = np.array([0.0, 0.5, 3.0])
    face = {"nose": head + [0, -0.02, -0.10], "left_eye": head + [-0.035, 0.02, -0.085],
            "right_eye": head + [0.035, 0.02, -0.085], "left_ear": head + [-0.075, 0, 0],
            "right_ear": head + [0.075, 0, 0]}
    for name, point in face.items():
        np.testing.assert_allclose(s.lq[0, 0, COCO17.index(name)], pixel(point), rtol=1e-5, err_msg=name)
    assert s.lq_score[0, 0].min() > 0
    assert s.lq_score[0, 1, COCO17.index("left_wrist")] == 0 and not s.lq[0, 1, COCO17.index("left_wrist")].any()
    face_at = [COCO17.index(n) for n in face]
    assert not s.lq_score[0, 1, face_at].any() and s.lq_score[0, 1, COCO17.index("left_hip")] > 0
    info = load_info(tmp_path / "lq")
    assert info["info"]["simulated_lq"] is True and info["info"]["degrade_noise"] == "none"
    assert info["info"]["source_fingerprint"] == load_info(tmp_path / "src")["fingerprint"]
    assert sorted(info["info"]["approximated_joints"]) == sorted(face)
    assert (info["hq_layout"], info["lq_layout"]) == ("ntu25", "coco17")
    assert validate_dataset(tmp_path / "lq").ok


def test_random_camera_stays_in_the_image_and_is_seeded(tmp_path):
    body = standing_body(4)
    write(tmp_path / "src", [Sample(f"s{i}", i % 3, 4, hq=(body + [0.1 * i, 0, 0]).astype(np.float32),
                                    hq_score=np.ones((1, 4, 25), np.float32)) for i in range(6)])
    degrade_dataset(tmp_path / "src", tmp_path / "a", seed=5)
    degrade_dataset(tmp_path / "src", tmp_path / "b", seed=5)
    degrade_dataset(tmp_path / "src", tmp_path / "c", seed=6)
    fingerprints = [load_info(tmp_path / k)["fingerprint"] for k in "abc"]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    for s in iter_samples(tmp_path / "a"):
        seen = s.lq_score > 0
        assert seen.mean() > 0.5
        assert (s.lq[seen][:, 0] > 0).all() and (s.lq[seen][:, 0] < 1920).all() and (s.lq[seen][:, 1] < 1080).all()


def test_2d_penn_maps_to_itself_and_noise_changes_it(tmp_path):
    rng = np.random.default_rng(1)
    hq = rng.uniform(10, 400, size=(1, 6, 13, 2)).astype(np.float32)
    score = (rng.random((1, 6, 13)) > 0.2).astype(np.float32)
    hq[score == 0] = 0
    solitary = Sample("lq-only", 0, 3, lq=np.ones((1, 3, 17, 2), np.float32), lq_score=np.ones((1, 3, 17), np.float32))
    write(tmp_path / "src", [Sample("p1", 2, 6, hq=hq, hq_score=score, split="train"), solitary], hq="penn13",
          lq="coco17")
    report = degrade_dataset(tmp_path / "src", tmp_path / "none", noise="none")
    assert [s.source for s in report.skipped] == ["lq-only"] and any("replaced" in n for n in report.notes)
    (s,) = iter_samples(tmp_path / "none")
    assert load_info(tmp_path / "none")["lq_layout"] == "penn13" and s.split == "train"
    np.testing.assert_array_equal(s.lq, hq)
    np.testing.assert_array_equal(s.lq_score > 0, score > 0)
    degrade_dataset(tmp_path / "src", tmp_path / "heavy", noise="heavy")
    (h,) = iter_samples(tmp_path / "heavy")
    assert (h.lq_score > 0).sum() < (score > 0).sum() and not np.array_equal(h.lq, hq)
    assert load_info(tmp_path / "heavy")["info"]["noise_profile"]["drop_prob"] == 0.18
    # heterogeneous: penn13 -> coco17, the face Penn does not annotate kept as joints never seen
    degrade_dataset(tmp_path / "src", tmp_path / "coco", noise="none", layout="coco17", mark_missing=True)
    (c,) = iter_samples(tmp_path / "coco")
    face = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]
    assert load_info(tmp_path / "coco")["info"]["missing_joints"] == sorted(face)
    for joint in COCO17.joints:
        if joint in face:
            assert (c.lq_score[..., COCO17.index(joint)] == 0).all() and (c.lq[..., COCO17.index(joint), :] == 0).all()
        else:
            np.testing.assert_array_equal(c.lq[..., COCO17.index(joint), :], hq[..., PENN13.index(joint), :])


def test_paired_fraction_is_exact_per_class_and_seeded(tmp_path):
    rng = np.random.default_rng(2)
    samples = [Sample(f"p{i:02d}", i % 3, 3, hq=rng.uniform(0, 100, (1, 3, 13, 2)).astype(np.float32),
                      hq_score=np.ones((1, 3, 13), np.float32)) for i in range(21)]
    write(tmp_path / "src", samples, hq="penn13")
    kept = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        report = degrade_dataset(tmp_path / "src", tmp_path / name, paired_fraction=0.5, seed=seed)
        assert report.paired == 10 and report.solitary == 11  # round(0.5 * 21) keep their HQ side
        rows = list(iter_samples(tmp_path / name))
        per_class = np.bincount([s.label for s in rows if s.hq is not None], minlength=3)
        assert sorted(per_class.tolist()) == [3, 3, 4]
        kept.append({s.sample_id for s in rows if s.hq is not None})
        assert all(s.lq is not None for s in rows)
    assert kept[0] == kept[1] != kept[2]
    assert load_info(tmp_path / "a")["counts"]["solitary"] == 11


def test_refusals_and_the_input_is_untouched(tmp_path):
    body = standing_body()
    write(tmp_path / "src", [Sample("s1", 0, 2, hq=body.astype(np.float32), hq_score=np.ones((1, 2, 25), np.float32))])
    before = {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()}
    with pytest.raises(ValueError, match="must not be the input"):
        degrade_dataset(tmp_path / "src", tmp_path / "src", overwrite=True)
    with pytest.raises(ValueError, match="target layout ntu25 is 3D"):
        degrade_dataset(tmp_path / "src", tmp_path / "x", layout="ntu25")
    with pytest.raises(ValueError, match=r"ntu25 has no nose, left_eye, right_eye, left_ear, right_ear \(approx"):
        degrade_dataset(tmp_path / "src", tmp_path / "y", approximate=False)
    with pytest.raises(ValueError, match="cannot map penn13 to coco17: penn13 has no nose, left_eye"):
        joint_plan(PENN13, COCO17)
    assert joint_plan(get_layout("kinect20"), get_layout("openpose18"))["neck"] == "approximate"
    assert joint_plan(NTU25, get_layout("openpose18"))["neck"] == "copy"
    assert {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()} == before
    degrade_dataset(tmp_path / "src", tmp_path / "op", layout="openpose18", noise="none", camera=FIXED_CAMERA)
    (s,) = iter_samples(tmp_path / "op")
    np.testing.assert_allclose(s.lq[0, 0, get_layout("openpose18").index("neck")], pixel([0, 0.3, 3]), rtol=1e-6)
    info = json.loads((tmp_path / "op" / "dataset.json").read_text())
    assert info["info"]["projection"]["focal_px"] == F and math.isclose(info["info"]["projection"]["max_yaw_deg"], 0)


def test_kinect20_degrades_to_coco17_by_default(tmp_path):
    kinect20 = get_layout("kinect20")
    body = standing_body()[:, :, [NTU25.index(j) for j in kinect20.joints]]  # the same person in Kinect V1's joints
    write(tmp_path / "src", [Sample("a01_s01_e01_skeleton3D", 0, 2, hq=body.astype(np.float32),
                                    hq_score=np.ones((1, 2, 20), np.float32))], hq="kinect20")
    degrade_dataset(tmp_path / "src", tmp_path / "lq", noise="none", camera=FIXED_CAMERA)
    (s,) = iter_samples(tmp_path / "lq")
    assert load_info(tmp_path / "lq")["lq_layout"] == "coco17" and s.lq_score.min() > 0
    np.testing.assert_allclose(s.lq[0, 0, COCO17.index("right_hip")], pixel(body[0, 0, kinect20.index("right_hip")]),
                               rtol=1e-5)
    # no neck in Kinect V1: the face's up axis runs from the spine-shoulder joint to the head, straight up here too
    np.testing.assert_allclose(s.lq[0, 0, COCO17.index("left_ear")], pixel([-0.075, 0.5, 3.0]), rtol=1e-5)


def test_a_left_right_swap_carries_missing_joints_with_it():
    from partkd.data.noise import NoiseProfile, apply_noise

    coords = np.random.default_rng(4).uniform(100, 300, size=(1, 3, 13, 2))
    score = np.ones((1, 3, 13))
    left, right = PENN13.index("left_wrist"), PENN13.index("right_wrist")
    coords[0, :, left], score[0, :, left] = 0.0, 0.0  # the left wrist is never seen
    swap_only = NoiseProfile("swap", swap_prob=1.0)
    lq, lq_score = apply_noise(coords, score, PENN13, swap_only, np.random.default_rng(0))
    # every frame swapped: the left label holds the right wrist, the right label the (missing) left wrist
    np.testing.assert_allclose(lq[0, :, left], coords[0, :, right], rtol=1e-6)
    assert (lq_score[0, :, left] > 0).all() and not lq_score[0, :, right].any() and not lq[0, :, right].any()


def test_jitter_is_doubled_at_the_extremities_only_where_the_profile_says_so():
    """fast-estimator doubles the per-frame jitter at wrists and ankles; bottom-up-2d (COCO's sigmas are no larger
    there) keeps one spread for every joint."""
    from partkd.data.noise import NoiseProfile, apply_noise, get_noise_profile

    coords = np.zeros((1, 4000, 13, 2))
    coords[..., 1] = np.linspace(0, 100, 13)  # a body 100 px high: jitter is a fraction of it
    score = np.ones((1, 4000, 13), np.float32)
    wrist, shoulder = PENN13.index("left_wrist"), PENN13.index("left_shoulder")
    for profile, ratio in ((get_noise_profile("bottom-up-2d"), 1.0), (NoiseProfile("x", jitter=0.016), 2.0)):
        jitter_only = NoiseProfile("j", jitter=profile.jitter, extremity_factor=profile.extremity_factor)
        lq, _ = apply_noise(coords, score, PENN13, jitter_only, np.random.default_rng(0))
        spread = (lq - coords).std(axis=(0, 1, 3))  # per joint, px
        assert spread[shoulder] == pytest.approx(1.6, rel=0.05)  # 0.016 x 100 px
        assert spread[wrist] / spread[shoulder] == pytest.approx(ratio, rel=0.05)
