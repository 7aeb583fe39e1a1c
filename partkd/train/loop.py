"""The per-worker training loop (paper Sec. 3.3): teacher (Eq. 2) and student (Eq. 4) share it.

:func:`fit` reads like the paper: build the model (and, for a student, the frozen teacher's side of the distillation
term), then each epoch train (:func:`train_epoch`), evaluate, report. Randomness (dropout, shuffling, bank sampling)
is reseeded from (seed, epoch, rank) at the start of each epoch and the transforms are seeded per sample, so a
resumed job follows the same path as an uninterrupted one. Everything outside the loop (Ray, MLflow, files) goes
through the :class:`~partkd.train.session.WorkerSession`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from partkd import storage
from partkd.layouts import Layout, get_layout
from partkd.models import model_input
from partkd.train.checkpoint import CheckpointMeta, restore_train_state, save_checkpoint, unwrap
from partkd.train.config import JobConfig, TrainConfig
from partkd.train.distill import Distiller
from partkd.train.objectives import get_objective, weighted_terms
from partkd.train.session import RaySession, WorkerSession


class InjectedFailure(RuntimeError):
    """``train.fail_at_epoch``: a worker failing on purpose, to test that a job resumes."""


class StepResult(NamedTuple):
    terms: dict[str, Tensor]  # named, unweighted loss terms ("loss/ce", "loss/pmsc")
    logits: Tensor  # (B, K)
    counts: dict[str, Tensor]  # per-step counts summed over the epoch ("kd/undefined")


def topk_hits(logits: Tensor, labels: Tensor, k: int = 1) -> Tensor:
    """How many rows of ``logits`` (B, K) have their label among their ``k`` highest. A row with a non-finite logit
    predicts nothing and counts as a miss: a diverged model's NaN rows would otherwise all "predict" class 0 (argmax of
    NaN) and score the share of that class. On the device, no host sync."""
    top = logits.argmax(1, keepdim=True) if k == 1 else logits.topk(min(k, logits.shape[1]), dim=1).indices  # (B, k)
    return ((top == labels[:, None]).any(1) & torch.isfinite(logits).all(1)).sum()


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum over DDP ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


class EpochMeters:
    """Named sums over an epoch, kept on the device (no host sync per step), summed over ranks at the end.

    ``means`` are per-sample sums reported as means; ``counts`` are reported as totals. Every rank holds the same
    names, so the reduction lines up even on a rank that saw no batch.
    """

    def __init__(self, device: torch.device, means: Iterable[str], counts: Iterable[str] = ()):
        self.means, self.counts = tuple(means), tuple(counts)
        self.sums = {name: torch.zeros((), device=device) for name in (*self.means, *self.counts)}
        self.samples = 0  # known on the host: batch sizes

    def add(self, name: str, total: Tensor) -> None:
        self.sums[name] += total.detach().float()

    def reduce(self) -> dict[str, float]:
        names = list(self.sums)
        values = torch.stack([self.sums[n] for n in names] + [torch.tensor(float(self.samples),
                                                                           device=self.sums[names[0]].device)])
        *totals, samples = all_reduce_sum(values).tolist()
        out = {n: t / max(samples, 1) if n in self.means else t for n, t in zip(names, totals)}
        out["samples"] = samples
        return out


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, object]:
    """The paper's SGD (momentum 0.9, weight decay 1e-4) with lr x gamma at each milestone epoch; fused into one
    kernel on a GPU (PyTorch's fused SGD: the same update)."""
    on_gpu = next(model.parameters()).device.type == "cuda"
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=True if on_gpu else None)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return optimizer, scheduler


def seed_epoch(train: TrainConfig, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """Reseed torch for an epoch of one rank; returns a generator of the same seed on ``device`` (bank sampling
    draws there, without a copy to the host)."""
    seed = (train.seed * 1_000_003 + epoch) * 64 + rank
    torch.manual_seed(seed)
    return torch.Generator(device).manual_seed(seed)


class Task:
    """What teacher and student differ in: the side they read and the terms of their loss."""

    side: str
    weights: dict[str, float]  # term name -> weight in the total loss
    counts: tuple[str, ...] = ()

    def step(self, model: nn.Module, batch: dict, generator: torch.Generator) -> StepResult:
        raise NotImplementedError


class TeacherTask(Task):
    """Eq. 2: cross-entropy on the HQ skeletons."""

    side = "hq"
    weights = {"loss/ce": 1.0}

    def __init__(self, layout: Layout, session: WorkerSession):
        self.layout, self.session = layout, session

    def step(self, model: nn.Module, batch: dict, generator: torch.Generator) -> StepResult:
        with self.session.autocast():
            logits = model(model_input(batch["hq_x"], batch["hq_score"], self.layout)).logits
        return StepResult({"loss/ce": F.cross_entropy(logits.float(), batch["label"])}, logits, {})


class StudentTask(Task):
    """Eq. 4: cross-entropy on the LQ skeletons plus alpha times the objective's distillation term."""

    side = "lq"

    def __init__(self, layout: Layout, session: WorkerSession, job: JobConfig, model: nn.Module):
        self.layout, self.session = layout, session
        self.objective = get_objective(job.loss.objective)
        self.weights = weighted_terms(self.objective, job.loss.alpha)
        self.counts = ("kd/undefined",) if self.objective.distills else ()
        self.distiller = Distiller(job, session, layout) if self.objective.distills else None
        self.projection = unwrap(model).projection if self.objective.projects else None

    def step(self, model: nn.Module, batch: dict, generator: torch.Generator) -> StepResult:
        with self.session.autocast():
            out = model(model_input(batch["lq_x"], batch["lq_score"], self.layout))
        terms = {"loss/ce": F.cross_entropy(out.logits.float(), batch["label"])}
        if self.distiller is None:
            return StepResult(terms, out.logits, {})
        terms[self.objective.term], undefined = self.distiller.term(out, self.projection, batch, generator)
        return StepResult(terms, out.logits, {"kd/undefined": undefined})


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, batch: dict,
               generator: torch.Generator) -> StepResult:
    """One SGD step on the weighted sum of the task's terms; nothing in it waits for the device (no ``.item()``)."""
    result = task.step(model, batch, generator)
    loss = sum(weight * result.terms[name] for name, weight in task.weights.items())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return result


def gradient_names(task: Task) -> tuple[str, ...]:
    """The metrics :func:`term_gradients` gives a task of several terms: one norm per term and their cosine."""
    if len(task.weights) < 2:
        return ()
    return (*(name.replace("loss/", "grad/") for name in task.weights), "grad/cos")


def term_gradients(model: nn.Module, task: Task, batch: dict, generator: torch.Generator) -> dict[str, Tensor]:
    """How hard each term of the loss pulls: the norm of the gradient of each weighted term (``alpha * L_pmsc`` for
    the distillation term) over every trainable parameter, and the cosine between the first two (< 0: they pull
    against each other). Measured on ``batch`` without touching the training: the plain module (no DDP
    all-reduce), forked RNG and generator, and the batch-norm statistics restored."""
    module = unwrap(model)
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
    params = [p for p in module.parameters() if p.requires_grad]
    probe = torch.Generator(generator.device).set_state(generator.get_state())
    devices = [generator.device] if generator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        result = task.step(module, batch, probe)
        flat = []
        for name, weight in task.weights.items():
            grads = torch.autograd.grad(weight * result.terms[name], params, retain_graph=True, allow_unused=True)
            flat.append(torch.cat([(g if g is not None else torch.zeros_like(p)).float().flatten()
                                   for g, p in zip(grads, params)]))
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])
    out = {name.replace("loss/", "grad/"): g.norm() for name, g in zip(task.weights, flat)}
    out["grad/cos"] = F.cosine_similarity(flat[0], flat[1], dim=0)
    return out


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, batches: Iterable[dict],
                generator: torch.Generator, device: torch.device, world_size: int = 1) -> dict[str, float]:
    """One pass over the training batches: each step minimises the weighted sum of the task's terms. Returns the
    epoch's per-sample means of every term, ``loss/total``, ``train/top1``, the counts and ``samples_per_s``; for a
    loss of several terms also :func:`term_gradients` on the epoch's first batch (mean over ranks)."""
    model.train()
    probes = gradient_names(task)
    meters = EpochMeters(device, means=(*task.weights, "train/top1"), counts=(*task.counts, *probes))
    began = time.perf_counter()
    for step, batch in enumerate(batches):
        if step == 0 and probes:
            for name, value in term_gradients(model, task, batch, generator).items():
                meters.add(name, value / world_size)
        result = train_step(model, optimizer, task, batch, generator)
        size = len(batch["label"])
        for name in task.weights:
            meters.add(name, result.terms[name] * size)
        meters.add("train/top1", topk_hits(result.logits, batch["label"]))
        for name, value in result.counts.items():
            meters.add(name, value)
        meters.samples += size
    metrics = meters.reduce()
    samples = metrics.pop("samples")
    metrics["loss/total"] = sum(weight * metrics[name] for name, weight in task.weights.items())
    metrics["samples_per_s"] = samples / (time.perf_counter() - began)
    return metrics


@torch.no_grad()
def evaluate_top1(model: nn.Module, batches: Iterable[dict], side: str, layout: Layout,
                  session: WorkerSession) -> float:
    """Top-1 over every rank's part of the validation split."""
    model.eval()
    meters = EpochMeters(session.device, means=("top1",))
    for batch in batches:
        with session.autocast():
            logits = model(model_input(batch[f"{side}_x"], batch[f"{side}_score"], layout)).logits
        meters.add("top1", topk_hits(logits, batch["label"]))
        meters.samples += len(batch["label"])
    return meters.reduce()["top1"]


def inject_failure(job: JobConfig, session: WorkerSession, epoch: int) -> None:
    """``train.fail_at_epoch``: the last rank raises once, after that epoch's checkpoint (a marker file in the run's
    folder says it did), so the restarted job goes on."""
    if epoch != job.train.fail_at_epoch or session.rank != session.world_size - 1:
        return
    marker = storage.join(job.train.storage_path, job.train.name, "injected_failure")
    if not storage.exists(marker):
        storage.write_text(marker, f"epoch {epoch}\n")
        raise InjectedFailure(f"fail_at_epoch={epoch}: injected worker failure (testing fault tolerance)")


HOLD_S = 300.0  # how long a held worker waits for its fault test before it goes on by itself


def hold_for_fault(job: JobConfig, session: WorkerSession, epoch: int) -> None:
    """``train.hold_at_epoch``: the last rank, once that epoch's checkpoint is reported, writes its process id to
    ``held`` in the run's folder and waits until that file is gone (at most :data:`HOLD_S`): the cue for a fault test
    to strike a worker between two epochs, when the code says so rather than after a guessed sleep. Once per run: the
    test renames the file to ``held.done``, and a restarted job finds it there."""
    if epoch != job.train.hold_at_epoch or session.rank != session.world_size - 1:
        return
    folder = storage.join(job.train.storage_path, job.train.name)
    held, done = storage.join(folder, "held"), storage.join(folder, "held.done")
    if storage.exists(done):
        return
    storage.write_text(held, f"{os.getpid()}\n")
    deadline = time.monotonic() + HOLD_S
    while storage.exists(held) and time.monotonic() < deadline:
        time.sleep(0.05)


def fit(job: JobConfig, meta: CheckpointMeta, session: WorkerSession) -> None:
    """Train the model ``meta`` describes: every epoch trains, evaluates on the validation split and reports a
    checkpoint; a job with a checkpoint resumes after it."""
    layout = get_layout(meta.model.layout)
    torch.manual_seed(job.train.seed)  # the same initial weights on every rank and in every run of the seed
    model = session.prepare_model(meta.model.build())
    optimizer, scheduler = make_optimizer(model, job.train)
    task = TeacherTask(layout, session) if meta.side == "hq" else StudentTask(layout, session, job, model)
    with session.restored() as checkpoint:
        start = restore_train_state(checkpoint, model, optimizer, scheduler) if checkpoint else 0
    for epoch in range(start, job.train.epochs):
        generator = seed_epoch(job.train, epoch, session.rank, session.device)
        metrics = train_epoch(model, optimizer, task, session.batches("train", epoch, shuffle=True), generator,
                              session.device, session.world_size)
        metrics["lr"] = scheduler.get_last_lr()[0]
        scheduler.step()
        metrics["val/top1"] = evaluate_top1(model, session.batches("val", epoch, shuffle=False), task.side, layout,
                                            session)
        epoch_meta = replace(meta, metrics=metrics)
        session.report(epoch, metrics, partial(save_checkpoint, model=model, meta=epoch_meta, optimizer=optimizer,
                                               scheduler=scheduler, epoch=epoch))
        inject_failure(job, session, epoch)
        hold_for_fault(job, session, epoch)
    session.flush_metrics()


def ray_worker(config: dict) -> None:
    """``train_loop_per_worker`` of a ``TorchTrainer``: the config rebuilt on the worker's first line."""
    job, meta = JobConfig.from_dict(config["job"]), CheckpointMeta.from_json(config["meta"])
    fit(job, meta, RaySession(job, config["shuffle_rows"]))
