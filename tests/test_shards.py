"""Parquet shards: exact round trips, the writer's refusals, the reader's schema checks and every validate check."""

import json
import re
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_sample

from partkd.data import (
    DatasetWriter,
    ShardChecksumError,
    ShardDataError,
    ShardError,
    ShardSchemaError,
    iter_samples,
    load_info,
    split_filter,
    validate_dataset,
)
from partkd.data.schema import SIDES
from partkd.data.shards import _rows_to_table, sha256_file, shard_paths
from partkd.data.splits import NTU_XSUB_TRAIN_SUBJECTS

CLASSES = ["a", "b", "c"]


def write(path, samples, rows_per_shard=4, **kw):
    with DatasetWriter(path, name="t", class_names=CLASSES, hq_layout="ntu25", lq_layout="coco17",
                       rows_per_shard=rows_per_shard, row_group_size=2, **kw) as writer:
        writer.write_all(samples)
    return writer.summary


def varied_samples(n=11):
    return [make_sample(f"s{i:03d}", label=i % 3, frames=3 + i, persons=1 + i % 2, hq=i % 4 != 1, lq=i % 5 != 2,
                        seed=i) for i in range(n)]


def assert_same(a, b):
    assert (a.sample_id, a.label, a.frames, a.subject, a.camera, a.setup, a.replication, a.split) == (
        b.sample_id, b.label, b.frames, b.subject, b.camera, b.setup, b.replication, b.split)
    for side in SIDES:
        for key in (side, f"{side}_score"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None) == (y is None), key
            if x is not None:
                assert x.dtype == y.dtype == np.float32 and x.shape == y.shape
                np.testing.assert_array_equal(x, y)


def test_round_trip_is_exact(tmp_path):
    samples = varied_samples()
    info = write(tmp_path / "ds", samples)
    back = list(iter_samples(tmp_path / "ds"))
    assert len(back) == len(samples)
    for a, b in zip(samples, back):
        assert_same(a, b)
    assert [s["rows"] for s in info["shards"]] == [4, 4, 3]
    assert info["counts"]["samples"] == 11
    has_hq = [s.hq is not None for s in samples]
    has_lq = [s.lq is not None for s in samples]
    assert info["counts"]["paired"] == sum(h and q for h, q in zip(has_hq, has_lq))
    assert info["counts"]["solitary"] == sum(not h for h in has_hq)
    assert info["counts"]["hq_only"] == sum(not q for q in has_lq)
    assert info["counts"]["per_class"] == [4, 4, 3]
    # single shard file path reads the same rows
    one = list(iter_samples(tmp_path / "ds" / "part-00001.parquet"))
    assert [s.sample_id for s in one] == ["s004", "s005", "s006", "s007"]
    assert pq.ParquetFile(tmp_path / "ds" / "part-00000.parquet").metadata.row_group(0).column(0).compression == "ZSTD"


def test_split_filters_and_counts(tmp_path):
    samples = [make_sample(f"s{i:03d}", label=i % 3, seed=i) for i in range(60)]
    info = write(tmp_path / "ds", samples, rows_per_shard=16)
    train = [s.sample_id for s in iter_samples(tmp_path / "ds", filter=split_filter("xsub", "train"))]
    expected = [s.sample_id for s in samples if s.subject in NTU_XSUB_TRAIN_SUBJECTS]
    assert train == expected
    test = [s.sample_id for s in iter_samples(tmp_path / "ds", filter=split_filter("xsub", "test"))]
    assert sorted(train + test) == sorted(s.sample_id for s in samples)
    assert info["splits"]["xsub"]["train"]["samples"] == len(expected)
    view_train = [s.sample_id for s in iter_samples(tmp_path / "ds", filter=split_filter("xview", "train"))]
    assert view_train == [s.sample_id for s in samples if s.camera in (2, 3)]
    assert "xset" not in info["splits"], "setup is null on some rows, so cross-setup does not apply"
    assert "official" not in info["splits"], "split is null on some rows"


def test_official_split_column(tmp_path):
    samples = [make_sample(f"s{i}", seed=i) for i in range(12)]
    for s in samples:
        s.split = s.split or "test"
    info = write(tmp_path / "ds", samples)
    train = [s.sample_id for s in iter_samples(tmp_path / "ds", filter=split_filter("official", "train"))]
    assert train == [s.sample_id for s in samples if s.split == "train"] and len(train) == 4
    assert info["splits"]["official"]["test"]["samples"] == 8
    with pytest.raises(ShardDataError, match="'validation'"):
        write(tmp_path / "bad", [make_sample("x", seed=0)] + [replace(make_sample("y", seed=1), split="validation")])


@pytest.mark.parametrize(
    "change, column, message",
    [
        (dict(lq_joints=18), "lq", "18 joints, layout coco17 expects 17"),
        (dict(label=3), "label", "label 3 outside [0, 3)"),
        (dict(hq=False, lq=False), "hq", "neither"),
    ],
)
def test_writer_refuses_bad_samples_by_name(tmp_path, change, column, message):
    with pytest.raises(ShardDataError) as err:
        write(tmp_path / "ds", [make_sample("good"), make_sample("bad", **change)])
    assert err.value.sample_id == "bad" and err.value.column == column
    assert message in str(err.value) and "'bad'" in str(err.value)


def test_writer_refuses_nan_and_duplicates(tmp_path):
    bad = make_sample("nan")
    bad.lq_score[0, 1, 2] = np.nan
    with pytest.raises(ShardDataError, match="lq_score.*NaN"):
        write(tmp_path / "a", [bad])
    with pytest.raises(ShardDataError, match="duplicate"):
        write(tmp_path / "b", [make_sample("x"), make_sample("x", seed=1)])


def test_failed_write_keeps_what_was_written(tmp_path):
    samples = [make_sample(f"s{i}", seed=i) for i in range(6)] + [make_sample("bad", label=7)]
    with pytest.raises(ShardDataError):
        write(tmp_path / "ds", samples, rows_per_shard=4)
    info = load_info(tmp_path / "ds")
    assert info["complete"] is False and info["counts"]["samples"] == 6
    assert [s.sample_id for s in iter_samples(tmp_path / "ds")] == [f"s{i}" for i in range(6)]
    report = validate_dataset(tmp_path / "ds")
    assert not report.ok and "did not finish" in str(report.problems[0])


def test_writer_does_not_clobber_a_dataset(tmp_path):
    write(tmp_path / "ds", [make_sample("a")])
    with pytest.raises(FileExistsError, match="not empty"):
        write(tmp_path / "ds", [make_sample("b")])
    write(tmp_path / "ds", [make_sample("b")], overwrite=True)
    assert [s.sample_id for s in iter_samples(tmp_path / "ds")] == ["b"]


# ------------------------------------------------------------------------------------------ corrupted datasets


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "ds"
    write(path, [make_sample(f"s{i}", label=i % 3, seed=i) for i in range(8)], rows_per_shard=4)
    assert validate_dataset(path).ok
    return path


def replace_shard(path, shard, samples, metadata=None):
    """Write rows into ``shard`` without the writer's checks and record its new checksum, as a buggy tool would."""
    metadata = metadata or {"schema_version": 1, "hq_layout": "ntu25", "lq_layout": "coco17"}
    pq.write_table(_rows_to_table(samples, metadata), path / shard, compression="zstd")
    info = json.loads((path / "dataset.json").read_text())
    for entry in info["shards"]:
        if entry["file"] == shard:
            entry["sha256"], entry["rows"] = sha256_file(path / shard), len(samples)
    (path / "dataset.json").write_text(json.dumps(info))


def only_problem(path):
    report = validate_dataset(path)
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    return report.problems[0]


def test_validate_flipped_byte_is_a_checksum_error(dataset):
    shard = dataset / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = validate_dataset(dataset).problems
    checksum = [p for p in problems if isinstance(p, ShardChecksumError)]
    assert len(checksum) == 1 and checksum[0].file.endswith("part-00001.parquet") and "SHA-256" in str(checksum[0])


def test_validate_wrong_joint_count(dataset):
    rows = [make_sample(f"s{i}", seed=i) for i in (4, 5, 6)] + [make_sample("s7", seed=7, lq_joints=18)]
    replace_shard(dataset, "part-00001.parquet", rows)
    problem = only_problem(dataset)
    assert isinstance(problem, ShardDataError)
    assert (problem.sample_id, problem.column) == ("s7", "lq") and "part-00001.parquet" in problem.file
    assert "18 joints, layout coco17 expects 17" in str(problem)
    with pytest.raises(ShardDataError, match="part-00001.parquet.*'s7'.*'lq'.*18 joints"):
        list(iter_samples(dataset))


def test_validate_nan(dataset):
    rows = [make_sample(f"s{i}", seed=i) for i in (4, 5, 6, 7)]
    rows[2].hq[0, 1, 3, 2] = np.nan
    replace_shard(dataset, "part-00001.parquet", rows)
    problem = only_problem(dataset)
    assert (problem.sample_id, problem.column) == ("s6", "hq") and "NaN" in str(problem)


def test_validate_label_out_of_range(dataset):
    rows = [make_sample(f"s{i}", seed=i) for i in (4, 5, 6, 7)]
    rows[0].label = 3
    replace_shard(dataset, "part-00001.parquet", rows)
    problem = only_problem(dataset)
    assert (problem.sample_id, problem.column) == ("s4", "label") and "outside [0, 3)" in str(problem)


def test_validate_duplicate_id_across_shards(dataset):
    rows = [make_sample(f"s{i}", seed=i) for i in (4, 5, 6)] + [make_sample("s0", seed=0)]
    replace_shard(dataset, "part-00001.parquet", rows)
    problem = only_problem(dataset)
    assert (problem.sample_id, problem.column) == ("s0", "sample_id")
    assert "duplicate" in str(problem) and "part-00000.parquet" in str(problem)


def test_validate_truncated_file(dataset):
    shard = dataset / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    problems = validate_dataset(dataset).problems
    assert any(isinstance(p, ShardChecksumError) for p in problems)
    unreadable = [p for p in problems if not isinstance(p, ShardChecksumError)]
    assert len(unreadable) == 1 and unreadable[0].file.endswith("part-00000.parquet")
    assert "may be truncated or corrupt" in str(unreadable[0])
    with pytest.raises(ShardError, match="part-00000.parquet.*truncated"):
        list(iter_samples(dataset))


def test_reader_refuses_a_shard_with_another_layout(dataset):
    rows = [make_sample(f"s{i}", seed=i) for i in (4, 5, 6, 7)]
    replace_shard(dataset, "part-00001.parquet", rows,
                  {"schema_version": 1, "hq_layout": "ntu25", "lq_layout": "openpose18"})
    with pytest.raises(ShardSchemaError, match="part-00001.parquet.*'lq'.*openpose18.*coco17"):
        list(iter_samples(dataset))
    assert isinstance(only_problem(dataset), ShardSchemaError)


def test_reader_refuses_a_shard_with_a_wrong_column_type(dataset):
    shard = dataset / "part-00000.parquet"
    table = pq.read_table(shard)
    table = table.set_column(table.schema.get_field_index("label"), "label", table.column("label").cast("float64"))
    pq.write_table(table, shard)
    with pytest.raises(ShardSchemaError, match="part-00000.parquet.*'label'.*double"):
        list(iter_samples(dataset))


def test_validate_unlisted_and_missing_shards(dataset):
    (dataset / "part-00001.parquet").rename(dataset / "part-00009.parquet")
    messages = [str(p) for p in validate_dataset(dataset).problems]
    assert any("part-00001.parquet" in m and "missing" in m for m in messages)
    assert any("part-00009.parquet" in m and "not listed" in m for m in messages)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda info: [info], "dataset.json: expected a JSON object, got list"),
    (lambda info: {k: v for k, v in info.items() if k != "counts"}, 'needs a list "shards" and an object "counts"'),
    (lambda info: {**info, "shards": [{"file": "../outside.parquet"}]}, "shard entry {'file': '../outside.parquet'}"),
    (lambda info: {**info, "shards": [{"file": "/etc/passwd"}]}, "a shard is a file name inside the dataset folder"),
    (lambda info: {**info, "shards": ["part-00000.parquet"]}, "shard entry 'part-00000.parquet'"),
])
def test_a_dataset_json_of_the_wrong_shape_or_pointing_outside_its_folder_is_refused(tmp_path, capsys, edit, message):
    """Refused naming dataset.json: by the reader every path takes, and as a problem by ``partkd data validate``."""
    from partkd.cli import main

    path = tmp_path / "d"
    with DatasetWriter(path, name="t", class_names=["a"], hq_layout="ntu25", lq_layout="coco17") as writer:
        writer.write_all([make_sample(f"s{i}", seed=i) for i in range(2)])
    info = json.loads((path / "dataset.json").read_text())
    (path / "dataset.json").write_text(json.dumps(edit(info)))
    with pytest.raises(ShardError, match=re.escape(message)):
        shard_paths(path)
    assert main(["data", "validate", str(path)]) == 1  # validate's contract: the problems listed, exit 1
    out = capsys.readouterr().out
    assert f"{path / 'dataset.json'}: " in out and message in out


# ------------------------------------------- the training path: nothing bad gets in, and every refusal names its place


def _set(key, index, value):
    def breaks(sample):
        getattr(sample, key)[index] = value
    return breaks


def _no_side(sample):
    sample.hq = sample.hq_score = sample.lq = sample.lq_score = None


# each: how a row is broken (written past the writer's checks, as a buggy tool would), the column named, the message
BAD_ROWS = {
    "hq NaN": (_set("hq", (0, 1, 3, 2), np.nan), "hq", "NaN or infinite"),
    "lq inf": (_set("lq", (0, 0, 0, 0), np.inf), "lq", "NaN or infinite"),
    "hq_score NaN": (_set("hq_score", (0, 2, 1), np.nan), "hq_score", "outside [0, 1] or NaN"),
    "lq_score 1.5": (_set("lq_score", (0, 0, 4), 1.5), "lq_score", "outside [0, 1]"),
    "lq_score negative": (_set("lq_score", (0, 3, 0), -0.1), "lq_score", "outside [0, 1]"),
    "label = classes": (lambda s: setattr(s, "label", 3), "label", "label 3 outside [0, 3)"),
    "label -1": (lambda s: setattr(s, "label", -1), "label", "label -1 outside [0, 3)"),
    "no side": (_no_side, "hq", "neither an hq nor an lq side"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_stops_every_reader_naming_shard_sample_and_column(dataset, case):
    """validate, the local reader (iter_samples) and the Ray workers' step (SideTransform) refuse the same row."""
    from partkd.data.raydata import SideTransform
    from partkd.data.transforms import TransformConfig

    breaks, column, message = BAD_ROWS[case]
    rows = [make_sample(f"s{i}", label=i % 3, seed=i) for i in (4, 5, 6, 7)]
    breaks(rows[2])
    replace_shard(dataset, "part-00001.parquet", rows)
    where = f"part-00001.parquet: sample 's6': column '{column}': "
    assert where in str(only_problem(dataset)) and message in str(only_problem(dataset))
    with pytest.raises(ShardDataError) as err:
        list(iter_samples(dataset))
    assert where in str(err.value) and message in str(err.value)
    transform = SideTransform({"hq": "ntu25", "lq": "coco17"}, TransformConfig(frames=8, persons=1), seed=0,
                              num_classes=len(CLASSES))
    shard = dataset / "part-00001.parquet"
    with pytest.raises(ShardDataError) as err:
        transform.transform(pq.read_table(shard), str(shard))
    assert where in str(err.value) and message in str(err.value)
    with pytest.raises(ShardDataError, match=f"sample 's6': column '{column}'"):  # the writer refuses it first
        write(dataset.parent / "rewritten", rows)


def test_scores_outside_0_1_are_refused_by_the_writer(tmp_path):
    bad = make_sample("over")
    bad.hq_score[0, 0, 0] = 1.01
    with pytest.raises(ShardDataError, match=r"'over'.*'hq_score'.*outside \[0, 1\] \(0.* to 1.01\)"):
        write(tmp_path / "ds", [make_sample("ok", seed=1), bad])


def test_a_job_verifies_the_dataset_once_on_its_driver(dataset):
    """verify_dataset: complete, every listed shard there with its SHA-256, no id twice; again after a change."""
    from partkd.data.shards import verify_dataset

    assert verify_dataset(dataset)["counts"]["samples"] == 8
    shard = dataset / "part-00001.parquet"
    clean = shard.read_bytes()
    flipped = bytearray(clean)
    flipped[len(flipped) // 3] ^= 0x01
    shard.write_bytes(bytes(flipped))  # a new size or time: verified again, not taken from the first call
    with pytest.raises(ShardChecksumError, match=r"part-00001.parquet: SHA-256 .* differs .* after it was written"):
        verify_dataset(dataset)
    shard.write_bytes(clean)
    assert verify_dataset(dataset)["complete"] is True
    shard.unlink()
    with pytest.raises(ShardError, match="part-00001.parquet: is listed in dataset.json but missing"):
        verify_dataset(dataset)
    replace_shard(dataset, "part-00001.parquet", [make_sample(f"s{i}", seed=i) for i in (4, 5, 6)]
                  + [make_sample("s0", seed=0)])
    with pytest.raises(ShardDataError, match="sample 's0': column 'sample_id': duplicate sample_id"):
        verify_dataset(dataset)
    info = json.loads((dataset / "dataset.json").read_text())
    (dataset / "dataset.json").write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(ShardError, match=r"dataset.json: the writer did not finish"):
        verify_dataset(dataset)


def test_a_flipped_bit_anywhere_in_a_shard_is_refused_or_harmless(dataset):
    """40 single-bit flips at seeded places in a shard: each read either stops naming the shard (page CRCs, the
    footer's checks) or gives back exactly the rows written; before page CRCs, most flips changed values unseen."""
    shard = dataset / "part-00000.parquet"
    clean = shard.read_bytes()
    expected = list(iter_samples(shard))
    rng = np.random.default_rng(0)
    refused = 0
    for position in rng.choice(len(clean), size=40, replace=False):
        data = bytearray(clean)
        data[position] ^= 1 << int(rng.integers(8))
        shard.write_bytes(bytes(data))
        try:
            got = list(iter_samples(shard))
        except ShardError as err:
            assert "part-00000.parquet" in str(err)
            refused += 1
            continue
        assert len(got) == len(expected), position
        for a, b in zip(got, expected):
            assert_same(a, b)
    shard.write_bytes(clean)
    print(f"40 bit flips: {refused} refused, {40 - refused} harmless")
    assert refused >= 30  # the pages are nearly all of the file
