"""Pose-estimator JSON: OpenPifPaf JSON Lines and OpenPose per-frame files round-trip into coco17 with tracking by box
overlap, labels from a CSV or from the dataset they pair with, and damaged files name the file and line."""

import json

import numpy as np
import pytest

from partkd.data import DatasetWriter, Sample, iter_samples, load_info, validate_dataset
from partkd.data.convert import ConvertError, WriteOptions, convert_pose_json
from partkd.data.convert.pose_json import box_iou

# OpenPose BODY_25 index of each COCO-17 joint, written out by hand from the OpenPose documentation
BODY25_FOR_COCO17 = [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]
# OpenPose COCO-18 index of each COCO-17 joint
COCO18_FOR_COCO17 = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]


def person(rng, x0, joints=17, drop=()):
    """(joints, 3) x, y, c inside a 100-pixel box starting at x0; joints in ``drop`` get confidence 0."""
    kp = np.column_stack([rng.uniform(x0, x0 + 100, joints).round(1), rng.uniform(50, 250, joints).round(1),
                          rng.uniform(0.3, 1.0, joints).round(3)])
    kp[list(drop), 2] = 0.0
    return kp


def pifpaf(kp, score):
    x0, y0 = kp[:, 0].min(), kp[:, 1].min()
    return {"keypoints": kp.ravel().tolist(), "bbox": [x0, y0, kp[:, 0].max() - x0, kp[:, 1].max() - y0],
            "score": score, "category_id": 1}


@pytest.fixture
def videos(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pose"
    (root / "clip2").mkdir(parents=True)
    (root / "nested" / "clip3").mkdir(parents=True)
    # clip1: A (score 0.9) misses frame 3, B (0.8) is always there, C (0.2) shows up once
    a = [person(rng, 100 + 2 * t, drop=(3,) if t == 0 else ()) for t in range(5)]
    b = [person(rng, 400 + 2 * t) for t in range(5)]
    c = person(rng, 700)
    lines = []
    for t in range(5):
        preds = [pifpaf(b[t], 0.8)] + ([] if t == 2 else [pifpaf(a[t], 0.9)]) + ([pifpaf(c, 0.2)] if t == 1 else [])
        lines.append(json.dumps({"frame": t, "predictions": preds[::-1] if t % 2 else preds}))
    (root / "clip1.mp4.openpifpaf.json").write_text("\n".join(lines) + "\n")
    # clip2: OpenPose BODY_25, one person, three frames
    body25 = [person(rng, 50, joints=25, drop=(16,) if t == 1 else ()) for t in range(3)]
    for t, kp in enumerate(body25):
        doc = {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": kp.ravel().tolist()}]}
        (root / "clip2" / f"clip2_{t:012d}_keypoints.json").write_text(json.dumps(doc))
    # clip3: OpenPose COCO-18, frame numbers 2 and 10 (10 comes after 2, not before it)
    coco18 = {n: person(rng, 300, joints=18) for n in (2, 10)}
    for n, kp in coco18.items():
        doc = {"people": [{"pose_keypoints_2d": kp.ravel().tolist()}]}
        (root / "nested" / "clip3" / f"clip3_{n:012d}_keypoints.json").write_text(json.dumps(doc))
    (tmp_path / "labels.csv").write_text("video_id,label,split\nclip1,wave,train\nclip2,jump,test\n"
                                         "clip3,wave,train\nclip4,run,train\n")
    return root, {"a": a, "b": b, "body25": body25, "coco18": coco18}


def expected(kp):
    """coords (V, 2), score (V,) as the shards store them: missing joints at 0."""
    seen = kp[:, 2] > 0
    return np.where(seen[:, None], kp[:, :2], 0).astype(np.float32), kp[:, 2].astype(np.float32)


def test_pifpaf_and_openpose_round_trip(videos, tmp_path):
    root, src = videos
    report = convert_pose_json([root], tmp_path / "ds", labels=tmp_path / "labels.csv")
    assert report.written == 3 and report.class_names == ["jump", "run", "wave"]
    assert any("clip4" in note for note in report.notes), "a labelled video without pose output is reported"
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "ds")}
    clip1 = samples["clip1"]
    assert clip1.lq.shape == (2, 5, 17, 2) and clip1.hq is None and (clip1.label, clip1.split) == (2, "train")
    # B (summed score 4.0) before A (3.6); C (0.2) is dropped
    for t in range(5):
        np.testing.assert_array_equal(clip1.lq[0, t], expected(src["b"][t])[0])
        np.testing.assert_array_equal(clip1.lq_score[0, t], expected(src["b"][t])[1])
        if t != 2:
            np.testing.assert_array_equal(clip1.lq[1, t], expected(src["a"][t])[0])
            np.testing.assert_array_equal(clip1.lq_score[1, t], expected(src["a"][t])[1])
    assert not clip1.lq_score[1, 2].any() and not clip1.lq[1, 2].any(), "A is not detected in frame 3"
    assert clip1.lq_score[1, 0, 3] == 0 and not clip1.lq[1, 0, 3].any()

    clip2 = samples["clip2"]
    assert clip2.lq.shape == (1, 3, 17, 2) and clip2.split == "test"
    for t, kp in enumerate(src["body25"]):
        np.testing.assert_array_equal(clip2.lq[0, t], expected(kp[BODY25_FOR_COCO17])[0])
        np.testing.assert_array_equal(clip2.lq_score[0, t], expected(kp[BODY25_FOR_COCO17])[1])
    assert clip2.lq_score[0, 1, 1] == 0, "BODY_25 joint 16 (left eye) was dropped in frame 2"
    clip3 = samples["clip3"]
    np.testing.assert_array_equal(clip3.lq[0, 0], expected(src["coco18"][2][COCO18_FOR_COCO17])[0])
    np.testing.assert_array_equal(clip3.lq[0, 1], expected(src["coco18"][10][COCO18_FOR_COCO17])[0])
    info = load_info(tmp_path / "ds")
    assert info["lq_layout"] == "coco17" and info["hq_layout"] is None
    assert validate_dataset(tmp_path / "ds").ok


def test_openpose18_layout_keeps_the_neck(videos, tmp_path):
    root, src = videos
    (tmp_path / "l.csv").write_text("clip3,0\nclip1,0\n")
    convert_pose_json([root / "nested"], tmp_path / "ds", labels=tmp_path / "l.csv", layout="openpose18")
    (s,) = iter_samples(tmp_path / "ds")
    np.testing.assert_array_equal(s.lq[0, 0], expected(src["coco18"][2])[0])  # COCO-18 is openpose18's order
    with pytest.raises(ConvertError, match="coco17 output has no neck, which layout openpose18 needs"):
        convert_pose_json([root / "clip1.mp4.openpifpaf.json"], tmp_path / "x", labels=tmp_path / "l.csv",
                          layout="openpose18")


def test_labels_and_pairing_from_an_hq_dataset(videos, tmp_path):
    root, src = videos
    rng = np.random.default_rng(3)
    classes = ["wave", "jump", "run"]  # another order than the sorted CSV names: labels match by name
    with DatasetWriter(tmp_path / "hq", name="hq", class_names=classes, hq_layout="penn13", lq_layout=None) as w:
        for sid, label, frames in (("clip1", 0, 5), ("clip2", 1, 4), ("clip9", 2, 2)):
            w.write(Sample(sid, label, frames, hq=rng.normal(size=(1, frames, 13, 2)).astype(np.float32),
                           hq_score=np.ones((1, frames, 13), np.float32), subject=7))
    paired = WriteOptions(pair_with=tmp_path / "hq")
    report = convert_pose_json([root], tmp_path / "paired", write=paired)  # labels from the pair
    assert (report.written, report.paired, report.hq_only, report.solitary) == (3, 2, 1, 0)
    assert [s.source for s in report.skipped] == ["clip3"]
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "paired")}
    assert samples["clip1"].label == 0 and samples["clip1"].subject == 7 and samples["clip1"].hq is not None
    assert samples["clip2"].frames == 3, "both sides cut to the shorter length"
    info = load_info(tmp_path / "paired")
    assert (info["hq_layout"], info["lq_layout"], info["class_names"]) == ("penn13", "coco17", classes)
    assert validate_dataset(tmp_path / "paired").ok

    report = convert_pose_json([root], tmp_path / "csv", labels=tmp_path / "labels.csv",
                               write=WriteOptions(pair_with=tmp_path / "hq"))
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "csv")}
    assert samples["clip3"].label == 0 and samples["clip3"].hq is None, "wave is label 0 in the HQ dataset"
    (tmp_path / "wrong.csv").write_text("clip1,jump\n")
    with pytest.raises(ConvertError, match="clip1: label 1 differs from label 0"):
        convert_pose_json([root / "clip1.mp4.openpifpaf.json"], tmp_path / "w", labels=tmp_path / "wrong.csv",
                          write=WriteOptions(pair_with=tmp_path / "hq"))


def test_damaged_json_names_the_file_and_line(videos, tmp_path):
    root, _ = videos
    (tmp_path / "l.csv").write_text("clip1,0\nclip2,0\n")
    text = (root / "clip1.mp4.openpifpaf.json").read_text()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "clip1.jsonl").write_text(text[: len(text) * 2 // 3])
    with pytest.raises(ConvertError, match=r"clip1\.jsonl: line 4: is not valid JSON.*truncated"):
        convert_pose_json([cut], tmp_path / "a", labels=tmp_path / "l.csv")
    doc = {"people": [{"pose_keypoints_2d": [1.0] * 60}]}
    (root / "clip2" / "clip2_000000000001_keypoints.json").write_text(json.dumps(doc))
    with pytest.raises(ConvertError, match=r"clip2_000000000001_keypoints\.json: people\[0\]: 60 keypoint values "
                                           r"is neither BODY_25"):
        convert_pose_json([root / "clip2"], tmp_path / "b", labels=tmp_path / "l.csv")
    for doc, message in (({"people": 5}, "'people' is int, expected a list of persons"),
                         ({"people": [{"pose_keypoints_2d": "abc"}]}, "people[0] has no 'pose_keypoints_2d' list")):
        (root / "clip2" / "clip2_000000000001_keypoints.json").write_text(json.dumps(doc))
        with pytest.raises(ConvertError) as err:
            convert_pose_json([root / "clip2"], tmp_path / "b", labels=tmp_path / "l.csv")
        assert str(err.value).endswith(f"clip2_000000000001_keypoints.json: {message}")
    (root / "clip2" / "clip2_000000000001_keypoints.json").write_text('{"people": []}\n{"people": []}\n')
    with pytest.raises(ConvertError, match="line 2: is not valid JSON: Extra data .* should be named .jsonl"):
        convert_pose_json([root / "clip2"], tmp_path / "c", labels=tmp_path / "l.csv")
    report = convert_pose_json([root / "clip2", root / "clip1.mp4.openpifpaf.json"], tmp_path / "d",
                               labels=tmp_path / "l.csv", write=WriteOptions(skip_bad=True))
    assert report.written == 1 and report.skipped[0].source == "clip2"
    (tmp_path / "bad.csv").write_text("video_id,label\nclip1\n")
    with pytest.raises(ConvertError, match=r"bad\.csv: line 2: 1 fields, expected 2"):
        convert_pose_json([root], tmp_path / "e", labels=tmp_path / "bad.csv")


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]], dtype=float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0], [0, 0]])


def test_ntu_rgb_video_ids_become_ntu_names(tmp_path):
    kp = person(np.random.default_rng(5), 10)
    line = json.dumps({"frame": 0, "predictions": [pifpaf(kp, 0.7)]})
    (tmp_path / "S002C003P004R001A005_rgb.avi.openpifpaf.json").write_text(line + "\n")
    (tmp_path / "l.csv").write_text("S002C003P004R001A005,4\n")
    convert_pose_json([tmp_path], tmp_path / "ds", labels=tmp_path / "l.csv")
    (s,) = iter_samples(tmp_path / "ds")
    assert (s.sample_id, s.setup, s.camera, s.subject, s.replication) == ("S002C003P004R001A005", 2, 3, 4, 1)
    np.testing.assert_array_equal(s.lq[0, 0], expected(kp)[0])


def _video_lines(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_frame_numbers_place_records_in_time(tmp_path):
    rng = np.random.default_rng(7)
    first, later = person(rng, 10), person(rng, 14)
    _video_lines(tmp_path / "gap.jsonl", [{"frame": 5, "predictions": [pifpaf(later, 0.7)]},
                                          {"frame": 0, "predictions": [pifpaf(first, 0.7)]}])
    (tmp_path / "l.csv").write_text("gap,0\n")
    report = convert_pose_json([tmp_path / "gap.jsonl"], tmp_path / "ds", labels=tmp_path / "l.csv")
    (s,) = iter_samples(tmp_path / "ds")
    assert s.frames == 6, "frames 0 and 5 span six frames"
    np.testing.assert_array_equal(s.lq[0, 0], expected(first)[0])
    np.testing.assert_array_equal(s.lq[0, 5], expected(later)[0])
    assert not s.lq_score[0, 1:5].any() and not s.lq[0, 1:5].any(), "frames without a record are empty"
    assert any("4 empty frames" in note and "1 video" in note for note in report.notes)


@pytest.mark.parametrize("records, message", [
    ([{"frame": 3, "predictions": []}, {"frame": 3, "predictions": []}], r"line 2: frame 3 appears twice"),
    ([{"frame": 0, "predictions": []}, {"frame": "1", "predictions": []}], r"line 2: frame '1' is not an integer"),
    ([{"frame": 1.5, "predictions": []}], r"line 1: frame 1\.5 is not an integer"),
    ([{"frame": True, "predictions": []}], r"line 1: frame True is not an integer"),
    ([{"frame": 0, "predictions": []}, {"frame": 10**9, "predictions": []}],
     r"line 2: frame numbers run from 0 to 1000000000 .* too sparse"),
])
def test_bad_frame_numbers_name_the_file_and_line(tmp_path, records, message):
    _video_lines(tmp_path / "v.jsonl", records)
    (tmp_path / "l.csv").write_text("v,0\n")
    with pytest.raises(ConvertError, match=r"v\.jsonl: " + message):
        convert_pose_json([tmp_path / "v.jsonl"], tmp_path / "ds", labels=tmp_path / "l.csv")


@pytest.mark.parametrize("field, value, message", [
    ("keypoints", "x", r"keypoints are not numbers"),
    ("bbox", [0, 0, "wide", 4], r"bbox \[0, 0, 'wide', 4\] is not numbers"),
    ("score", {"p": 1}, r"score \{'p': 1\} is not a number"),
])
def test_values_that_are_not_numbers_name_the_file_and_line(tmp_path, field, value, message):
    pred = pifpaf(person(np.random.default_rng(3), 10), 0.5)
    pred[field] = value if field != "keypoints" else pred["keypoints"][:-1] + [value]
    _video_lines(tmp_path / "v.jsonl", [{"frame": 0, "predictions": []}, {"frame": 1, "predictions": [pred]}])
    (tmp_path / "l.csv").write_text("v,0\n")
    with pytest.raises(ConvertError, match=r"v\.jsonl: line 2: predictions\[0\]: " + message):
        convert_pose_json([tmp_path / "v.jsonl"], tmp_path / "ds", labels=tmp_path / "l.csv")
