"""The bulk path through a real local Ray: same batches as the in-process transform, bad shards named."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_sample

from partkd.data import DatasetWriter, iter_samples, split_filter
from partkd.data.raydata import SideTransform, read_shards
from partkd.data.shards import _rows_to_table, sha256_file
from partkd.data.splits import split_ray_filter
from partkd.data.synth import SynthConfig, write_synthetic
from partkd.data.transforms import TransformConfig, transform_batch
from partkd.layouts import get_layout

CFG = TransformConfig(frames=24, persons=2, crop="random", occlusion_prob=0.3, rotate_deg=20, scale_range=(0.9, 1.1))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "ds"
    write_synthetic(path, SynthConfig(samples=48, classes=10, frames=30, seed=2, paired_fraction=0.6),
                    rows_per_shard=16)
    return path


def test_ray_batches_equal_the_in_process_transform(ray_session, synth_dir):
    ds = read_shards(synth_dir, filter=split_ray_filter("xview", "train"))
    ds = ds.map_batches(SideTransform({"hq": "ntu25", "lq": "coco17"}, CFG, seed=4, keep_ids=True),
                        batch_format="pyarrow", batch_size=7)
    rows = ds.take_all()
    expected = list(iter_samples(synth_dir, filter=split_filter("xview", "train")))
    assert sorted(r["sample_id"] for r in rows) == sorted(s.sample_id for s in expected)
    by_id = {r["sample_id"]: r for r in rows}
    for side, layout in (("hq", get_layout("ntu25")), ("lq", get_layout("coco17"))):
        present = [s for s in expected if getattr(s, side) is not None]
        x, score = transform_batch([getattr(s, side) for s in present], [getattr(s, f"{side}_score") for s in present],
                                   layout, CFG, seed=4, sample_ids=[s.sample_id for s in present])
        for i, s in enumerate(present):
            np.testing.assert_array_equal(by_id[s.sample_id][f"{side}_x"], x[i])
            np.testing.assert_array_equal(by_id[s.sample_id][f"{side}_score"], score[i])
        for s in expected:
            assert by_id[s.sample_id][f"has_{side}"] == (getattr(s, side) is not None)
    solitary = [s.sample_id for s in expected if s.hq is None]
    assert solitary and all(not by_id[sid]["hq_x"].any() for sid in solitary)


def test_iter_torch_batches(ray_session, synth_dir):
    torch = pytest.importorskip("torch")
    ds = read_shards(synth_dir).map_batches(SideTransform({"lq": "coco17"}, CFG, seed=0), batch_format="pyarrow")
    total = 0
    for batch in ds.iter_torch_batches(batch_size=16):
        assert batch["lq_x"].shape[1:] == (2, 24, 17, 2) and batch["lq_x"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64
        total += len(batch["label"])
    assert total == 48


def test_bad_row_fails_naming_shard_and_sample(ray_session, tmp_path):
    path = tmp_path / "ds"
    with DatasetWriter(path, name="t", class_names=["a"], hq_layout="ntu25", lq_layout="coco17") as writer:
        writer.write_all([make_sample(f"s{i}", seed=i) for i in range(4)])
    shard = path / "part-00000.parquet"
    rows = [make_sample(f"s{i}", seed=i) for i in range(3)] + [make_sample("bad", lq_joints=16)]
    pq.write_table(_rows_to_table(rows, {"schema_version": 1, "hq_layout": "ntu25", "lq_layout": "coco17"}), shard)
    info = json.loads((path / "dataset.json").read_text())
    info["shards"][0]["sha256"] = sha256_file(shard)
    (path / "dataset.json").write_text(json.dumps(info))
    ds = read_shards(path).map_batches(SideTransform({"lq": "coco17"}, CFG, seed=0), batch_format="pyarrow")
    with pytest.raises(Exception, match=r"(?s)part-00000\.parquet.*'bad'.*16 joints"):
        ds.take_all()


def test_a_flipped_bit_in_a_page_fails_the_ray_read(ray_session, tmp_path):
    """Page CRCs are verified by Ray Data's read tasks too: a bit flipped inside the coordinates' pages stops the read
    instead of changing a value (the footer is intact, so the file opens)."""
    path = tmp_path / "ds"
    with DatasetWriter(path, name="t", class_names=["a"], hq_layout="ntu25", lq_layout="coco17") as writer:
        writer.write_all([make_sample(f"s{i}", seed=i, frames=40) for i in range(8)])
    shard = path / "part-00000.parquet"
    group = pq.ParquetFile(shard).metadata.row_group(0)
    column = next(group.column(j) for j in range(group.num_columns)
                  if group.column(j).path_in_schema == "hq.list.element")
    data = bytearray(shard.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0x04
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match="CRC checksum verification failed"):
        read_shards(path).take_all()


def test_cached_dataset_reaches_each_worker_as_an_equal_part_the_same_every_epoch(ray_session, synth_dir):
    """A materialized (``data.cache``) split goes to Ray Train's workers cut in advance (no coordinator): every rank
    gets as many rows as the others, no row twice, and the same rows each time it iterates (each epoch)."""
    from partkd.train.ingest import JobDataConfig

    cached = read_shards(synth_dir).map_batches(SideTransform({"hq": "ntu25"}, CFG, seed=4, keep_ids=True),
                                                batch_format="pyarrow", batch_size=7).materialize()
    config = JobDataConfig.split({"train": cached}, 3)
    ranks = config.configure({"train": cached}, 3, None, None)

    def ids(rank: int) -> list[str]:
        return [r for batch in ranks[rank]["train"].iter_batches(batch_size=5) for r in batch["sample_id"]]

    parts = [ids(rank) for rank in range(3)]
    every = [s.sample_id for s in iter_samples(synth_dir)]
    assert [len(p) for p in parts] == [len(every) // 3] * 3  # 48 rows: 16 each
    assert sorted(sum(parts, [])) == sorted(every)
    assert [ids(rank) for rank in range(3)] == parts  # a second epoch: the same rows, in the same order
    with pytest.raises(RuntimeError, match="split for 3 workers, the job has 2"):
        config.configure({"train": cached}, 2, None, None)


def test_data_path_benchmark_delivers_the_whole_training_split_and_reports_who_keeps_up(ray_session, tmp_path):
    """``partkd bench train``'s data_path: Ray Data's epoch of a job's training split, to the device, per CPU count;
    the JSON names the fewest CPUs whose rate reaches the teacher step's."""
    from partkd.bench.data import write_shaped_dataset
    from partkd.bench.train import json_report, run_data_path_bench
    from partkd.data.shards import load_info
    from partkd.train.config import DataConfig, JobConfig
    from partkd.train.jobs import job_inputs
    from partkd.train.session import step_precision

    path = write_shaped_dataset(tmp_path / "data", samples=24, frames=16, persons=2)
    rows = run_data_path_bench("tiny", "cpu", cpus=(1, 2), epochs=2, path=path)
    job = JobConfig(data=DataConfig(path=str(path), protocol="xsub", frames=16, persons=2, batch_size=4))
    in_process = job_inputs(job, load_info(path), ("hq", "lq"), "lq").arrays("train")  # the same split, no Ray
    assert [r["cpus"] for r in rows] == [1, 2]
    assert all(r["samples"] == len(in_process["label"]) > 0 for r in rows)
    assert all(r["samples_per_s"] > 0 and r["epoch_s_min"] <= r["epoch_s_max"] for r in rows)
    step = {"step": "teacher_step", "shape": "tiny", "dtype": step_precision(torch.device("cpu")), "compile": False,
            "samples_per_s": 50.0}
    rates = [dict(rows[0], samples_per_s=40.0), dict(rows[1], samples_per_s=60.0)]  # 2 CPUs keep up, 1 does not
    data = json_report([step], rates, torch.device("cpu"))["data_path"]
    assert (data["cpus_to_keep_up"], data["cpus"], data["samples_per_s"]) == (2, 2, 60.0)
    assert data["per_cpus"] == {"1": 40.0, "2": 60.0} and data["over_teacher_step"] == pytest.approx(1.2)


def test_a_job_shuffles_a_class_ordered_training_split_whole(ray_session, tmp_path):
    """Datasets are often stored in class order (Penn Action's files are numbered by action). A job's training
    batches must be drawn from the whole split, as the local backend's permutation does, and not from a buffer of a
    few batches that mixes only neighbours: on Penn such a buffer left the teacher at 34 % after 10 epochs."""
    from dataclasses import replace

    from partkd.data.shards import load_info
    from partkd.train.config import DataConfig, JobConfig
    from partkd.train.jobs import job_inputs
    from partkd.train.session import shuffled_batches

    classes, per_class, size = 8, 24, 8
    path = tmp_path / "class-ordered"
    with DatasetWriter(path, name="sorted", class_names=[f"c{c}" for c in range(classes)], hq_layout="ntu25",
                       lq_layout="coco17", rows_per_shard=48) as writer:
        writer.write_all([replace(make_sample(f"c{c}-{i}", label=c, frames=6, seed=i), split="train")
                          for c in range(classes) for i in range(per_class)])
    data = DataConfig(path=str(path), protocol="official", frames=6, persons=1, batch_size=size, cache="stream")
    inputs = job_inputs(JobConfig(data=data), load_info(path), ("hq",), "hq")
    assert inputs.shuffle_rows() >= classes * per_class  # the whole split fits the buffer
    train = inputs.ray_datasets()["train"]  # streamed: in storage order, as a worker's share arrives

    def epoch(seed: int) -> list[list[int]]:
        batching = shuffled_batches(size, inputs.shuffle_rows(), seed)
        return [batch["label"].tolist() for batch in train.iter_torch_batches(**batching)]

    first = epoch(7)
    assert sorted(sum(first, [])) == [c for c in range(classes) for _ in range(per_class)]  # every row, once
    # the first 4 batches (32 of 192 rows) hold 7 or 8 of the 8 classes; in storage order, a 4-batch buffer held
    # at most the 4 classes of the shards read first
    assert len(set(sum(first[:4], []))) >= 7
    assert epoch(7) == first and epoch(8) != first  # seeded per epoch: reproducible, and another order next epoch
    assert shuffled_batches(size, 10**6, None) == {"batch_size": size}  # evaluation: in order

    # cached, the split is cut into one consecutive part per worker: each part must hold (nearly) every class too
    from partkd.train.ingest import JobDataConfig

    cached = job_inputs(JobConfig(data=replace(data, cache="memory")), load_info(path), ("hq",), "hq")
    datasets = cached.ray_datasets()
    ranks = JobDataConfig.split(datasets, 2).configure(datasets, 2, None, None)
    parts = [[label for batch in ranks[rank]["train"].iter_batches(batch_size=size) for label in batch["label"]]
             for rank in range(2)]
    assert sorted(parts[0] + parts[1]) == [c for c in range(classes) for _ in range(per_class)]
    assert all(len(set(part)) >= 7 for part in parts)  # unshuffled: classes 0-3 to one rank, 4-7 to the other
