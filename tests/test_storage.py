"""Locations in an object store (``s3://``) against a real S3-compatible server (moto, on loopback): a dataset read from
a bucket is the dataset read from its folder, files and folders go both ways, and a location that cannot be used fails
before any work, naming the bucket and what is missing. (A whole study on the bucket: test_tuning.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partkd import storage
from partkd.cli import main
from partkd.data.shards import iter_samples, load_info, shard_paths
from partkd.data.splits import read_split_columns
from partkd.layouts import GROUPINGS
from partkd.part_matrix import load_part_matrix, save_part_matrix


def test_a_dataset_in_a_bucket_reads_as_its_folder_does(s3_server, train_data):
    data = s3_server.bucket("storage-data") + "/sets/train"
    storage.copy_tree(str(train_data), data)
    assert load_info(data) == load_info(train_data)
    assert shard_paths(data) == [f"{data}/{s['file']}" for s in load_info(train_data)["shards"]]
    remote, local = list(iter_samples(data)), list(iter_samples(train_data))
    assert [s.sample_id for s in remote] == [s.sample_id for s in local] and len(local) == 192
    for a, b in zip(remote, local):
        assert a.label == b.label and a.split == b.split
        for side in ("hq", "lq", "hq_score", "lq_score"):
            x, y = getattr(a, side), getattr(b, side)
            assert (x is None and y is None) or np.array_equal(x, y)
    assert {k: list(v) for k, v in read_split_columns(data).items()} == {
        k: list(v) for k, v in read_split_columns(train_data).items()}
    requests = s3_server.log.read_text()
    assert "GET /storage-data/sets/train/part-00000.parquet" in requests  # read from the server, not a local copy


def test_files_and_folders_go_both_ways(s3_server, tmp_path):
    root = s3_server.bucket("storage-files") + "/run"
    storage.write_text(storage.join(root, "a", "meta.json"), "{}")
    with storage.staged(storage.join(root, "report")) as folder:
        (folder / "table.csv").write_text("x,y\n1,2\n")
        assert not storage.exists(storage.join(root, "report", "table.csv"))  # uploaded when the block ends
    assert storage.read_text(storage.join(root, "report", "table.csv")) == "x,y\n1,2\n"
    assert storage.listdir(root) == [f"{root}/a", f"{root}/report"]
    assert storage.listdir(root, "rep*") == [f"{root}/report"] and storage.listdir(f"{root}/none") == []
    with storage.local_copy(root) as copy:
        assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == [
            "a/meta.json", "report/table.csv"]
    storage.copy_tree(root, str(tmp_path / "back"))
    assert (tmp_path / "back" / "report" / "table.csv").read_text() == "x,y\n1,2\n"
    storage.remove(storage.join(root, "report"))
    assert storage.is_dir(storage.join(root, "a")) and not storage.exists(storage.join(root, "report"))


def test_a_part_matrix_in_a_bucket_loads_as_its_file_does(s3_server, tmp_path):
    matrix = torch.softmax(torch.randn(3, 5), dim=1)
    npy, _ = save_part_matrix(matrix, tmp_path / "E.paper5", ["a", "b", "c"], list(GROUPINGS["paper5"].part_names))
    remote = s3_server.bucket("storage-e") + "/run/E.paper5.npy"
    storage.write_bytes(remote, npy.read_bytes())
    for location in (remote, remote.removesuffix(".npy"), npy):  # the job's E may be named with or without .npy
        torch.testing.assert_close(load_part_matrix(location), matrix)


def test_unusable_locations_fail_before_any_work_naming_the_bucket(s3_server, monkeypatch, tmp_path, capsys):
    storage.check_reachable(str(tmp_path), "data.path")  # a local folder: nothing to check
    with pytest.raises(storage.StorageError, match="data.path = s3://no-such-bucket/x: bucket 'no-such-bucket' "
                                                   "does not exist at http://127.0.0.1"):
        storage.check_reachable("s3://no-such-bucket/x", "data.path")
    # a partkd command says it in one line, exit code 2, before it trains
    assert main(["train", "teacher", "--set", "data.path=s3://no-such-bucket/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bucket 'no-such-bucket' does not exist" in err
    with monkeypatch.context() as env:
        env.delenv("AWS_ACCESS_KEY_ID")
        env.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials either
        with pytest.raises(storage.StorageError, match="study.storage = s3://b/s: bucket 'b' does not exist at "
                                                       "http://127.0.0.1:[0-9]+; no credentials found"):
            storage.check_reachable("s3://b/s", "study.storage")
    with monkeypatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
        with pytest.raises(storage.StorageError, match="bucket 'b' cannot be reached"):
            storage.check_reachable("s3://b/s", "train.storage_path")
