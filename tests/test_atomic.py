"""Nothing good is lost: a dataset is written into a hidden sibling and moved into place only when whole, so an
``--overwrite`` that fails, a SIGKILL or a SIGTERM leaves the old dataset as it was, and nothing half written passes
for a whole dataset (an interrupted write into an empty place is kept, marked incomplete, and refused downstream)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import make_sample

from partkd.cli import main
from partkd.data import DatasetWriter, ShardDataError, ShardError, iter_samples, load_info, validate_dataset
from partkd.data.degrade import degrade_dataset


def write(path, samples, **kw):
    with DatasetWriter(path, name="t", class_names=["a", "b", "c"], hq_layout="ntu25", lq_layout="coco17",
                       rows_per_shard=2, **kw) as writer:
        writer.write_all(samples)


def ids(path):
    return [s.sample_id for s in iter_samples(path)]


def test_an_overwrite_that_fails_leaves_the_old_dataset_whole(tmp_path):
    out, partial = tmp_path / "ds", tmp_path / ".ds.partial"
    write(out, [make_sample(f"old{i}", seed=i) for i in range(6)])
    new = [make_sample(f"new{i}", seed=i) for i in range(3)] + [make_sample("bad", label=7)]
    with pytest.raises(ShardDataError) as err:
        write(out, new, overwrite=True)
    assert ids(out) == [f"old{i}" for i in range(6)] and validate_dataset(out).ok
    assert err.value.__notes__ == [f"{out} is left as it was; the 3 rows written before the error are in {partial}, "
                                   "marked incomplete"]
    assert load_info(partial)["complete"] is False and ids(partial) == ["new0", "new1", "new2"]
    write(out, new[:3], overwrite=True)  # a whole one replaces it, and the siblings go
    assert ids(out) == ["new0", "new1", "new2"] and validate_dataset(out).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock", "ds"]


def test_overwrite_replaces_a_dataset_folder_only_and_one_writer_at_a_time(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"mine holds more than a partkd dataset \(notes.txt\)"):
        write(tmp_path / "mine", [make_sample("a")], overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with DatasetWriter(tmp_path / "ds", name="t", class_names=["a"], hq_layout="ntu25", lq_layout="coco17") as first:
        first.write(make_sample("a"))
        with pytest.raises(FileExistsError, match="ds is being written by another process"):
            write(tmp_path / "ds", [make_sample("b")], overwrite=True)
    assert ids(tmp_path / "ds") == ["a"]


def test_a_writer_killed_between_its_two_renames_is_mended_by_the_next(tmp_path):
    out = tmp_path / "ds"
    write(out, [make_sample("old")])
    write(tmp_path / "new", [make_sample("new")])
    (tmp_path / "new").rename(tmp_path / ".ds.partial")  # as _publish leaves them after its first rename
    out.rename(tmp_path / ".ds.old")
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(out, name="t", class_names=["a"], hq_layout="ntu25", lq_layout="coco17", overwrite=True):
            assert ids(out) == ["new"] and not (tmp_path / ".ds.old").exists()  # the whole new one put in place
            raise KeyboardInterrupt  # stopped before its first row: nothing replaced
    assert ids(out) == ["new"] and validate_dataset(out).ok


def _synth(out, *extra) -> subprocess.Popen:
    """``partkd data synth`` as its own process, slow enough to be stopped halfway (a shard of 32 rows at a time)."""
    return subprocess.Popen([sys.executable, "-m", "partkd.cli", "data", "synth", "--out", str(out), "--samples",
                             "100000", "--frames", "16", "--rows-per-shard", "32", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _when_shards(folder, count: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while len(list(folder.glob("part-*.parquet"))) < count:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"no {count} shards in {folder} after {seconds} s"
        time.sleep(0.1)


@pytest.mark.slow  # a writer process killed
def test_sigkill_in_the_middle_of_an_overwrite_leaves_the_old_dataset(tmp_path):
    out, partial = tmp_path / "ds", tmp_path / ".ds.partial"
    assert main(["data", "synth", "--out", str(out), "--samples", "12", "--frames", "16"]) == 0
    before = ids(out)
    process = _synth(out, "--seed", "1", "--overwrite")
    _when_shards(partial, 3, process)
    process.kill()
    process.wait()
    assert ids(out) == before and validate_dataset(out).ok
    assert not (partial / "dataset.json").exists()  # what was half written cannot be taken for a dataset
    assert main(["data", "synth", "--out", str(out), "--samples", "8", "--frames", "16", "--overwrite"]) == 0
    assert len(ids(out)) == 8 and not partial.exists()  # the next run clears the killed run's sibling


@pytest.mark.slow  # a writer process stopped
def test_sigterm_keeps_the_rows_written_marked_incomplete_and_nothing_derives_from_them(tmp_path, capsys):
    out = tmp_path / "ds"
    process = _synth(out)
    _when_shards(tmp_path / ".ds.partial", 3, process)
    process.terminate()
    assert process.wait(timeout=60) == 143
    assert "partkd: terminated" in process.stderr.read()
    info = load_info(out)
    assert info["complete"] is False and info["counts"]["samples"] >= 96 and len(ids(out)) == info["counts"]["samples"]
    assert "did not finish" in str(validate_dataset(out).problems[0])
    with pytest.raises(ShardError, match="dataset.json: the writer did not finish"):
        degrade_dataset(out, tmp_path / "lq")
    assert main(["data", "degrade", str(out), "--out", str(tmp_path / "lq")]) == 2
    assert "did not finish" in capsys.readouterr().err and not (tmp_path / "lq").exists()
