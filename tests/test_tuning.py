"""The hyperparameter study end to end on the topology of a KubeRay install, on one machine: Ray Tune + Optuna + ASHA
over tiny student jobs on a two-node Ray cluster with token authentication, an MLflow tracking server (``mlflow
server`` with ``--allowed-hosts``) on PostgreSQL (the Debian package, an unprivileged instance on loopback) with its
artifacts in an S3-compatible store (moto, on loopback), and the study itself (dataset, teacher, E, Ray Train
checkpoints, Tune's state, report) in that store's bucket.

One study of two trials is shared by the module. ``cluster/submit.sh`` submits it with ``--resume``, as a RayJob does
on every attempt (the first starts the study); its driver runs on the head and its trials train on the second node
(the head has no CPU). The driver is killed (SIGKILL) as its search ends and its finish begins, and a second
submission with ``--resume`` takes the study to the end without running a trial again. Trials run one at a time, so
ASHA sees their results in the same order in every run (and a resumed ASHA, which starts without the results of the
trials that ended before, is never asked to stop one). The tests read what a user reads: the MLflow runs (through the
server, and as rows of its database), the bucket's objects, and the MLflow UI in headless Chromium.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import VAL_FRACTION, free_port
from mlflow.tracking import MlflowClient

from partkd import storage, tracking
from partkd.data.shards import load_info
from partkd.train.config import TrainConfig, load_config
from tuning.space import load_study, max_concurrent_trials, parse_space
from tuning.study import StudyExistsError, run_study

# the module's study (two submissions, a teacher, trials and a finish on Ray) is set up by whichever test needs it first
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
EPOCHS, GRACE = 3, 2
TRIALS = 2  # the study file's [[first_trials]]: a config at a working lr, then one that diverges (ASHA must stop it)
# their train.lr: at 1e6 the first steps overflow, every weight is NaN within epoch 0 (in fp32 and in bf16: the same
# exponent range), a non-finite logit counts as a miss, so its validation top-1 is exactly 0 from then on; any model
# with finite weights scores above 0 on the slice (at its initial weights, about 1 in 4)
LEARNS, CANNOT_LEARN = 0.05, 1e6
SPACE = ("loss.alpha", "loss.w", "loss.tau", "loss.grouping", "loss.part_temperature", "train.lr")
BUCKET = "partkd-study"

# one search trial at a time (ASHA must see the first before the second), its worker on a quarter of the second node's
# 2 CPUs, so that the two finish students run side by side and Ray Data still has a whole CPU (a 2-worker trial took
# 60-66 s here against 44; DDP students run in test_train). No tracking_uri: the study's driver and trials log to the
# MLFLOW_TRACKING_URI submit.sh passes on, as the Ray pods of a KubeRay install get it from their ConfigMap.
STUDY_FILE = """
[study]
name = "{name}"
storage = "s3://{bucket}/studies"
trials = {trials}
max_concurrent = 1
seed = 0
asha = true
grace_epochs = {grace}
reduction_factor = 4
finish_seeds = {finish}
teacher_checkpoint = "{teacher}"

[space]
"loss.alpha" = {{ log_uniform = [0.1, 10.0] }}
"loss.w" = {{ uniform = [0.0, 1.0] }}
"loss.tau" = {{ log_uniform = [0.1, 2.0] }}
"loss.grouping" = {{ choice = ["paper5", "halves2"] }}
"loss.part_temperature" = {{ choice = [1.0, 0.5] }}
"train.lr" = {{ log_uniform = [{learns}, {cannot_learn}] }}

# ASHA's verdict is certain by construction, not by a seed: the paper's settings at a working lr, then a config at an
# lr that diverges at once and scores 0 on the slice, below any finite model
[[first_trials]]
"loss.alpha" = 1.0
"loss.w" = 0.5
"loss.tau" = 1.0
"loss.grouping" = "paper5"
"loss.part_temperature" = 1.0
"train.lr" = {learns}

[[first_trials]]
"loss.alpha" = 1.0
"loss.w" = 0.5
"loss.tau" = 1.0
"loss.grouping" = "halves2"
"loss.part_temperature" = 0.5
"train.lr" = {cannot_learn}

[job]
model = {{ base_channels = 8, stage_blocks = [1, 1], dropout = 0.1 }}
train = {{ epochs = {epochs}, milestones = [10], num_workers = 1, cpus_per_worker = 0.25 }}

[job.data]
path = "s3://{bucket}/data"
frames = 16
persons = 1
batch_size = 8
val_fraction = {val_fraction}
eval_occlusion_probs = [0.3]  # one test OP: the paper-view finish trains one student per config, at it
"""


def study_file(root: Path, name: str, finish: str = "[0]", teacher: str = f"s3://{BUCKET}/teacher") -> Path:
    path = root / f"{name}.toml"
    path.write_text(STUDY_FILE.format(name=name, bucket=BUCKET, finish=finish, teacher=teacher, epochs=EPOCHS,
                                      trials=TRIALS, val_fraction=VAL_FRACTION, learns=LEARNS,
                                      cannot_learn=CANNOT_LEARN, grace=GRACE))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tuning")




@dataclass
class Topology:
    uri: str  # the tracking server, as clients name it
    database: object  # conftest.Postgres, its backend store
    artifacts: str  # where it keeps artifacts: s3://...
    bucket: str  # the study's bucket: s3://...
    s3: object  # conftest.S3Server


@pytest.fixture(scope="module")
def topology(tracking_server, s3_server):
    """The session's tracking server (``mlflow server`` on PostgreSQL, artifacts in the S3 server) and a bucket for
    the study."""
    return Topology(tracking_server.uri, tracking_server.database, tracking_server.artifacts, s3_server.bucket(BUCKET),
                    s3_server)


def client(topology) -> MlflowClient:
    return MlflowClient(tracking_uri=topology.uri)


def trial_runs(topology, parent: str) -> list:
    return tracking.child_runs(topology.uri, parent, "tags.`study.stage` = 'trial'")


def submit(cluster, topology, config: Path, log: Path, *study_args: str) -> subprocess.Popen:
    """``cluster/submit.sh`` as a user runs it, against the session's cluster, MLFLOW_TRACKING_URI set; its output in
    ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([str(REPO / "cluster" / "submit.sh"), "--address", cluster.dashboard, "--",
                                 "--config", str(config), *study_args], cwd=REPO, stdout=out,
                                env={**cluster.env, "MLFLOW_TRACKING_URI": topology.uri}, stderr=subprocess.STDOUT,
                                text=True)


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
def killed(root, topology, ray_cluster, ray_teacher, train_data):
    """The study's first submission (with --resume, on a study that does not exist yet), its driver killed (SIGKILL)
    as soon as the search has ended (every trial ended, the search's report written) and its finish has begun, or is
    about to: the parent run id and each trial's state."""
    storage.copy_tree(str(train_data), f"{topology.bucket}/data")
    for name in ("model.pt", "meta.json"):  # the checkpoint alone, without the E files other tests left beside it
        storage.write_bytes(f"{topology.bucket}/teacher/{name}", (Path(ray_teacher.checkpoint) / name).read_bytes())
    config = study_file(root, "tiny")
    job = submit(ray_cluster, topology, config, root / "submit-1.log", "--resume")
    experiment = f"partkd/{load_info(train_data)['name']}"
    report = f"{topology.bucket}/studies/tiny/report/best_config.json"
    parent, done = None, []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and job.poll() is None:
            parent = parent or tracking.unfinished_run(topology.uri, experiment, "study-tiny")
            done = [r for r in trial_runs(topology, parent) if "state" in r.data.tags] if parent else []
            if len(done) >= TRIALS and storage.exists(report):
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
    """A finished study as its user sees it: the MLflow parent and the report folder in the bucket."""

    run_id: str
    experiment_id: str
    folder: str  # s3://...
    trials: list[dict]  # trials.csv
    best: dict  # best_config.json
    best_metric: float
    markdown: str  # the finish table
    log: str  # what submit.sh printed


@pytest.fixture(scope="module")
def study(root, topology, killed, ray_cluster):
    """The killed study, resumed to the end by a second submission with --resume."""
    job = submit(ray_cluster, topology, root / "tiny.toml", root / "submit-2.log", "--resume")
    job.wait(timeout=900)
    log = (root / "submit-2.log").read_text()
    job_id = re.search(r"raysubmit_\w+", log)
    assert job.returncode == 0 and job_id, log[-3000:]
    status = subprocess.run([str(Path(sys.executable).with_name("ray")), "job", "status", "--address",
                             ray_cluster.dashboard, job_id.group()], env=ray_cluster.env, capture_output=True,
                            text=True)
    assert f"Job '{job_id.group()}' succeeded" in status.stdout, status.stdout + status.stderr  # status SUCCEEDED
    folder = f"{topology.bucket}/studies/tiny"
    best = json.loads(storage.read_text(f"{folder}/report/best_config.json"))
    trials = [{**row, "epochs": int(row["epochs"]), "val/top1": float(row["val/top1"])}
              for row in csv.DictReader(io.StringIO(storage.read_text(f"{folder}/report/trials.csv")))]
    return Study(killed[0], client(topology).get_run(killed[0]).info.experiment_id, folder, trials,
                 best["settings"], best["val/top1"], storage.read_text(f"{folder}/report/results/results.md"), log)


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
    assert parse_space({"loss.part_temperature": {"choice": [1.0, 0.25]}})["loss.part_temperature"].choices == (
        1.0, 0.25)
    with pytest.raises(ValueError, match="space.loss.part_temperature: give it as a choice"):  # E is made before
        parse_space({"loss.part_temperature": {"log_uniform": [0.1, 1.0]}})


def test_set_overrides_the_study_or_the_job(tmp_path):
    path = study_file(tmp_path, "sets")
    study = load_study(str(path), ["study.trials=12", "study.asha=false", "study.finish_seeds=[1,2,3]", "train.lr=0.2"])
    assert (study.config.trials, study.config.asha, study.config.finish_seeds) == (12, False, (1, 2, 3))
    assert study.job.train.lr == 0.2 and study.config.grace_epochs == GRACE  # the rest as the file says
    with pytest.raises(ValueError, match="unknown setting study.trails"):
        load_study(str(path), ["study.trails=3"])
    with pytest.raises(ValueError, match="study.trials: expected int"):
        load_study(str(path), ["study.trials=many"])
    with pytest.raises(ValueError, match=r"study.reduction_factor must be at least 2, got 1"):
        load_study(str(path), ["study.reduction_factor=1"])
    bad_space = tmp_path / "bad-space.toml"  # a range the job refuses at one end: refused before any trial runs
    bad_space.write_text(path.read_text().replace("[space]", "[space]\n\"loss.kl_temperature\" = { uniform = [0, 2] }"))
    with pytest.raises(ValueError, match=r"space.loss.kl_temperature can draw 0.0: loss.kl_temperature must be a "
                                         r"finite number > 0, got 0.0"):
        load_study(str(bad_space))


def test_first_trials_are_whole_configs_the_space_can_draw(tmp_path):
    study = load_study(str(study_file(tmp_path, "first")))
    assert [t["train.lr"] for t in study.first_trials] == [LEARNS, CANNOT_LEARN]
    text = study_file(tmp_path, "bad-first").read_text()
    lr = f'"train.lr" = {LEARNS}\n'
    cases = [(lr, "", r"first_trials\[1\]: give every searched setting.*missing train.lr"),
             (lr, lr + '"loss.beta" = 1\n', r"not in \[space\]: loss.beta"),
             (lr, '"train.lr" = 0.001\n', r"first_trials\[1\].train.lr = 0.001 is outside"),
             ('"loss.grouping" = "paper5"\n', '"loss.grouping" = "torso6"\n', r"loss.grouping = 'torso6' is outside")]
    for old, new, error in cases:
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace(old, new, 1))
        with pytest.raises(ValueError, match=error):
            load_study(str(bad))


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


def test_study_is_one_parent_with_a_child_run_per_trial(topology, study):
    parent = client(topology).get_run(study.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "study"
    runs = trial_runs(topology, study.run_id)
    assert len(runs) == TRIALS and len(study.trials) == TRIALS
    searched = [tuple(r.data.params[k] for k in ("loss.alpha", "loss.w", "loss.tau", "train.lr")) for r in runs]
    assert len(set(searched)) == TRIALS  # distinct sampled settings
    assert {r.data.params["data.val_fraction"] for r in runs} == {str(VAL_FRACTION)}  # the slice, not test
    states = {r.data.tags["state"] for r in runs}
    assert states <= {"completed", "early-stopped"} and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # per-epoch metrics, as many epochs as the trial ran, each logged once
        steps = [m.step for m in client(topology).get_metric_history(run.info.run_id, "val/top1")]
        expected = EPOCHS if run.data.tags["state"] == "completed" else len(steps)
        assert steps == list(range(expected)) and expected >= 1


def test_driver_on_the_head_trials_on_the_other_node_with_the_uploaded_code(topology, study, ray_cluster):
    head, other = ray_cluster.node_ids
    parent = client(topology).get_run(study.run_id)
    assert parent.data.tags["ray.node_id"] == head  # the job's driver: Tune, E, the finish's evaluation
    runs = trial_runs(topology, study.run_id)
    assert {r.data.tags["ray.node_id"] for r in runs} == {other}  # every trial's rank 0
    assert not parent.data.tags["partkd.path"].startswith(str(REPO))  # the job ran the uploaded working directory
    for run in runs:  # Ray Train's checkpoints: objects in the bucket
        folder = f"{study.folder}/ray/{run.info.run_name}"
        saved = [c for c in storage.listdir(folder, "checkpoint_*") if storage.exists(f"{c}/meta.json")]
        assert saved, f"no checkpoint in {folder}: {storage.listdir(folder)}"


def test_killed_study_resumed_keeps_its_parent_and_its_ended_trials(topology, study, killed):
    """The resumed study has all its trials under the same parent; the trials, which had all ended, were neither re-run
    nor duplicated in MLflow (the finish, killed as it began, has its two runs once: test_finish_...)."""
    parent, before = killed
    runs = trial_runs(topology, parent)
    assert len(runs) == TRIALS
    for run in runs:
        if run.info.run_id in before:  # kept as it was
            assert run.data.tags["state"] == before[run.info.run_id]
    assert {t["trial_id"] for t in study.trials} == {r.data.tags["trial_id"] for r in runs}


def test_asha_stops_the_trial_that_cannot_learn_and_saves_epochs(topology, study, killed):
    """The trial that cannot learn (the second, by [[first_trials]]: it diverges and scores 0) is behind the first at
    the grace epoch, so ASHA (reduction factor 4: it keeps the top quarter of each rung) stops it there; the first runs
    to the end. Neither depends on rounding: the one is 0 exactly, the other a model with finite weights."""
    states = {float(t["train.lr"]): (t["state"], t["epochs"]) for t in study.trials}
    assert states == {LEARNS: ("completed", EPOCHS), CANNOT_LEARN: ("early-stopped", GRACE)}, study.trials
    metrics = client(topology).get_run(study.run_id).data.metrics
    assert metrics["search/epochs"] == sum(t["epochs"] for t in study.trials) < TRIALS * EPOCHS
    assert metrics["search/epochs_saved"] == pytest.approx(1 - metrics["search/epochs"] / (TRIALS * EPOCHS))
    # trials per hour of the resumed leg: the trials that ended in it (none: they had all ended before the kill)
    assert metrics["search/trials_per_hour"] == 0 and len(killed[1]) == TRIALS


def test_best_config_is_the_best_trial_and_recorded_on_the_parent(topology, study):
    best = max(study.trials, key=lambda t: t["val/top1"])
    assert study.best_metric == pytest.approx(best["val/top1"])
    assert {k: str(v) for k, v in study.best.items()} == {k: best[k] for k in SPACE}
    parent = client(topology).get_run(study.run_id)
    assert parent.data.tags["best.loss.grouping"] == study.best["loss.grouping"]
    assert parent.data.metrics["best/val/top1"] == pytest.approx(study.best_metric)
    artifacts = {a.path for a in client(topology).list_artifacts(study.run_id, "search")}
    assert {"search/best_config.json", "search/trials.csv", "search/optimization_history.png",
            "search/param_importances.png"} <= artifacts


def test_finish_compares_best_and_paper_on_the_test_split(topology, study):
    lines = study.markdown.splitlines()
    assert "over 1 seeds: 0" in study.markdown
    assert "top-1 gain over paper defaults" in lines[0]
    rows = [line for line in lines if line.startswith("| Student")]
    assert [r.split(" | ")[2:4] for r in rows] == [["0.3", "0.3"]] * 2  # the paper's protocol: trained at the OP
    assert rows[0].startswith("| Student (paper defaults)") and rows[1].startswith("| Student (best config)")
    finish = tracking.child_runs(topology.uri, study.run_id, "tags.`study.stage` = 'finish'")
    assert len(finish) == 2 and {r.data.params["data.occlusion_prob"] for r in finish} == {"0.3"}
    paper = [r for r in finish if "paper" in r.info.run_name]
    assert {(r.data.params["loss.grouping"], r.data.params["loss.w"], r.data.params["loss.tau"],
             r.data.params["loss.alpha"]) for r in paper} == {("paper5", "0.5", "1.0", "1.0")}  # alpha: the [job]'s
    assert {r.data.params["data.val_fraction"] for r in finish} == {"0.0"}  # the whole training split
    assert {a.path for a in client(topology).list_artifacts(study.run_id, "results")} == {"results/results.md",
                                                                                     "results/results.csv"}


def test_study_part_matrices_leave_the_validation_slice_out(topology, study):
    logged = {a.path for a in client(topology).list_artifacts(study.run_id, "part_matrix")}
    assert logged == {f"part_matrix/part_matrix_{grouping}_t{t}_xsub+val0.25-0_T16_M1.npy"
                      for grouping in ("paper5", "halves2") for t in ("1", "0.5")}  # one per value a trial can pick
    for trial in trial_runs(topology, study.run_id):  # and each trial read the one for its own settings
        params = trial.data.params
        assert f"_{params['loss.grouping']}_t{float(params['loss.part_temperature']):g}_" in params["part_matrix"]


def test_a_study_is_not_started_over_by_accident(root, topology, study):
    with pytest.raises(StudyExistsError, match="--resume"):
        run_study(load_study(str(root / "tiny.toml"), [f"tracking_uri={topology.uri}"]), say=lambda line: None)


def test_a_given_teacher_that_saw_the_validation_slice_is_refused(root, topology, study):
    config = study_file(root, "other-slice", finish="[]")
    with pytest.raises(ValueError, match="it has seen the validation slice"):
        run_study(load_study(str(config), ["data.val_fraction=0.2", f"tracking_uri={topology.uri}"]),
                  say=lambda line: None)


# ------------------------------------------------------------------------------------------- where everything landed


def test_runs_are_rows_of_the_tracking_servers_postgresql(topology, study):
    runs = trial_runs(topology, study.run_id) + tracking.child_runs(topology.uri, study.run_id,
                                                                     "tags.`study.stage` = 'finish'")
    rows = topology.database.query(
        "select r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = 'mlflow.parentRunId' and t.value = %s", study.run_id)
    assert sorted(rows) == sorted((r.info.run_id, "FINISHED") for r in runs) and len(rows) == TRIALS + 2
    [(kind,)] = topology.database.query("select value from experiment_tags where experiment_id = %s and key = "
                                        "'mlflow.experimentKind'", int(study.experiment_id))
    assert kind == "custom_model_development"


def test_artifacts_checkpoints_and_e_are_objects_in_the_bucket(topology, study):
    import boto3

    keys = {o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])}
    artifacts = topology.artifacts.removeprefix("s3://").split("/", 1)
    stored = {o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=artifacts[0], Prefix=artifacts[1]) for o in page.get("Contents", [])}
    parent = f"{artifacts[1]}/{study.experiment_id}/{study.run_id}/artifacts"
    assert {f"{parent}/search/best_config.json", f"{parent}/results/results.md"} <= stored  # MLflow's artifact store
    trial = trial_runs(topology, study.run_id)[0]
    assert f"{artifacts[1]}/{study.experiment_id}/{trial.info.run_id}/artifacts/checkpoint/model.pt" in stored
    assert any(re.fullmatch(rf"studies/tiny/ray/{trial.info.run_name}/checkpoint_[^/]+/model\.pt", k) for k in keys)
    assert any(k.startswith("studies/tiny/search/experiment_state-") for k in keys)  # Tune's state: what --resume reads
    for grouping in ("paper5", "halves2"):  # E, computed by the study and cached beside the given teacher
        assert f"teacher/part_matrix_{grouping}_t1_xsub+val0.25-0_T16_M1.npy" in keys


def test_shards_were_read_from_the_bucket(topology, study, train_data):
    requests = topology.s3.log.read_text()
    shards = [s["file"] for s in load_info(train_data)["shards"]]
    assert all(f"GET /{BUCKET}/data/{shard}" in requests for shard in shards)
    run = trial_runs(topology, study.run_id)[0]
    assert run.data.params["data.path"] == f"s3://{BUCKET}/data"
    [dataset] = [i.dataset for i in run.inputs.dataset_inputs]  # the runs table's Dataset column
    assert dataset.digest == load_info(train_data)["fingerprint"][:36]
    assert json.loads(dataset.source)["uri"] == f"s3://{BUCKET}/data"


def test_the_tracking_server_answers_only_the_names_it_serves(topology):
    url = f"{topology.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert urllib.request.urlopen(url, timeout=10).status == 200
    port = topology.uri.rsplit(":", 1)[1]
    request = urllib.request.Request(url, headers={"Host": f"partkd-mlflow.attacker.example:{port}"})
    with pytest.raises(urllib.error.HTTPError) as refused:  # DNS rebinding: MLflow 3 refuses an unknown Host
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


def chromium(url: str, screenshot: Path) -> str:
    """``url`` in headless Chromium after its scripts have settled: saves a screenshot, returns the rendered DOM."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium as root)")
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000"]
        page = subprocess.run([*flags, f"--screenshot={screenshot}", "--dump-dom", url], capture_output=True,
                              text=True, timeout=120)
    assert page.returncode == 0 and screenshot.stat().st_size > 0, page.stderr[-2000:]
    return page.stdout


@pytest.mark.browser
def test_the_mlflow_ui_lists_the_study_and_compares_its_trials_over_the_searched_settings(topology, study, train_data,
                                                                                         capsys):
    """The two MLflow UI links the study prints, opened as a user would in headless Chromium: the experiment's runs
    table in the model-training view (not the GenAI overview), the study's run with its dataset; the comparison of its
    trials over the searched settings. The screenshots are kept (the test prints where)."""
    folder = Path(tempfile.mkdtemp(prefix="partkd-mlflow-ui-"))
    runs_url = re.search(r"MLflow UI: its runs (\S+)", study.log).group(1)
    assert runs_url == f"{topology.uri}/#/experiments/{study.experiment_id}?workflowType=machine_learning"
    page = chromium(runs_url, folder / "runs.png")
    assert "Model training" in page and "Run Name" in page and "study-tiny" in page, page[-3000:]
    assert load_info(train_data)["name"] in page  # the Dataset column
    compare = chromium(re.search(r"its trials compared (\S+)", study.log).group(1), folder / "compare.png")
    assert all(run.info.run_name in compare for run in trial_runs(topology, study.run_id))
    assert all(key in compare for key in ("loss.alpha", "loss.w", "loss.tau", "loss.grouping")), compare[-3000:]
    with capsys.disabled():
        print(f"\nMLflow UI screenshots: {folder / 'runs.png'}, {folder / 'compare.png'}")


def test_submit_says_in_one_line_what_is_wrong(ray_session, ray_cluster, root, tmp_path):
    """Before it uploads anything: an address where no job server answers, and a cluster that wants a token."""
    config = study_file(root, "never")
    env = {k: v for k, v in ray_cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    for address, expected in ((f"http://127.0.0.1:{free_port()}", "no Ray job server answers at http://127.0.0.1:"),
                              (ray_cluster.dashboard, f"the Ray cluster at {ray_cluster.dashboard} refused the token "
                                                      "(none given)")):
        done = subprocess.run([str(REPO / "cluster" / "submit.sh"), "--address", address, "--", "--config",
                               str(config)], env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
