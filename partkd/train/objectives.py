"""The student's objectives (paper Eq. 4, Table 4; DESIGN §7): one frozen description each, looked up by name.

An objective says what its distillation term compares (part features, global features or logits), whether it needs
the part matrix E and how result tables name its student. The loss of a step is a sum of named, weighted terms
(:func:`weighted_terms`): ``loss/ce`` with weight 1 and, for a distilling objective, ``loss/<name>`` with weight
``alpha``; each is logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from partkd.layouts import UnknownNameError
from partkd.losses import global_msc_terms, kl_logit_loss, pmsc_terms
from partkd.models import ModelOutput, PartPool

REPRESENTATIONS = ("", "parts", "global", "logits")  # "": no distillation


@dataclass(frozen=True)
class TeacherSide:
    """The HQ set of one step: the teacher's representations, their labels, and each student row's pair in it."""

    representation: Tensor  # (BH, P, C) part features, (BH, C) global features or (BH, K) logits: the objective's
    labels: Tensor  # (BH,)
    pair_index: Tensor  # (B,) row of the sample's own HQ skeleton, -1 if solitary


@dataclass(frozen=True)
class Objective:
    name: str
    label: str  # the student's name in result tables
    representation: str  # what the distillation term compares, one of REPRESENTATIONS
    needs_part_matrix: bool = False

    @property
    def distills(self) -> bool:
        return bool(self.representation)

    @property
    def projects(self) -> bool:
        """Features are compared in the teacher's width, through the student's projection head."""
        return self.representation in ("parts", "global")

    @property
    def term(self) -> str:
        """The logged name of the distillation term ("" for none)."""
        return f"loss/{self.name}" if self.distills else ""

    def represent(self, out: ModelOutput, pool: PartPool, scores: Tensor | None = None) -> Tensor:
        """What the term compares, from a model's output: part features ``(N, P, C)`` by ``pool`` (the model's
        layout; ``scores`` mask missing joints), global features ``(N, C)`` or logits ``(N, K)``; float32 whatever
        the autocast dtype."""
        if self.representation == "parts":
            return pool(out.features.float(), scores)  # (N, P, C)
        if self.representation == "global":
            return out.features.float().mean((2, 3))  # (N, C): over T' and V
        if self.representation == "logits":
            return out.logits.float()  # (N, K)
        raise ValueError(f"objective {self.name} distills nothing")

    def distillation(self, student: Tensor, labels: Tensor, side: TeacherSide, part_matrix: Tensor | None, w: float,
                     tau: float, kl_temperature: float) -> tuple[Tensor, Tensor]:
        """The term L_kd of Eq. 4 and the count of samples it is undefined for (solitary without a positive)."""
        if self.representation == "logits":
            loss = kl_logit_loss(student, side.representation, side.pair_index, kl_temperature)
            return loss, torch.zeros((), dtype=torch.long, device=labels.device)
        if self.representation == "global":
            terms = global_msc_terms(student, side.representation, labels, side.labels, side.pair_index, w, tau)
        elif self.representation == "parts":
            terms = pmsc_terms(student, side.representation, labels, side.labels, side.pair_index, part_matrix, w, tau)
        else:
            raise ValueError(f"objective {self.name} distills nothing")
        return terms.loss, terms.num_undefined


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("ce", "Student (w/o KD)", ""),
    Objective("kl", "Student (KL)", "logits"),
    Objective("global_msc", "Student (global MSC)", "global"),
    Objective("pmsc", "Student (w/ KD)", "parts", needs_part_matrix=True),
)}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise UnknownNameError(f"unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}") from None


def weighted_terms(objective: Objective, alpha: float) -> dict[str, float]:
    """The named terms of the total loss and their weights: L = L_c + alpha L_kd (Eq. 4; Eq. 2 for the teacher)."""
    return {"loss/ce": 1.0, **({objective.term: alpha} if objective.distills else {})}
