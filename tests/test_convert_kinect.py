"""Kinect V1 text: MSR Action3D's own joint order mapped by name to kinect20, UTKinect segmented by actionLabel.txt,
and damaged files naming the file and line."""

import numpy as np
import pytest

from partkd.data import iter_samples, load_info, validate_dataset
from partkd.data.convert import ConvertError, convert_kinect_v1
from partkd.data.convert.kinect_v1 import MSR_ACTIONS, MSR_JOINTS, UTK_ACTIONS
from partkd.layouts import get_layout

KINECT20 = get_layout("kinect20")


def body_motion(frames, seed=0):
    """A body-like sequence (T, 20, 3): one random pose moved about, each joint jittered by a few mm, so its bone
    lengths change by a few percent from frame to frame, as a tracked body's do."""
    rng = np.random.default_rng(seed)
    pose = rng.uniform(-1, 1, size=(20, 3))
    drift = np.cumsum(rng.normal(scale=0.02, size=(frames, 1, 3)), axis=0)
    return np.round(pose + drift + rng.normal(scale=0.005, size=(frames, 20, 3)), 4)


def write_msr(path, frames, seed=0, joints=20):
    """Per frame ``joints`` lines 'x y z c' in MSR's order; returns the coordinates (T, 20, 3) in that order."""
    coords = body_motion(frames, seed)
    lines = [f"{x:g} {y:g} {z:g} 0" for frame in coords for x, y, z in frame[:joints]]
    path.write_text("\n".join(lines) + "\n")
    return coords


def test_msr_joints_map_by_name(tmp_path):
    folder = tmp_path / "MSRAction3DSkeletonReal3D"
    folder.mkdir()
    coords = write_msr(folder / "a05_s03_e02_skeleton3D.txt", 4, seed=1)
    coords[2] = 0
    (folder / "a05_s03_e02_skeleton3D.txt").write_text(
        "\n".join(f"{x:g} {y:g} {z:g} 0" for frame in coords for x, y, z in frame) + "\n")  # frame 3: no skeleton
    write_msr(folder / "a20_s10_e01_skeleton3D.txt", 2, seed=2)
    (folder / "a01_s01_e01_skeleton3D.txt").write_text("0 0 0 0\n" * 40)
    report = convert_kinect_v1([folder], tmp_path / "ds")
    assert report.written == 2 and report.skipped[0].reason.startswith("no skeleton")
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "ds")}
    s = samples["a05_s03_e02_skeleton3D"]
    assert (s.label, s.subject, s.replication, s.frames) == (4, 3, 2, 4) and MSR_ACTIONS[4] == "forward punch"
    # MSR lists the right shoulder first and the head last; kinect20 (Kinect SDK order) has the head 4th
    assert MSR_JOINTS[0] == "right_shoulder" and MSR_JOINTS[19] == "head" and KINECT20.joints[3] == "head"
    np.testing.assert_array_equal(s.hq[0, :, KINECT20.index("head")], coords[:, 19].astype(np.float32))
    np.testing.assert_array_equal(s.hq[0, :, KINECT20.index("right_shoulder")], coords[:, 0].astype(np.float32))
    np.testing.assert_array_equal(s.hq[0, :, KINECT20.index("spine_base")], coords[:, 6].astype(np.float32))
    # MSR's row of each kinect20 joint, from the dataset's joint list (1 right shoulder ... 20 head), not from the code
    msr_row = [6, 3, 2, 19, 1, 8, 10, 12, 0, 7, 9, 11, 5, 14, 16, 18, 4, 13, 15, 17]
    np.testing.assert_array_equal(s.hq[0, [0, 1, 3]], coords[[0, 1, 3]][:, msr_row].astype(np.float32))
    assert s.hq_score[0, 2].sum() == 0 and s.hq_score[0, [0, 1, 3]].min() == 1
    info = load_info(tmp_path / "ds")
    assert info["info"]["dataset"] == "msr-action3d" and info["class_names"] == list(MSR_ACTIONS)
    assert validate_dataset(tmp_path / "ds").ok


def test_msr_damaged_files(tmp_path):
    write_msr(tmp_path / "a02_s01_e01_skeleton3D.txt", 3)
    lines = (tmp_path / "a02_s01_e01_skeleton3D.txt").read_text().splitlines()
    (tmp_path / "a02_s01_e01_skeleton3D.txt").write_text("\n".join(lines[:50]) + "\n")
    with pytest.raises(ConvertError, match=r"a02_s01_e01_skeleton3D\.txt: has 50 joint lines, not a multiple of "
                                           r"20: frame 3 is incomplete"):
        convert_kinect_v1([tmp_path], tmp_path / "ds1")
    lines[23] = "0.1 0.2 oops 0"
    (tmp_path / "a02_s01_e01_skeleton3D.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConvertError, match=r"skeleton3D\.txt: line 24: '0.1 0.2 oops 0' is not 4 numbers"):
        convert_kinect_v1([tmp_path], tmp_path / "ds2")


def test_msr_lines_that_do_not_group_into_frames_of_20_are_refused(tmp_path):
    """19 joint lines a frame (the head left out) over 40 frames: 760 lines, a multiple of 20, which read as 38 frames
    of shifted joints. The bones tell: their lengths jump from frame to frame."""
    write_msr(tmp_path / "a03_s02_e01_skeleton3D.txt", 40, joints=19)
    with pytest.raises(ConvertError, match=r"a03_s02_e01_skeleton3D\.txt: its 760 lines do not group into frames of "
                                           r"20 joints: read so, the bone lengths change by a median \d+% "):
        convert_kinect_v1([tmp_path], tmp_path / "ds")
    write_msr(tmp_path / "a03_s02_e01_skeleton3D.txt", 38)  # the same body with its 20 joints: taken
    assert convert_kinect_v1([tmp_path], tmp_path / "ds2").written == 1


def write_utk(folder, name, frame_numbers, seed):
    coords = np.round(np.random.default_rng(seed).uniform(-1, 3, size=(len(frame_numbers), 20, 3)), 4)
    lines = [f"{n} " + " ".join(f"{v:g}" for v in c.ravel()) for n, c in zip(frame_numbers, coords)]
    (folder / name).write_text("\n".join(lines) + "\n")
    return coords


def test_utkinect_segments(tmp_path):
    folder = tmp_path / "UTKinect" / "joints"
    folder.mkdir(parents=True)
    one = write_utk(folder, "joints_s01_e01.txt", [100, 101, 102, 103, 104, 105, 110, 111], seed=1)
    two = write_utk(folder, "joints_s02_e02.txt", [5, 6, 7, 8], seed=2)
    (folder / "actionLabel.txt").write_text(
        "s01_e01\nwalk: 100 102\nsitDown: 104  110\ncarry: NaN NaN\nthrow: 200 210\n"
        "s02_e02\nclapHands: 6 8\n")
    report = convert_kinect_v1([folder], tmp_path / "ds")
    assert report.written == 3
    assert {(s.source, s.reason) for s in report.skipped} == {
        ("joints_s01_e01_carry", "actionLabel.txt gives no frame range (NaN)"),
        ("joints_s01_e01_throw", "no skeleton in frames 200-210")}
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "ds")}
    walk, sit, clap = (samples[f"joints_{k}"] for k in ("s01_e01_walk", "s01_e01_sitDown", "s02_e02_clapHands"))
    np.testing.assert_array_equal(walk.hq[0], one[:3].astype(np.float32))  # frames 100-102, Kinect SDK order as is
    np.testing.assert_array_equal(sit.hq[0], one[[4, 5, 6]].astype(np.float32))  # 104, 105, 110
    np.testing.assert_array_equal(clap.hq[0], two[1:].astype(np.float32))
    assert (walk.label, sit.label, clap.label) == (0, 1, 9) and UTK_ACTIONS[9] == "clapHands"
    assert (clap.subject, clap.replication) == (2, 2)
    assert load_info(tmp_path / "ds")["info"]["dataset"] == "utkinect"
    assert validate_dataset(tmp_path / "ds").ok

    (folder / "actionLabel.txt").write_text("s01_e01\nwalk 100 102\n")
    with pytest.raises(ConvertError, match=r"actionLabel\.txt: line 2: expected a sequence name"):
        convert_kinect_v1([folder], tmp_path / "bad")


def test_folder_must_be_one_dataset(tmp_path):
    write_msr(tmp_path / "a01_s01_e01_skeleton3D.txt", 1)
    write_utk(tmp_path, "joints_s01_e01.txt", [1], seed=0)
    with pytest.raises(ConvertError, match="mixes MSR Action3D .* and UTKinect"):
        convert_kinect_v1([tmp_path], tmp_path / "ds")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello\n")
    with pytest.raises(ConvertError, match="holds neither MSR Action3D files"):
        convert_kinect_v1([other], tmp_path / "ds2")
