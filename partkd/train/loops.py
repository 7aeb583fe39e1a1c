"""Per-worker training loops for Ray Train: the teacher (Eq. 2) and the student (Eq. 4), paper Sec. 3.

Each loop reads like the paper: rebuild the config, build data and models, loop epochs, report. Every epoch ends
with ``ray.train.report`` of its metrics and a checkpoint; a restarted job resumes from ``ray.train.get_checkpoint()``.
Randomness (dropout, shuffling, bank sampling) is reseeded from (seed, epoch, rank) at the start of each epoch and the
data transforms are seeded per sample, so a resumed job follows the same path as an uninterrupted one.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from partkd.layouts import get_grouping, get_layout
from partkd.losses import global_msc_terms, kl_logit_loss, pmsc_terms
from partkd.models import part_pool
from partkd.train.common import (
    all_reduce_sum,
    build_model,
    load_frozen_teacher,
    make_optimizer,
    model_input,
    restore_train_state,
    save_checkpoint,
    unwrap,
)
from partkd.train.config import JobConfig

KD_TERM = {"kl": "loss/kl", "global_msc": "loss/global_msc", "pmsc": "loss/pmsc"}
FEATURE_OBJECTIVES = ("global_msc", "pmsc")  # compare features, through the student's projection head


@dataclass
class WorkerContext:
    job: JobConfig
    meta: dict  # the trained model's meta (layout, classes, width)
    rank: int
    world: int
    device: torch.device
    autocast: bool


def _context(config: dict) -> WorkerContext:
    job = JobConfig.from_dict(config["job"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    autocast = job.train.bf16 and device.type == "cuda"
    return WorkerContext(job, config["meta"], ctx.get_world_rank(), ctx.get_world_size(), device, autocast)


def _seed_epoch(wc: WorkerContext, epoch: int) -> int:
    seed = (wc.job.train.seed * 1_000_003 + epoch) * 64 + wc.rank
    torch.manual_seed(seed)
    return seed


def _batches(wc: WorkerContext, name: str, epoch: int, shuffle: bool):
    shard = ray.train.get_dataset_shard(name)
    return shard.iter_torch_batches(
        batch_size=wc.job.data.batch_size, device=wc.device,
        local_shuffle_buffer_size=4 * wc.job.data.batch_size if shuffle else None,
        local_shuffle_seed=wc.job.train.seed * 1_000_003 + epoch if shuffle else None,
    )


def _log_metrics(wc: WorkerContext, metrics: dict, epoch: int) -> None:
    """Rank 0 only: per-epoch metrics into the job's MLflow run (created by the driver)."""
    if wc.rank != 0 or not wc.job.mlflow_run_id:
        return
    from partkd import tracking

    tracking.log_epoch_metrics(wc.job.tracking_uri, wc.job.mlflow_run_id, metrics, epoch)


def _report(wc: WorkerContext, epoch: int, metrics: dict, model, optimizer, scheduler) -> None:
    _log_metrics(wc, metrics, epoch)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if wc.rank == 0:
            save_checkpoint(Path(tmp), model, wc.meta, optimizer, scheduler, epoch, {"metrics": metrics})
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        # epochs_done: the time axis of a study's early stopping, right across a resumed run
        ray.train.report({**metrics, "epoch": epoch, "epochs_done": epoch + 1}, checkpoint=checkpoint)
    if epoch == wc.job.train.fail_at_epoch and wc.rank == wc.world - 1:
        marker = Path(wc.job.train.storage_path) / wc.job.train.name / "injected_failure"
        if not marker.exists():  # once: the restarted worker group goes on
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"epoch {epoch}\n")
            raise RuntimeError(f"fail_at_epoch={epoch}: injected worker failure (testing fault tolerance)")


@torch.no_grad()
def _evaluate(wc: WorkerContext, model: nn.Module, side: str, epoch: int) -> float:
    """Top-1 on this worker's part of the evaluation split, summed over ranks."""
    layout = get_layout(wc.meta["layout"])
    model.eval()
    counts = torch.zeros(2, device=wc.device)  # correct, total
    for batch in _batches(wc, "val", epoch, shuffle=False):
        keep = batch[f"has_{side}"]  # always true: the split was read with the side required
        with torch.autocast(wc.device.type, dtype=torch.bfloat16, enabled=wc.autocast):
            logits = model(model_input(batch[f"{side}_x"][keep], batch[f"{side}_score"][keep], layout)).logits
        counts += torch.stack([(logits.argmax(1) == batch["label"][keep]).sum(), keep.sum()]).float()
    counts = all_reduce_sum(counts)
    return (counts[0] / counts[1].clamp(min=1)).item()


def _setup(wc: WorkerContext):
    if wc.rank == 0 and wc.job.mlflow_run_id:  # where the job ran (the last attempt's rank 0), for a cluster's logs
        from partkd import tracking

        tracking.set_tags(wc.job.tracking_uri, wc.job.mlflow_run_id,
                          {"ray.node_id": ray.get_runtime_context().get_node_id()})
    torch.manual_seed(wc.job.train.seed)  # the same initial weights on every rank and in every run of the seed
    model = ray.train.torch.prepare_model(build_model(wc.meta))
    optimizer, scheduler = make_optimizer(model, wc.job.train)
    checkpoint = ray.train.get_checkpoint()
    start = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = restore_train_state(directory, model, optimizer, scheduler)
    return model, optimizer, scheduler, start


def teacher_loop(config: dict) -> None:
    """Train ST-GCN on HQ skeletons with cross-entropy (Eq. 2)."""
    wc = _context(config)
    layout = get_layout(wc.meta["layout"])
    model, optimizer, scheduler, start = _setup(wc)
    for epoch in range(start, wc.job.train.epochs):
        _seed_epoch(wc, epoch)
        model.train()
        sums, began = torch.zeros(3, device=wc.device), time.perf_counter()  # loss*n, correct, n
        for batch in _batches(wc, "train", epoch, shuffle=True):
            x, y = model_input(batch["hq_x"], batch["hq_score"], layout), batch["label"]
            with torch.autocast(wc.device.type, dtype=torch.bfloat16, enabled=wc.autocast):
                logits = model(x).logits
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = torch.tensor(float(len(y)), device=wc.device)
            sums += torch.stack([loss.detach() * n, (logits.argmax(1) == y).sum().float(), n])
        sums = all_reduce_sum(sums)
        metrics = {"loss/ce": (sums[0] / sums[2]).item(), "loss/total": (sums[0] / sums[2]).item(),
                   "train/top1": (sums[1] / sums[2]).item(), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": sums[2].item() / (time.perf_counter() - began)}
        scheduler.step()
        metrics["val/top1"] = _evaluate(wc, model, "hq", epoch)
        _report(wc, epoch, metrics, model, optimizer, scheduler)


# ----------------------------------------------------------------------------------------------- the student


@dataclass
class TeacherSide:
    """The HQ set of one step: teacher representations, their labels, and each student row's pair in it."""

    feats: Tensor  # (BH, P, C) part features, (BH, C) global features or (BH, K) logits, by objective
    labels: Tensor  # (BH,)
    pair_index: Tensor  # (B,) row of the sample's own HQ skeleton in feats, -1 if solitary


def teacher_representation(teacher: nn.Module, x: Tensor, objective: str, grouping, layout, score=None) -> Tensor:
    """What the distillation term compares, from the frozen teacher: part features, global features or logits."""
    out = teacher(x)
    if objective == "pmsc":
        return part_pool(out.features.float(), grouping, layout, score)  # (N, P, C)
    if objective == "global_msc":
        return out.features.float().mean((2, 3))  # (N, C)
    return out.logits.float()  # (N, K)


def _gather_rows(rows: Tensor) -> tuple[Tensor, int]:
    """Concatenate each rank's rows (their counts may differ); returns the whole and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()):
        return rows, 0
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    whole = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return whole, sum(counts[: dist.get_rank()])


def hq_set_from_batch(teacher_feats: Tensor, labels: Tensor, has_hq: Tensor) -> TeacherSide:
    """Batch mode (the paper): the HQ skeletons of the mini-batch, gathered across ranks.

    ``teacher_feats`` (B_hq, ...) are this rank's paired rows in batch order; ``has_hq`` (B,) marks them.
    """
    labels_hq = labels[has_hq]
    feats, offset = _gather_rows(teacher_feats)
    all_labels, _ = _gather_rows(labels_hq)
    pair_index = torch.full_like(labels, -1)
    pair_index[has_hq] = offset + torch.arange(int(has_hq.sum()), device=labels.device)
    return TeacherSide(feats, all_labels, pair_index)


@dataclass
class FeatureBank:
    """Teacher representations of every HQ training sample, computed once (the teacher is frozen)."""

    keys: Tensor  # (NB,) sorted sample keys
    feats: Tensor  # (NB, ...)
    labels: Tensor  # (NB,)

    @classmethod
    def from_rows(cls, keys: Tensor, feats: Tensor, labels: Tensor) -> FeatureBank:
        """A bank of rows in any order (sorted here by key, for lookups)."""
        order = torch.argsort(keys)
        return cls(keys[order], feats[order], labels[order])

    def hq_set(self, keys: Tensor, has_hq: Tensor, negatives: int, generator: torch.Generator) -> TeacherSide:
        """The batch's own HQ entries (pairs) plus ``negatives`` other entries drawn from the whole bank.

        The extra entries never repeat a batch row's own pair (a copy of the pair would count as a positive).
        """
        wanted = keys[has_hq]
        rows = torch.searchsorted(self.keys, wanted).clamp(max=len(self.keys) - 1)  # (B_hq,)
        missing = self.keys[rows] != wanted
        if missing.any():
            raise RuntimeError(f"bank mode: {int(missing.sum())} paired sample(s) of the batch are not in the bank "
                               f"(first key {int(wanted[missing][0])}); the bank is built from the training split")
        others = torch.ones(len(self.keys))
        others[rows.cpu()] = 0
        extra = (torch.multinomial(others, negatives, replacement=True, generator=generator) if others.any()
                 else torch.zeros(0, dtype=torch.long)).to(rows.device)
        chosen = torch.cat([rows, extra])  # (B_hq + negatives,)
        pair_index = torch.full_like(keys, -1)
        pair_index[has_hq] = torch.arange(len(rows), device=keys.device)
        return TeacherSide(self.feats[chosen], self.labels[chosen], pair_index)


@torch.no_grad()
def build_bank(wc: WorkerContext, teacher: nn.Module, teacher_layout, grouping) -> FeatureBank:
    """Teacher representations of this worker's HQ training rows, gathered from every rank and sorted by key."""
    keys, feats, labels = [], [], []
    for batch in _batches(wc, "train", epoch=0, shuffle=False):
        keep = batch["has_hq"]
        if keep.any():
            x = model_input(batch["hq_x"][keep], batch["hq_score"][keep], teacher_layout)
            with torch.autocast(wc.device.type, dtype=torch.bfloat16, enabled=wc.autocast):
                feats.append(teacher_representation(teacher, x, wc.job.loss.objective, grouping, teacher_layout))
            keys.append(batch["key"][keep])
            labels.append(batch["label"][keep])
    if not keys:
        raise RuntimeError("bank mode: this worker's shard of the training split holds no HQ skeleton")
    return FeatureBank.from_rows(*(_gather_rows(torch.cat(rows))[0] for rows in (keys, feats, labels)))


def student_representation(out, objective: str, grouping, layout, projection: nn.Module, scores=None) -> Tensor:
    """The student's side of the distillation term, projected to the teacher's width where features are compared."""
    if objective == "pmsc":
        return projection(part_pool(out.features.float(), grouping, layout, scores))  # (B, P, C_teacher)
    if objective == "global_msc":
        return projection(out.features.float().mean((2, 3)))  # (B, C_teacher)
    return out.logits.float()  # (B, K)


def distillation_term(loss_cfg, student_repr: Tensor, y: Tensor, side: TeacherSide,
                      part_matrix: Tensor | None) -> tuple[Tensor, Tensor]:
    """The KD term of the configured objective and its count of samples without a term."""
    if loss_cfg.objective == "kl":
        loss = kl_logit_loss(student_repr, side.feats, side.pair_index, loss_cfg.kl_temperature)
        return loss, torch.zeros((), dtype=torch.long, device=y.device)
    if loss_cfg.objective == "global_msc":
        terms = global_msc_terms(student_repr, side.feats, y, side.labels, side.pair_index, loss_cfg.w, loss_cfg.tau)
    else:
        terms = pmsc_terms(student_repr, side.feats, y, side.labels, side.pair_index, part_matrix, loss_cfg.w,
                           loss_cfg.tau)
    return terms.loss, terms.num_undefined


def student_loop(config: dict) -> None:
    """Train ST-GCN on LQ skeletons with L_c + alpha L_kd (Eq. 4); KD from a frozen teacher on the HQ side."""
    wc = _context(config)
    loss_cfg = wc.job.loss
    layout = get_layout(wc.meta["layout"])
    grouping = get_grouping(loss_cfg.grouping)
    kd = loss_cfg.objective != "ce"
    teacher, teacher_meta = load_frozen_teacher(wc.job.teacher_checkpoint, wc.device) if kd else (None, None)
    teacher_layout = get_layout(teacher_meta["layout"]) if kd else None
    part_matrix = (torch.from_numpy(np.load(wc.job.part_matrix)).float().to(wc.device)
                   if loss_cfg.objective == "pmsc" else None)
    bank = build_bank(wc, teacher, teacher_layout, grouping) if kd and loss_cfg.hq_source == "bank" else None

    model, optimizer, scheduler, start = _setup(wc)
    projection = unwrap(model).projection if loss_cfg.objective in FEATURE_OBJECTIVES else None
    for epoch in range(start, wc.job.train.epochs):
        generator = torch.Generator().manual_seed(_seed_epoch(wc, epoch))
        model.train()
        sums, began = torch.zeros(5, device=wc.device), time.perf_counter()  # ce*n, kd*n, correct, n, undefined
        for batch in _batches(wc, "train", epoch, shuffle=True):
            y = batch["label"]
            x = model_input(batch["lq_x"], batch["lq_score"], layout)
            with torch.autocast(wc.device.type, dtype=torch.bfloat16, enabled=wc.autocast):
                out = model(x)
            ce = F.cross_entropy(out.logits.float(), y)
            kd_loss, undefined = torch.zeros((), device=wc.device), torch.zeros((), device=wc.device)
            if kd:
                side = _teacher_side(wc, batch, teacher, teacher_layout, grouping, bank, generator)
                scores = batch["lq_score"] if loss_cfg.mask_missing else None
                student_repr = student_representation(out, loss_cfg.objective, grouping, layout, projection, scores)
                kd_loss, undefined = distillation_term(loss_cfg, student_repr, y, side, part_matrix)
            loss = ce + loss_cfg.alpha * kd_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = torch.tensor(float(len(y)), device=wc.device)
            sums += torch.stack([ce.detach() * n, kd_loss.detach() * n, (out.logits.argmax(1) == y).sum().float(), n,
                                 undefined.float().to(wc.device)])
        sums = all_reduce_sum(sums)
        n = sums[3]
        metrics = {"loss/ce": (sums[0] / n).item(), "loss/total": ((sums[0] + loss_cfg.alpha * sums[1]) / n).item(),
                   "train/top1": (sums[2] / n).item(), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": n.item() / (time.perf_counter() - began)}
        if kd:
            metrics[KD_TERM[loss_cfg.objective]] = (sums[1] / n).item()
            metrics["kd/undefined"] = sums[4].item()
        scheduler.step()
        metrics["val/top1"] = _evaluate(wc, model, "lq", epoch)
        _report(wc, epoch, metrics, model, optimizer, scheduler)


@torch.no_grad()
def _teacher_side(wc: WorkerContext, batch: dict, teacher, teacher_layout, grouping, bank: FeatureBank | None,
                  generator: torch.Generator) -> TeacherSide:
    has_hq = batch["has_hq"]
    if bank is not None:
        return bank.hq_set(batch["key"], has_hq, wc.job.loss.bank_negatives, generator)
    x = model_input(batch["hq_x"][has_hq], batch["hq_score"][has_hq], teacher_layout)
    with torch.autocast(wc.device.type, dtype=torch.bfloat16, enabled=wc.autocast):
        feats = teacher_representation(teacher, x, wc.job.loss.objective, grouping, teacher_layout)
    return hq_set_from_batch(feats, batch["label"], has_hq)
