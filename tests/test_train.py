"""Ray Train jobs end to end: 2-worker DDP (gloo) on a tiny synthetic dataset, a real MLflow SQLite store.

One local Ray for the whole session (``ray_session``); each TorchTrainer fit costs ~20 s, so the jobs are shared
through module fixtures and every test checks several things about them.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from partkd.cli import synthesize
from partkd.data.schema import ShardError
from partkd.data.shards import load_info, shard_paths
from partkd.data.synth import SynthConfig
from partkd.layouts import get_grouping, get_layout
from partkd.models import create_model, part_pool
from partkd.train.common import load_model
from partkd.train.config import load_config
from partkd.train.evaluate import part_matrix_for_teacher
from partkd.train.jobs import JobDataError, train_student, train_teacher
from partkd.train.loops import FeatureBank, distillation_term, hq_set_from_batch

EPOCHS = 2


@pytest.fixture(scope="module")
def root(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("train")
    synthesize(root / "data", SynthConfig(samples=64, classes=4, frames=16, seed=3, paired_fraction=0.75),
               overwrite=True, quiet=True)
    return root


def job_for(root, name: str, *sets: str, data=None):
    return load_config(sets=[
        f"data.path={data or root / 'data'}", "data.frames=16", "data.persons=1", "data.batch_size=8",
        "model.base_channels=8", "model.stage_blocks=1,1", "model.dropout=0.1", f"train.epochs={EPOCHS}",
        "train.milestones=1", "train.lr=0.05", "train.num_workers=2", "train.cpus_per_worker=0.5",
        f"train.storage_path={root / 'ray'}", f"train.name={name}", f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
        *sets,
    ])


@pytest.fixture(scope="module")
def teacher(root):
    return train_teacher(job_for(root, "teacher"), say=lambda line: None)


@pytest.fixture(scope="module")
def part_matrix(root, teacher):
    return part_matrix_for_teacher(teacher.checkpoint, str(root / "data"), "xsub", "paper5", frames=16, persons=1)


@pytest.fixture(scope="module")
def student(root, teacher, part_matrix):
    job = job_for(root, "student", f"teacher_checkpoint={teacher.checkpoint}", f"part_matrix={part_matrix}",
                  "loss.objective=pmsc", "loss.hq_source=batch")
    return train_student(job, say=lambda line: None)


def client(root) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def history(root, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(root).get_metric_history(run_id, key))


def same_weights(a, b) -> bool:
    sa, sb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_teacher_run_has_params_metrics_tags_and_checkpoint(root, teacher):
    run = client(root).get_run(teacher.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_workers"] == "2"
    assert run.data.params["train.epochs"] == str(EPOCHS)
    assert run.data.params["loss.objective"] == "pmsc"  # the whole config, even the parts a teacher ignores
    assert run.data.tags["kind"] == "teacher" and len(run.data.tags["dataset_fingerprint"]) == 64
    for key in ("loss/ce", "train/top1", "val/top1", "lr", "samples_per_s"):
        assert [step for step, _ in history(root, teacher.run_id, key)] == list(range(EPOCHS)), key
    assert [v for _, v in history(root, teacher.run_id, "lr")] == pytest.approx([0.05, 0.005])  # x0.1 at epoch 1
    assert history(root, teacher.run_id, "val/top1")[-1][1] == pytest.approx(teacher.metrics["val/top1"])
    logged = {a.path for a in client(root).list_artifacts(teacher.run_id, "checkpoint")}
    assert {"checkpoint/model.pt", "checkpoint/meta.json"} <= logged
    model, meta = load_model(teacher.checkpoint)  # weights_only loading
    assert meta["layout"] == "ntu25" and meta["mlflow_run_id"] == teacher.run_id
    assert sum(p.numel() for p in model.parameters()) > 0


def test_student_run_is_tied_to_its_teacher(root, teacher, student, part_matrix):
    run = client(root).get_run(student.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["teacher_run_id"] == teacher.run_id
    assert run.data.params["loss.hq_source"] == "batch"
    pmsc = history(root, student.run_id, "loss/pmsc")
    assert [s for s, _ in pmsc] == list(range(EPOCHS)) and all(np.isfinite(v) and v > 0 for _, v in pmsc)
    ce, total = history(root, student.run_id, "loss/ce"), history(root, student.run_id, "loss/total")
    assert [t for _, t in total] == pytest.approx([c + p for (_, c), (_, p) in zip(ce, pmsc)], rel=1e-5)  # alpha=1
    model, meta = load_model(student.checkpoint)
    assert meta["layout"] == "coco17" and meta["side"] == "lq"
    assert np.load(part_matrix).shape == (4, 5)  # K classes x P parts


def test_worker_failure_resumes_and_ends_like_an_uninterrupted_run(root, teacher):
    job = job_for(root, "teacher-killed", "train.fail_at_epoch=0", "train.max_failures=1")
    resumed = train_teacher(job, say=lambda line: None)
    assert (root / "ray" / "teacher-killed" / "injected_failure").read_text() == "epoch 0\n"  # it did fail
    for key in ("loss/ce", "train/top1", "val/top1"):
        assert resumed.metrics[key] == teacher.metrics[key], key
    assert same_weights(resumed.checkpoint, teacher.checkpoint)


def test_stopped_job_started_again_resumes_at_the_next_epoch(root, teacher):
    first = train_teacher(job_for(root, "teacher-stopped", "train.epochs=1"), say=lambda line: None)
    assert [s for s, _ in history(root, first.run_id, "val/top1")] == [0]
    again = train_teacher(job_for(root, "teacher-stopped"), say=lambda line: None)
    assert [s for s, _ in history(root, again.run_id, "val/top1")] == [1]  # epoch 0 was not trained again
    for key in ("loss/ce", "train/top1", "val/top1"):
        assert again.metrics[key] == teacher.metrics[key], key
    assert same_weights(again.checkpoint, teacher.checkpoint)


def test_a_run_name_is_not_resumed_with_other_settings(root, teacher):
    with pytest.raises(ValueError, match=r"other settings \(train.lr: 0.05 -> 0.1\); give this job another"):
        train_teacher(job_for(root, "teacher", "train.lr=0.1"), say=lambda line: None)


@pytest.fixture(scope="module")
def bank_student(root, teacher, part_matrix):
    job = job_for(root, "student-bank", f"teacher_checkpoint={teacher.checkpoint}", f"part_matrix={part_matrix}",
                  "loss.hq_source=bank", "loss.bank_negatives=8")
    return train_student(job, say=lambda line: None)


def test_bank_mode_student_on_two_workers_resumes_like_an_uninterrupted_run(root, teacher, part_matrix,
                                                                            bank_student):
    sets = (f"teacher_checkpoint={teacher.checkpoint}", f"part_matrix={part_matrix}", "loss.hq_source=bank",
            "loss.bank_negatives=8")
    first = train_student(job_for(root, "student-bank-stopped", *sets, "train.epochs=1"), say=lambda line: None)
    again = train_student(job_for(root, "student-bank-stopped", *sets), say=lambda line: None)
    assert [s for s, _ in history(root, first.run_id, "loss/pmsc")] == [0]
    assert [s for s, _ in history(root, again.run_id, "loss/pmsc")] == [1]
    for key in ("loss/ce", "loss/pmsc", "train/top1", "val/top1"):
        assert again.metrics[key] == bank_student.metrics[key], key
    assert same_weights(again.checkpoint, bank_student.checkpoint)
    logged = {a.path for a in client(root).list_artifacts(bank_student.run_id, "part_matrix")}
    assert f"part_matrix/{part_matrix.name}" in logged  # E beside the student it shaped


def test_evaluation_uses_the_same_masks_for_every_pass_and_counts_right(root, student):
    from partkd.train.evaluate import evaluate_checkpoint

    first = evaluate_checkpoint(student.checkpoint, str(root / "data"), "xsub", (0.0, 0.6), frames=16, persons=1)
    second = evaluate_checkpoint(student.checkpoint, str(root / "data"), "xsub", (0.0, 0.6), frames=16, persons=1)
    for a, b in zip(first, second):
        assert np.array_equal(a.confusion, b.confusion) and a.top5 == b.top5
    for ev in first:
        assert ev.confusion.sum() == ev.samples > 0
        assert ev.top1 == pytest.approx(np.trace(ev.confusion) / ev.samples)
        assert ev.top1 <= ev.top5 <= 1.0
        rows = ev.confusion.sum(1)
        assert np.allclose(ev.per_class[rows > 0], np.diag(ev.confusion)[rows > 0] / rows[rows > 0])
    assert first[0].samples == first[1].samples  # occlusion hides joints, not samples


def test_frozen_teacher_and_part_matrix_cache_by_temperature(root, teacher, part_matrix):
    from partkd.train.common import load_frozen_teacher

    model, _ = load_frozen_teacher(teacher.checkpoint, torch.device("cpu"))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    other = part_matrix_for_teacher(teacher.checkpoint, str(root / "data"), "xsub", "paper5", frames=16, persons=1,
                                    temperature=0.5)
    assert other != part_matrix and other.exists() and part_matrix.exists()  # a cached E of T=1 is not returned


def test_part_matrix_with_a_validation_slice_leaves_the_slice_out(root, teacher, part_matrix):
    """A study's E (val_fraction > 0) is computed from the training split less the validation slice, nothing else."""
    from partkd.data.splits import get_protocol, validation_split
    from partkd.data.transforms import TransformConfig
    from partkd.part_matrix import compute_part_matrix
    from partkd.train.common import load_frozen_teacher, model_input
    from partkd.train.evaluate import side_batches

    path = str(root / "data")
    sliced = part_matrix_for_teacher(teacher.checkpoint, path, "xsub", "paper5", frames=16, persons=1,
                                     val_fraction=0.25, val_seed=1)
    held_out = validation_split("xsub", path, 0.25, 1)
    assert sliced != part_matrix and "xsub+val0.25-1" in sliced.name
    model, meta = load_frozen_teacher(teacher.checkpoint, torch.device("cpu"))
    layout, cfg = get_layout(meta["layout"]), TransformConfig(frames=16, persons=1, crop="center")

    def batches(splits, split):
        return [(model_input(torch.from_numpy(x), torch.from_numpy(s), layout), torch.from_numpy(y))
                for x, s, y in side_batches(path, "hq", layout.name, cfg, 0, splits, split, 32)]

    rows = {split: sum(len(y) for _, y in batches(held_out, split)) for split in ("train", "val")}
    assert rows["val"] > 0 and rows["train"] + rows["val"] == sum(len(y) for _, y in
                                                                  batches(get_protocol("xsub"), "train"))
    expected = compute_part_matrix(model, batches(held_out, "train"), "paper5", layout, meta["num_classes"])
    assert np.allclose(np.load(sliced), expected.numpy(), atol=1e-6)


def test_truncated_shard_fails_fast_naming_the_shard(root):
    broken = root / "broken"
    shutil.copytree(root / "data", broken)
    shard = shard_paths(broken)[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ShardError, match=shard.name):
        train_teacher(job_for(root, "teacher-broken", data=broken), say=lambda line: None)


def test_bad_row_fails_the_job_naming_shard_and_sample(root):
    """A shard whose footer is fine but one row's shape disagrees with the layout: the workers' error reaches the
    driver, naming the shard and the sample, instead of hanging or training on the rest."""
    bad = root / "bad-row"
    shutil.copytree(root / "data", bad)
    shard = shard_paths(bad)[0]
    table = pq.read_table(shard)
    shapes = table.column("hq_shape").to_pylist()
    row = next(i for i, s in enumerate(shapes) if s is not None)
    sample_id = table.column("sample_id")[row].as_py()
    shapes[row] = [shapes[row][0], shapes[row][1], 24, shapes[row][3]]  # 24 joints where ntu25 has 25
    field = table.schema.field("hq_shape")
    table = table.set_column(table.schema.get_field_index("hq_shape"), field, pa.array(shapes, type=field.type))
    pq.write_table(table, shard, compression="zstd")
    with pytest.raises(JobDataError) as err:
        train_teacher(job_for(root, "teacher-bad-row", "train.max_failures=0", data=bad), say=lambda line: None)
    expected = f"{shard}: sample {sample_id!r}: column 'hq': has 24 joints, layout ntu25 expects 25"
    assert str(err.value).endswith(expected)
    experiment = client(root).get_experiment_by_name(f"partkd/{load_info(bad)['name']}")
    runs = client(root).search_runs([experiment.experiment_id], "attributes.run_name = 'teacher-bad-row'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_bank_and_batch_give_the_same_loss_when_the_bank_holds_the_batch():
    """Bank mode with no extra negatives and the batch's own HQ rows (stored in another order) is batch mode."""
    torch.manual_seed(0)
    hq, lq, grouping = get_layout("ntu25"), get_layout("coco17"), get_grouping("paper5")
    teacher = create_model("stgcn", layout="ntu25", num_classes=4, base_channels=8, stage_blocks=(1, 1)).eval()
    student = create_model("stgcn", layout="coco17", num_classes=4, base_channels=8, stage_blocks=(1, 1))
    projection = torch.nn.Linear(16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    has_hq = torch.tensor([True, True, False, True, True, False, True, True])  # two solitary rows
    keys = torch.tensor([91, -7, 12, 40, 5, 66, -30, 18])
    with torch.no_grad():
        teacher_out = teacher(torch.randn(int(has_hq.sum()), 1, 12, 25, 3))
    teacher_parts = part_pool(teacher_out.features, grouping, hq)  # (B_hq, P, C)
    student_parts = projection(part_pool(student(torch.randn(8, 1, 12, 17, 3)).features, grouping, lq))
    matrix = torch.rand(4, 5)
    cfg = load_config(sets=["loss.objective=pmsc", "loss.w=0.5", "loss.tau=1.0"]).loss

    by_batch = hq_set_from_batch(teacher_parts, labels, has_hq)
    shuffle = torch.randperm(int(has_hq.sum()))
    bank = FeatureBank.from_rows(keys[has_hq][shuffle], teacher_parts[shuffle], labels[has_hq][shuffle])
    by_bank = bank.hq_set(keys, has_hq, negatives=0, generator=torch.Generator().manual_seed(0))

    loss_batch, undefined_batch = distillation_term(cfg, student_parts, labels, by_batch, matrix)
    loss_bank, undefined_bank = distillation_term(cfg, student_parts, labels, by_bank, matrix)
    assert loss_bank.item() == pytest.approx(loss_batch.item(), rel=1e-6)
    assert undefined_bank.item() == undefined_batch.item()
    loss_batch.backward()  # the student side gets a gradient through the term
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    # and the bank's lookup is the right one: each paired row sees its own HQ features
    assert torch.equal(by_bank.feats[by_bank.pair_index[has_hq]], teacher_parts)


def test_bank_negatives_never_repeat_a_pair_and_unknown_keys_are_refused():
    keys = torch.arange(10) * 7 - 20
    bank = FeatureBank.from_rows(keys, torch.arange(10.0)[:, None], torch.arange(10) % 3)
    batch_keys, has_hq = keys[[3, 5, 8]], torch.tensor([True, True, False])
    side = bank.hq_set(batch_keys, has_hq, negatives=200, generator=torch.Generator().manual_seed(1))
    paired = side.feats[side.pair_index[has_hq]].squeeze(1)
    assert paired.tolist() == [3.0, 5.0]
    extra = side.feats[2:].squeeze(1)
    assert len(extra) == 200 and not set(extra.tolist()) & {3.0, 5.0}  # the batch's own pairs are not drawn again
    assert set(extra.tolist()) == set(range(10)) - {3, 5}  # every other entry can be
    with pytest.raises(RuntimeError, match="not in the bank"):
        bank.hq_set(torch.tensor([999]), torch.tensor([True]), negatives=0, generator=torch.Generator())
