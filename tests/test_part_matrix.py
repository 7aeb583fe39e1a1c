"""The part matrix E (paper Eq. 12-13) from hand-made predictions and from a teacher under part occlusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from partkd.layouts import GROUPINGS, get_layout
from partkd.models import create_model
from partkd.part_matrix import (
    compute_part_matrix,
    load_part_matrix,
    occlude_parts,
    occlusion_predictions,
    part_matrix_from_predictions,
    plot_part_matrix,
    save_part_matrix,
)


def softmax_row(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_from_hand_made_predictions():
    labels = torch.tensor([0, 0, 1, 1, 1])
    preds = torch.tensor([[1, 0], [0, 0], [1, 1], [1, 0], [1, 2]])  # (N, P) prediction with part p occluded
    # Eq. 12 by hand: class 0 misses (1/2, 0/2); class 1 misses (0/3, 2/3); class 2 has no samples.
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        got = part_matrix_from_predictions(labels, preds, num_classes=3)
    want = [softmax_row([0.5, 0.0]), softmax_row([0.0, 2 / 3]), [0.5, 0.5]]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    with pytest.warns(UserWarning):
        sharp = part_matrix_from_predictions(labels, preds, num_classes=3, temperature=0.25)
    np.testing.assert_allclose(sharp[1].numpy(), softmax_row([0.0, 2 / 3], 0.25), rtol=1e-6)


class PartEnergyModel(nn.Module):
    """Logits (energy of part 0, energy of part 1, threshold): predicts the stronger part's class, or class 2."""

    def __init__(self, members: torch.Tensor, threshold: float = 10.0):
        super().__init__()
        self.register_buffer("members", members)  # (P, V)
        self.threshold = threshold
        self.calls = []

    def forward(self, x):  # (N, M, T, V, C)
        self.calls.append((x.shape[0], self.training, torch.is_grad_enabled()))
        energy = x.abs().sum((1, 2, 4)) @ self.members.T  # (N, P)
        return torch.cat([energy, torch.full_like(energy[:, :1], self.threshold)], dim=1), None  # (N, P + 1)


def test_runner_occludes_each_part_batched():
    layout = get_layout("penn13")
    parts = GROUPINGS["halves2"].part_indices(layout)  # upper, lower
    members = torch.zeros(2, 13)
    for p, joints in enumerate(parts):
        members[p, list(joints)] = 1
    # (upper energy, lower energy, label) -> prediction with upper occluded, with lower occluded (threshold 10)
    samples = [
        (20, 5, 0),  # (0, 5, 10) -> 2 wrong;  (20, 0, 10) -> 0 right
        (20, 15, 0),  # (0, 15, 10) -> 1 wrong; (20, 0, 10) -> 0 right
        (5, 15, 0),  # (0, 15, 10) -> 1 wrong;  (5, 0, 10) -> 2 wrong
        (5, 20, 1),  # (0, 20, 10) -> 1 right;  (5, 0, 10) -> 2 wrong
        (5, 3, 1),  # (0, 3, 10) -> 2 wrong;    (5, 0, 10) -> 2 wrong
        (3, 4, 2),  # (0, 4, 10) -> 2 right;    (3, 0, 10) -> 2 right
        (12, 4, 2),  # (0, 4, 10) -> 2 right;   (12, 0, 10) -> 0 wrong
    ]
    x = torch.zeros(len(samples), 2, 3, 13, 2)  # (N, M, T, V, C), the energy on one entry of each part
    x[:, 0, 1, parts[0][0], 1] = torch.tensor([float(s[0]) for s in samples])
    x[:, 1, 2, parts[1][-1], 0] = torch.tensor([-float(s[1]) for s in samples])
    labels = torch.tensor([s[2] for s in samples])
    model = PartEnergyModel(members).train()
    batches = [(x[:4], labels[:4]), (x[4:], labels[4:])]
    got_labels, preds = occlusion_predictions(model, batches, "halves2", layout, device="cpu")
    assert got_labels.tolist() == labels.tolist()
    assert preds.tolist() == [[2, 0], [1, 0], [1, 2], [1, 2], [2, 2], [2, 2], [2, 0]]
    assert [c[0] for c in model.calls] == [2 * 4, 2 * 3]  # the P occluded copies of a batch in one forward
    assert all(not training and not grad for _, training, grad in model.calls)
    assert model.training  # mode restored
    part_matrix = compute_part_matrix(model, batches, "halves2", layout, num_classes=3, device="cpu")
    # Eq. 12 by hand: class 0 misses (3/3, 1/3), class 1 (1/2, 2/2), class 2 (0/2, 1/2); Eq. 13 per row.
    want = [softmax_row([1.0, 1 / 3]), softmax_row([0.5, 1.0]), softmax_row([0.0, 0.5])]
    np.testing.assert_allclose(part_matrix.numpy(), want, rtol=1e-6)


def test_occlude_parts_zeroes_exactly_the_part():
    members = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]])  # (P, V), parts may share a joint
    x = torch.rand(2, 2, 3, 4, 3) + 1
    occluded = occlude_parts(x, members)  # (P, N, M, T, V, C)
    assert occluded.shape == (3, 2, 2, 3, 4, 3)
    for p in range(3):
        for v in range(4):
            if members[p, v]:
                assert (occluded[p, ..., v, :] == 0).all()
            else:
                assert torch.equal(occluded[p, ..., v, :], x[..., v, :])


def test_stgcn_teacher_rows_are_distributions():
    torch.manual_seed(0)
    model = create_model("stgcn", layout="ntu25", num_classes=4, in_channels=3, base_channels=4, stage_blocks=(1, 1))
    batches = [(torch.randn(4, 2, 8, 25, 3), torch.tensor([0, 1, 2, 3])) for _ in range(2)]
    part_matrix = compute_part_matrix(model, batches, "paper5", "ntu25", num_classes=4)
    assert part_matrix.shape == (4, 5)
    torch.testing.assert_close(part_matrix.sum(1), torch.ones(4))
    assert part_matrix.min() >= 1 / (1 + 4 * math.e) - 1e-6  # softmax of miss rates in [0, 1]


def test_save_load_and_heatmap(tmp_path):
    matrix = torch.softmax(torch.randn(3, 5), dim=1)
    classes, parts = ["drink water", "eat meal", "kick"], list(GROUPINGS["paper5"].part_names)
    npy_path, png_path = save_part_matrix(matrix, tmp_path / "E.paper5", classes, parts)
    assert npy_path.name == "E.paper5.npy" and png_path.name == "E.paper5.png"
    torch.testing.assert_close(load_part_matrix(npy_path), matrix)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = plot_part_matrix(matrix.numpy(), classes, parts).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == classes
    assert [t.get_text() for t in ax.get_xticklabels()] == parts
    with pytest.raises(ValueError, match="3 classes"):
        save_part_matrix(matrix, tmp_path / "E", classes, parts[:4])
