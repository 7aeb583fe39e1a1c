"""The hyperparameter study end to end: Ray Tune + Optuna + ASHA over tiny student jobs, a real MLflow SQLite store,
submitted as a Ray job to the session's two-node cluster.

One study of two trials is shared by the module. ``cluster/submit.sh`` submits it; its driver runs on the head and its
trials train on the second node (the head has no CPU). The driver is killed (SIGKILL) as its search ends and its finish
begins, and a second submission with ``--resume`` takes the study to the end without running a trial again. Trials run
one at a time, so ASHA sees their results in the same order in every run (and a resumed ASHA, which starts without the
results of the trials that ended before, is never asked to stop one). The tests read what a user reads: the MLflow runs
and the study's report folder.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import VAL_FRACTION
from mlflow.tracking import MlflowClient

from partkd import tracking
from partkd.data.shards import load_info
from partkd.train.config import TrainConfig, load_config
from tuning.space import load_study, max_concurrent_trials, parse_space
from tuning.study import StudyExistsError, run_study

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
TRIALS = 2  # with this seed the second is worse than the first at the grace epoch: ASHA stops it
SPACE = ("loss.alpha", "loss.w", "loss.tau", "loss.grouping", "train.lr")

# one trial at a time, its worker on half of the second node's 2 CPUs: Ray Data has a whole CPU beside it (a 2-worker
# trial took 60-66 s here against 44; DDP students run in test_train)
STUDY_FILE = """
[study]
name = "{name}"
storage = "{root}/studies"
trials = {trials}
max_concurrent = 1
seed = 0
asha = true
grace_epochs = 2  # epoch 1 barely separates the trials on this tiny set
reduction_factor = 4
finish_seeds = {finish}
teacher_checkpoint = "{teacher}"

[space]
"loss.alpha" = {{ log_uniform = [0.1, 10.0] }}
"loss.w" = {{ uniform = [0.0, 1.0] }}
"loss.tau" = {{ log_uniform = [0.1, 2.0] }}
"loss.grouping" = {{ choice = ["paper5", "halves2"] }}
"train.lr" = {{ log_uniform = [0.01, 5.0] }}  # the upper end diverges: a trial to stop

[job]
tracking_uri = "sqlite:///{root}/mlflow.db"
data = {{ path = "{data}", frames = 16, persons = 1, batch_size = 8, val_fraction = {val_fraction} }}
model = {{ base_channels = 8, stage_blocks = [1, 1], dropout = 0.1 }}
train = {{ epochs = {epochs}, milestones = [10], num_workers = 1, cpus_per_worker = 0.5 }}
"""


def study_file(root: Path, name: str, finish: str = "[0]", teacher: str = "") -> Path:
    path = root / f"{name}.toml"
    path.write_text(STUDY_FILE.format(name=name, root=root, data=root.parent / "data", finish=finish,
                                      teacher=teacher, epochs=EPOCHS, trials=TRIALS,
                                      val_fraction=VAL_FRACTION))
    return path


@pytest.fixture(scope="module")
def root(train_data):
    root = train_data.parent / "tuning"  # beside the shared dataset: study files name it as ../data
    root.mkdir()
    return root


def client(root) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def trial_runs(root, parent: str) -> list:
    return tracking.child_runs(f"sqlite:///{root / 'mlflow.db'}", parent, "tags.`study.stage` = 'trial'")


def submit(cluster, config: Path, log: Path, *study_args: str) -> subprocess.Popen:
    """``cluster/submit.sh`` as a user runs it, against the session's cluster; its output in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([str(REPO / "cluster" / "submit.sh"), "--address", cluster.dashboard, "--",
                                 "--config", str(config), *study_args], cwd=REPO, env=cluster.env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def study_drivers(config: Path) -> list[int]:
    """The processes running the study of ``config`` (the job's entrypoint, and the shell around it), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue  # not a process, or gone
        if "tuning.study" in cmdline and str(config) in cmdline and "submit" not in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def killed(root, ray_cluster, ray_teacher):
    """The study's first submission, its driver killed (SIGKILL) as soon as the search has ended (every trial ended,
    the search's report written) and its finish has begun, or is about to: the parent run id and each trial's
    state."""
    config = study_file(root, "tiny", teacher=str(ray_teacher.checkpoint))
    job = submit(ray_cluster, config, root / "submit-1.log")
    uri, experiment = f"sqlite:///{root / 'mlflow.db'}", f"partkd/{load_info(root.parent / 'data')['name']}"
    parent, done = None, []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and job.poll() is None:
            parent = parent or tracking.unfinished_run(uri, experiment, "study-tiny")
            done = [r for r in trial_runs(root, parent) if "state" in r.data.tags] if parent else []
            if len(done) >= TRIALS and (root / "studies" / "tiny" / "report" / "best_config.json").exists():
                break
            time.sleep(0.5)
    finally:
        for pid in study_drivers(config):
            os.kill(pid, signal.SIGKILL)
        job.wait(timeout=120)
    log = (root / "submit-1.log").read_text()
    assert len(done) == TRIALS, f"the driver ended before every trial had:\n{log[-3000:]}"
    assert job.returncode != 0 and "failed" in log.lower(), log[-3000:]  # the job saw its driver die
    return parent, {r.info.run_id: r.data.tags["state"] for r in done}


@dataclass
class Study:
    """A finished study as its user sees it: the MLflow parent and the report folder."""

    run_id: str
    folder: Path
    trials: list[dict]  # trials.csv
    best: dict  # best_config.json
    best_metric: float
    markdown: str  # the finish table
    log: str  # what submit.sh printed


@pytest.fixture(scope="module")
def study(root, killed, ray_cluster):
    """The killed study, resumed to the end by a second submission with --resume."""
    config = root / "tiny.toml"
    job = submit(ray_cluster, config, root / "submit-2.log", "--resume")
    job.wait(timeout=900)
    log = (root / "submit-2.log").read_text()
    job_id = re.search(r"raysubmit_\w+", log)
    assert job.returncode == 0 and job_id, log[-3000:]
    status = subprocess.run([str(Path(sys.executable).with_name("ray")), "job", "status", "--address",
                             ray_cluster.dashboard, job_id.group()], env=ray_cluster.env, capture_output=True,
                            text=True)
    assert f"Job '{job_id.group()}' succeeded" in status.stdout, status.stdout + status.stderr  # status SUCCEEDED
    folder = root / "studies" / "tiny"
    best = json.loads((folder / "report" / "best_config.json").read_text())
    with open(folder / "report" / "trials.csv") as file:
        trials = [{**row, "epochs": int(row["epochs"]), "val/top1": float(row["val/top1"])}
                  for row in csv.DictReader(file)]
    return Study(killed[0], folder, trials, best["settings"], best["val/top1"],
                 (folder / "report" / "results" / "results.md").read_text(), log)


def test_space_reads_ranges_and_rejects_what_the_job_lacks():
    space = parse_space({"loss.alpha": {"log_uniform": [0.1, 10]}, "loss.grouping": {"choice": "groupings"}})
    assert space["loss.alpha"].log and (space["loss.alpha"].low, space["loss.alpha"].high) == (0.1, 10.0)
    assert space["loss.grouping"].choices == ("halves2", "limbs10", "paper5", "torso6")  # every registered grouping
    with pytest.raises(ValueError, match="space.loss.beta: not a job setting"):
        parse_space({"loss.beta": {"uniform": [0, 1]}})
    with pytest.raises(ValueError, match="log_uniform needs 0 < lo < hi"):
        parse_space({"loss.tau": {"log_uniform": [0, 1]}})
    with pytest.raises(KeyError, match="unknown grouping 'elbows3'"):
        parse_space({"loss.grouping": {"choice": ["paper5", "elbows3"]}})


def test_set_overrides_the_study_or_the_job(tmp_path):
    path = study_file(tmp_path, "sets")
    study = load_study(str(path), ["study.trials=12", "study.asha=false", "study.finish_seeds=[1,2,3]", "train.lr=0.2"])
    assert (study.config.trials, study.config.asha, study.config.finish_seeds) == (12, False, (1, 2, 3))
    assert study.job.train.lr == 0.2 and study.config.grace_epochs == 2  # the rest as the file says
    with pytest.raises(ValueError, match="unknown setting study.trails"):
        load_study(str(path), ["study.trails=3"])
    with pytest.raises(ValueError, match="study.trials: expected int"):
        load_study(str(path), ["study.trials=many"])


def test_concurrency_follows_cpus_and_whole_gpus():
    # 16 CPUs, less 1 for Ray Data, over (0.01 + 2 x 1) per trial: 7; with GPUs, 4 GPUs / 2 per trial: 2
    assert max_concurrent_trials({"CPU": 16}, TrainConfig(num_workers=2, cpus_per_worker=1)) == 7
    assert max_concurrent_trials({"CPU": 16, "GPU": 4}, TrainConfig(num_workers=2, use_gpu=True)) == 2
    # the tests' 2 CPUs: (2 - 1) / (0.01 + 0.4) = 2.4 -> 2; a trial that cannot fit beside Ray Data is an error
    assert max_concurrent_trials({"CPU": 2}, TrainConfig(num_workers=1, cpus_per_worker=0.4)) == 2
    with pytest.raises(ValueError, match="the cluster has 2: lower train.cpus_per_worker"):
        max_concurrent_trials({"CPU": 2}, TrainConfig(num_workers=1, cpus_per_worker=1))  # 1.01 + 1 > 2
    # one-worker trials sharing a GPU: 4 per GPU at 0.25 each, CPUs permitting
    assert max_concurrent_trials({"CPU": 16, "GPU": 1}, TrainConfig(use_gpu=True, gpus_per_worker=0.25)) == 4
    assert max_concurrent_trials({"CPU": 3, "GPU": 1}, TrainConfig(use_gpu=True, gpus_per_worker=0.25)) == 1
    with pytest.raises(ValueError, match="DDP ranks must not share a GPU"):
        load_config(sets=["train.num_workers=2", "train.use_gpu=true", "train.gpus_per_worker=0.5"])


def test_study_is_one_parent_with_a_child_run_per_trial(root, study):
    parent = client(root).get_run(study.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "study"
    runs = trial_runs(root, study.run_id)
    assert len(runs) == TRIALS and len(study.trials) == TRIALS
    searched = [tuple(r.data.params[k] for k in ("loss.alpha", "loss.w", "loss.tau", "train.lr")) for r in runs]
    assert len(set(searched)) == TRIALS  # distinct sampled settings
    assert {r.data.params["data.val_fraction"] for r in runs} == {str(VAL_FRACTION)}  # the slice, not test
    states = {r.data.tags["state"] for r in runs}
    assert states <= {"completed", "early-stopped"} and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # per-epoch metrics, as many epochs as the trial ran, each logged once
        steps = [m.step for m in client(root).get_metric_history(run.info.run_id, "val/top1")]
        expected = EPOCHS if run.data.tags["state"] == "completed" else len(steps)
        assert steps == list(range(expected)) and expected >= 1


def test_driver_on_the_head_trials_on_the_other_node_with_the_uploaded_code(root, study, ray_cluster):
    head, other = ray_cluster.node_ids
    parent = client(root).get_run(study.run_id)
    assert parent.data.tags["ray.node_id"] == head  # the job's driver: Tune, E, the finish's evaluation
    runs = trial_runs(root, study.run_id)
    assert {r.data.tags["ray.node_id"] for r in runs} == {other}  # every trial's rank 0
    assert not parent.data.tags["partkd.path"].startswith(str(REPO))  # the job ran the uploaded working directory
    for run in runs:  # checkpoints on the storage both nodes share
        folder = study.folder / "ray" / run.info.run_name
        assert list(folder.glob("checkpoint_*/meta.json")), f"no checkpoint in {folder}"


def test_killed_study_resumed_keeps_its_parent_and_its_ended_trials(root, study, killed):
    """The resumed study has all its trials under the same parent; the trials, which had all ended, were neither re-run
    nor duplicated in MLflow (the finish, killed as it began, has its two runs once: test_finish_...)."""
    parent, before = killed
    runs = trial_runs(root, parent)
    assert len(runs) == TRIALS
    for run in runs:
        if run.info.run_id in before:  # kept as it was
            assert run.data.tags["state"] == before[run.info.run_id]
    assert {t["trial_id"] for t in study.trials} == {r.data.tags["trial_id"] for r in runs}


def test_asha_stops_a_trial_early_and_saves_epochs(root, study, killed):
    early = [t for t in study.trials if t["state"] == "early-stopped"]
    assert early, study.trials
    assert all(t["epochs"] < EPOCHS for t in early)
    metrics = client(root).get_run(study.run_id).data.metrics
    assert metrics["search/epochs"] == sum(t["epochs"] for t in study.trials) < TRIALS * EPOCHS
    assert metrics["search/epochs_saved"] == pytest.approx(1 - metrics["search/epochs"] / (TRIALS * EPOCHS))
    # trials per hour of the resumed leg: the trials that ended in it (none: they had all ended before the kill)
    assert metrics["search/trials_per_hour"] == 0 and len(killed[1]) == TRIALS


def test_best_config_is_the_best_trial_and_recorded_on_the_parent(root, study):
    best = max(study.trials, key=lambda t: t["val/top1"])
    assert study.best_metric == pytest.approx(best["val/top1"])
    assert {k: str(v) for k, v in study.best.items()} == {k: best[k] for k in SPACE}
    parent = client(root).get_run(study.run_id)
    assert parent.data.tags["best.loss.grouping"] == study.best["loss.grouping"]
    assert parent.data.metrics["best/val/top1"] == pytest.approx(study.best_metric)
    artifacts = {a.path for a in client(root).list_artifacts(study.run_id, "search")}
    assert {"search/best_config.json", "search/trials.csv", "search/optimization_history.png",
            "search/param_importances.png"} <= artifacts


def test_finish_compares_best_and_paper_on_the_test_split(root, study):
    lines = study.markdown.splitlines()
    assert "over 1 seeds: 0" in study.markdown
    assert "top-1 gain over paper defaults" in lines[0]
    rows = [line for line in lines if line.startswith("| Student")]
    assert [r.split(" | ")[2] for r in rows] == ["0.0", "0.3", "0.6"] * 2
    assert all(r.startswith("| Student (paper defaults)") for r in rows[:3])
    finish = tracking.child_runs(f"sqlite:///{root / 'mlflow.db'}", study.run_id, "tags.`study.stage` = 'finish'")
    assert len(finish) == 2
    paper = [r for r in finish if "paper" in r.info.run_name]
    assert {(r.data.params["loss.grouping"], r.data.params["loss.w"], r.data.params["loss.tau"],
             r.data.params["loss.alpha"]) for r in paper} == {("paper5", "0.5", "1.0", "1.0")}  # alpha: the [job]'s
    assert {r.data.params["data.val_fraction"] for r in finish} == {"0.0"}  # the whole training split
    assert {a.path for a in client(root).list_artifacts(study.run_id, "results")} == {"results/results.md",
                                                                                     "results/results.csv"}


def test_study_part_matrices_leave_the_validation_slice_out(root, study):
    logged = {a.path for a in client(root).list_artifacts(study.run_id, "part_matrix")}
    assert logged == {"part_matrix/part_matrix_paper5_t1_xsub+val0.25-0_T16_M1.npy",
                      "part_matrix/part_matrix_halves2_t1_xsub+val0.25-0_T16_M1.npy"}


def test_a_study_is_not_started_over_by_accident(root, study):
    with pytest.raises(StudyExistsError, match="--resume"):
        run_study(load_study(str(root / "tiny.toml")), say=lambda line: None)


def test_a_given_teacher_that_saw_the_validation_slice_is_refused(root, ray_teacher):
    config = study_file(root, "other-slice", finish="[]", teacher=str(ray_teacher.checkpoint))
    with pytest.raises(ValueError, match="it has seen the validation slice"):
        run_study(load_study(str(config), ["data.val_fraction=0.2"]), say=lambda line: None)
