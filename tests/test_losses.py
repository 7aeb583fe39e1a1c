"""PMSC, global MSC and logit KD against literal per-sample loops of the formulas (DESIGN §7, paper Eq. 6-11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from partkd.losses import (
    global_msc_loss,
    global_msc_terms,
    kl_logit_loss,
    pmsc_loss,
    pmsc_terms,
)


def literal_pmsc(f_l, f_h, y_l, y_h, pair, part_matrix, w, tau):
    """Eq. 6-10 one sample at a time in float64 Python: l_i, or None where undefined."""
    f_l, f_h, part_matrix = (np.asarray(a, dtype=np.float64) for a in (f_l, f_h, part_matrix))
    y_l, y_h, pair = (np.asarray(a).tolist() for a in (y_l, y_h, pair))
    num_parts = f_l.shape[1]

    def similarity(i, j):  # C(x_i^L, x_j^H), Eq. 6-7 with temperature
        phi = 0.0
        for p in range(num_parts):
            a, b = f_l[i, p], f_h[j, p]
            phi += float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) * part_matrix[y_l[i], p]
        return math.exp(phi / tau)

    losses = []
    for i in range(len(y_l)):
        pos = [j for j in range(len(y_h)) if y_h[j] == y_l[i] and j != pair[i]]
        neg = [j for j in range(len(y_h)) if y_h[j] != y_l[i]]
        cp = sum(similarity(i, j) for j in pos) / len(pos) if pos else 0.0
        cn = sum(similarity(i, j) for j in neg) / len(neg) if neg else 0.0
        if pair[i] >= 0:
            num = similarity(i, pair[i]) + w * cp
        elif pos and w > 0:
            num = w * cp
        else:
            losses.append(None)
            continue
        losses.append(-math.log(num / (num + cn)))
    return losses


def make_batch(case: str, seed: int, num_parts: int = 5, channels: int = 6, num_classes: int = 4):
    """Random float64 batches; ``case`` picks the label structure that exercises an edge of the formula."""
    g = torch.Generator().manual_seed(seed)
    if case == "mixed":  # paired and solitary, several classes, one class absent from the HQ batch
        y_h = torch.tensor([0, 0, 1, 1, 2, 2, 2, 1])
        y_l = torch.tensor([0, 1, 2, 0, 3, 1, 3, 2, 0, 1])
        pair = torch.tensor([0, 2, 4, -1, -1, 7, -1, 6, -1, 3])  # sample 4, 6: solitary, no positive
    elif case == "pair_only_positive":  # the only same-class HQ sample is the pair itself: CP = 0
        y_h = torch.tensor([0, 1, 2, 3])
        y_l = torch.tensor([0, 1, 2, 3, 1])
        pair = torch.tensor([0, 1, 2, 3, -1])
    elif case == "no_negative":  # every HQ sample has the student's class: CN = 0
        y_h = torch.tensor([2, 2, 2])
        y_l = torch.tensor([2, 2, 2, 2])
        pair = torch.tensor([0, -1, 2, -1])
    elif case == "single_class":  # one class everywhere, one HQ sample
        y_h = torch.tensor([1])
        y_l = torch.tensor([1, 1])
        pair = torch.tensor([0, -1])
    elif case == "all_solitary":
        y_h = torch.tensor([0, 1, 1, 3, 3, 3])
        y_l = torch.tensor([0, 1, 2, 3, 3, 0, 1])
        pair = torch.full((7,), -1)
    else:
        raise ValueError(case)
    f_l = torch.randn(len(y_l), num_parts, channels, generator=g, dtype=torch.float64)
    f_h = torch.randn(len(y_h), num_parts, channels, generator=g, dtype=torch.float64)
    part_matrix = torch.softmax(torch.randn(num_classes, num_parts, generator=g, dtype=torch.float64), dim=1)
    return f_l, f_h, y_l, y_h, pair, part_matrix


CASES = ["mixed", "pair_only_positive", "no_negative", "single_class", "all_solitary"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("w", "tau"), [(0.5, 1.0), (0.9, 0.2), (0.1, 0.05), (0.0, 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_pmsc_matches_literal_loop(case, w, tau, seed):
    f_l, f_h, y_l, y_h, pair, part_matrix = make_batch(case, seed)
    expected = literal_pmsc(f_l, f_h, y_l, y_h, pair, part_matrix, w, tau)
    per_sample = pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, w=w, tau=tau, reduction="none")
    assert per_sample.dtype == torch.float64
    for got, want in zip(per_sample.tolist(), expected, strict=True):
        if want is None:
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-12)
    defined = [v for v in expected if v is not None]
    mean = pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, w=w, tau=tau)
    assert mean.item() == pytest.approx(sum(defined) / len(defined) if defined else 0.0, rel=1e-6, abs=1e-12)
    terms = pmsc_terms(f_l, f_h, y_l, y_h, pair, part_matrix, w=w, tau=tau)
    assert terms.num_undefined.item() == len(expected) - len(defined)


def test_mixed_case_has_the_edges_it_claims():
    f_l, f_h, y_l, y_h, pair, part_matrix = make_batch("mixed", 0)
    losses = literal_pmsc(f_l, f_h, y_l, y_h, pair, part_matrix, 0.5, 1.0)
    assert [i for i, v in enumerate(losses) if v is None] == [4, 6]  # solitary class-3 samples, no positive
    assert (pair >= 0).any() and (pair < 0).any()


def test_two_by_two_hand_computed():
    """Two parts, E rows (0.75, 0.25) and (0.5, 0.5); student 0 paired with HQ 0, student 1 solitary, HQ 1 other class.

    phi[0, 0] = 0.75 * 1 + 0.25 * 0 = 0.75           phi[0, 1] = 0.75 * 0 + 0.25 * (-1) = -0.25
    phi[1, 0] = 0.75 / sqrt(2) + 0.25 * 1            phi[1, 1] = 0.75 / sqrt(2) + 0.25 * 0
    Student 0: pos = {} (HQ 0 is its pair), neg = {1}: l0 = log(1 + exp(-1 / tau)), whatever w.
    Student 1: pos = {0}, neg = {1}:                   l1 = log(1 + exp(-0.25 / tau) / w).
    """
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    f_l = torch.stack([torch.stack([e1, e1]), torch.stack([e1 + e2, 5 * e2])])  # (2, 2, 2)
    f_h = torch.stack([torch.stack([e1, e2]), torch.stack([e2, -e1])])  # (2, 2, 2)
    y_l, y_h, pair = torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([0, -1])
    part_matrix = torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=torch.float64)
    for w, tau in [(0.5, 1.0), (1.0, 1.0), (0.25, 0.1), (0.5, 2.0)]:
        got = pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, w=w, tau=tau, reduction="none")
        l0 = math.log(1 + math.exp(-1 / tau))
        l1 = math.log(1 + math.exp(-0.25 / tau) / w)
        assert got.tolist() == pytest.approx([l0, l1], rel=1e-12)
        assert pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, w=w, tau=tau).item() == pytest.approx((l0 + l1) / 2)
    # w = 0: the solitary sample has no positive mass, so no term; the mean is the paired sample's alone.
    terms = pmsc_terms(f_l, f_h, y_l, y_h, pair, part_matrix, w=0.0, tau=1.0)
    assert terms.loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    assert terms.num_undefined.item() == 1 and math.isnan(terms.per_sample[1].item())


def test_pair_is_not_a_positive():
    """A second copy of the pair's HQ features as another positive changes the loss exactly as Eq. 8-9 say."""
    f_l = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)  # (1, 1, 2)
    f_h = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]], dtype=torch.float64)  # pair, positive, negative
    y_l, y_h, pair = torch.tensor([0]), torch.tensor([0, 0, 1]), torch.tensor([0])
    part_matrix = torch.ones(2, 1, dtype=torch.float64)
    got = pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, w=0.5, tau=1.0).item()
    num = math.e + 0.5 * 1.0  # C(pair) = e^1, CP = e^0 over the one positive (not the pair)
    assert got == pytest.approx(-math.log(num / (num + math.exp(-1))))


@pytest.mark.parametrize("case", CASES)
def test_finite_gradients_low_tau_and_zero_features(case):
    f_l, f_h, y_l, y_h, pair, part_matrix = make_batch(case, 3)
    f_l, f_h = (f.float() for f in (f_l, f_h))
    f_l[0, 1] = 0.0  # zero-norm part features on both sides
    f_h[-1, :] = 0.0
    f_l.requires_grad_(True)
    f_h.requires_grad_(True)
    for tau in (0.05, 0.01):
        loss = pmsc_loss(f_l * 30, f_h * 30, y_l, y_h, pair, part_matrix.float(), w=0.5, tau=tau)
        (grad_l, grad_h) = torch.autograd.grad(loss, (f_l, f_h))
        assert torch.isfinite(loss) and torch.isfinite(grad_l).all() and torch.isfinite(grad_h).all()
        assert loss.item() >= 0


def test_none_reduction_gradients_are_finite_where_defined():
    f_l, f_h, y_l, y_h, pair, part_matrix = make_batch("mixed", 4)
    f_l.requires_grad_(True)
    per_sample = pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, tau=0.05, reduction="none")
    (grad,) = torch.autograd.grad(per_sample.nansum(), f_l)
    assert torch.isfinite(grad).all()
    assert grad[4].abs().sum() == 0 and grad[0].abs().sum() > 0  # undefined sample 4 gets no gradient


@pytest.mark.parametrize("case", CASES)
def test_invariant_to_feature_scale_and_hq_permutation(case):
    f_l, f_h, y_l, y_h, pair, part_matrix = make_batch(case, 5)
    base = pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, reduction="none")
    scales_l = torch.rand(f_l.shape[0], f_l.shape[1], 1, dtype=torch.float64) * 100 + 1e-3
    scaled = pmsc_loss(f_l * scales_l, f_h * 7.5, y_l, y_h, pair, part_matrix, reduction="none")
    torch.testing.assert_close(scaled, base, equal_nan=True, rtol=1e-10, atol=1e-12)
    perm = torch.randperm(len(y_h), generator=torch.Generator().manual_seed(1))
    inverse = torch.argsort(perm)  # new row of old HQ row j
    new_pair = torch.where(pair >= 0, inverse[pair.clamp(min=0)], pair)
    permuted = pmsc_loss(f_l, f_h[perm], y_l, y_h[perm], new_pair, part_matrix, reduction="none")
    torch.testing.assert_close(permuted, base, equal_nan=True, rtol=1e-10, atol=1e-12)


def test_autocast_bf16_region_computes_in_fp32():
    f_l, f_h, y_l, y_h, pair, part_matrix = make_batch("mixed", 6)
    f_l, f_h, part_matrix = f_l.float(), f_h.float(), part_matrix.float()
    want = pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, tau=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pmsc_loss(f_l.bfloat16(), f_h.bfloat16(), y_l, y_h, pair, part_matrix, tau=0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)  # only the bf16 rounding of the inputs remains


@pytest.mark.parametrize("case", CASES)
def test_global_msc_is_the_one_part_contrast_without_e(case):
    f_l, f_h, y_l, y_h, pair, _ = make_batch(case, 7, num_parts=1)
    expected = literal_pmsc(f_l, f_h, y_l, y_h, pair, np.ones((4, 1)), 0.5, 0.3)
    got = global_msc_loss(f_l[:, 0], f_h[:, 0], y_l, y_h, pair, w=0.5, tau=0.3, reduction="none")
    want = torch.tensor([math.nan if v is None else v for v in expected], dtype=torch.float64)
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-6, atol=1e-12)
    terms = global_msc_terms(f_l[:, 0], f_h[:, 0], y_l, y_h, pair, w=0.5, tau=0.3)
    assert terms.num_undefined.item() == sum(v is None for v in expected)


def test_kl_logit_loss_matches_literal_loop():
    g = torch.Generator().manual_seed(8)
    student, teacher = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g).double()
    pair = torch.tensor([2, -1, 0, -1, 2])
    temperature = 3.0
    total, count = 0.0, 0
    for i, j in enumerate(pair.tolist()):
        if j < 0:
            continue
        p_t = torch.softmax(teacher[j] / temperature, 0).tolist()
        p_s = torch.softmax(student[i] / temperature, 0).tolist()
        total += sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
        count += 1
    got = kl_logit_loss(student, teacher, pair, temperature)
    assert got.item() == pytest.approx(temperature**2 * total / count, rel=1e-9)
    assert kl_logit_loss(student, teacher, torch.full((5,), -1), temperature).item() == 0.0
    assert kl_logit_loss(teacher[pair[[0, 2]]], teacher, pair[[0, 2]], temperature).item() == pytest.approx(0.0)


def test_bad_arguments_raise():
    f_l, f_h, y_l, y_h, pair, part_matrix = make_batch("mixed", 0)
    with pytest.raises(ValueError, match="reduction"):
        pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, reduction="sum")
    with pytest.raises(ValueError, match="tau"):
        pmsc_loss(f_l, f_h, y_l, y_h, pair, part_matrix, tau=0.0)
    with pytest.raises(ValueError, match=r"\(P, C\)"):
        pmsc_loss(f_l, f_h[:, :, :3], y_l, y_h, pair, part_matrix)
