"""PYSKL pickles: values and splits round-trip, two files pair by frame_dir, hostile pickles are refused, and the
real sample annotation parses."""

import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from partkd.data import iter_samples, load_info, validate_dataset
from partkd.data.convert import ConvertError, UnsafePickleError, convert_pyskl, load_pickle
from partkd.data.convert.ntu import NTU_ACTIONS
from partkd.data.convert.pyskl import read_annotation
from partkd.data.schema import Sample


def annotation(frame_dir, label, persons, frames, joints=17, dims=2, scores=True, seed=0):
    rng = np.random.default_rng(seed)
    ann = {"frame_dir": frame_dir, "label": label, "total_frames": frames, "img_shape": (480, 640),
           "keypoint": rng.uniform(1, 600, size=(persons, frames, joints, dims)).astype(np.float16)}
    if scores:
        ann["keypoint_score"] = rng.uniform(0, 1, size=(persons, frames, joints)).astype(np.float16)
    return ann


def dump(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def by_id(path):
    return {s.sample_id: s for s in iter_samples(path)}


def test_values_labels_and_split_round_trip(tmp_path):
    anns = [annotation("v_a", 0, 2, 5, seed=1), annotation("v_b", 2, 1, 7, seed=2), annotation("v_c", 1, 3, 4, seed=3)]
    anns[0]["keypoint_score"][1, 2, 3] = 0  # a missing joint
    file = dump(tmp_path / "ucf.pkl", {"split": {"train1": ["v_a", "v_c"], "test1": ["v_b"]}, "annotations": anns})
    report = convert_pyskl(file, tmp_path / "ds", side="lq", train_split="train1", test_split="test1")
    assert report.written == 3 and report.solitary == 3 and report.per_class == [1, 1, 1]
    samples = by_id(tmp_path / "ds")
    for ann in anns:
        s = samples[ann["frame_dir"]]
        assert s.label == ann["label"] and s.hq is None and s.frames == ann["total_frames"]
        expected_score = ann["keypoint_score"].astype(np.float32)
        np.testing.assert_array_equal(s.lq_score, expected_score)
        present = expected_score > 0
        np.testing.assert_array_equal(s.lq[present], ann["keypoint"].astype(np.float32)[present])
    assert not samples["v_a"].lq[1, 2, 3].any(), "a score-0 joint gets coordinates 0"
    assert {k: s.split for k, s in samples.items()} == {"v_a": "train", "v_b": "test", "v_c": "train"}
    info = load_info(tmp_path / "ds")
    assert info["lq_layout"] == "coco17" and info["hq_layout"] is None
    assert info["class_names"] == ["class 0", "class 1", "class 2"]
    assert info["splits"]["official"]["train"]["samples"] == 2
    assert validate_dataset(tmp_path / "ds").ok

    # without a choice of split lists the column stays empty and the report says which lists exist
    report = convert_pyskl(file, tmp_path / "nosplit", side="lq")
    assert any("train1" in note and "test1" in note for note in report.notes)
    assert {s.split for s in iter_samples(tmp_path / "nosplit")} == {None}
    with pytest.raises(ConvertError, match="has no split 'xsub_train'; its splits are: test1, train1"):
        convert_pyskl(file, tmp_path / "x", train_split="xsub_train", test_split="test1")


def test_pairs_3d_hq_with_2d_lq_by_frame_dir(tmp_path):
    names = ["S001C001P001R001A001", "S001C002P002R001A005", "S002C003P008R002A003"]
    hq = [annotation(n, int(n[-3:]) - 1, 1, 6, joints=25, dims=3, scores=False, seed=i) for i, n in enumerate(names)]
    hq[0]["keypoint"][0, 1, 4] = 0  # a joint that is all zeros: missing in a 3D annotation without scores
    lq = [annotation(n, int(n[-3:]) - 1, 2, 6, seed=10 + i) for i, n in enumerate(names[:2])]
    lq.append(annotation("S003C001P003R001A002", 1, 1, 6, seed=20))
    dump(tmp_path / "ntu_3d.pkl", {"split": {"xsub_train": names[:2], "xsub_val": names[2:]}, "annotations": hq})
    dump(tmp_path / "ntu_2d.pkl", lq, protocol=2)  # a bare list, in an old protocol
    report = convert_pyskl(tmp_path / "ntu_3d.pkl", tmp_path / "ds", pair=tmp_path / "ntu_2d.pkl",
                           train_split="xsub_train", test_split="xsub_val")
    assert (report.written, report.paired, report.hq_only, report.solitary) == (4, 2, 1, 1)
    info = load_info(tmp_path / "ds")
    assert (info["hq_layout"], info["lq_layout"]) == ("ntu25", "coco17")
    assert info["class_names"] == list(NTU_ACTIONS[:60])
    samples = by_id(tmp_path / "ds")
    first = samples[names[0]]
    np.testing.assert_array_equal(first.hq, np.where(first.hq_score[..., None] > 0,
                                                     hq[0]["keypoint"].astype(np.float32), 0))
    assert first.hq_score[0, 1, 4] == 0 and first.hq_score.sum() == 6 * 25 - 1
    np.testing.assert_array_equal(first.lq_score, lq[0]["keypoint_score"].astype(np.float32))
    assert (first.subject, first.camera, first.setup, first.label, first.split) == (1, 1, 1, 0, "train")
    assert samples[names[2]].lq is None and samples[names[2]].split == "test"
    assert samples["S003C001P003R001A002"].hq is None and samples["S003C001P003R001A002"].subject == 3
    assert validate_dataset(tmp_path / "ds").ok

    lq[0]["label"] = 7
    dump(tmp_path / "bad_2d.pkl", lq)
    with pytest.raises(ConvertError, match="S001C001P001R001A001: label 0 on one side, 7 on the other"):
        convert_pyskl(tmp_path / "ntu_3d.pkl", tmp_path / "bad", pair=tmp_path / "bad_2d.pkl")


def test_one_annotation_dict_and_bad_annotations(tmp_path):
    single = annotation("clip", 0, 1, 3, seed=5)
    convert_pyskl(dump(tmp_path / "one.pkl", single), tmp_path / "ds", class_names=["wave"])
    (s,) = iter_samples(tmp_path / "ds")
    assert s.sample_id == "clip" and load_info(tmp_path / "ds")["class_names"] == ["wave"]
    np.testing.assert_array_equal(s.hq_score, single["keypoint_score"].astype(np.float32))

    broken = annotation("clip", 0, 1, 3)
    broken["total_frames"] = 4
    with pytest.raises(ConvertError, match=r"annotations\[0\] \(clip\): total_frames is 4 but keypoint has 3 frames"):
        convert_pyskl(dump(tmp_path / "broken.pkl", [broken]), tmp_path / "b1")
    for total in ("3 frames", [3], 3.5):
        broken["total_frames"] = total
        with pytest.raises(ConvertError, match=r"broken\.pkl: annotations\[0\] \(clip\): total_frames .* is not an "
                                               "integer"):
            convert_pyskl(dump(tmp_path / "broken.pkl", [broken]), tmp_path / "b1")
    odd = annotation("clip", 0, 1, 3, joints=14)
    with pytest.raises(ConvertError, match="14 joints x 2 values, which matches no shipped layout"):
        convert_pyskl(dump(tmp_path / "odd.pkl", [odd]), tmp_path / "b2")
    with pytest.raises(ConvertError, match=r"annotations\[1\] \(\?\): has no 'frame_dir'"):
        convert_pyskl(dump(tmp_path / "nodir.pkl", [single, {"label": 0, "keypoint": single["keypoint"]}]),
                      tmp_path / "b3")


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


class Custom:
    pass


class Codec:
    def __reduce__(self):
        import codecs

        return (codecs.encode, ("payload", "rot13"))


@pytest.mark.parametrize("payload, refused", [
    (Boom(), "system"),
    ({"annotations": [Custom()]}, "test_convert_pyskl.Custom"),
    (eval, "builtins.eval"),
    (Codec(), "_codecs.encode"),
])
def test_hostile_pickles_are_refused(tmp_path, monkeypatch, payload, refused):
    monkeypatch.chdir(tmp_path)
    path = dump(tmp_path / "evil.pkl", payload)
    with pytest.raises(ConvertError, match=refused) as err:
        load_pickle(path)
    assert str(path) in str(err.value)
    if refused != "_codecs.encode":  # that one is admitted, but only for latin-1 bytes
        assert isinstance(err.value, UnsafePickleError) and "refused to unpickle" in str(err.value)
    assert not (tmp_path / "pwned").exists(), "nothing ran"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_arrays_and_containers_load_in_every_protocol(tmp_path, protocol):
    obj = {"split": {"train": ["a"]}, "annotations": [annotation("a", 0, 1, 2)], "s": {1, 2}, "f": frozenset("x"),
           "t": (1.5, b"\x00\xff"), "n": np.float32(2.5), "u": np.array(["p", "q"]), "b": bytearray(b"\x00\xfe"),
           "e": bytearray()}
    back = load_pickle(dump(tmp_path / "ok.pkl", obj, protocol))
    np.testing.assert_array_equal(back["annotations"][0]["keypoint"], obj["annotations"][0]["keypoint"])
    assert back["s"] == {1, 2} and back["t"] == (1.5, b"\x00\xff") and back["n"] == np.float32(2.5)
    assert back["u"].tolist() == ["p", "q"] and back["b"] == bytearray(b"\x00\xfe") and back["e"] == bytearray()


def _global(module, name):
    return f"c{module}\n{name}\n".encode()


def _int(value):
    return b"J" + struct.pack("<i", value)


_RECONSTRUCT = _global("numpy.core.multiarray", "_reconstruct")
_NDARRAY = _global("numpy", "ndarray")
_BYTEARRAY = _global("builtins", "bytearray")
_DTYPE = _global("numpy", "dtype")
_GIGA = 10**9

# Tiny pickles (protocol 2/3 opcodes by hand) that would make the unpickler allocate a gigabyte or more.
HOSTILE = {
    # _reconstruct(ndarray, (10**9,), b"b"): numpy itself only ever writes the shape (0,)
    "reconstruct_shape": b"\x80\x03" + _RECONSTRUCT + _NDARRAY + _int(_GIGA) + b"\x85C\x01b\x87R.",
    # _reconstruct(ndarray, (0,), "f8"): a dtype numpy never writes there
    "reconstruct_dtype": b"\x80\x03" + _RECONSTRUCT + _NDARRAY + b"K\x00\x85X\x02\x00\x00\x00f8\x87R.",
    # ndarray((10**9,), "b") called directly
    "ndarray_call": b"\x80\x03" + _NDARRAY + _int(_GIGA) + b"\x85X\x01\x00\x00\x00b\x86R.",
    # bytearray(10**9)
    "bytearray_int": b"\x80\x03" + _BYTEARRAY + _int(_GIGA) + b"\x85R.",
    # bytearray("x", "utf-16"): only latin-1 decodes a protocol-2 bytearray
    "bytearray_codec": b"\x80\x03" + _BYTEARRAY + b"X\x01\x00\x00\x00xX\x06\x00\x00\x00utf-16\x86R.",
    # dtype("O8"): object arrays would hand pickled objects to numpy
    "dtype_object": b"\x80\x03" + _DTYPE + b"X\x02\x00\x00\x00O8\x89\x88\x87R.",
    # dtype("V1000000000"): how a subarray (shaped) dtype such as ("b", (10**9,)) starts
    "dtype_void": pickle.dumps(np.dtype(("b", (_GIGA,))), protocol=2),
    # a whole object array, as numpy pickles it
    "object_array": pickle.dumps(np.array([1, "x"], dtype=object), protocol=4),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_pickles_that_would_allocate_are_refused_first(tmp_path, name):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(HOSTILE[name])
    assert path.stat().st_size < 200
    tracemalloc.start()
    try:
        with pytest.raises(UnsafePickleError, match="refused to unpickle") as err:
            load_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert peak < 10**7, f"{peak} bytes allocated before the refusal"


def _shared_nest(depth, width=10):
    """width**depth zeros as nested lists that share each level: a few hundred bytes pickled."""
    nest = [0.0] * width
    for _ in range(depth - 1):
        nest = [nest] * width
    return nest


@pytest.mark.parametrize("key, value, found", [
    ("keypoint", _shared_nest(9), "keypoint is a list"),  # 10**9 values if numpy were to read it
    ("keypoint_score", _shared_nest(8), "keypoint_score is a list"),
    ("keypoint", np.array([[[["1", "2"]]]]), "keypoint is a numpy array of <U1"),
    ("keypoint", np.ones((1, 2, 17, 2), dtype=np.complex64), "keypoint is a numpy array of complex64"),
])
def test_keypoints_must_be_numeric_arrays(tmp_path, key, value, found):
    ann = annotation("clip", 0, 1, 3)
    ann[key] = value
    path = dump(tmp_path / "nested.pkl", [annotation("ok", 0, 1, 3), ann])
    assert path.stat().st_size < 5000
    with pytest.raises(ConvertError, match=rf"nested\.pkl: annotations\[1\] \(clip\): {found}; expected a numpy "
                                           "array of numbers"):
        convert_pyskl(path, tmp_path / "ds", side="lq")


def test_keypoints_larger_than_the_file_allows_are_refused(tmp_path):
    ann = annotation("clip", 0, 1, 3)  # 102 keypoint values, 51 scores
    assert isinstance(read_annotation(ann, "a.pkl", 0, "coco17", "lq", None, max_values=102), Sample)
    with pytest.raises(ConvertError, match=r"a\.pkl: annotations\[4\] \(clip\): keypoint has 102 values, more than "
                                           "101 .*per byte of the file"):
        read_annotation(ann, "a.pkl", 4, "coco17", "lq", None, max_values=101)


def test_an_annotation_whose_scores_are_all_zero_is_skipped(tmp_path):
    empty = annotation("empty", 1, 2, 4, seed=1)
    empty["keypoint_score"][:] = 0
    nan = annotation("nan", 0, 1, 3, seed=2)
    nan["keypoint"][:] = np.nan  # no finite joint: every score becomes 0
    report = convert_pyskl(dump(tmp_path / "a.pkl", [annotation("ok", 0, 1, 3), empty, nan]), tmp_path / "ds")
    assert report.written == 1
    assert [(s.source, s.reason) for s in report.skipped] == [
        (f"{tmp_path / 'a.pkl'}: empty", "no skeleton: every score is 0"),
        (f"{tmp_path / 'a.pkl'}: nan", "no skeleton: every score is 0")]
    assert [s.sample_id for s in iter_samples(tmp_path / "ds")] == ["ok"]


def test_truncated_pickle_names_the_file(tmp_path):
    data = pickle.dumps([annotation("a", 0, 1, 4)])
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match=r"cut\.pkl: cannot be unpickled .* may be truncated"):
        load_pickle(tmp_path / "cut.pkl")


def test_real_pyskl_sample(shared_data, tmp_path):
    file = shared_data / "pyskl_samples" / "example_UCF101_skeleton.pkl"
    raw = load_pickle(file)
    report = convert_pyskl(file, tmp_path / "ds", side="lq")
    assert report.written == 1
    (s,) = iter_samples(tmp_path / "ds")
    assert (s.sample_id, s.label, s.frames) == ("v_ApplyEyeMakeup_g01_c01", 0, 163)
    assert s.lq.shape == (2, 163, 17, 2) and load_info(tmp_path / "ds")["lq_layout"] == "coco17"
    np.testing.assert_array_equal(s.lq_score, raw["keypoint_score"].astype(np.float32))
    np.testing.assert_allclose(s.lq[0, 0, 0], [300.5, 96.2], atol=0.05)
    assert validate_dataset(tmp_path / "ds").ok
