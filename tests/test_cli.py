"""The `partkd` commands as a user runs them: exit codes and what they print."""

import subprocess
import sys
from pathlib import Path

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


def test_demo_smoke_test_through_the_console_script(tmp_path):
    script = Path(sys.executable).parent / "partkd"
    result = subprocess.run([str(script), "demo", "--smoke-test", "--out", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "passed every check" in result.stdout and "[3/3]" in result.stdout
    assert (tmp_path / "demo" / "data" / "dataset.json").exists()
