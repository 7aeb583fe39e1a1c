"""Job configuration: the paper's defaults, a TOML/JSON file of overrides, then --set, with clear errors."""

import json
import re

import pytest

from partkd.cli import main
from partkd.train.config import JobConfig, load_config


def test_defaults_are_the_papers():
    job = JobConfig()
    assert (job.train.lr, job.train.momentum, job.train.weight_decay) == (0.1, 0.9, 1e-4)
    assert (job.train.epochs, job.train.milestones, job.train.gamma) == (60, (30, 40, 50), 0.1)
    assert (job.data.frames, job.data.persons, job.data.eval_occlusion_probs) == (300, 2, (0.0, 0.3, 0.6))
    assert (job.loss.objective, job.loss.alpha, job.loss.w, job.loss.tau, job.loss.grouping) == (
        "pmsc", 1.0, 0.5, 1.0, "paper5")


def test_file_then_sets_override_in_order(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text('[train]\nepochs = 5\nmilestones = [2, 4]\n[loss]\nalpha = 2.5\nhq_source = "batch"\n')
    job = load_config(file=str(toml), sets=["train.epochs=7", "model.stage_blocks=2,2", "train.use_gpu=true"])
    assert job.train.epochs == 7  # --set wins over the file
    assert job.train.milestones == (2, 4) and job.loss.alpha == 2.5 and job.loss.hq_source == "batch"
    assert job.model.stage_blocks == (2, 2) and job.train.use_gpu is True
    assert job.train.lr == 0.1  # untouched settings keep the paper's value
    assert JobConfig.from_dict(json.loads(json.dumps(job.to_dict()))) == job  # crosses into Ray and back
    assert job.flat()["train.epochs"] == 7 and job.flat()["teacher_checkpoint"] == ""


@pytest.mark.parametrize(("sets", "message"), [
    (["train.epoch=5"], "unknown setting train.epoch; known: train.bf16, train.compile, train.cpus_per_worker"),
    (["training.epochs=5"], "unknown section 'training'"),
    (["train.epochs=five"], "train.epochs: expected int, got 'five'"),
    (["train.use_gpu=maybe"], "train.use_gpu: expected true or false"),
    (["loss.objective=mse"], "loss.objective must be one of ce, kl, global_msc, pmsc"),
    (["loss.hq_source=queue"], "loss.hq_source must be one of batch, bank"),
    (["epochs"], "expected section.key=value"),
    # every range and enumeration, refused at load naming the key and what it may hold (issue 15)
    (["train.lr=-0.1"], "train.lr must be a finite number > 0, got -0.1"),
    (["train.lr=nan"], "train.lr must be a finite number > 0, got nan"),
    (["data.batch_size=0"], "data.batch_size must be at least 1, got 0"),
    (["train.epochs=0"], "train.epochs must be at least 1, got 0"),
    (["train.num_workers=0"], "train.num_workers must be at least 1, got 0"),
    (["loss.tau=0"], "loss.tau must be a finite number > 0, got 0.0"),
    (["loss.w=1.5"], "loss.w must be in [0, 1], got 1.5"),
    (["loss.alpha=-1"], "loss.alpha must be a finite number >= 0, got -1.0"),
    (["train.milestones=40,30"], "train.milestones must be epochs >= 1 in increasing order, got (40, 30)"),
    (["data.occlusion_prob=1.5"], "data.occlusion_prob must be in [0, 1], got 1.5"),
    (["data.eval_occlusion_probs=0,2"], "data.eval_occlusion_probs must be a non-empty list in [0, 1]"),
    (["loss.grouping=nope"], "loss.grouping: unknown grouping 'nope'; known groupings: "),
    (["model.name=resnet"], "model.name must be one of stgcn, got 'resnet'"),
    (["model.dropout=1"], "model.dropout must be in [0, 1), got 1.0"),
    (["data.occlusion_unit=pixel"], "data.occlusion_unit must be one of joint-frame, joint, got 'pixel'"),
    (["data.protocol=nope"], "data.protocol: unknown split protocol 'nope'; known protocols: "),
    (["train.milestones=30"], None),  # a single milestone from --set is a one-item list
])
def test_bad_settings_name_the_setting(sets, message):
    if message is None:
        assert load_config(sets=sets).train.milestones == (30,)
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(sets=sets)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("job.toml", "[train]\nepochs = \n", "job.toml: Invalid value (at line 2, column 10)"),
    ("job.json", '{"train": {"epochs": 5,}}', "job.json: Expecting property name enclosed in double quotes: line 1"),
    ("job.yaml", "train:\n  epochs: [5\n", "job.yaml: not valid YAML at line 3, column 1: expected ',' or ']'"),
    ("job.json", "[1, 2]", "job.json: expected a table of settings at the top, got list"),
])
def test_a_settings_file_that_does_not_parse_is_refused_naming_the_file_and_line(tmp_path, capsys, name, text,
                                                                                 message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / message))):
        load_config(file=str(tmp_path / name))
    assert main(["train", "teacher", "--config", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"partkd: error: {tmp_path / message}") and err.count("\n") == 1  # one line, no traceback
    with pytest.raises(ValueError):  # --debug: the traceback, for whoever needs it
        main(["--debug", "train", "teacher", "--config", str(tmp_path / name)])


def test_a_scalar_where_a_list_belongs_is_refused_by_name(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text("[train]\nmilestones = 30\n")
    with pytest.raises(ValueError, match="train.milestones: expected a list, got 30"):
        load_config(file=str(toml))


def test_cli_reports_bad_settings_and_missing_files(tmp_path, capsys):
    assert main(["train", "teacher", "--data", str(tmp_path), "--set", "train.epochs=five"]) == 2
    assert "train.epochs: expected int, got 'five'" in capsys.readouterr().err
    assert main(["train", "teacher", "--data", str(tmp_path / "none"), "--set", "loss.tau=-1"]) == 2
    err = capsys.readouterr().err  # refused at load, before the dataset is looked at
    assert err == "partkd: error: loss.tau must be a finite number > 0, got -1.0\n"
    assert main(["train", "teacher", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    assert main(["train", "teacher", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and "dataset.json" in err


def test_study_summary_is_mean_and_sample_std_over_seeds_with_paired_gains():
    from partkd.train.results import summarise

    def row(key, model, op, seed, top1, top5):
        return {"key": key, "model": model, "skeleton": "LQ coco17", "train_op": op, "op": op, "seed": seed,
                "top1": top1, "top5": top5}

    ce, kd = ("student_ce", "Student (w/o KD)"), ("student_pmsc", "Student (w/ KD)")
    rows = [row(*ce, 0.3, 1, 0.50, 0.90), row(*kd, 0.3, 1, 0.56, 0.91),
            row(*ce, 0.3, 2, 0.60, 0.80), row(*kd, 0.3, 2, 0.62, 0.85)]
    markdown, csv = summarise(rows)
    lines = markdown.splitlines()
    # w/o KD: mean 55.00, sample std of (50, 60) = 7.07; w/ KD: 59.00 ± 4.24; gains 6 and 2 points: 4.00 ± 2.83,
    # 95 % t interval 4 ± t(0.975, 1) * 2.83 / sqrt(2) = 4 ± 12.706 * 2 = [-21.41, +29.41]; KD wins both seeds
    assert lines[2] == "| Student (w/o KD) | LQ coco17 | 0.3 | 0.3 | 55.00 ± 7.07 | 85.00 ± 7.07 |  |  |  |"
    assert lines[3] == ("| Student (w/ KD) | LQ coco17 | 0.3 | 0.3 | 59.00 ± 4.24 | 88.00 ± 4.24 | +4.00 ± 2.83 | "
                        "[-21.41, +29.41] | 2/2 |")
    assert "over 2 seeds: 1, 2" in markdown
    assert csv.splitlines()[1] == "1,Student (w/o KD),LQ coco17,0.3,0.3,0.500000,0.900000"
    tuned = [row("student_pmsc_tuned", "Student (w/ KD, tuned)", 0.3, seed, 0.58, 0.95) for seed in (1, 2)]
    _, csv = summarise(rows + tuned)  # a label with a comma stays one field
    import csv as csv_module
    read = list(csv_module.DictReader(csv.splitlines()))
    assert read[-1] == {"seed": "2", "model": "Student (w/ KD, tuned)", "skeleton": "LQ coco17", "train_op": "0.3",
                        "op": "0.3", "top1": "0.580000", "top5": "0.950000"}


def test_paired_gain_matches_a_literal_t_interval():
    from partkd.train.results import paired_gain

    d = [3.3, 6.6, 20.2, -1.0, 2.5]
    n, mean = len(d), sum(d) / len(d)
    std = (sum((x - mean) ** 2 for x in d) / (n - 1)) ** 0.5
    t_975_4 = 2.7764451051977987  # Student t, 4 degrees of freedom, 97.5th percentile (tables)
    gain = paired_gain(d)
    assert gain["mean"] == pytest.approx(mean) and gain["std"] == pytest.approx(std)
    assert gain["ci_low"] == pytest.approx(mean - t_975_4 * std / n ** 0.5)
    assert gain["ci_high"] == pytest.approx(mean + t_975_4 * std / n ** 0.5)
    assert gain["wins"] == 4 and gain["n"] == 5
    one = paired_gain([2.0])
    assert one["std"] == 0.0 and one["ci_low"] != one["ci_low"]  # no interval from one seed (NaN)
