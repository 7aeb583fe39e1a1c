"""The training loop in process (``backend="local"``): the loop, transforms, Parquet shards and MLflow store of a Ray
Train job, without Ray. Metrics are checked against numbers, resumes against uninterrupted runs, the objectives
against their loss functions, and E against a literal recomputation."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VAL_FRACTION, cli_student, free_port, tiny_job, tiny_sets, wait_for_http
from mlflow.tracking import MlflowClient

from partkd import tracking
from partkd.cli import main
from partkd.data import iter_samples, load_info
from partkd.data.splits import read_split_columns, validation_split
from partkd.data.transforms import transform_batch
from partkd.layouts import get_grouping, get_layout
from partkd.losses import global_msc_loss, kl_logit_loss, pmsc_loss
from partkd.models import ModelOutput, PartPool, create_model, model_input, part_pool
from partkd.part_matrix import compute_part_matrix
from partkd.train.checkpoint import CheckpointError, load_frozen_teacher, load_meta, load_model
from partkd.train.config import load_config
from partkd.train.distill import FeatureBank, hq_set_from_batch
from partkd.train.evaluate import evaluate_checkpoint, part_matrix_for_teacher, side_batches
from partkd.train.jobs import job_inputs, train_student, train_teacher
from partkd.train.loop import EpochMeters, TeacherTask, term_gradients, topk_hits, train_epoch
from partkd.train.objectives import OBJECTIVES, TeacherSide, get_objective, weighted_terms
from partkd.train.session import LocalSession, autocast

EPOCHS = 2
XSUB_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)  # NTU's, written out
SLICE = f"data.val_fraction={VAL_FRACTION}"


def quiet(line: str) -> None:
    pass


def local_job(root, data, name, *sets):
    return tiny_job(root, data, name, "train.num_workers=1", "train.cpus_per_worker=1", *sets)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("loop")


@pytest.fixture(scope="module")
def teacher(root, train_data):
    return train_teacher(local_job(root, train_data, "teacher", SLICE), quiet, backend="local")


@pytest.fixture(scope="module")
def part_matrix(teacher):
    return Path(part_matrix_for_teacher(teacher.checkpoint))


def client(root) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def history(root, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(root).get_metric_history(run_id, key))


def same_weights(a, b) -> bool:
    sa, sb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_teacher_run_has_params_metrics_tags_and_checkpoint(root, train_data, teacher):
    run = client(root).get_run(teacher.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(EPOCHS)
    assert run.data.params["loss.objective"] == "pmsc"  # the whole config, even the parts a teacher ignores
    assert run.data.tags["kind"] == "teacher" and len(run.data.tags["dataset_fingerprint"]) == 64
    # what the MLflow UI shows: a model-development experiment (not its GenAI view), the dataset as the run's input
    experiment = client(root).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    info = load_info(train_data)
    [dataset] = [i.dataset for i in run.inputs.dataset_inputs]
    assert (dataset.name, dataset.digest) == (info["name"], info["fingerprint"][:36])
    assert json.loads(dataset.source)["uri"] == str(train_data)
    for key in ("loss/ce", "loss/total", "train/top1", "val/top1", "lr", "samples_per_s"):
        assert [step for step, _ in history(root, teacher.run_id, key)] == list(range(EPOCHS)), key
    assert [v for _, v in history(root, teacher.run_id, "lr")] == pytest.approx([0.05, 0.005])  # x0.1 at epoch 1
    assert history(root, teacher.run_id, "loss/total") == history(root, teacher.run_id, "loss/ce")  # Eq. 2: CE only
    assert history(root, teacher.run_id, "val/top1")[-1][1] == pytest.approx(teacher.metrics["val/top1"])
    logged = {a.path for a in client(root).list_artifacts(teacher.run_id, "checkpoint")}
    assert {"checkpoint/model.pt", "checkpoint/meta.json"} <= logged
    model, meta = load_model(teacher.checkpoint)  # weights_only loading
    assert (meta.side, meta.model.layout, meta.mlflow_run_id) == ("hq", "ntu25", teacher.run_id)
    assert meta.data == local_job(root, train_data, "teacher", SLICE).data  # the job's data settings, typed


def test_a_row_with_a_non_finite_logit_is_a_miss_not_class_0():
    """A diverged model's NaN logits: argmax would "predict" class 0 and score that class's share; it scores 0."""
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[nan, nan, nan], [2.0, 1.0, 0.0], [0.0, nan, 1.0], [inf, 0.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 0, 2, 0, 2])  # by argmax: hit, hit, (hit), hit, miss
    assert topk_hits(logits, labels).item() == 1  # only the finite row [2, 1, 0] counts
    assert topk_hits(torch.full((4, 3), nan), torch.zeros(4, dtype=torch.long)).item() == 0


def test_validation_top1_is_measured_on_the_slice(root, teacher):
    """The last epoch's val/top1 is the final model's accuracy on the held-out slice of the training split."""
    model, meta = load_model(teacher.checkpoint)
    layout = get_layout(meta.model.layout)
    hits = total = 0
    for x, score, labels in side_batches(meta.data, "hq", layout.name, meta.data.splits(), "val"):
        with autocast(torch.device("cpu")):  # at the precision the job validated at
            logits = model(model_input(torch.from_numpy(x), torch.from_numpy(score), layout)).logits
        hits += int((logits.argmax(1).numpy() == labels).sum())
        total += len(labels)
    held_out = validation_split("xsub", read_split_columns(meta.data.path), VAL_FRACTION, 0)
    assert total == sum(1 for s in iter_samples(meta.data.path) if s.sample_id in held_out.val_ids and s.hq is not None)
    assert teacher.metrics["val/top1"] == pytest.approx(hits / total)


def test_epoch_metrics_are_the_sample_weighted_means_of_the_steps(root, train_data):
    """train_epoch with lr 0 leaves the model as it was, so every step's loss can be recomputed afterwards."""
    job = local_job(root, train_data, "meters", "model.dropout=0.0", "data.batch_size=24")
    inputs = job_inputs(job, load_info(train_data), ("hq",), "hq")
    session = LocalSession(job, inputs, root / "unused")
    torch.manual_seed(0)
    model = create_model("stgcn", layout="ntu25", num_classes=4, base_channels=8, stage_blocks=(1, 1), dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = list(session.batches("train", epoch=0, shuffle=True))
    metrics = train_epoch(model, optimizer, TeacherTask(get_layout("ntu25"), session), batches,
                          torch.Generator(), session.device)
    ce_sum = correct = count = 0.0
    for batch in batches:  # train mode: batch norm uses the batch's own statistics, as in the step
        with session.autocast():  # the step's precision
            logits = model(model_input(batch["hq_x"], batch["hq_score"], get_layout("ntu25"))).logits.float()
        ce_sum += F.cross_entropy(logits, batch["label"], reduction="sum").item()
        correct += (logits.argmax(1) == batch["label"]).sum().item()
        count += len(batch["label"])
    assert len({len(b["label"]) for b in batches}) == 2  # a short last batch: weights matter
    assert metrics["loss/ce"] == pytest.approx(ce_sum / count, rel=1e-5)
    assert metrics["loss/total"] == metrics["loss/ce"]
    assert metrics["train/top1"] == pytest.approx(correct / count)
    meters = EpochMeters(torch.device("cpu"), means=("m",), counts=("c",))
    meters.add("m", torch.tensor(6.0))
    meters.add("c", torch.tensor(3.0))
    meters.samples = 4
    assert meters.reduce() == {"m": 1.5, "c": 3.0, "samples": 4.0}


def test_stopped_job_started_again_resumes_at_the_next_epoch(root, train_data, teacher):
    first = train_teacher(local_job(root, train_data, "teacher-stopped", SLICE, "train.epochs=1"), quiet,
                          backend="local")
    assert [s for s, _ in history(root, first.run_id, "val/top1")] == [0]
    again = train_teacher(local_job(root, train_data, "teacher-stopped", SLICE), quiet, backend="local")
    assert [s for s, _ in history(root, again.run_id, "val/top1")] == [1]  # epoch 0 was not trained again
    for key in ("loss/ce", "train/top1", "val/top1"):
        assert again.metrics[key] == teacher.metrics[key], key
    assert same_weights(again.checkpoint, teacher.checkpoint)


def test_injected_failure_is_retried_from_the_last_checkpoint(root, train_data, teacher):
    resumed = train_teacher(local_job(root, train_data, "teacher-failed", SLICE, "train.fail_at_epoch=0",
                                      "train.max_failures=1"), quiet, backend="local")
    assert (root / "ray" / "teacher-failed" / "injected_failure").read_text() == "epoch 0\n"  # it did fail
    for key in ("loss/ce", "train/top1", "val/top1"):
        assert resumed.metrics[key] == teacher.metrics[key], key
    assert same_weights(resumed.checkpoint, teacher.checkpoint)
    with pytest.raises(RuntimeError, match="injected worker failure"):  # no retry left: the job fails
        train_teacher(local_job(root, train_data, "teacher-failed-once", SLICE, "train.fail_at_epoch=0",
                                "train.max_failures=0"), quiet, backend="local")


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs), mounted for the test: a disk that fills up. Needs root, as CI has."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}): needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_at_checkpoint_time_is_a_clear_error_and_keeps_the_last_checkpoint(root, train_data,
                                                                                         small_disk, capsys):
    def job(name, epochs):
        return local_job(root, train_data, name, SLICE, f"train.storage_path={small_disk}", f"train.epochs={epochs}")

    train_teacher(job("size", 1), quiet, backend="local")  # how much one checkpoint takes here
    size = sum(f.stat().st_size for f in (small_disk / "size" / "checkpoint_000000").iterdir())
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - int(1.5 * size)))  # room for one more checkpoint, not two
    with pytest.raises(CheckpointError) as err:
        train_teacher(job("full", 2), quiet, backend="local")
    kept = small_disk / "full" / "checkpoint_000000"
    assert str(err.value) == (f"job full: the checkpoint of epoch 1 could not be written to {small_disk / 'full'}/"
                              f"checkpoint_000001 (No space left on device); the last one, {kept}, is intact")
    assert torch.load(kept / "train_state.pt", weights_only=True)["epoch"] == 0
    assert "val/top1" in load_model(kept)[1].metrics
    assert sorted(p.name for p in (small_disk / "full").iterdir()) == ["checkpoint_000000"]  # no partial one left
    sets = [a for item in tiny_sets(root, train_data, "full-cli", SLICE, f"train.storage_path={small_disk}",
                                    "train.num_workers=1") for a in ("--set", item)]
    assert main(["train", "teacher", "--backend", "local", *sets]) == 2  # on the command line: one line
    said = [line for line in capsys.readouterr().err.splitlines() if "mlflow.store.db" not in line]  # MLflow's own
    assert len(said) == 1 and said[0].startswith("partkd: error: job full-cli: the checkpoint of epoch 0 could not")


class MlflowServer:
    """``mlflow server`` on a SQLite store, stopped (SIGKILL) and started again on the same port and store."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri, self.process = f"http://127.0.0.1:{self.port}", None

    def start(self) -> None:
        log = self.folder / "server.log"
        with open(log, "a") as out:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port",
                 str(self.port), "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                 "--default-artifact-root", str(self.folder / "artifacts"), "--allowed-hosts",
                 f"127.0.0.1:{self.port}"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        wait_for_http(f"{self.uri}/health", self.process, log)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.mark.slow  # a tracking server stopped and started, ~30 s
def test_a_tracking_server_down_mid_run_loses_no_metric(root, train_data, tmp_path, capfd):
    """The MLflow server killed after epoch 0 (the job holds there, ``train.hold_at_epoch``, until it is down) and
    started again once two more checkpoints are written: training goes on meanwhile, and every epoch's metrics are in
    the run at the end."""
    server = MlflowServer(tmp_path)
    server.start()
    folder = root / "ray" / "teacher-outage"
    outage = {}

    def stop_and_restart():
        while not (folder / "held").exists():  # epoch 0 reported and checkpointed, the job waiting
            time.sleep(0.02)
        server.kill()
        outage["killed_after"] = max(int(p.name.split("_")[1]) for p in folder.glob("checkpoint_*"))
        (folder / "held").rename(folder / "held.done")
        while not list(folder.glob("checkpoint_00000[2-9]")):
            time.sleep(0.02)
        outage["restarted_after"] = max(int(p.name.split("_")[1]) for p in folder.glob("checkpoint_*"))
        server.start()

    thread = threading.Thread(target=stop_and_restart, daemon=True)
    thread.start()
    try:
        result = train_teacher(local_job(root, train_data, "teacher-outage", SLICE, "train.epochs=4",
                                         "train.hold_at_epoch=0", f"tracking_uri={server.uri}"), quiet,
                               backend="local")
        thread.join(timeout=60)
        assert outage["killed_after"] == 0 and outage["restarted_after"] >= 2  # epochs 1 and 2 trained without it
        client = MlflowClient(tracking_uri=server.uri)
        assert client.get_run(result.run_id).info.status == "FINISHED"
        for key in ("loss/ce", "train/top1", "val/top1", "lr"):
            assert sorted(m.step for m in client.get_metric_history(result.run_id, key)) == list(range(4)), key
        said = capfd.readouterr().err
        assert said.count(f"partkd: MLflow at {server.uri} does not answer") == 1  # said once, not every epoch
        assert said.count(f"partkd: MLflow at {server.uri} answers again") == 1
    finally:
        server.kill()


STUDENTS = [("ce", "bank", 8), ("kl", "batch", 8), ("global_msc", "bank", 4), ("pmsc", "batch", 8),
            ("pmsc", "bank", 4)]


@pytest.mark.parametrize(("objective", "hq_source", "width"), STUDENTS)
def test_student_loss_is_the_weighted_sum_of_its_named_terms(root, train_data, teacher, part_matrix, objective,
                                                             hq_source, width):
    job = local_job(root, train_data, f"student-{objective}-{hq_source}", SLICE,
                    f"teacher_checkpoint={teacher.checkpoint}", f"part_matrix={part_matrix}",
                    f"loss.objective={objective}", f"loss.hq_source={hq_source}", "loss.alpha=2.0",
                    "loss.bank_negatives=8", f"model.base_channels={width}")
    student = train_student(job, quiet, backend="local")
    run = client(root).get_run(student.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "student"
    ce, total = history(root, student.run_id, "loss/ce"), history(root, student.run_id, "loss/total")
    meta = load_meta(student.checkpoint)
    kind = get_objective(objective)
    if not kind.distills:
        assert total == ce and "teacher_run_id" not in run.data.tags and meta.model.teacher_channels == 0
        assert not [k for k in run.data.metrics if k.startswith("grad/")]  # one term: nothing to compare
        return
    assert run.data.tags["teacher_run_id"] == teacher.run_id
    kd = history(root, student.run_id, kind.term)
    assert [s for s, _ in kd] == list(range(EPOCHS)) and all(np.isfinite(v) and v > 0 for _, v in kd)
    assert [t for _, t in total] == pytest.approx([c + 2.0 * k for (_, c), (_, k) in zip(ce, kd)], rel=1e-5)
    undefined = [v for _, v in history(root, student.run_id, "kd/undefined")]
    assert len(undefined) == EPOCHS and all(v == int(v) >= 0 for v in undefined)
    # how hard each term pulls, every epoch: the norms of the CE and alpha-weighted KD gradients and their cosine
    pulls = {name: [v for _, v in history(root, student.run_id, name)]
             for name in ("grad/ce", kind.term.replace("loss/", "grad/"), "grad/cos")}
    assert all(len(v) == EPOCHS for v in pulls.values())
    assert all(v > 0 for name, values in pulls.items() if name != "grad/cos" for v in values)
    assert all(-1 <= v <= 1 for v in pulls["grad/cos"])
    # features are compared in the teacher's width (16) through the student's projection head
    assert meta.model.teacher_channels == (16 if kind.projects else 0)
    model, _ = load_model(student.checkpoint)
    if kind.projects and width == 4:
        assert model.projection.proj.weight.shape == (16, 8)  # a real map: the student is half as wide
    logged = {a.path for a in client(root).list_artifacts(student.run_id, "part_matrix")}
    assert (f"part_matrix/{part_matrix.name}" in logged) == kind.needs_part_matrix  # E beside the student it shaped


class TwoTerms(TeacherTask):
    """A task of two weighted terms, for the gradient probe: cross-entropy and 3 x the mean squared logit."""

    weights = {"loss/ce": 1.0, "loss/square": 3.0}

    def step(self, model, batch, generator):
        result = super().step(model, batch, generator)
        noise = torch.rand(len(batch["label"]), generator=generator)  # the probe must not move the generator
        result.terms["loss/square"] = (result.logits.float() ** 2 * noise[:, None]).mean()
        return result


def test_term_gradients_are_each_terms_own_gradient_and_leave_training_untouched():
    layout = get_layout("ntu25")
    model = create_model("stgcn", layout="ntu25", num_classes=4, base_channels=4, stage_blocks=(1,), dropout=0.5)
    model.train()
    batch = {"hq_x": torch.randn(6, 1, 8, 25, 3), "hq_score": torch.ones(6, 1, 8, 25),
             "label": torch.tensor([0, 1, 2, 3, 0, 1])}
    task = TwoTerms(layout, SimpleNamespace(autocast=contextlib.nullcontext))  # fp32: the session's only part used
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(11)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng, gen = torch.get_rng_state(), generator.get_state()
    probe = term_gradients(model, task, batch, generator)
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(generator.get_state(), gen)
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())
    # literally: the same forward (same dropout draws), each weighted term's gradient on its own
    expected = []
    for name, weight in TwoTerms.weights.items():
        torch.manual_seed(11)
        model.zero_grad(set_to_none=True)
        (weight * task.step(model, batch, torch.Generator().manual_seed(5)).terms[name]).backward()
        expected.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    assert probe["grad/ce"].item() == pytest.approx(expected[0].norm().item(), rel=1e-5)
    assert probe["grad/square"].item() == pytest.approx(expected[1].norm().item(), rel=1e-5)
    assert probe["grad/cos"].item() == pytest.approx(F.cosine_similarity(*expected, dim=0).item(), abs=1e-5)


def test_bank_student_started_again_ends_like_an_uninterrupted_run(root, train_data, teacher, part_matrix):
    sets = (SLICE, f"teacher_checkpoint={teacher.checkpoint}", f"part_matrix={part_matrix}", "loss.hq_source=bank",
            "loss.bank_negatives=8")
    whole = train_student(local_job(root, train_data, "bank-whole", *sets), quiet, backend="local")
    first = train_student(local_job(root, train_data, "bank-stopped", *sets, "train.epochs=1"), quiet, backend="local")
    again = train_student(local_job(root, train_data, "bank-stopped", *sets), quiet, backend="local")
    assert [s for s, _ in history(root, first.run_id, "loss/pmsc")] == [0]
    assert [s for s, _ in history(root, again.run_id, "loss/pmsc")] == [1]
    for key in ("loss/ce", "loss/pmsc", "train/top1", "val/top1"):
        assert again.metrics[key] == whole.metrics[key], key
    assert same_weights(again.checkpoint, whole.checkpoint)


def test_a_run_name_is_not_resumed_with_other_settings(root, train_data, teacher):
    with pytest.raises(ValueError, match=r"other settings \(train.lr: 0.05 -> 0.1\); give this job another"):
        train_teacher(local_job(root, train_data, "teacher", SLICE, "train.lr=0.1"), quiet, backend="local")


def test_a_setting_added_since_a_checkpoint_was_made_resumes_at_its_default(root, train_data):
    from partkd.train.jobs import _check_resumable

    job = local_job(root, train_data, "made-before-part-temperature", SLICE)
    saved = {k: v for k, v in json.loads(json.dumps(job.flat())).items() if k != "loss.part_temperature"}
    folder = Path(job.train.storage_path) / job.train.name / "checkpoint_000000"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"job": saved}))
    _check_resumable(job)  # absent then, at its default now: what the checkpoint was made with
    with pytest.raises(ValueError, match=r"other settings \(loss.part_temperature: 1.0 -> 0.5\)"):
        _check_resumable(load_config(job, sets=["loss.part_temperature=0.5"]))
    with pytest.raises(ValueError, match=r"other settings \(loss.tau: 1.0 -> 0.5\)"):
        _check_resumable(load_config(job, sets=["loss.tau=0.5"]))
    # its MLflow run too: continued (the new setting logged to it) at the default, not at another value
    uri = f"sqlite:///{root / 'added-setting.db'}"
    old = tracking.start_run(uri, "e", "made-before", {"loss.tau": 1.0}, {})
    again = tracking.start_run(uri, "e", "made-before", {"loss.tau": 1.0, "loss.part_temperature": 1.0}, {},
                               resume_unfinished=True, defaults={"loss.part_temperature": 1.0})
    assert again == old and MlflowClient(uri).get_run(old).data.params["loss.part_temperature"] == "1.0"
    other = tracking.start_run(uri, "e", "made-before", {"loss.tau": 1.0, "loss.part_temperature": 0.5}, {},
                               resume_unfinished=True, defaults={"loss.part_temperature": 1.0})
    assert other != old


def test_evaluation_reads_the_checkpoints_data_with_the_same_masks_every_pass(root, teacher, part_matrix, train_data):
    job = local_job(root, train_data, "student-eval", SLICE, f"teacher_checkpoint={teacher.checkpoint}",
                    f"part_matrix={part_matrix}", "data.seed=5")
    student = train_student(job, quiet, backend="local")
    first = evaluate_checkpoint(student.checkpoint, occlusion_probs=(0.0, 0.6))
    second = evaluate_checkpoint(student.checkpoint, load_meta(student.checkpoint).data, (0.0, 0.6))
    for a, b in zip(first, second):
        assert np.array_equal(a.confusion, b.confusion) and a.top5 == b.top5
    test_rows = sum(1 for s in iter_samples(train_data) if s.subject not in XSUB_TRAIN and s.lq is not None)
    for ev in first:
        assert ev.confusion.sum() == ev.samples == test_rows  # the protocol's test split, never the slice
        assert ev.top1 == pytest.approx(np.trace(ev.confusion) / ev.samples)
        assert ev.top1 <= ev.top5 <= 1.0
        rows = ev.confusion.sum(1)
        assert np.allclose(ev.per_class[rows > 0], np.diag(ev.confusion)[rows > 0] / rows[rows > 0])
    with pytest.warns(DeprecationWarning, match="pass a DataConfig"):  # the old keywords, for one release
        legacy = evaluate_checkpoint(student.checkpoint, str(train_data), "xsub", (0.6,), frames=16, persons=1,
                                     seed=5)
    assert np.array_equal(legacy[0].confusion, first[1].confusion)


def literal_part_matrix(teacher_dir, data_path, grouping="paper5"):
    """E recomputed from the rows by hand: the xsub training split less the seeded slice, HQ side, transformed."""
    model, meta = load_frozen_teacher(teacher_dir, "cpu")
    held_out = validation_split("xsub", read_split_columns(data_path), VAL_FRACTION, 0)
    rows = [s for s in iter_samples(data_path)
            if s.subject in XSUB_TRAIN and s.sample_id not in held_out.val_ids and s.hq is not None]
    layout = get_layout("ntu25")
    x, score = transform_batch([s.hq for s in rows], [s.hq_score for s in rows], layout, meta.data.transform(), 0,
                               sample_ids=[s.sample_id for s in rows])
    batch = (model_input(torch.from_numpy(x), torch.from_numpy(score), layout), torch.tensor([s.label for s in rows]))
    return compute_part_matrix(model, [batch], grouping, layout, 4).numpy(), len(rows)


def test_part_matrix_is_never_computed_on_the_validation_slice(root, train_data, teacher, part_matrix, capsys):
    """E from the teacher's own data settings, from a job's, and from ``partkd part-matrix``: every path reads the
    training split less the slice (the pipeline's path: test_pipeline; a study's: test_tuning)."""
    expected, count = literal_part_matrix(teacher.checkpoint, train_data)
    assert 0 < count < sum(1 for s in iter_samples(train_data) if s.hq is not None)
    assert "xsub+val0.25-0" in part_matrix.name
    assert np.allclose(np.load(part_matrix), expected, atol=1e-6)
    job = local_job(root, train_data, "any", SLICE)
    assert part_matrix_for_teacher(teacher.checkpoint, job.data) == str(part_matrix)
    assert main(["part-matrix", "--teacher", str(teacher.checkpoint), "--overwrite"]) == 0
    assert f"E: {part_matrix}" in capsys.readouterr().out
    assert np.allclose(np.load(part_matrix), expected, atol=1e-6)
    no_slice = load_config(sets=[f"data.path={train_data}", "data.frames=16", "data.persons=1"]).data
    whole = Path(part_matrix_for_teacher(teacher.checkpoint, no_slice))
    assert whole != part_matrix and "_xsub_" in whole.name  # without a slice: a file of its own
    with pytest.warns(DeprecationWarning, match="pass a DataConfig"):  # the old keywords, for one release
        legacy = part_matrix_for_teacher(teacher.checkpoint, str(train_data), "xsub", "paper5", frames=16, persons=1,
                                         val_fraction=VAL_FRACTION)
    assert legacy == str(part_matrix)


def test_bank_student_from_the_command_line_distills_with_e_of_the_training_rows(root, train_data, teacher, capsys):
    run = cli_student(root, train_data, teacher, "student-bank", EPOCHS, capsys, "loss.hq_source=bank",
                      "loss.bank_negatives=8", backend="local")
    assert run.data.params["loss.hq_source"] == "bank"


def test_part_matrix_cache_names_its_temperature(teacher, part_matrix):
    model, _ = load_frozen_teacher(teacher.checkpoint, torch.device("cpu"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    other = Path(part_matrix_for_teacher(teacher.checkpoint, temperature=0.5))
    assert other != part_matrix and other.exists() and part_matrix.exists()  # a cached E of T=1 is not returned


# ----------------------------------------------------------------------------------------- objectives and the HQ side


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_is_its_loss_function(name):
    """The registry's term for each objective is the loss function of losses.py on the representation it names."""
    torch.manual_seed(1)
    kind, grouping, layout = get_objective(name), get_grouping("paper5"), get_layout("coco17")
    out = ModelOutput(torch.randn(6, 4), torch.randn(6, 8, 5, 17))  # (B, K), (B, C, T', V)
    labels, pair = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, -1, 3, -1])
    teacher = ModelOutput(torch.randn(4, 4), torch.randn(4, 8, 5, 17))
    assert weighted_terms(kind, 3.0) == ({"loss/ce": 1.0, f"loss/{name}": 3.0} if kind.distills else {"loss/ce": 1.0})
    if not kind.distills:
        with pytest.raises(ValueError, match="distills nothing"):
            kind.represent(out, PartPool(grouping, layout))
        return
    pool = PartPool(grouping, layout)
    student_repr, teacher_repr = kind.represent(out, pool), kind.represent(teacher, pool)
    side = TeacherSide(teacher_repr, labels[:4], pair)
    matrix = torch.softmax(torch.randn(4, 5), 1)
    loss, undefined = kind.distillation(student_repr, labels, side, matrix, w=0.5, tau=0.7, kl_temperature=2.0)
    if kind.representation == "parts":
        assert student_repr.shape == (6, 5, 8)
        assert torch.equal(student_repr, part_pool(out.features, grouping, layout))
        assert loss == pmsc_loss(student_repr, teacher_repr, labels, labels[:4], pair, matrix, 0.5, 0.7)
    elif kind.representation == "global":
        assert torch.equal(student_repr, out.features.mean((2, 3)))
        assert loss == global_msc_loss(student_repr, teacher_repr, labels, labels[:4], pair, 0.5, 0.7)
    else:
        assert torch.equal(student_repr, out.logits)
        assert loss == kl_logit_loss(out.logits, teacher.logits, pair, 2.0) and undefined == 0
    assert kind.projects == (kind.representation != "logits")


def test_unknown_objective_is_refused_naming_the_known_ones():
    with pytest.raises(KeyError, match="unknown objective 'mse'; known objectives: ce, kl, global_msc, pmsc"):
        get_objective("mse")


def test_bank_and_batch_give_the_same_loss_when_the_bank_holds_the_batch():
    """Bank mode with no extra negatives on a batch of paired rows (stored in another order) is batch mode."""
    torch.manual_seed(0)
    hq, lq, grouping = get_layout("ntu25"), get_layout("coco17"), get_grouping("paper5")
    teacher = create_model("stgcn", layout="ntu25", num_classes=4, base_channels=8, stage_blocks=(1, 1)).eval()
    student = create_model("stgcn", layout="coco17", num_classes=4, base_channels=8, stage_blocks=(1, 1))
    projection = torch.nn.Linear(16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    has_hq = torch.ones(8, dtype=torch.bool)
    keys = torch.tensor([91, -7, 12, 40, 5, 66, -30, 18])
    with torch.no_grad():
        teacher_out = teacher(torch.randn(8, 1, 12, 25, 3))
    teacher_parts = part_pool(teacher_out.features, grouping, hq)  # (B, P, C)
    student_parts = projection(part_pool(student(torch.randn(8, 1, 12, 17, 3)).features, grouping, lq))
    matrix = torch.rand(4, 5)
    pmsc = get_objective("pmsc")

    by_batch = hq_set_from_batch(teacher_parts, labels, has_hq)
    shuffle = torch.randperm(8)
    bank = FeatureBank.from_rows(keys[shuffle], teacher_parts[shuffle], labels[shuffle])
    by_bank = bank.hq_set(keys, has_hq, negatives=0, generator=torch.Generator().manual_seed(0))

    loss_batch, undefined_batch = pmsc.distillation(student_parts, labels, by_batch, matrix, 0.5, 1.0, 4.0)
    loss_bank, undefined_bank = pmsc.distillation(student_parts, labels, by_bank, matrix, 0.5, 1.0, 4.0)
    assert loss_bank.item() == pytest.approx(loss_batch.item(), rel=1e-6)
    assert undefined_bank.item() == undefined_batch.item()
    loss_batch.backward()  # the student side gets a gradient through the term
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    # and the bank's lookup is the right one: each paired row sees its own HQ features
    assert torch.equal(by_bank.representation[by_bank.pair_index], teacher_parts)
