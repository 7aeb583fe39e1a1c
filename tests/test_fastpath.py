"""The fast path (issue 12): training precision, torch.compile, the device-side bank set. Nothing here needs Ray or
MLflow, so ``scripts/gpu-check.sh`` runs this file on a GPU machine too: every test on ``cpu`` and, where there is
one, ``cuda``."""

from __future__ import annotations

import pytest
import torch

from partkd.losses import pmsc_loss
from partkd.models import PartPool, create_model, part_pool
from partkd.train.checkpoint import CheckpointMeta, ModelSpec, load_model, save_checkpoint, unwrap
from partkd.train.config import DataConfig, TrainConfig
from partkd.train.distill import FeatureBank, hq_set_from_batch
from partkd.train.session import autocast, compiled, native_bf16

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_step_matches_fp32_within_tolerance(device):
    """The precision training takes where the device computes bf16 natively (``train.bf16``, on by default): logits
    within 0.05, the loss within 2 %, the gradient's cosine to the fp32 step's above 0.95 (0.973 measured on the
    2-core AMX CPU: bf16's 8-bit mantissa over ten blocks of a freshly initialised model, batch 4)."""
    if not native_bf16(device):
        pytest.skip(f"{device}: absent, or without native bf16 (training stays in fp32 there)")
    torch.manual_seed(0)
    model = create_model("stgcn", layout="coco17", num_classes=10, in_channels=3, dropout=0.0).to(device)
    x = torch.randn(4, 2, 32, 17, 3, device=device)
    teacher_parts = torch.randn(4, 5, model.out_channels, device=device)
    labels, pair = torch.tensor([0, 1, 2, 1], device=device), torch.tensor([0, 1, 2, 3], device=device)
    part_matrix = torch.full((10, 5), 0.2, device=device)

    def step(bf16: bool):
        model.zero_grad()
        with autocast(torch.device(device), bf16):
            logits, features = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels) + pmsc_loss(
                part_pool(features.float(), "paper5", "coco17"), teacher_parts, labels, labels, pair, part_matrix
            )
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        return logits, loss, grad

    logits32, loss32, grad32 = step(False)
    logits16, loss16, grad16 = step(True)
    assert logits32.dtype == torch.float32 and logits16.dtype == torch.bfloat16  # autocast did take effect
    assert torch.isfinite(grad16).all()
    torch.testing.assert_close(logits16.float(), logits32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(loss16, loss32, rtol=0.02, atol=0.02)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.95



@pytest.mark.slow  # torch.compile
def test_model_and_part_pooling_trace_as_one_graph_for_torch_compile():
    """``train.compile``: the backbone and the part pooling of a step are one graph (``fullgraph=True`` fails on any
    break), at the training precision, and the traced forward and backward equal the eager ones. The ``aot_eager``
    backend traces without generating code: inductor's code generation takes ~55 s on the 2-core machine."""
    torch.manual_seed(0)
    model = create_model("stgcn", layout="ntu25", num_classes=4, base_channels=8, stage_blocks=(1, 1), dropout=0.0)
    pool = PartPool("paper5", "ntu25")

    def forward(x):
        out = model(x)
        return out.logits.float(), pool(out.features.float())

    x = torch.randn(4, 1, 12, 25, 3)
    traced = torch.compile(forward, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (traced, forward):
        model.zero_grad()
        with autocast(torch.device("cpu")):  # as a step enters it: around the compiled model
            logits, parts = fn(x)
        (logits.square().sum() + parts.square().sum()).backward()
        results.append((logits, parts, model.blocks[0].gcn.conv.weight.grad.clone()))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)



@pytest.mark.slow  # torch.compile
def test_compile_setting_wraps_the_model_keeps_checkpoints_plain_and_falls_back_where_it_cannot(tmp_path, monkeypatch):
    """``train.compile``: the worker's model is torch.compile's wrapper, a checkpoint holds the plain model's keys
    (loadable with or without compile), and where torch.compile is unsupported the model runs eagerly with a
    warning."""
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # compiled() sets it for the process
    model = create_model("stgcn", layout="ntu25", num_classes=4, base_channels=8, stage_blocks=(1, 1))
    assert compiled(model, TrainConfig()) is model  # off by default
    wrapped = compiled(model, TrainConfig(compile=True))
    assert wrapped is not model and isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert unwrap(wrapped) is model
    spec = ModelSpec("stgcn", "ntu25", 4, ("a", "b", "c", "d"), base_channels=8, stage_blocks=(1, 1))
    save_checkpoint(tmp_path / "ckpt", wrapped, CheckpointMeta(spec, "hq", DataConfig()))
    loaded, _ = load_model(tmp_path / "ckpt")  # plain keys: "_orig_mod." would not load
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.warns(UserWarning, match="train.compile: torch.compile is not supported here; training runs eagerly"):
        assert compiled(model, TrainConfig(compile=True)) is model



def test_batch_mode_pairs_each_row_with_its_own_hq_row_and_solitary_rows_with_none():
    has_hq = torch.tensor([True, True, False, True, True, False, True, True])
    side = hq_set_from_batch(torch.arange(6.0)[:, None], torch.arange(8) % 3, has_hq)
    assert side.pair_index.tolist() == [0, 1, -1, 2, 3, -1, 4, 5]
    assert side.labels.tolist() == [0, 1, 0, 1, 0, 1]  # the labels of the paired rows, in batch order



@pytest.mark.parametrize("device", DEVICES)
def test_bank_set_has_a_fixed_size_and_its_random_entries_never_repeat_a_pair(device):
    """Drawn on ``device`` with a generator there (what ``seed_epoch`` returns), without waiting for it."""
    keys = torch.arange(10, device=device) * 7 - 20
    bank = FeatureBank.from_rows(keys, torch.arange(10.0, device=device)[:, None], torch.arange(10, device=device) % 3)
    batch_keys = torch.stack([keys[3], keys[5], torch.tensor(999, device=device)])
    has_hq = torch.tensor([True, True, False], device=device)
    side = bank.hq_set(batch_keys, has_hq, negatives=200, generator=torch.Generator(device).manual_seed(1))
    assert side.representation.device.type == device
    assert len(side.representation) == 3 + 200  # B + negatives, however many rows are paired
    assert side.pair_index.tolist() == [0, 1, -1]
    assert side.representation[:2].squeeze(1).tolist() == [3.0, 5.0]  # each paired row's own entry
    extra = side.representation[2:].squeeze(1)  # the solitary row's slot and the negatives
    assert not set(extra.tolist()) & {3.0, 5.0}  # the batch's own pairs are not drawn again
    assert set(extra.tolist()) == set(range(10)) - {3, 5}  # every other entry can be
    assert torch.equal(side.labels, (side.representation.squeeze(1) % 3).long())
    # a bank no larger than the batch's pairs: the random entries come from all of it
    small = FeatureBank.from_rows(keys[:2], torch.arange(2.0, device=device)[:, None], torch.arange(2, device=device))
    side = small.hq_set(keys[:2], torch.tensor([True, True], device=device), negatives=50,
                        generator=torch.Generator(device).manual_seed(0))
    assert set(side.representation[2:].squeeze(1).tolist()) == {0.0, 1.0}
    if device == "cpu":  # on a GPU the same check is a device-side assert, which ends the CUDA context
        with pytest.raises(RuntimeError, match="not in the bank"):
            bank.hq_set(torch.tensor([999]), torch.tensor([True]), negatives=0, generator=torch.Generator())
