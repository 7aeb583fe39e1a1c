"""The paper's pipeline in process (``backend="local"``): teacher, E, a student per objective, Table 1, the MLflow
parent run, and E computed on the training split less the validation slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VAL_FRACTION, tiny_job
from mlflow.tracking import MlflowClient

from partkd.bench.kd import term_curves
from partkd.data import iter_samples, load_info
from partkd.data.splits import read_split_columns, validation_split
from partkd.data.transforms import transform_batch
from partkd.layouts import get_layout
from partkd.models import model_input
from partkd.part_matrix import compute_part_matrix
from partkd.train.checkpoint import load_frozen_teacher, load_meta
from partkd.train.pipeline import run_pipeline, student_kinds

pytestmark = pytest.mark.slow  # whole pipelines and benchmarks, in process

OBJECTIVES = ("ce", "kl", "global_msc", "pmsc")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, train_data):
    root = tmp_path_factory.mktemp("pipeline")
    job = tiny_job(root, train_data, "pipe", "train.num_workers=1", "train.cpus_per_worker=1",
                   f"data.val_fraction={VAL_FRACTION}")
    return root, run_pipeline(job, say=lambda line: None, objectives=OBJECTIVES, backend="local", view="robustness")


def test_robustness_table_has_the_teacher_and_every_student_at_every_op(pipeline):
    _, result = pipeline
    labels = ["Student (w/o KD)", "Student (KL)", "Student (global MSC)", "Student (w/ KD)"]
    assert [(r["model"], r["train_op"], r["op"]) for r in result.rows] == [("Teacher", 0.0, 0.0)] + [
        (label, 0.0, op) for label in labels for op in (0.0, 0.3, 0.6)]
    lines = result.markdown.splitlines()
    assert lines[0] == ("| model | skeleton | trained at OP | OP | top-1 (xsub) | top-5 (xsub) | top-1 gain over w/o "
                        "KD (points) |")
    base = {r["op"]: r["top1"] for r in result.rows if r["key"] == "student_ce"}
    for line, row in zip(lines[2:], result.rows):
        gain = f"{100 * (row['top1'] - base[row['op']]):+.2f}" if row["key"] not in ("teacher", "student_ce") else ""
        assert line == (f"| {row['model']} | {row['skeleton']} | 0.0 | {row['op']:.1f} | {100 * row['top1']:.2f} | "
                        f"{100 * row['top5']:.2f} | {gain} |")
    assert all(0.0 <= r["top1"] <= r["top5"] <= 1.0 for r in result.rows)


def test_one_parent_run_holds_the_jobs_the_table_and_e(pipeline, train_data):
    root, result = pipeline
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "pipeline"
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(r.data.tags["kind"] for r in children) == ["student"] * 4 + ["teacher"]
    assert all(r.info.status == "FINISHED" for r in children)
    artifacts = {a.path for folder in ("results", "part_matrix", "confusion")
                 for a in client.list_artifacts(result.run_id, folder)}
    assert {"results/results.md", "results/results.csv", f"part_matrix/{Path(result.part_matrix).name}",
            "confusion/confusion_teacher.png", "confusion/confusion_student_pmsc.png"} <= artifacts
    text = client.download_artifacts(result.run_id, "results/results.md", str(root))
    assert open(text).read() == result.markdown  # the table and MLflow say the same
    for row in result.rows:
        assert parent.data.metrics[f"test/top1/{row['key']}/op{row['op']:.1f}"] == pytest.approx(row["top1"])
    # how sharply E singles out parts, per class: its row entropy and the miss-rate spread behind it
    e = np.load(result.part_matrix)
    for c, name in enumerate(load_info(train_data)["class_names"][:2]):
        row = e[c]
        entropy = -(row * np.log(row)).sum() / np.log(len(row))
        assert parent.data.metrics[f"E/entropy/{name}"] == pytest.approx(entropy, rel=1e-6)
        assert parent.data.metrics[f"E/miss_range/{name}"] == pytest.approx(np.log(row.max() / row.min()), rel=1e-6)


def test_pipeline_part_matrix_leaves_the_validation_slice_out(pipeline, train_data):
    _, result = pipeline
    assert "xsub+val0.25-0" in Path(result.part_matrix).name
    model, meta = load_frozen_teacher(result.checkpoints["teacher"], "cpu")
    held_out = validation_split("xsub", read_split_columns(train_data), VAL_FRACTION, 0)
    rows = [s for s in iter_samples(train_data, filter=held_out.filter("train")) if s.hq is not None]
    assert rows and not {s.sample_id for s in rows} & held_out.val_ids
    layout = get_layout("ntu25")
    x, score = transform_batch([s.hq for s in rows], [s.hq_score for s in rows], layout, meta.data.transform(), 0,
                               sample_ids=[s.sample_id for s in rows])
    batch = (model_input(torch.from_numpy(x), torch.from_numpy(score), layout), torch.tensor([s.label for s in rows]))
    expected = compute_part_matrix(model, [batch], "paper5", layout, 4).numpy()
    assert np.allclose(np.load(result.part_matrix), expected, atol=1e-6)


def test_paper_view_trains_each_student_at_the_op_it_is_tested_at(tmp_path, train_data):
    """The paper's protocol: one student per (objective, OP), its training LQ occluded at that OP (masks of the
    seed), tested there only; the pair of students of an OP starts from the same backbone weights."""
    job = tiny_job(tmp_path, train_data, "paper", "train.num_workers=1", "train.cpus_per_worker=1",
                   "train.epochs=1", "data.eval_occlusion_probs=0,0.5")
    result = run_pipeline(job, say=lambda line: None, objectives=("ce", "pmsc:sharp"), backend="local",
                          view="paper", variants={"sharp": ["loss.tau=0.25", "loss.alpha=3"]})
    assert [(r["key"], r["train_op"], r["op"]) for r in result.rows] == [  # each OP's students side by side
        ("teacher", 0.0, 0.0), ("student_ce", 0.0, 0.0), ("student_pmsc_sharp", 0.0, 0.0), ("student_ce", 0.5, 0.5),
        ("student_pmsc_sharp", 0.5, 0.5)]
    for key in ("student_ce@0", "student_ce@0.5", "student_pmsc_sharp@0", "student_pmsc_sharp@0.5"):
        assert load_meta(result.checkpoints[key]).data.occlusion_prob == float(key.split("@")[1])
    assert result.markdown.splitlines()[6].startswith("| Student (w/ KD, sharp) | LQ coco17 | 0.5 | 0.5 |")
    sharp = load_meta(result.checkpoints["student_pmsc_sharp@0"]).settings
    assert sharp["loss.tau"] == 0.25 and sharp["loss.alpha"] == 3.0 and job.loss.tau == 1.0
    # the per-term curves of the distilling students, as their MLflow runs hold them
    curves = term_curves(job.tracking_uri, {0: result.runs})
    assert sorted(curves) == ["student_pmsc_sharp@0", "student_pmsc_sharp@0.5"]
    client = MlflowClient(tracking_uri=job.tracking_uri)
    run = result.runs["student_pmsc_sharp@0.5"]
    for name, metric in (("loss/kd", "loss/pmsc"), ("grad/kd", "grad/pmsc"), ("grad/cos", "grad/cos")):
        logged = [m.value for m in sorted(client.get_metric_history(run, metric), key=lambda m: m.step)]
        assert curves["student_pmsc_sharp@0.5"][name].tolist() == [logged]
    with pytest.raises(ValueError, match="student 'pmsc:nope': no variant 'nope' \\(variants: sharp\\)"):
        student_kinds(("pmsc:nope",), {"sharp": []})
    # the paired students' initial weights: the seeded build of each, backbone keys identical
    builds = []
    for key in ("student_ce@0", "student_pmsc_sharp@0"):
        torch.manual_seed(job.train.seed)
        builds.append(load_meta(result.checkpoints[key]).model.build().state_dict())
    ce, pmsc = builds
    shared = [k for k in ce if k in pmsc or f"backbone.{k}" in pmsc]
    assert len(shared) == len(ce)
    assert all(torch.equal(ce[k], pmsc[k] if k in pmsc else pmsc[f"backbone.{k}"]) for k in shared)


def test_bench_kd_command_pairs_seeds_and_writes_its_table_curves_and_e_spread(tmp_path, monkeypatch):
    """``partkd bench kd`` end to end on the smoke preset, in process: two seeds, paired gains with a t interval,
    the per-term curves and E's spread per class, all also in the benchmark's MLflow run."""
    import csv as csv_module

    from partkd.cli import main

    monkeypatch.chdir(tmp_path)  # mlflow.db of the working directory
    assert main(["bench", "kd", "--preset", "smoke", "--out", "b", "--seeds", "1,2", "--objectives", "ce,pmsc",
                 "--backend", "local", "--set", "train.epochs=1", "--set", "data.eval_occlusion_probs=0.5"]) == 0
    out = tmp_path / "b"
    csv = list(csv_module.reader((out / "results.csv").read_text().splitlines()[1:]))
    top1 = {(int(seed), model): float(value) for seed, model, _, _, _, value, _ in csv}
    gains = [100 * (top1[s, "Student (w/ KD)"] - top1[s, "Student (w/o KD)"]) for s in (1, 2)]
    table = (out / "results.md").read_text().splitlines()
    kd_row = next(line for line in table if line.startswith("| Student (w/ KD)"))
    cells = [c.strip() for c in kd_row.split("|")[1:-1]]
    assert cells[2:4] == ["0.5", "0.5"]  # the paper's protocol: trained at the OP it is tested at
    mean, std = np.mean(gains), np.std(gains, ddof=1)
    assert cells[6] == f"{mean:+.2f} ± {std:.2f}"
    assert cells[7] == f"[{mean - 12.7062047 * std / 2 ** 0.5:+.2f}, {mean + 12.7062047 * std / 2 ** 0.5:+.2f}]"
    assert cells[8] == f"{sum(g > 0 for g in gains)}/2"
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0].startswith("student,epoch,loss/ce_mean") and curves[1].startswith("student_pmsc@0.5,1,")
    assert (out / "curves.png").stat().st_size > 0
    spread = (out / "part_matrix_spread.csv").read_text().splitlines()
    classes = load_info(out / "data-seed1")["class_names"]
    assert len(spread) == 1 + 2 * len(classes) and spread[1].startswith(f"1,{classes[0]},")
    assert all(0 <= float(line.split(",")[2]) <= 1 for line in spread[1:])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (bench,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.mlflow.runName = 'bench-kd-b'")
    assert bench.data.tags["view"] == "paper"
    assert {a.path for a in client.list_artifacts(bench.info.run_id, "results")} >= {
        "results/results.md", "results/curves.csv", "results/curves.png"}
    # the same --out again with a variant added: the finished jobs are reused (their curves from their first runs),
    # only the new students train
    final = out / "ray" / "b-seed1-student-pmsc-op0.5" / "final" / "model.pt"
    before = torch.load(final, weights_only=True)
    assert main(["bench", "kd", "--preset", "smoke", "--out", "b", "--seeds", "1,2", "--objectives",
                 "ce,pmsc,pmsc:sharp,pmsc:peaked",
                 "--variant", "sharp:loss.tau=0.25,loss.alpha=2,loss.grouping=halves2", "--variant",
                 "peaked:loss.part_temperature=0.5", "--backend", "local",
                 "--set", "train.epochs=1", "--set", "data.eval_occlusion_probs=0.5"]) == 0
    after = torch.load(final, weights_only=True)
    # the variant's own grouping got its own E, which its students read
    (halves,) = (out / "ray" / "b-seed1-teacher" / "final").glob("part_matrix_halves2_*.npy")
    sharp = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               "tags.mlflow.runName = 'b-seed1-student-pmsc-sharp-op0.5'")
    assert {run.data.params["part_matrix"] for run in sharp} == {str(halves)}
    # and a variant with its own E temperature an E from the same miss rates, softmaxed at that temperature (Eq. 13)
    teacher_final = out / "ray" / "b-seed1-teacher" / "final"
    (paper,), (peaked,) = (list(teacher_final.glob(f"part_matrix_paper5_t{t}_*.npy")) for t in ("1", "0.5"))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.mlflow.runName = 'b-seed1-student-pmsc-peaked-op0.5'")
    assert {run.data.params["part_matrix"] for run in runs} == {str(peaked)}
    assert np.allclose(np.load(peaked), torch.softmax(2 * torch.from_numpy(np.load(paper)).log(), dim=1).numpy(),
                       atol=1e-6)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    rerun = [line.split(",")[:3] for line in (out / "curves.csv").read_text().splitlines()[1:]]
    assert [row[:2] for row in rerun] == [["student_pmsc@0.5", "1"], ["student_pmsc_sharp@0.5", "1"],
                                          ["student_pmsc_peaked@0.5", "1"]]
    assert rerun[0][2] == curves[1].split(",")[2]  # the first run's CE of epoch 1, found again


def test_bench_kd_variants_are_parsed_and_checked_before_any_work(tmp_path, capsys):
    from partkd.cli import main
    from partkd.cli.bench import parse_variants

    assert parse_variants(["t:loss.tau=0.25,train.lr=0.1", "m:model.stage_blocks=1,1,loss.alpha=2"]) == {
        "t": ["loss.tau=0.25", "train.lr=0.1"], "m": ["model.stage_blocks=1,1", "loss.alpha=2"]}
    for variant, message in (("t:loss.tua=1", "unknown setting loss.tua"),
                             ("t:data.occlusion_prob=0.3", "a variant may not change data.occlusion_prob"),
                             ("t:train.seed=4", "a variant may not change train.seed"),
                             ("t:model.base_channels=32", "a variant may not change model.base_channels"),
                             ("t:model.stage_blocks=1,1", "a variant may not change model.stage_blocks"),
                             ("t", "expected NAME:section.key=value")):
        assert main(["bench", "kd", "--preset", "smoke", "--out", str(tmp_path / "x"), "--objectives", "ce,pmsc:t",
                     "--variant", variant, "--backend", "local"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing generated, nothing trained
