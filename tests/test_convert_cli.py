"""`partkd data convert | degrade | show` as a user runs them: report on stdout, progress on stderr, errors raised as
the ValueError family that `partkd.cli.main` turns into one `partkd: error:` line."""

import argparse
import json
import pickle

import numpy as np
import pytest
import scipy.io

from partkd.cli.data import register
from partkd.cli.progress import ProgressPrinter
from partkd.data import validate_dataset
from partkd.data.convert import ConvertError


def run(argv):
    parser = argparse.ArgumentParser(prog="partkd")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def penn_labels(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i, (action, train) in enumerate([("squat", 1), ("bowl", -1), ("squat", -1), ("pushup", 1)]):
        scipy.io.savemat(labels / f"{i + 1:04d}.mat", {
            "action": action, "train": np.array([[train]]), "x": rng.uniform(1, 400, (6, 13)),
            "y": rng.uniform(1, 300, (6, 13)), "visibility": np.ones((6, 13), np.uint8), "nframes": np.array([[6]])})
    return labels


def test_convert_degrade_show(penn_labels, tmp_path, capsys):
    assert run(["data", "convert", "penn", str(penn_labels), "--out", str(tmp_path / "hq")]) == 0
    out = capsys.readouterr().out
    assert "convert penn: 4 samples written" in out and "squat" in out and "skipped 0" in out
    assert run(["data", "degrade", str(tmp_path / "hq"), "--out", str(tmp_path / "lq"), "--noise", "heavy",
                "--paired-fraction", "0.5", "--seed", "3"]) == 0
    assert "degrade: 4 samples written" in capsys.readouterr().out
    info = json.loads((tmp_path / "lq" / "dataset.json").read_text())
    assert info["counts"]["paired"] == 2 and info["info"]["simulated_lq"] and info["lq_layout"] == "penn13"
    assert validate_dataset(tmp_path / "lq").ok
    assert run(["data", "show", str(tmp_path / "lq"), "--sample", "0001", "--frames", "2",
                "--out", str(tmp_path / "s.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "s.png") and (tmp_path / "s.png").exists()


def test_errors_are_value_errors(penn_labels, tmp_path):
    with pytest.raises(ConvertError, match="does not exist"):
        run(["data", "convert", "ntu", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    run(["data", "convert", "penn", str(penn_labels), "--out", str(tmp_path / "hq"), "--quiet"])
    with pytest.raises(FileExistsError, match="is not empty"):
        run(["data", "convert", "penn", str(penn_labels), "--out", str(tmp_path / "hq")])
    with pytest.raises(ValueError, match="cannot map penn13 to coco17"):
        run(["data", "degrade", str(tmp_path / "hq"), "--out", str(tmp_path / "y"), "--layout", "coco17"])
    with pytest.raises(ValueError, match="needs labels"):
        run(["data", "convert", "pose-json", str(tmp_path), "--out", str(tmp_path / "z")])


class Log:
    def __init__(self):
        self.lines = []

    def isatty(self):
        return False

    def write(self, text):
        self.lines += [line for line in text.splitlines() if line]

    def flush(self):
        pass


def test_progress_every_five_percent_in_a_log():
    log = Log()
    progress = ProgressPrinter("convert ntu", stream=log)
    for done in range(1, 1001):
        progress(done, 1000)
    assert len(log.lines) == 20 and log.lines[-1].startswith("convert ntu: 1000/1000")
    quiet = Log()
    small = ProgressPrinter("x", stream=quiet)
    for done in range(1, 11):
        small(done, 10)
    assert quiet.lines == [], "small inputs print no progress"


class Shell:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_registered_in_partkd_main(penn_labels, tmp_path, capsys, monkeypatch):
    from partkd.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["data", "convert", "penn", str(penn_labels), "--out", "hq", "--quiet"]) == 0
    assert main(["data", "degrade", "hq", "--out", "lq", "--profile", "fast-estimator", "--quiet"]) == 0
    assert json.loads((tmp_path / "lq" / "dataset.json").read_text())["info"]["degrade_noise"] == "fast-estimator"
    capsys.readouterr()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Shell()))
    assert main(["data", "convert", "pyskl", "evil.pkl", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("partkd: error: evil.pkl: refused to unpickle: it asks for the global") and "system" in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x").exists()
