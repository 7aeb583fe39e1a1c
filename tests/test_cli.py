"""The `partkd` commands as a user runs them: exit codes and what they print."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from partkd.cli import main


def test_synth_info_validate(tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(["data", "synth", "--out", str(out), "--samples", "30", "--classes", "10", "--seed", "3",
                 "--frames", "20", "--paired-fraction", "0.5", "--noise", "heavy"])
    assert code == 0
    printed = capsys.readouterr()
    assert "samples      30" in printed.out and "synth: 30/30 samples" in printed.err
    assert main(["data", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "hq=ntu25  lq=coco17" in info and "drink water" in info and "xsub/train" in info
    assert main(["data", "validate", str(out)]) == 0
    assert capsys.readouterr().out.startswith("OK:")

    shard = out / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["data", "validate", str(out)]) == 1
    report = capsys.readouterr().out
    assert report.startswith("FAILED") and "part-00000.parquet" in report and "SHA-256" in report


def test_errors_are_one_clear_line(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(out), "--samples", "4", "--classes", "4", "--frames", "10"]) == 0
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(out), "--samples", "4", "--classes", "4", "--frames", "10"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--classes", "40"]) == 2
    assert "--classes must be between 2 and 16" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "dataset.json" in capsys.readouterr().err


@pytest.mark.slow  # starts the console script
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``partkd data info DIR | head -1``: the pipe closes before partkd writes; no BrokenPipeError traceback."""
    out = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(out), "--samples", "4", "--classes", "4", "--frames", "10"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "partkd.cli", "data", "info", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the interpreter has even started
    assert process.wait(timeout=120) == 1
    assert process.stderr.read() == ""


@pytest.mark.slow
def test_demo_smoke_test_through_the_console_script(tmp_path):
    """The README's first command on a tiny dataset: every stage, the table, and the MLflow runs in ./mlflow.db.
    Its jobs run in the demo's process (``--backend local``): each stage on Ray is a Ray Train job that test_train
    runs on the session's cluster (the teacher, a distilling student from ``partkd train student``), and the study
    runs the rest (students in Tune trials, evaluation at every OP)."""
    script = Path(sys.executable).parent / "partkd"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    result = subprocess.run([str(script), "demo", "--smoke-test", "--out", "demo", "--backend", "local",
                             "--set", "data.eval_occlusion_probs=0,0.6"],  # two OPs of three: 4 students, not 6
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "passed every check" in result.stdout
    for stage in ("[1/6] teacher", "[2/6] part matrix", "[3/6] student (w/o kd): ST-GCN on LQ coco17 at OP 0,",
                  "[6/6] student (w/ kd): ST-GCN on LQ coco17 at OP 0.6,"):
        assert stage in result.stdout
    assert "epoch 2/2" in result.stdout  # per-epoch progress reaches the terminal
    table = (tmp_path / "demo" / "results.md").read_text().splitlines()
    # the paper's protocol: at each OP a student without and one with KD, trained and tested there, and KD's gain
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table[2:]]
    assert [row[:4] for row in cells] == [["Teacher", "HQ ntu25", "0.0", "0.0"]] + [
        [f"Student (w/{kd} KD)", "LQ coco17", op, op] for op in ("0.0", "0.6") for kd in ("o", "")]
    for without, with_kd in zip(cells[1::2], cells[2::2]):
        assert without[-1] == "" and float(with_kd[-1]) == pytest.approx(float(with_kd[4]) - float(without[4]),
                                                                         abs=0.011)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("kind") == "pipeline")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["kind"] for r in children) == ["student"] * 4 + ["teacher"]
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    artifacts = {a.path for folder in ("results", "part_matrix", "confusion")
                 for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"results/results.md", "results/results.csv", "confusion/confusion_teacher.png"} <= artifacts
    assert any(a.startswith("part_matrix/") and a.endswith(".npy") for a in artifacts)
    top1 = parent.data.metrics["test/top1/student_pmsc/op0.6"]
    assert cells[-1][4] == f"{100 * top1:.2f}"  # the table and MLflow say the same


def test_unknown_backend_is_refused_before_the_demo_replaces_its_data(tmp_path, capsys):
    (tmp_path / "demo" / "data").mkdir(parents=True)
    (tmp_path / "demo" / "data" / "keep.txt").write_text("mine")
    assert main(["demo", "--smoke-test", "--out", str(tmp_path / "demo"), "--backend", "slurm"]) == 2
    assert "backend must be one of ray, local, got 'slurm'" in capsys.readouterr().err
    assert (tmp_path / "demo" / "data" / "keep.txt").read_text() == "mine"
