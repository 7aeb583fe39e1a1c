"""``partkd data subset``: a smaller training split, drawn per class with a seed, every other row kept as it was."""

from dataclasses import replace

import numpy as np
from conftest import make_sample

from partkd.cli import main
from partkd.data import DatasetWriter, iter_samples, load_info
from partkd.data.subset import subset_dataset


def write(path, samples, classes):
    with DatasetWriter(path, name="src", class_names=classes, hq_layout="ntu25", lq_layout="coco17",
                       rows_per_shard=7) as writer:
        writer.write_all(samples)


def test_subset_keeps_n_training_rows_per_class_and_every_other_row(tmp_path, capsys):
    classes = ["a", "b", "c"]
    per_class = {0: 6, 1: 4, 2: 2}  # training rows; c has fewer than the 3 asked for
    samples = [replace(make_sample(f"{c}-tr{i}", label=c, frames=4, seed=i), split="train")
               for c, n in per_class.items() for i in range(n)]
    samples += [replace(make_sample(f"{c}-te{i}", label=c, frames=4, seed=i), split="test")
                for c in range(3) for i in range(3)]
    samples += [replace(make_sample("unsplit", label=1, frames=4, seed=5), split=None)]
    write(tmp_path / "src", samples, classes)
    report = subset_dataset(tmp_path / "src", tmp_path / "out", protocol="official", train_per_class=3, seed=4)
    rows = {s.sample_id: s for s in iter_samples(tmp_path / "out")}
    training = [sid for sid in rows if "-tr" in sid]
    assert sorted(np.unique([sid[0] for sid in training], return_counts=True)[1].tolist()) == [2, 3, 3]
    assert {sid for sid in rows if "-tr" not in sid} == {s.sample_id for s in samples if s.split != "train"}
    source = {s.sample_id: s for s in iter_samples(tmp_path / "src")}
    for sid, sample in rows.items():  # the rows themselves unchanged
        assert sample.label == source[sid].label and sample.split == source[sid].split
        np.testing.assert_array_equal(sample.hq, source[sid].hq)
        np.testing.assert_array_equal(sample.lq_score, source[sid].lq_score)
    text = report.text()
    assert "8 of its 12 rows kept (3 per class, seed 4)" in text
    assert "fewer than 3 training rows (how many), all kept: c (2)" in text
    info = load_info(tmp_path / "out")["info"]
    assert (info["protocol"], info["train_per_class"], info["seed"]) == ("official", 3, 4)
    assert info["source_fingerprint"] == load_info(tmp_path / "src")["fingerprint"]
    # seeded and independent of storage order: the same rows from the source written in reverse
    write(tmp_path / "reversed", samples[::-1], classes)
    subset_dataset(tmp_path / "reversed", tmp_path / "again", protocol="official", train_per_class=3, seed=4)
    assert {s.sample_id for s in iter_samples(tmp_path / "again")} == set(rows)
    subset_dataset(tmp_path / "src", tmp_path / "other", protocol="official", train_per_class=3, seed=5)
    assert {s.sample_id for s in iter_samples(tmp_path / "other")} != set(rows)
    # the command, and its refusals in one line
    assert main(["data", "subset", str(tmp_path / "src"), "--out", str(tmp_path / "cli"), "--protocol", "official",
                 "--train-per-class", "3", "--seed", "4", "--quiet"]) == 0
    assert {s.sample_id for s in iter_samples(tmp_path / "cli")} == set(rows)
    write(tmp_path / "subject3", [replace(s, subject=3) for s in samples], classes)
    capsys.readouterr()
    for args, message in ((["--train-per-class", "0"], "(--train-per-class) must be at least 1"),
                          (["--protocol", "nope"], "nope"),
                          (["--protocol", "xsub", "dir", str(tmp_path / "subject3")],  # a test subject only
                           "protocol xsub (NTU cross-subject: 20 training subjects) selects no training rows")):
        base = ["data", "subset", "dir", str(tmp_path / "src"), "--out", str(tmp_path / "bad"), "--protocol",
                "official", "--train-per-class", "3"]
        for i in range(0, len(args), 2):
            base[base.index(args[i]) + 1] = args[i + 1]
        base.remove("dir")
        assert main(base) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
