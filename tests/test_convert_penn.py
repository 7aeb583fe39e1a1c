"""Penn Action labels: hand-written .mat files round-trip with visibility as score, damaged files name the file and
the field or frame, and all 2,326 real label files convert with Penn's train/test flags."""

import numpy as np
import pytest
import scipy.io

from partkd.data import iter_samples, load_info, validate_dataset
from partkd.data.convert import ConvertError, WriteOptions, convert_penn
from partkd.data.convert.penn import PENN_ACTIONS, read_penn_file


def write_mat(path, action, train, frames, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    fields = {
        "action": action, "pose": "front", "train": np.array([[train]], dtype=np.int32),
        "x": rng.uniform(1, 480, size=(frames, 13)).round(2), "y": rng.uniform(1, 360, size=(frames, 13)).round(2),
        "visibility": (rng.random((frames, 13)) > 0.3).astype(np.uint8), "nframes": np.array([[frames]]),
        "bbox": np.zeros((frames, 4)), "dimensions": np.array([[360, 480, frames]], dtype=np.uint16),
    }
    fields.update(overrides)
    scipy.io.savemat(path, fields)
    return fields


@pytest.fixture
def penn_root(tmp_path):
    labels = tmp_path / "Penn_Action" / "labels"
    labels.mkdir(parents=True)
    mats = {
        "0001": write_mat(labels / "0001.mat", "tennis_serve", 1, 5, seed=1),
        "0002": write_mat(labels / "0002.mat", "bowl", -1, 3, seed=2),
        "0003": write_mat(labels / "0003.mat", "baseball_pitch", 1, 4, seed=3),
    }
    mats["0003"]["x"][2, 6] = mats["0003"]["y"][2, 6] = 0.0  # an unannotated joint at (0, 0)
    mats["0003"]["visibility"][2, 6] = 1
    scipy.io.savemat(labels / "0003.mat", mats["0003"])
    return tmp_path / "Penn_Action", mats


def test_round_trip_with_visibility_split_and_labels(penn_root, tmp_path):
    root, mats = penn_root
    report = convert_penn([root], tmp_path / "ds")  # the dataset folder: its labels/ is found
    assert report.written == 3 and not report.skipped
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "ds")}
    for stem, mat in mats.items():
        s = samples[stem]
        visible = mat["visibility"].astype(bool) & ~((mat["x"] == 0) & (mat["y"] == 0))
        assert s.hq.shape == (1, len(mat["x"]), 13, 2) and s.frames == len(mat["x"])
        np.testing.assert_array_equal(s.hq_score[0], visible.astype(np.float32))
        np.testing.assert_array_equal(s.hq[0, ..., 0], np.where(visible, mat["x"], 0).astype(np.float32))
        np.testing.assert_array_equal(s.hq[0, ..., 1], np.where(visible, mat["y"], 0).astype(np.float32))
        assert s.label == PENN_ACTIONS.index(mat["action"])
    assert PENN_ACTIONS[:3] == ("baseball_pitch", "baseball_swing", "bench_press") and len(PENN_ACTIONS) == 15
    assert [samples[k].split for k in ("0001", "0002", "0003")] == ["train", "test", "train"]
    assert samples["0003"].hq_score[0, 2, 6] == 0, "a joint at (0, 0) is missing even when flagged visible"
    info = load_info(tmp_path / "ds")
    assert info["hq_layout"] == "penn13" and info["splits"]["official"]["train"]["samples"] == 2
    assert validate_dataset(tmp_path / "ds").ok


def test_invisible_joints_can_keep_their_annotated_position(penn_root, tmp_path):
    root, mats = penn_root
    s = read_penn_file(root / "labels" / "0001.mat", invisible_score=0.5)
    hidden = ~mats["0001"]["visibility"].astype(bool)
    assert hidden.any()
    np.testing.assert_array_equal(s.hq_score[0], np.where(hidden, 0.5, 1.0).astype(np.float32))
    np.testing.assert_array_equal(s.hq[0, ..., 0], mats["0001"]["x"].astype(np.float32))


@pytest.mark.parametrize(("override", "message"), [
    ({"x": np.full((3, 13), "a")}, "field 'x' holds <U1 values, expected numbers"),
    ({"visibility": np.full((3, 13), "yes")}, "field 'visibility' holds <U3 values, expected numbers"),
    ({"nframes": np.array(["three"])}, "cannot be read (ValueError: invalid literal for int()"),
])
def test_fields_of_the_wrong_type_name_the_file_and_are_skipped_with_skip_bad(tmp_path, override, message):
    write_mat(tmp_path / "0007.mat", "bowl", 1, 3, **override)
    write_mat(tmp_path / "0008.mat", "bowl", 1, 3, seed=8)
    with pytest.raises(ConvertError) as err:
        convert_penn([tmp_path], tmp_path / "ds")
    assert str(err.value).startswith(f"{tmp_path / '0007.mat'}: ") and message in str(err.value)
    report = convert_penn([tmp_path], tmp_path / "skipped", write=WriteOptions(skip_bad=True))
    assert report.written == 1 and [s.source for s in report.skipped] == [str(tmp_path / "0007.mat")]


def test_damaged_files_name_the_file_and_field(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "0100.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 50)
    with pytest.raises(ConvertError, match=r"0100\.mat: cannot be read as a MATLAB file"):
        read_penn_file(folder / "0100.mat")
    write_mat(folder / "0106.mat", "squat", 1, 40)
    (folder / "0106.mat").write_bytes((folder / "0106.mat").read_bytes()[:1500])  # truncated
    with pytest.raises(ConvertError, match=r"0106\.mat: cannot be read as a MATLAB file"):
        read_penn_file(folder / "0106.mat")
    fields = write_mat(folder / "0101.mat", "squat", 1, 3)
    del fields["visibility"]
    scipy.io.savemat(folder / "0101.mat", fields)
    with pytest.raises(ConvertError, match=r"0101\.mat: has no field 'visibility'"):
        read_penn_file(folder / "0101.mat")
    write_mat(folder / "0102.mat", "squat", 1, 3, nframes=np.array([[4]]))
    with pytest.raises(ConvertError, match=r"0102\.mat: 'nframes' says 4 frames, 'x' has 3 rows"):
        read_penn_file(folder / "0102.mat")
    x = np.ones((3, 13))
    x[1, 4] = np.nan
    write_mat(folder / "0103.mat", "squat", 1, 3, x=x)
    with pytest.raises(ConvertError, match=r"0103\.mat: frame 2: joint 5 has a non-finite coordinate"):
        read_penn_file(folder / "0103.mat")
    write_mat(folder / "0104.mat", "dance", 1, 3)
    with pytest.raises(ConvertError, match="action 'dance' is not one of the 15"):
        read_penn_file(folder / "0104.mat")
    write_mat(folder / "0105.mat", "squat", 1, 2, visibility=np.zeros((2, 13), dtype=np.uint8))
    report = convert_penn([folder], tmp_path / "ds", write=WriteOptions(skip_bad=True))
    assert report.written == 0 and len(report.skipped) == 7
    reasons = {s.source.split("/")[-1]: s.reason for s in report.skipped}
    assert reasons["0105.mat"] == "no skeleton: no joint is visible in any frame"


@pytest.mark.slow  # every real Penn Action label file
def test_all_real_penn_labels(shared_data, tmp_path):
    labels = shared_data / "penn_action" / "labels"
    report = convert_penn([labels], tmp_path / "ds")
    # 2,326 files; 1516.mat has no visible joint at all (a broken annotation) and is reported, not written
    assert report.written + len(report.skipped) == 2326 == len(list(labels.glob("*.mat")))
    assert [s.source.split("/")[-1] for s in report.skipped] == ["1516.mat"]
    info = load_info(tmp_path / "ds")
    official = info["splits"]["official"]
    assert (official["train"]["samples"] + 1, official["test"]["samples"]) == (1258, 1068)  # 1516 is a train file
    assert info["class_names"] == sorted(info["class_names"]) and len(info["class_names"]) == 15
    assert info["counts"]["per_class"][info["class_names"].index("squat")] == 231
    assert int(scipy.io.loadmat(labels / "1516.mat")["train"][0, 0]) == 1
    first = next(iter_samples(tmp_path / "ds"))
    mat = scipy.io.loadmat(labels / "0001.mat")
    assert first.sample_id == "0001" and first.frames == int(mat["nframes"][0, 0]) == 151
    assert first.label == PENN_ACTIONS.index("baseball_pitch") and first.split == "test"
    visible = mat["visibility"].astype(bool)
    np.testing.assert_array_equal(first.hq[0, ..., 0][visible], mat["x"][visible].astype(np.float32))
    assert validate_dataset(tmp_path / "ds").ok
