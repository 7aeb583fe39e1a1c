"""Split protocols beyond the fixed NTU ones: NTU-120 and MSR cross-subject, SYSU-style seeded random splits and the
validation slice, as Parquet filters (and Ray predicates) that select exactly the chosen rows."""

import numpy as np
import pytest
from conftest import make_sample

from partkd.data import DatasetWriter, iter_samples, load_info
from partkd.data.splits import (
    NTU120_XSUB_TRAIN_SUBJECTS,
    NTU_XSUB_TRAIN_SUBJECTS,
    PROTOCOLS,
    get_protocol,
    half_per_class,
    half_subjects,
    random_splits,
    read_split_columns,
    split_filter,
    validation_split,
)


@pytest.fixture
def dataset(tmp_path):
    """60 samples, 4 classes (15 each), subjects 1..50 (NTU-120 style ids), cameras 1..3."""
    samples = []
    for i in range(60):
        s = make_sample(f"s{i:03d}", label=i % 4, frames=2, seed=i)
        s.subject, s.camera = 1 + (i * 7) % 50, 1 + i % 3
        samples.append(s)
    with DatasetWriter(tmp_path / "ds", name="t", class_names=list("abcd"), hq_layout="ntu25", lq_layout="coco17",
                       rows_per_shard=16) as writer:
        writer.write_all(samples)
    return tmp_path / "ds", samples


def ids(path, expression):
    return {s.sample_id for s in iter_samples(path, filter=expression)}


def test_fixed_source_protocols(dataset):
    path, samples = dataset
    assert len(NTU120_XSUB_TRAIN_SUBJECTS) == 53 and NTU120_XSUB_TRAIN_SUBJECTS[:20] == NTU_XSUB_TRAIN_SUBJECTS
    train = ids(path, split_filter("xsub120", "train"))
    assert train == {s.sample_id for s in samples if s.subject in NTU120_XSUB_TRAIN_SUBJECTS}
    assert 45 in NTU120_XSUB_TRAIN_SUBJECTS and any(s.subject == 45 for s in samples if s.sample_id in train)
    odd = {s.sample_id for s in samples if s.subject in (1, 3, 5, 7, 9)}
    assert ids(path, split_filter("msr-xsub", "train")) == odd
    assert get_protocol("xview") is PROTOCOLS["xview"] and "xsub120" not in PROTOCOLS
    assert set(load_info(path)["splits"]) == {"xsub", "xview"}, "the added protocols leave dataset.json as it was"
    with pytest.raises(KeyError, match="known protocols: .*msr-xsub.*xsub120"):
        get_protocol("nope")


def test_half_per_class_and_half_subjects(dataset):
    path, samples = dataset
    rows = read_split_columns(path)
    label_of = {s.sample_id: s.label for s in samples}
    subject_of = {s.sample_id: s.subject for s in samples}
    one = half_per_class(path, seed=0)
    assert one.train_ids | one.test_ids == set(label_of) and not one.train_ids & one.test_ids
    assert np.bincount([label_of[i] for i in one.train_ids]).tolist() == [8, 8, 8, 8]  # ceil(15 / 2) per class
    assert half_per_class(rows, seed=0) == one and half_per_class(rows, seed=1).train_ids != one.train_ids
    assert ids(path, one.filter("train")) == one.train_ids and ids(path, one.filter("test")) == one.test_ids

    two = half_subjects(rows, seed=3)
    train_subjects = {subject_of[i] for i in two.train_ids}
    assert not train_subjects & {subject_of[i] for i in two.test_ids}
    assert len(train_subjects) == (len(set(subject_of.values())) + 1) // 2
    splits = random_splits("sysu2", rows, count=30, seed=0)
    assert len(splits) == 30 and len({s.train_ids for s in splits}) == 30
    assert [s.train_ids for s in random_splits("sysu2", rows, count=30, seed=0)] == [s.train_ids for s in splits]
    assert (two.assign(rows) == np.where(np.isin(rows["sample_id"], sorted(two.train_ids)), "train", "test")).all()


@pytest.mark.parametrize("by", ["sample", "subject"])
def test_validation_slice_is_disjoint_and_deterministic(dataset, by):
    path, samples = dataset
    base_train = ids(path, split_filter("xview", "train"))
    base_test = ids(path, split_filter("xview", "test"))
    held = validation_split("xview", path, fraction=0.2, seed=4, by=by)
    train, val, test = (ids(path, held.filter(split)) for split in ("train", "val", "test"))
    assert val and train and val <= base_train and train | val == base_train and not train & val
    assert test == base_test and not val & test
    assert validation_split("xview", path, fraction=0.2, seed=4, by=by) == held
    assert validation_split("xview", path, fraction=0.2, seed=5, by=by).val_ids != held.val_ids
    if by == "sample":
        assert len(val) == round(0.2 * len(base_train))
        per_class = np.bincount([int(i[1:]) % 4 for i in val], minlength=4)
        assert per_class.max() - per_class.min() <= 1
    else:
        subject_of = {s.sample_id: s.subject for s in samples}
        assert not {subject_of[i] for i in val} & {subject_of[i] for i in train}
    assigned = held.assign(read_split_columns(path))
    assert (assigned == "val").sum() == len(val) and (assigned == "test").sum() == len(test)


def test_seeded_splits_as_ray_predicates(dataset, ray_session):
    from partkd.data.raydata import read_shards

    path, _ = dataset
    held = validation_split(half_per_class(path, seed=2), path, fraction=0.25, seed=0)
    for split in ("train", "val", "test"):
        rows = read_shards(path, filter=held.ray_filter(split)).select_columns(["sample_id"]).take_all()
        assert {r["sample_id"] for r in rows} == ids(path, held.filter(split)), split
