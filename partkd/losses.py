"""Distillation losses (paper Sec. 3.3.2, DESIGN §7): pure functions on tensors, vectorised, in log space.

Notation: ``B`` student (low-quality) samples, ``BH`` teacher (high-quality) samples, ``P`` parts, ``C`` channels,
``K`` classes. ``pair_index[i]`` is the row of sample ``i``'s own high-quality skeleton in the teacher batch, or -1
for a solitary sample (D_sol). The losses compute in float32 (float64 if given) with autocast off, whatever the
dtype of the features, so they can sit inside a bf16 autocast region.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Added to squared norms in the cosine: finite value and gradient at a zero feature, no effect above ~1e-6 norms.
NORM_EPS = 1e-8


class ContrastTerms(NamedTuple):
    """A multi-sample contrastive loss with what training should report beside it."""

    loss: Tensor  # () mean of l_i over the samples where it is defined; 0 when none is
    per_sample: Tensor  # (B,) l_i, NaN where undefined
    num_undefined: Tensor  # () int64, samples without a term (solitary with no positive, or w = 0)


def _unit(x: Tensor) -> Tensor:
    """``x / |x|`` over the last axis, smooth at 0 (a zero vector stays zero, with a finite gradient)."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + NORM_EPS**2)


def _log_mean_exp(logits: Tensor, mask: Tensor) -> Tensor:
    """``log mean_{j: mask[i, j]} exp(logits[i, j])`` per row ``(B,)``; ``-inf`` for an empty row, NaN-free grads."""
    count = mask.sum(1)  # (B,)
    masked = logits.masked_fill(~mask, -math.inf).masked_fill((count == 0)[:, None], 0.0)  # empty rows kept finite
    log_mean = torch.logsumexp(masked, dim=1) - count.clamp(min=1).to(logits.dtype).log()
    return log_mean.masked_fill(count == 0, -math.inf)


def _msc_terms(
    student_feats: Tensor,
    teacher_feats: Tensor,
    sample_part_weights: Tensor,
    student_labels: Tensor,
    teacher_labels: Tensor,
    pair_index: Tensor,
    w: float,
    tau: float,
) -> ContrastTerms:
    """Eq. 6-11 with per-sample part weights ``(B, P)`` (``E[y_i]`` for PMSC, ones with P = 1 for global MSC)."""
    if tau <= 0 or w < 0:
        raise ValueError(f"need tau > 0 and w >= 0, got tau={tau}, w={w}")
    dtype = torch.promote_types(student_feats.dtype, torch.float32)
    with torch.autocast(student_feats.device.type, enabled=False):
        b, p, c = student_feats.shape
        student = _unit(student_feats.to(dtype)) * sample_part_weights.to(dtype)[:, :, None]  # (B, P, C) E-weighted
        teacher = _unit(teacher_feats.to(dtype))  # (BH, P, C)
        # Eq. 7 as one matmul: phi[i, j] = sum_p E[y_i, p] cos(fL[i, p], fH[j, p])
        phi = student.reshape(b, p * c) @ teacher.reshape(-1, p * c).T  # (B, BH)
        logits = phi / tau  # (B, BH) log C[i, j], Eq. 6
        columns = torch.arange(teacher.shape[0], device=logits.device)  # (BH,)
        is_pair = columns[None, :] == pair_index[:, None]  # (B, BH), no True in a solitary row
        same = student_labels[:, None] == teacher_labels[None, :]  # (B, BH)
        log_cp = _log_mean_exp(logits, same & ~is_pair)  # (B,) log CP, Eq. 9
        log_cn = _log_mean_exp(logits, ~same)  # (B,) log CN, Eq. 10
        has_pos = (same & ~is_pair).any(1)  # (B,)
        log_w_cp = log_cp + (math.log(w) if w > 0 else -math.inf)  # (B,) log(w CP)
        paired = pair_index >= 0  # (B,)
        log_pair = logits.gather(1, pair_index.clamp(min=0)[:, None]).squeeze(1)  # (B,) log C[i, pair[i]]
        log_num = torch.where(paired, torch.logaddexp(log_pair, log_w_cp), log_w_cp)  # (B,) Eq. 8 numerator
        defined = paired | (has_pos & (w > 0))  # (B,)
        log_num = torch.where(defined, log_num, 0.0)  # keep -inf out of the rest of the graph
        per_sample = torch.logaddexp(log_num, log_cn) - log_num  # (B,) l_i = -log(num / (num + CN)), Eq. 8
        num_defined = defined.sum()
        loss = torch.where(defined, per_sample, 0.0).sum() / num_defined.clamp(min=1)  # Eq. 11 over defined
    return ContrastTerms(loss, per_sample.masked_fill(~defined, math.nan), defined.numel() - num_defined)


def _reduce(terms: ContrastTerms, reduction: str) -> Tensor:
    if reduction == "mean":
        return terms.loss
    if reduction == "none":
        return terms.per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def pmsc_terms(
    student_parts: Tensor,
    teacher_parts: Tensor,
    student_labels: Tensor,
    teacher_labels: Tensor,
    pair_index: Tensor,
    part_weights: Tensor,
    w: float = 0.5,
    tau: float = 1.0,
) -> ContrastTerms:
    """The part-level multi-sample contrastive loss with its per-sample terms and undefined count.

    Eq. 6-11 of the paper, as fixed by DESIGN §7 (``tau`` = 1 is the paper)::

        phi[i, j] = sum_p E[yL[i], p] cos(fL[i, p], fH[j, p])          log C[i, j] = phi[i, j] / tau
        pos(i) = {j : yH[j] = yL[i], j != pair[i]}                    neg(i) = {j : yH[j] != yL[i]}
        CP[i] = mean_{pos(i)} C[i, j]  (0 if empty)                   CN[i] = mean_{neg(i)} C[i, j]  (0 if empty)
        paired:   l_i = -log((C[i, pair[i]] + w CP[i]) / (C[i, pair[i]] + w CP[i] + CN[i]))
        solitary: l_i = -log(w CP[i] / (w CP[i] + CN[i]))             defined only if pos(i) is non-empty (and w > 0)

    Shapes: ``student_parts (B, P, C)``, ``teacher_parts (BH, P, C)``, ``student_labels (B,)``,
    ``teacher_labels (BH,)``, ``pair_index (B,)`` with -1 for solitary, ``part_weights`` E ``(K, P)``.
    """
    if student_parts.shape[1:] != teacher_parts.shape[1:]:
        raise ValueError(
            f"student parts {tuple(student_parts.shape)} and teacher parts {tuple(teacher_parts.shape)} differ in "
            "(P, C); project the student features (partkd.models.ProjectionHead) or use the same grouping"
        )
    if part_weights.shape[1] != student_parts.shape[1]:
        raise ValueError(f"part_weights {tuple(part_weights.shape)} has not P={student_parts.shape[1]} columns")
    sample_part_weights = part_weights.to(student_parts.device)[student_labels]  # (B, P) E[y_i]
    return _msc_terms(
        student_parts, teacher_parts, sample_part_weights, student_labels, teacher_labels, pair_index, w, tau
    )


def pmsc_loss(
    student_parts: Tensor,
    teacher_parts: Tensor,
    student_labels: Tensor,
    teacher_labels: Tensor,
    pair_index: Tensor,
    part_weights: Tensor,
    w: float = 0.5,
    tau: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """L_pmsc (Eq. 11): ``"mean"`` over the samples where l_i is defined (0 if none), ``"none"`` the ``(B,)`` l_i
    with NaN where undefined. See :func:`pmsc_terms` for the formula and the undefined count."""
    terms = pmsc_terms(student_parts, teacher_parts, student_labels, teacher_labels, pair_index, part_weights, w, tau)
    return _reduce(terms, reduction)


def global_msc_terms(
    student_feats: Tensor,
    teacher_feats: Tensor,
    student_labels: Tensor,
    teacher_labels: Tensor,
    pair_index: Tensor,
    w: float = 0.5,
    tau: float = 1.0,
) -> ContrastTerms:
    """The global multi-sample contrastive baseline: PMSC with one part, the global features ``(B, C)`` and
    ``(BH, C)``, and no part matrix (``phi`` is the plain cosine)."""
    ones = torch.ones(student_feats.shape[0], 1, device=student_feats.device)  # (B, 1) no E
    return _msc_terms(
        student_feats[:, None, :], teacher_feats[:, None, :], ones, student_labels, teacher_labels, pair_index, w, tau
    )


def global_msc_loss(
    student_feats: Tensor,
    teacher_feats: Tensor,
    student_labels: Tensor,
    teacher_labels: Tensor,
    pair_index: Tensor,
    w: float = 0.5,
    tau: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Global MSC baseline (Table 4): see :func:`global_msc_terms`; reductions as :func:`pmsc_loss`."""
    terms = global_msc_terms(student_feats, teacher_feats, student_labels, teacher_labels, pair_index, w, tau)
    return _reduce(terms, reduction)


def kl_logit_loss(
    student_logits: Tensor, teacher_logits: Tensor, pair_index: Tensor, temperature: float = 4.0
) -> Tensor:
    """Hinton KD on the paired samples: ``T^2 mean_{i paired} KL(softmax(zH[pair[i]] / T) || softmax(zL[i] / T))``.

    Shapes: ``student_logits (B, K)``, ``teacher_logits (BH, K)``, ``pair_index (B,)`` with -1 for solitary. Returns 0
    when no sample is paired. The T^2 keeps the gradient scale independent of the temperature.

    Computed on every row and weighted by the pairing mask, never by selecting the paired rows (``x[paired]``): a
    boolean index has a shape that depends on the data, so it waits for the device every step and changes shape
    between steps. A solitary row compares with teacher row 0 (any row would do) and weighs 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    with torch.autocast(student_logits.device.type, enabled=False):
        paired = pair_index >= 0  # (B,)
        if teacher_logits.shape[0] == 0:  # no HQ row at all (batch mode, no pair in any rank's batch): a zero term
            teacher_logits = teacher_logits.new_zeros(1, teacher_logits.shape[1])  # (1, K)
        log_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)  # (B, K)
        log_teacher = F.log_softmax(teacher_logits[pair_index.clamp(min=0)].to(dtype) / temperature, dim=-1)  # (B, K)
        per_row = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(-1)  # (B,) KL(H || L)
        kl = torch.where(paired, per_row, 0.0).sum()  # sum_{i paired} KL(teacher_i || student_i)
        return kl * temperature**2 / paired.sum().clamp(min=1)


def __getattr__(name: str):
    """``partkd.losses.ProjectionHead``, deprecated: the module lives in :mod:`partkd.models` (this alias is removed in
    0.3.0)."""
    if name == "ProjectionHead":
        import warnings

        from partkd.models.heads import ProjectionHead

        warnings.warn("partkd.losses.ProjectionHead moved to partkd.models.ProjectionHead (the alias is removed in "
                      "0.3.0)", DeprecationWarning, stacklevel=2)
        return ProjectionHead
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
