"""A bank step's distillation terms have static shapes and never read a value back (README: "Nothing in a bank step
waits for the device"): the KL term weighs every row by the pairing mask instead of selecting the paired rows, with
the values of the selection it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from partkd.losses import kl_logit_loss
from partkd.train.distill import FeatureBank
from partkd.train.objectives import OBJECTIVES

PAIRINGS = {"mixed": [1, 0, 1, 1, 0, 1], "none paired": [0] * 6, "all paired": [1] * 6}
DISTILLING = sorted(name for name, objective in OBJECTIVES.items() if objective.distills)


def masked_kl_reference(student: torch.Tensor, teacher: torch.Tensor, pair_index: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """The term as it was written before (a boolean index: data-dependent shapes, a device sync)."""
    paired = pair_index >= 0
    log_student = F.log_softmax(student[paired] / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher[pair_index[paired]] / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="sum", log_target=True)
    return kl * temperature**2 / paired.sum().clamp(min=1)


def kl_inputs(pairing: str, mode: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Student logits (6, 5) in fp64 and the HQ set of a step: ``batch``, the paired rows only (none: no row at all),
    their pair index by cumsum; ``bank``, 6 + 4 rows, each paired row's own pair at its position."""
    has_hq = torch.tensor(PAIRINGS[pairing], dtype=torch.bool)
    student = torch.randn(6, 5, generator=generator, dtype=torch.float64) * 3
    if mode == "batch":
        teacher = torch.randn(int(has_hq.sum()), 5, generator=generator, dtype=torch.float64) * 3
        pair_index = torch.where(has_hq, torch.cumsum(has_hq, 0) - 1, -1)
    else:
        teacher = torch.randn(10, 5, generator=generator, dtype=torch.float64) * 3
        pair_index = torch.where(has_hq, torch.arange(6), -1)
    return student.requires_grad_(), teacher.requires_grad_(), pair_index


@pytest.mark.parametrize("mode", ["batch", "bank"])
@pytest.mark.parametrize("pairing", sorted(PAIRINGS))
def test_kl_term_equals_the_masked_reference_in_value_and_gradient(pairing, mode):
    student, teacher, pair_index = kl_inputs(pairing, mode, torch.Generator().manual_seed(5))
    got, want = kl_logit_loss(student, teacher, pair_index, 2.5), masked_kl_reference(student, teacher, pair_index, 2.5)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15), (got, want)
    if pairing == "none paired":
        assert got.item() == 0.0
    else:
        assert want.item() > 0.01  # a real term to compare
    grads = [torch.autograd.grad(loss, (student, teacher), allow_unused=True) for loss in (got, want)]
    for mine, reference, like in zip(*grads, (student, teacher)):
        mine = torch.zeros_like(like) if mine is None else mine  # no teacher row at all: nothing flows to it
        reference = torch.zeros_like(like) if reference is None else reference
        assert torch.allclose(mine, reference, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", DISTILLING)
def test_a_bank_steps_term_has_static_shapes_and_reads_nothing_back(name):
    """The bank's HQ set and every distillation term, forward and backward, on fake tensors (shapes without values):
    an op whose output shape depends on the data (a boolean index, ``nonzero``) or a value read back to the host
    (``.item()``, ``bool(tensor)``) cannot run there, and on a GPU would wait for the device."""
    objective = OBJECTIVES[name]
    shape = {"parts": (5, 8), "global": (8,), "logits": (4,)}[objective.representation]
    with FakeTensorMode():
        bank = FeatureBank.from_rows(torch.randperm(20), torch.randn(20, *shape), torch.randint(0, 4, (20,)))
        side = bank.hq_set(torch.randint(0, 20, (6,)), torch.rand(6) > 0.5, 8, torch.Generator().manual_seed(0))
        student = torch.randn(6, *shape, requires_grad=True)
        loss, undefined = objective.distillation(student, torch.randint(0, 4, (6,)), side, torch.rand(4, 5), w=0.5,
                                                 tau=1.0, kl_temperature=4.0)
        loss.backward()
        assert side.representation.shape == (6 + 8, *shape) and loss.shape == () and student.grad.shape == student.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA's sync debug mode")
@pytest.mark.parametrize("pairing", sorted(PAIRINGS))
def test_kl_term_does_not_wait_for_the_gpu(pairing):
    student, teacher, pair_index = (t.detach().cuda() for t in kl_inputs(pairing, "bank", torch.Generator()))
    student.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kl_logit_loss(student, teacher, pair_index, 2.0).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
