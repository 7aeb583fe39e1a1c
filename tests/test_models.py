"""ST-GCN backbone, skeleton graphs and part pooling (DESIGN §6)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from partkd.layouts import GROUPINGS, LAYOUTS, UnknownNameError, get_layout
from partkd.losses import pmsc_loss
from partkd.models import (
    MODELS,
    STGCN,
    STGCNConfig,
    create_model,
    hop_distance,
    part_pool,
    spatial_partition,
)
from partkd.train.session import native_bf16

SMALL = dict(base_channels=8, stage_blocks=(1, 1, 1))


def bfs_distances(layout) -> np.ndarray:
    """Shortest-path lengths by breadth-first search from every joint, the literal reference for hop_distance."""
    neighbours = {v: set() for v in range(layout.num_joints)}
    for a, b in layout.edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    dist = np.full((layout.num_joints, layout.num_joints), np.inf)
    for source in range(layout.num_joints):
        dist[source, source] = 0
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for v in neighbours[u]:
                if np.isinf(dist[source, v]):
                    dist[source, v] = dist[source, u] + 1
                    queue.append(v)
    return dist


def expected_stgcn_params(num_joints, in_channels, num_classes, base=64, stage_blocks=(4, 3, 3), kt=9, k=3):
    """Parameter count of the reference ST-GCN written out block by block."""
    total = 2 * in_channels * num_joints  # data_bn (V*C) weight and bias
    channels = in_channels
    for stage, blocks in enumerate(stage_blocks):
        out = base * 2**stage
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            first = stage == 0 and i == 0
            total += channels * out * k + out * k  # 1x1 graph conv to K*out, with bias
            total += 2 * out + out * out * kt + out + 2 * out  # BN, temporal conv with bias, BN
            if not first and (channels != out or stride != 1):
                total += channels * out + out + 2 * out  # residual 1x1 conv and BN
            total += k * num_joints * num_joints  # edge importance
            channels = out
    return total + channels * num_classes + num_classes  # linear classifier


def test_paper_model_has_reference_parameter_count():
    model = create_model("stgcn", layout="ntu25", num_classes=60, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == 3_098_832


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(("base", "stage_blocks"), [(64, (4, 3, 3)), (8, (1, 1, 1)), (16, (2, 2))])
def test_parameter_count_matches_block_by_block_formula(layout, base, stage_blocks):
    model = STGCN(
        STGCNConfig(layout=layout, num_classes=11, in_channels=4, base_channels=base, stage_blocks=stage_blocks)
    )
    expected = expected_stgcn_params(LAYOUTS[layout].num_joints, 4, 11, base, stage_blocks)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_forward_backward_every_model_and_layout(name, layout):
    torch.manual_seed(0)
    num_joints = LAYOUTS[layout].num_joints
    model = create_model(name, layout=layout, num_classes=7, in_channels=3)
    x = torch.randn(3, 2, 16, num_joints, 3)  # (N, M, T, V, C)
    logits, features = model(x)
    assert logits.shape == (3, 7)
    assert features.shape[0] == 3 and features.shape[-1] == num_joints and features.ndim == 4
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    (logits.logsumexp(-1).sum() + features.square().mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_part_features_through_the_loss_every_grouping(grouping, layout):
    torch.manual_seed(0)
    model = create_model("stgcn", layout=layout, num_classes=4, in_channels=3, **SMALL)
    _, features = model(torch.randn(4, 2, 16, LAYOUTS[layout].num_joints, 3))
    parts = part_pool(features, grouping, layout)  # (N, P, C)
    assert parts.shape == (4, GROUPINGS[grouping].num_parts, model.out_channels)
    teacher_parts = torch.randn(3, *parts.shape[1:])
    part_matrix = torch.full((4, parts.shape[1]), 1 / parts.shape[1])
    loss = pmsc_loss(
        parts,
        teacher_parts,
        torch.tensor([0, 1, 2, 1]),
        torch.tensor([0, 1, 2]),
        torch.tensor([0, 1, -1, -1]),
        part_matrix,
    )
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.blocks.parameters())


def test_shapes_strides_and_head_on_pooled_features():
    model = create_model(
        "stgcn", layout="coco17", num_classes=5, in_channels=3, base_channels=4, stage_blocks=(2, 1, 1)
    ).eval()
    logits, features = model(torch.randn(2, 2, 20, 17, 3))
    assert features.shape == (2, 16, 5, 17)  # channels 4 * 2**2, T 20 -> 10 -> 5
    torch.testing.assert_close(logits, model.head(features.mean((2, 3))))


def test_persons_fold_and_average_without_mixing_samples():
    torch.manual_seed(0)
    model = create_model("stgcn", layout="ntu25", num_classes=5, in_channels=3, **SMALL).eval()
    x = torch.randn(3, 2, 12, 25, 3)
    logits, features = model(x)
    # Persons are averaged: swapping them changes nothing; each person alone gives the parts of the mean.
    torch.testing.assert_close(model(x.flip(1)).features, features)
    alone = [model(x[:, m : m + 1]).features for m in range(2)]
    torch.testing.assert_close((alone[0] + alone[1]) / 2, features)
    # Samples do not mix: changing sample 1 leaves sample 0 and 2 as they were.
    x2 = x.clone()
    x2[1] = torch.randn_like(x2[1])
    torch.testing.assert_close(model(x2).features[[0, 2]], features[[0, 2]])


def test_pooled_features_are_fp32_under_bf16_autocast():
    """The GAP reads fp32 even in a bf16 step: torch.compile mis-compiles the bf16 mean on an H200 (stgcn.py)."""
    torch.manual_seed(0)
    model = create_model("stgcn", layout="ntu25", num_classes=5, in_channels=3, **SMALL).eval()
    x = torch.randn(2, 2, 12, 25, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.features.dtype == torch.float32
    torch.testing.assert_close(out.features, model(x).features, atol=0.1, rtol=0.05)  # the same pooling, in bf16


def test_data_bn_has_one_channel_per_joint_and_coordinate():
    """Reference ordering (V, C): BN channel v * C + c normalises coordinate c of joint v, shared by persons."""
    torch.manual_seed(0)
    model = create_model("stgcn", layout="penn13", num_classes=3, in_channels=3, **SMALL).eval()
    offsets = torch.randn(13, 3)  # (V, C)
    x = offsets.expand(2, 2, 5, 13, 3)  # (N, M, T, V, C): every frame and person at the offsets
    want = model(torch.zeros_like(x)).logits
    model.data_bn.running_mean.copy_(offsets.flatten())  # (V*C,)
    torch.testing.assert_close(model(x).logits, want)


def test_edge_importance_knob_and_input_checks():
    with_importance = create_model("stgcn", layout="coco17", num_classes=3, in_channels=3, **SMALL)
    without = create_model("stgcn", layout="coco17", num_classes=3, in_channels=3, edge_importance=False, **SMALL)
    shapes = [b.edge_importance.shape for b in with_importance.blocks]
    assert shapes == [(3, 17, 17)] * 3
    assert all(b.edge_importance is None for b in without.blocks)
    with pytest.raises(ValueError, match="coco17"):
        with_importance(torch.randn(1, 1, 8, 25, 3))
    with pytest.raises(UnknownNameError, match="stgcn"):
        create_model("resnet")
    with pytest.raises(ValueError, match="stage_blocks"):
        STGCNConfig(stage_blocks=(2, 0))


def test_edge_importance_scales_the_graph():
    """Zero importance cuts every spatial path, so the output no longer depends on the input; ones keep the graph."""
    torch.manual_seed(0)
    model = create_model("stgcn", layout="coco17", num_classes=3, in_channels=3, **SMALL).eval()
    x1, x2 = torch.randn(2, 1, 2, 8, 17, 3)
    assert not torch.allclose(model(x1).logits, model(x2).logits)
    with torch.no_grad():
        for block in model.blocks:
            block.edge_importance.zero_()
    torch.testing.assert_close(model(x1).logits, model(x2).logits)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hop_distance_is_bfs_distance(layout):
    lay = LAYOUTS[layout]
    full = bfs_distances(lay)
    np.testing.assert_array_equal(hop_distance(lay.edges, lay.num_joints), full)
    np.testing.assert_array_equal(hop_distance(lay.edges, lay.num_joints, max_hop=1), np.where(full <= 1, full, np.inf))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_spatial_partition_subsets(layout):
    lay = LAYOUTS[layout]
    to_center = bfs_distances(lay)[:, lay.center]
    adjacency = spatial_partition(lay)
    assert adjacency.shape == (3, lay.num_joints, lay.num_joints)
    np.testing.assert_array_equal(adjacency[0], np.eye(lay.num_joints))
    for w in range(lay.num_joints):  # target joint w, literal neighbour lists
        nbrs = [b if a == w else a for a, b in lay.edges if w in (a, b)]
        nearer = [v for v in nbrs if to_center[v] < to_center[w]]
        farther = [v for v in nbrs if to_center[v] >= to_center[w]]
        for k, subset in ((1, nearer), (2, farther)):
            expected = np.zeros(lay.num_joints)
            expected[subset] = 1 / len(subset) if subset else 0
            np.testing.assert_allclose(adjacency[k][:, w], expected)


def test_spatial_partition_hand_checked_penn13():
    lay = get_layout("penn13")  # centre: head
    adjacency = spatial_partition(lay)
    head, l_sh, r_sh, l_el = (lay.index(j) for j in ("head", "left_shoulder", "right_shoulder", "left_elbow"))
    assert adjacency[1][head, l_sh] == 1.0  # left shoulder's one nearer neighbour is the head
    assert adjacency[2][l_sh, head] == 0.5 and adjacency[2][r_sh, head] == 0.5  # head hears both shoulders
    assert adjacency[1][l_sh, l_el] == 1.0 and adjacency[2][l_el, l_sh] == 0.5  # shoulder: elbow and hip farther


@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_part_pool_matches_literal_mean(grouping, layout):
    g = torch.Generator().manual_seed(0)
    lay, group = LAYOUTS[layout], GROUPINGS[grouping]
    features = torch.randn(2, 3, 4, lay.num_joints, generator=g, dtype=torch.float64)  # (N, C, T', V)
    got = part_pool(features, group, lay)
    for n in range(2):
        for p, joints in enumerate(group.part_indices(lay)):
            want = features[n][:, :, list(joints)].mean((1, 2))  # mean over time and the part's joints
            torch.testing.assert_close(got[n, p], want)


def test_part_pool_leaves_out_missing_joints():
    lay = get_layout("penn13")
    features = torch.randn(2, 3, 4, 13, dtype=torch.float64)
    scores = torch.ones(2, 2, 6, 13)  # (N, M, T, V)
    parts = [list(j) for j in GROUPINGS["halves2"].part_indices(lay)]  # upper, lower
    scores[0, :, :, parts[1][0]] = 0  # sample 0: first lower-body joint never seen
    scores[0, :, :3, parts[1][1]] = 0  # sample 0: second lower-body joint seen in half the frames
    scores[1, :, :, parts[0]] = 0  # sample 1: the whole upper body missing
    got = part_pool(features, "halves2", lay, scores=scores)
    joint_means = features.mean(2)  # (N, C, V)
    lower = parts[1]
    weights = torch.tensor([0.0, 0.5] + [1.0] * (len(lower) - 2), dtype=torch.float64)
    torch.testing.assert_close(got[0, 1], (joint_means[0][:, lower] * weights).sum(1) / weights.sum())
    torch.testing.assert_close(got[0, 0], joint_means[0][:, parts[0]].mean(1))
    torch.testing.assert_close(got[1, 0], joint_means[1][:, parts[0]].mean(1))  # all missing: plain mean
    torch.testing.assert_close(got[1, 1], joint_means[1][:, lower].mean(1))
    torch.testing.assert_close(
        part_pool(features, "halves2", lay, scores=torch.ones(2, 13)), part_pool(features, "halves2", lay)
    )


@pytest.mark.slow  # the training-step benchmark
def test_bench_smoke_and_its_json_for_the_reference_script(tmp_path, capsys):
    """``partkd bench train --json FILE``: the object bench_vs_reference.py reads, each entry at the device's training
    precision, its TFLOP/s the FLOP count of that step over its median time. (The data path: test_raydata.py.)"""
    import json

    from torch.utils.flop_counter import FlopCounterMode

    from partkd.bench.train import SHAPES, main, run_train_bench

    rows = run_train_bench(shapes=("tiny",), dtypes=("fp32",), steps=2, warmup=1, device="cpu")
    assert [r["step"] for r in rows] == ["teacher_step", "student_kd_batch", "student_kd_bank", "inference",
                                         "part_matrix"]
    assert all(r["samples_per_s"] > 0 and r["dtype"] == "fp32" and not r["compile"] for r in rows)
    main(["--shapes", "tiny", "--steps", "2", "--warmup", "1", "--device", "cpu", "--no-data-path",
          "--json", str(tmp_path / "b.json")])
    report = json.loads((tmp_path / "b.json").read_text())
    assert (report["dtype"], report["shape"], report["device"]) == ("bf16" if native_bf16("cpu") else "fp32", "tiny",
                                                                    "cpu")
    assert report["torch"] == torch.__version__ and set(report["not_measured"]) == {"data_path"}
    shape = SHAPES["tiny"]
    teacher = create_model("stgcn", layout="ntu25", num_classes=60, **shape.model).train()  # the step, literally
    x = torch.randn(shape.batch, shape.persons, shape.frames, 25, 3)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(teacher(x)[0], torch.zeros(shape.batch, dtype=torch.long)).backward()
    entry = report["teacher_step"]
    assert entry["gflop_per_sample"] == pytest.approx(counter.get_total_flops() / shape.batch / 1e9)
    assert entry["tflops"] == pytest.approx(entry["gflop_per_sample"] * entry["samples_per_s"] / 1e3)
    assert report["inference"]["gflop_per_sample"] < entry["gflop_per_sample"] / 2  # a forward alone
    e = report["part_matrix"]  # a forward per part (paper5: 5) of each clip
    assert e["gflop_per_sample"] == pytest.approx(5 * report["inference"]["gflop_per_sample"])
    assert e["seconds_for_40k_clips"] == pytest.approx(40_000 / e["samples_per_s"])
    assert "JSON: " in capsys.readouterr().out
    with pytest.warns(DeprecationWarning, match="moved to partkd.bench.train.run_train_bench"):
        from partkd.bench import run_train_bench as alias  # the module's name before 0.2, for one release
    assert alias is run_train_bench


def test_projection_head_and_its_deprecated_alias():
    from partkd.models import ProjectionHead

    parts = torch.randn(3, 5, 16)
    assert ProjectionHead(16, 16)(parts) is parts
    head = ProjectionHead(16, 32)
    assert head(parts).shape == (3, 5, 32)
    assert sum(p.numel() for p in head.parameters()) == 16 * 32
    with pytest.warns(DeprecationWarning, match="moved to partkd.models.ProjectionHead"):
        from partkd.losses import ProjectionHead as alias
    assert alias is ProjectionHead
