"""The hyperparameter study end to end: Ray Tune + Optuna + ASHA over tiny student jobs, a real MLflow SQLite store.

One study of 4 trials (2 at a time) with its finish is shared by the module; the resume test kills a second study's
driver (a subprocess on the session's Ray) after two completed trials and resumes it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from partkd import tracking
from partkd.cli import synthesize
from partkd.data.synth import SynthConfig
from partkd.train.config import TrainConfig, load_config
from tuning.space import load_study, max_concurrent_trials, parse_space
from tuning.study import StudyExistsError, run_study

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3

STUDY_FILE = """
[study]
name = "{name}"
storage = "{root}/studies"
trials = 4
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
data = {{ path = "{root}/data", frames = 16, persons = 1, batch_size = 8, val_fraction = 0.25 }}
model = {{ base_channels = 8, stage_blocks = [1, 1], dropout = 0.1 }}
train = {{ epochs = {epochs}, milestones = [10], num_workers = 1, cpus_per_worker = 0.4 }}
"""


def study_file(root: Path, name: str, finish: str = "[0, 1, 2]", teacher: str = "") -> Path:
    path = root / f"{name}.toml"
    path.write_text(STUDY_FILE.format(name=name, root=root, finish=finish, teacher=teacher, epochs=EPOCHS))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("tuning")
    synthesize(root / "data", SynthConfig(samples=192, classes=4, frames=16, seed=3, paired_fraction=0.75),
               overwrite=True, quiet=True)
    return root


@pytest.fixture(scope="module")
def study(root):
    return run_study(load_study(str(study_file(root, "tiny"))), say=lambda line: None)


def client(root) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def trial_runs(root, parent: str) -> list:
    return tracking.child_runs(f"sqlite:///{root / 'mlflow.db'}", parent, "tags.`study.stage` = 'trial'")


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
    assert len(runs) == 4 and len(study.trials) == 4
    searched = [tuple(r.data.params[k] for k in ("loss.alpha", "loss.w", "loss.tau", "train.lr")) for r in runs]
    assert len(set(searched)) == 4  # distinct sampled settings
    assert {r.data.params["data.val_fraction"] for r in runs} == {"0.25"}  # validated on the slice, not test
    states = {r.data.tags["state"] for r in runs}
    assert states <= {"completed", "early-stopped"} and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # per-epoch metrics, as many epochs as the trial ran
        steps = [m.step for m in client(root).get_metric_history(run.info.run_id, "val/top1")]
        expected = EPOCHS if run.data.tags["state"] == "completed" else len(steps)
        assert steps == list(range(expected)) and expected >= 1
    teacher = tracking.child_runs(f"sqlite:///{root / 'mlflow.db'}", study.run_id, "tags.`study.stage` = 'teacher'")
    assert len(teacher) == 1  # trained once for the whole study


def test_asha_stops_a_trial_early_and_saves_epochs(root, study):
    early = [t for t in study.trials if t["state"] == "early-stopped"]
    assert early, study.trials
    assert all(t["epochs"] < EPOCHS for t in early)
    metrics = client(root).get_run(study.run_id).data.metrics
    assert metrics["search/epochs"] == sum(t["epochs"] for t in study.trials) < 4 * EPOCHS
    assert metrics["search/epochs_saved"] == pytest.approx(1 - metrics["search/epochs"] / (4 * EPOCHS))
    assert metrics["search/trials_per_hour"] == pytest.approx(4 * 3600 / metrics["search/wall_s"])


def test_best_config_is_the_best_trial_and_recorded_on_the_parent(root, study):
    best = max(study.trials, key=lambda t: t["val/top1"])
    assert study.best_metric == pytest.approx(best["val/top1"])
    assert study.best == {k: best[k] for k in ("loss.alpha", "loss.w", "loss.tau", "loss.grouping", "train.lr")}
    parent = client(root).get_run(study.run_id)
    assert parent.data.tags["best.loss.grouping"] == study.best["loss.grouping"]
    assert parent.data.metrics["best/val/top1"] == pytest.approx(study.best_metric)
    artifacts = {a.path for a in client(root).list_artifacts(study.run_id, "search")}
    assert {"search/best_config.json", "search/trials.csv", "search/optimization_history.png",
            "search/param_importances.png"} <= artifacts


def test_finish_compares_best_and_paper_over_three_seeds_on_the_test_split(root, study):
    lines = study.markdown.splitlines()
    assert "over 3 seeds: 0, 1, 2" in study.markdown
    assert "top-1 gain over paper defaults" in lines[0]
    rows = [line for line in lines if line.startswith("| Student")]
    assert [r.split(" | ")[2] for r in rows] == ["0.0", "0.3", "0.6"] * 2
    assert all(r.startswith("| Student (paper defaults)") for r in rows[:3])
    finish = tracking.child_runs(f"sqlite:///{root / 'mlflow.db'}", study.run_id, "tags.`study.stage` = 'finish'")
    assert len(finish) == 6
    paper = [r for r in finish if "paper" in r.info.run_name]
    assert {(r.data.params["loss.grouping"], r.data.params["loss.w"], r.data.params["loss.tau"],
             r.data.params["loss.alpha"]) for r in paper} == {("paper5", "0.5", "1.0", "1.0")}  # alpha: the [job]'s
    assert (study.folder / "report" / "results" / "results.md").read_text() == study.markdown
    assert {r.data.params["data.val_fraction"] for r in finish} == {"0.0"}  # the whole training split
    assert {a.path for a in client(root).list_artifacts(study.run_id, "results")} == {"results/results.md",
                                                                                     "results/results.csv"}


def test_a_study_is_not_started_over_by_accident(root, study):
    with pytest.raises(StudyExistsError, match="--resume"):
        run_study(load_study(str(study_file(root, "tiny"))), say=lambda line: None)


def test_a_given_teacher_that_saw_the_validation_slice_is_refused(root, study):
    teacher = study.folder / "ray" / "tiny-teacher" / "final"  # trained on the training split less a 0.25 slice
    config = study_file(root, "other-slice", finish="[]", teacher=str(teacher))
    with pytest.raises(ValueError, match="it has seen the validation slice"):
        run_study(load_study(str(config), ["data.val_fraction=0.2"]), say=lambda line: None)


def test_killed_study_resumes_keeping_completed_trials(root, study):
    """The driver is killed (SIGKILL) once two trials have completed; --resume ends with 4 trials, the first two
    neither re-run nor duplicated in MLflow."""
    import ray

    teacher = study.folder / "ray" / "tiny-teacher" / "final"
    config = study_file(root, "killed", finish="[]", teacher=str(teacher))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "TUNE_GLOBAL_CHECKPOINT_S": "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-m", "tuning.study", "--config", str(config)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            parent = tracking.unfinished_run(uri, "partkd/synth-3", "study-killed")
            done = [r for r in trial_runs(root, parent) if "state" in r.data.tags] if parent else []
            if len(done) >= 2 or driver.poll() is not None:
                break
            time.sleep(1)
        time.sleep(2)  # the experiment state is saved each step (TUNE_GLOBAL_CHECKPOINT_S=0)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert 2 <= len(done) < 4, "the driver ended before two trials completed, or after all four"
    before = {r.info.run_id: r.data.tags["state"] for r in done}

    resumed = run_study(load_study(str(config)), resume=True, say=lambda line: None)
    assert resumed.run_id == parent  # the same parent run, continued
    runs = trial_runs(root, parent)
    assert len(runs) == 4 and len(resumed.trials) == 4
    for run in runs:
        if run.info.run_id in before:  # kept, not trained again: its epochs logged once each
            assert run.data.tags["state"] == before[run.info.run_id]
            steps = [m.step for m in client(root).get_metric_history(run.info.run_id, "val/top1")]
            assert steps == sorted(set(steps))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_node_cluster():
    """A Ray cluster of its own: ``ray start --head`` plus a second node joined over loopback, token auth on (as Ray
    2.59+ does by default). Yields the dashboard address and the environment to talk to it; stopped after the test
    by signalling the two ``ray start --block`` processes (``ray stop`` would stop the tests' Ray too)."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # a temporary folder per node, as on two machines (a shared one would let one node's runtime-env agent delete
    # the job's working directory under the other); short, Ray's socket paths live under it
    temps = [tempfile.mkdtemp(prefix="rayc", dir="/tmp") for _ in range(2)]
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    def node_flags():  # each node's agents on ports of their own: the tests' Ray holds Ray's default ones
        return ["--block", "--num-cpus=5", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                *(f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                         "metrics-export-port", "runtime-env-agent-port"))]

    nodes = [subprocess.Popen([ray_cli, "start", "--head", f"--port={gcs}", f"--dashboard-port={dashboard}",
                               "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={temps[0]}",
                               f"--ray-client-server-port={free_port()}", *node_flags()], env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        nodes.append(subprocess.Popen([ray_cli, "start", f"--address=127.0.0.1:{gcs}", f"--temp-dir={temps[1]}",
                                       *node_flags()], env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # both nodes alive, seen through the dashboard
            check = subprocess.run([ray_cli, "list", "nodes", "--address", address, "--format", "json"], env=env,
                                   capture_output=True, text=True)
            alive = [n["node_id"] for n in json.loads(check.stdout) if n["state"] == "ALIVE"] if (
                check.returncode == 0 and check.stdout.startswith("[")) else []  # or "No resource in the cluster"
            if len(alive) == 2:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the two-node cluster did not come up: {check.stdout[-1000:]} {check.stderr[-1000:]}")
        yield address, env, alive
    finally:
        for node in reversed(nodes):  # the worker first; each `ray start --block` stops what it started
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_a_study_across_two_nodes(root, study, two_node_cluster):
    """``cluster/submit.sh`` (``ray job submit --working-dir .``) against a head and a second node: the job SUCCEEDS,
    its two trials train on different nodes, their checkpoints land on the shared storage, MLflow has it all."""
    address, env, node_ids = two_node_cluster
    teacher = study.folder / "ray" / "tiny-teacher" / "final"
    config = study_file(root, "cluster", finish="[]", teacher=str(teacher))
    # two trials of one epoch, one per node: a trial's worker takes 3 of a node's 5 CPUs, leaving Ray Data 2 on each
    config.write_text(config.read_text().replace("trials = 4", "trials = 2\nmax_concurrent = 2")
                      .replace("asha = true", "asha = false").replace("cpus_per_worker = 0.4", "cpus_per_worker = 3")
                      .replace(f"epochs = {EPOCHS}", "epochs = 1"))
    for _ in range(60):  # the head's job agent may take a while to accept jobs
        submit = subprocess.run([str(REPO / "cluster" / "submit.sh"), "--address", address, "--", "--config",
                                 str(config)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in submit.stdout + submit.stderr:
            break
        time.sleep(2)
    job_id = re.search(r"raysubmit_\w+", submit.stdout + submit.stderr)
    assert submit.returncode == 0 and job_id, submit.stdout[-3000:] + submit.stderr[-3000:]
    status = subprocess.run([str(Path(sys.executable).with_name("ray")), "job", "status", "--address", address,
                             job_id.group()], env=env, capture_output=True, text=True)
    assert f"Job '{job_id.group()}' succeeded" in status.stdout, status.stdout + status.stderr  # status SUCCEEDED

    parent = client(root).search_runs([client(root).get_experiment_by_name("partkd/synth-3").experiment_id],
                                      "attributes.run_name = 'study-cluster'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    runs = trial_runs(root, parent[0].info.run_id)
    assert len(runs) == 2 and {r.data.tags["state"] for r in runs} == {"completed"}
    assert sorted(r.data.tags["ray.node_id"] for r in runs) == sorted(node_ids)  # one trial on each node
    assert not parent[0].data.tags["partkd.path"].startswith(str(REPO))  # the uploaded code ran, all of it
    for run in runs:  # checkpoints on the storage both nodes share
        folder = root / "studies" / "cluster" / "ray" / run.info.run_name
        assert list(folder.glob("checkpoint_*/meta.json")), f"no checkpoint in {folder}"
