"""NTU RGB+D .skeleton converter: hand-written files round-trip to the exact values, body selection by motion
energy, tracking states as scores, empty/truncated/garbled files, and the two real sample files."""

import numpy as np
import pytest

from partkd.data import iter_samples, load_info, validate_dataset
from partkd.data.convert import ConvertError, WriteOptions, convert_ntu
from partkd.data.convert.ntu import NTU_ACTIONS, motion_energy, read_skeleton_file


def body_rows(rng, frames, spread, states=None):
    """(T, 25, 12) joint lines: x y z, 8 unused values, tracking state."""
    rows = np.zeros((frames, 25, 12))
    rows[..., :3] = np.round(rng.normal(size=(frames, 25, 3)) * spread + [0.1, 0.2, 3.0], 4)
    rows[..., 3:11] = 7.0  # depth/colour/orientation: not used
    rows[..., 11] = 2 if states is None else states
    return rows


def write_skeleton(path, frames, bodies):
    """bodies: {body_id: (first frame, rows (T_b, 25, 12))}; frames without the body leave it out."""
    lines = [str(frames)]
    for t in range(frames):
        present = [(bid, rows[t - start]) for bid, (start, rows) in bodies.items() if start <= t < start + len(rows)]
        lines.append(str(len(present)))
        for bid, rows in present:
            lines.append(f"{bid} 0 1 1 1 1 0 -0.1 0.1 2")
            lines.append("25")
            lines += [" ".join(f"{v:g}" for v in joint[:11]) + f" {int(joint[11])}" for joint in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def ntu_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "nturgb+d_skeletons"
    folder.mkdir()
    states = np.full((6, 25), 2)
    states[1, 4], states[2, 7] = 1, 0  # an inferred and a not-tracked joint
    calm, busy, noisy = body_rows(rng, 6, 0.01, states), body_rows(rng, 4, 0.5), body_rows(rng, 6, 0.2)
    write_skeleton(folder / "S001C002P003R002A058.skeleton", 6, {"111": (0, calm), "222": (1, busy), "333": (0, noisy)})
    one = body_rows(rng, 3, 0.1)
    write_skeleton(folder / "S017C001P045R001A001.skeleton", 3, {"9": (0, one)})
    write_skeleton(folder / "S001C001P001R001A010.skeleton", 4, {})  # NTU's samples with missing skeletons
    return folder, {"calm": calm, "busy": busy, "noisy": noisy, "one": one}


def test_round_trip_body_selection_and_scores(ntu_folder, tmp_path):
    folder, bodies = ntu_folder
    report = convert_ntu([folder], tmp_path / "ds")
    assert report.written == 2 and [(s.source.split("/")[-1], s.reason) for s in report.skipped] == [
        ("S001C001P001R001A010.skeleton", "no skeleton: no body is tracked in any frame")]
    assert validate_dataset(tmp_path / "ds").ok
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "ds")}
    two = samples["S001C002P003R002A058"]
    assert (two.label, two.setup, two.camera, two.subject, two.replication) == (57, 1, 2, 3, 2)
    assert two.hq.shape == (2, 6, 25, 3) and two.lq is None
    # the busy body (largest motion energy) first, then the noisy one; the calm one is dropped
    energies = [motion_energy(bodies[k][:, :, :3]) for k in ("busy", "noisy", "calm")]
    assert energies[0] > energies[1] > energies[2]
    np.testing.assert_array_equal(two.hq[0, 1:5], bodies["busy"][:, :, :3].astype(np.float32))
    assert not two.hq[0, [0, 5]].any() and not two.hq_score[0, [0, 5]].any(), "busy is absent in frames 1 and 6"
    np.testing.assert_array_equal(two.hq[1], bodies["noisy"][:, :, :3].astype(np.float32))
    assert two.hq_score[1].min() == 1.0

    one = samples["S017C001P045R001A001"]
    assert (one.label, one.setup, one.subject) == (0, 17, 45) and one.hq.shape == (1, 3, 25, 3)
    np.testing.assert_array_equal(one.hq[0], bodies["one"][:, :, :3].astype(np.float32))
    info = load_info(tmp_path / "ds")
    assert info["class_names"] == list(NTU_ACTIONS[:60]) and info["hq_layout"] == "ntu25"
    assert set(info["splits"]) == {"xsub", "xview", "xset"}
    assert info["splits"]["xview"]["train"]["samples"] == 1  # camera 2 trains, camera 1 tests
    assert report.per_class[57] == 1 and report.per_class[0] == 1 and sum(report.per_class) == 2


def test_tracking_states_become_scores(tmp_path):
    rng = np.random.default_rng(1)
    states = np.full((3, 25), 2)
    states[0, 3], states[1, 10], states[2, 0] = 1, 0, 0
    rows = body_rows(rng, 3, 0.1, states)
    write_skeleton(tmp_path / "S002C003P004R001A120.skeleton", 3, {"5": (0, rows)})
    convert_ntu([tmp_path], tmp_path / "ds")
    (s,) = iter_samples(tmp_path / "ds")
    assert s.hq_score[0, 0, 3] == 0.5 and s.hq_score[0, 1, 10] == 0.0 and s.hq_score[0, 2, 0] == 0.0
    assert (s.hq_score == 1.0).sum() == 3 * 25 - 3
    assert not s.hq[0, 1, 10].any() and not s.hq[0, 2, 0].any(), "not-tracked joints get coordinates 0"
    np.testing.assert_array_equal(s.hq[0, 0, 3], rows[0, 3, :3].astype(np.float32))  # inferred keeps its position
    assert len(load_info(tmp_path / "ds")["class_names"]) == 120, "A120 makes it NTU-120"


def test_max_bodies_one_keeps_the_most_active(ntu_folder, tmp_path):
    folder, bodies = ntu_folder
    convert_ntu([folder / "S001C002P003R002A058.skeleton"], tmp_path / "ds", max_bodies=1)
    (s,) = iter_samples(tmp_path / "ds")
    assert s.hq.shape == (1, 6, 25, 3)
    np.testing.assert_array_equal(s.hq[0, 1:5], bodies["busy"][:, :, :3].astype(np.float32))


def test_truncated_and_garbled_files_name_the_line(ntu_folder, tmp_path):
    folder, _ = ntu_folder
    good = (folder / "S017C001P045R001A001.skeleton").read_text().splitlines()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "S001C001P002R001A002.skeleton").write_text("\n".join(good[:20]) + "\n")
    with pytest.raises(ConvertError, match=r"S001C001P002R001A002\.skeleton: file ends early: expected joint lines "
                                           r"\(frame 1, body 1\) at line 5"):
        read_skeleton_file(bad / "S001C001P002R001A002.skeleton")
    garbled = list(good)
    garbled[9] = garbled[9].replace(" ", " x", 1)
    (bad / "S001C001P002R001A003.skeleton").write_text("\n".join(garbled) + "\n")
    with pytest.raises(ConvertError, match=r"A003\.skeleton: line 10: joint lines \(frame 1, body 1\).* is not 12"):
        read_skeleton_file(bad / "S001C001P002R001A003.skeleton")
    short = list(good)
    short[33] = " ".join(short[33].split()[:11])
    (bad / "S001C001P002R001A004.skeleton").write_text("\n".join(short) + "\n")
    with pytest.raises(ConvertError, match=r"line 34: joint lines \(frame 2, body 1\): expected 12 values, found 11"):
        read_skeleton_file(bad / "S001C001P002R001A004.skeleton")

    not_finite = list(good)
    not_finite[6] = "nan" + not_finite[6][not_finite[6].index(" "):]
    (bad / "S001C001P002R001A005.skeleton").write_text("\n".join(not_finite) + "\n")
    with pytest.raises(ConvertError, match=r"A005\.skeleton: line 7: joint lines \(frame 1, body 1\): a value is not"):
        read_skeleton_file(bad / "S001C001P002R001A005.skeleton")

    with pytest.raises(ConvertError, match="A002.skeleton"):
        convert_ntu([bad], tmp_path / "stopped")
    assert not validate_dataset(tmp_path / "stopped").ok, "a conversion that stopped leaves no valid dataset"
    (bad / "notntu.skeleton").write_text("0\n")
    report = convert_ntu([bad, folder], tmp_path / "ds", write=WriteOptions(skip_bad=True))
    reasons = {s.source.split("/")[-1]: s.reason for s in report.skipped}
    assert report.written == 2 and len(reasons) == 6
    assert "line 5" in reasons["S001C001P002R001A002.skeleton"]
    assert reasons["notntu.skeleton"].startswith("the file name is not an NTU name")
    assert validate_dataset(tmp_path / "ds").ok


def test_real_ntu_samples(shared_data, tmp_path):
    report = convert_ntu([shared_data / "ntu_samples"], tmp_path / "ds")
    assert report.written == 2 and not report.skipped
    samples = {s.sample_id: s for s in iter_samples(tmp_path / "ds")}
    reading, handshake = samples["S001C001P001R001A011"], samples["S001C003P008R002A058"]
    assert reading.hq.shape == (1, 82, 25, 3) and handshake.hq.shape == (2, 70, 25, 3)
    assert (reading.label, handshake.label) == (10, 57)
    assert NTU_ACTIONS[reading.label] == "reading" and NTU_ACTIONS[handshake.label] == "handshaking"
    assert (handshake.camera, handshake.subject, handshake.replication) == (3, 8, 2)
    np.testing.assert_allclose(reading.hq[0, 0, 0], [0.2058097, 0.1920515, 3.810989], rtol=1e-6)
    assert reading.hq_score[0, 0, 5] == 0.5, "the file's 6th joint of frame 1 is inferred (state 1)"
    assert validate_dataset(tmp_path / "ds").ok


def test_lines_after_the_declared_frames_name_the_line(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(path, 2, {"7": (0, body_rows(rng, 2, 0.1))})
    assert len(path.read_text().splitlines()) == 57
    path.write_text(path.read_text() + "\n  \n")  # blank lines after the last frame are fine
    assert read_skeleton_file(path)[0] == 2
    path.write_text(path.read_text().replace("2\n", "1\n", 1))  # the header now declares 1 frame
    with pytest.raises(ConvertError, match=r"A001\.skeleton: line 30: 28 lines after the last of the 1 frames the "
                                           "header declares"):
        read_skeleton_file(path)


def test_bad_num_classes_without_ntu_names(tmp_path):
    (tmp_path / "clip.skeleton").write_text("0\n")
    with pytest.raises(ValueError, match=r"num_classes must be 60 or 120 .*largest A000"):
        convert_ntu([tmp_path], tmp_path / "ds", num_classes=50)
