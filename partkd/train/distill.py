"""The HQ side of a student's distillation term (paper Sec. 3.3.2): the frozen teacher's representations of the HQ
skeletons a step compares with, and the term itself.

``loss.hq_source=batch`` (the paper) runs the teacher on the mini-batch's HQ skeletons every step and gathers them
across DDP ranks (their count varies by rank, so the gather waits for the device once a step). ``bank`` computes the
teacher's representation of every HQ training sample once (the teacher is frozen, so they never change) and takes,
each step, a set of fixed size drawn on the device: the batch's own pairs plus random other entries of the whole
bank. Nothing in a bank step waits for the device, and its shapes never change (what CUDA graphs need).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from partkd.layouts import Layout, get_layout
from partkd.models import ModelOutput, PartPool, model_input
from partkd.part_matrix import load_part_matrix
from partkd.train.checkpoint import load_frozen_teacher
from partkd.train.config import JobConfig
from partkd.train.objectives import TeacherSide, get_objective
from partkd.train.session import WorkerSession


def gather_rows(rows: Tensor) -> tuple[Tensor, int]:
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


def hq_set_from_batch(teacher_repr: Tensor, labels: Tensor, has_hq: Tensor) -> TeacherSide:
    """Batch mode (the paper): the HQ skeletons of the mini-batch, gathered across ranks.

    ``teacher_repr`` (B_hq, ...) are this rank's paired rows in batch order; ``has_hq`` (B,) marks them.
    """
    representation, offset = gather_rows(teacher_repr)
    all_labels, _ = gather_rows(labels[has_hq])
    pair_index = torch.where(has_hq, offset + torch.cumsum(has_hq, 0) - 1, -1)  # (B,) k-th paired row -> offset + k
    return TeacherSide(representation, all_labels, pair_index)


@dataclass
class FeatureBank:
    """Teacher representations of every HQ training sample, computed once (the teacher is frozen)."""

    keys: Tensor  # (NB,) sorted sample keys
    representation: Tensor  # (NB, ...)
    labels: Tensor  # (NB,)

    @classmethod
    def from_rows(cls, keys: Tensor, representation: Tensor, labels: Tensor) -> FeatureBank:
        """A bank of rows in any order (sorted here by key, for lookups)."""
        order = torch.argsort(keys)
        return cls(keys[order], representation[order], labels[order])

    def hq_set(self, keys: Tensor, has_hq: Tensor, negatives: int, generator: torch.Generator) -> TeacherSide:
        """A set of ``B + negatives`` entries (``B`` the batch's rows): row ``i``'s own pair where it has one, else a
        random entry, then ``negatives`` random entries, drawn on the device with ``generator``.

        The random entries never repeat a pair of the batch (a copy of the pair would count as a positive), unless
        every entry is one (a bank no larger than the batch), when they are drawn from the whole bank.
        """
        rows = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)  # (B,)
        torch._assert_async((self.keys[rows] == keys).logical_or(~has_hq).all(),
                            "bank mode: a paired sample of the batch is not in the bank; the bank is built from the "
                            "training split")
        is_pair = torch.zeros(len(self.keys), device=keys.device).index_add_(0, rows, has_hq.float())  # (NB,)
        others = (is_pair == 0).float()
        others = others + (others.sum() == 0)  # all pairs: draw from all (no host check, so no sync)
        draws = torch.multinomial(others, len(keys) + negatives, replacement=True, generator=generator)
        chosen = torch.cat([torch.where(has_hq, rows, draws[: len(keys)]), draws[len(keys):]])  # (B + negatives,)
        pair_index = torch.where(has_hq, torch.arange(len(keys), device=keys.device), -1)
        return TeacherSide(self.representation[chosen], self.labels[chosen], pair_index)


class Distiller:
    """L_kd of a student's step (Eq. 4): the objective's representation of the student's output against the frozen
    teacher's (live on the batch, or from the bank), weighted by E for PMSC."""

    def __init__(self, job: JobConfig, session: WorkerSession, student_layout: Layout):
        self.session, self.loss = session, job.loss
        self.objective = get_objective(job.loss.objective)
        self.teacher, teacher_meta = load_frozen_teacher(job.teacher_checkpoint, session.device)
        self.teacher_layout = get_layout(teacher_meta.model.layout)
        self.teacher_pool = PartPool(job.loss.grouping, self.teacher_layout).to(session.device)
        self.student_pool = PartPool(job.loss.grouping, student_layout).to(session.device)
        self.part_matrix = None
        if self.objective.needs_part_matrix:  # E: a .npy file, local or in an object store
            self.part_matrix = load_part_matrix(job.part_matrix).float().to(session.device)
        self.bank = self._build_bank() if job.loss.hq_source == "bank" else None

    def _teacher_repr(self, x: Tensor, score: Tensor) -> Tensor:
        with self.session.autocast():
            out = self.teacher(model_input(x, score, self.teacher_layout))
        return self.objective.represent(out, self.teacher_pool)

    @torch.no_grad()
    def _build_bank(self) -> FeatureBank:
        """Teacher representations of this worker's HQ training rows, gathered from every rank, sorted by key."""
        keys, reprs, labels = [], [], []
        for batch in self.session.batches("train", epoch=0, shuffle=False):
            keep = batch["has_hq"]
            if keep.any():
                reprs.append(self._teacher_repr(batch["hq_x"][keep], batch["hq_score"][keep]))
                keys.append(batch["key"][keep])
                labels.append(batch["label"][keep])
        if not keys:
            raise RuntimeError("bank mode: this worker's shard of the training split holds no HQ skeleton")
        return FeatureBank.from_rows(*(gather_rows(torch.cat(rows))[0] for rows in (keys, reprs, labels)))

    @torch.no_grad()
    def teacher_side(self, batch: dict, generator: torch.Generator) -> TeacherSide:
        has_hq = batch["has_hq"]
        if self.bank is not None:
            return self.bank.hq_set(batch["key"], has_hq, self.loss.bank_negatives, generator)
        representation = self._teacher_repr(batch["hq_x"][has_hq], batch["hq_score"][has_hq])
        return hq_set_from_batch(representation, batch["label"], has_hq)

    def term(self, out: ModelOutput, projection: nn.Module | None, batch: dict, generator: torch.Generator
             ) -> tuple[Tensor, Tensor]:
        """The term and its count of samples without one, from the student's output; ``projection`` maps compared
        features to the teacher's width."""
        scores = batch["lq_score"] if self.loss.mask_missing else None
        student_repr = self.objective.represent(out, self.student_pool, scores)
        if self.objective.projects:
            student_repr = projection(student_repr)
        side = self.teacher_side(batch, generator)
        return self.objective.distillation(student_repr, batch["label"], side, self.part_matrix, self.loss.w,
                                           self.loss.tau, self.loss.kl_temperature)
