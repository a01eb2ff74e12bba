"""Pruning: structured (heads, MLP channels, blocks) on the reference VLA, recovery, and 2:4 sparsity.

Shape tests use fresh nano policies; drift claims (importance beats random, recovery helps, SparseGPT
drift) use the briefly trained nano policy of the session fixture `trained_policy(head)` (conftest.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlaedge.compress import prune_ops as _prune_ops
from vlaedge.compress.prune import prune
from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.reference import ReferencePolicy
from vlaedge.models.vla import count_parameters
from vlaedge.recipe import PruneConfig, RecoverConfig

torch = pytest.importorskip("torch")

CALIB = 128  # calibration frames for the trained-policy tests (the recipe default)
EVAL = 96  # held-out evaluation frames


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunk_policy(trained_policy):
    return trained_policy("chunk")


@pytest.fixture(scope="module")
def tabletop(chunk_policy, tabletop_frames):
    """(calibration, evaluation) feeds from expert episodes the policy was not trained on."""
    return (chunk_policy.make_inputs(tabletop_frames(CALIB, seed=5001)),
            chunk_policy.make_inputs(tabletop_frames(EVAL, seed=5002)))


def _drift(reference, candidate, feeds) -> float:
    """Mean absolute difference of decoded actions (environment units)."""
    return float(np.abs(reference.decode(reference.run_torch(feeds)) -
                        candidate.decode(candidate.run_torch(feeds))).mean())


def _fresh(head: str) -> ReferencePolicy:
    torch.manual_seed(0)
    return ReferencePolicy.build("nano", head, vocab=["pick", "up", "the", "red", "block"], image_size=32)


# --- structured -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["tokens", "chunk", "flow"])
def test_heads_and_channels_are_removed(head):
    policy = _fresh(head)
    before = {k: v.clone() for k, v in policy.module.state_dict().items()}
    result = prune(policy, PruneConfig(method="structured", heads=0.25, mlp=0.5, num_frames=8),
                   [policy.example_inputs(8)])
    pruned, cfg = result.policy, result.policy.config
    blocks = [*pruned.module.vision_tower.blocks, *pruned.module.fusion]
    widths = [cfg.dim] * len(blocks)
    if head == "flow":
        blocks += list(pruned.module.action_head.blocks)
        widths += [cfg.expert_dim] * cfg.expert_depth
    assert len(blocks) == len(result.blocks_before)  # no block removed
    expected_removed = 0
    for block, width in zip(blocks, widths, strict=True):
        hd = width // cfg.num_heads  # 32 in the trunk, 16 in the flow expert
        attn, mlp = block.attn, block.mlp
        assert attn.num_heads == 3 and attn.head_dim == hd
        assert all(p.weight.shape == (3 * hd, width) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        assert attn.o_proj.weight.shape == (width, 3 * hd)
        assert mlp.fc1.weight.shape == (2 * width, width) and mlp.fc2.weight.shape == (width, 2 * width)
        expected_removed += 3 * hd * (width + 1) + width * hd  # one head: q/k/v rows, o_proj columns
        expected_removed += 2 * width * (width + 1) + width * 2 * width  # fc1 rows, fc2 columns
    assert cfg.block_heads == [3] * len(blocks) and cfg.block_mlp == [2 * w for w in widths]
    assert result.params_before - result.params_after == expected_removed
    assert result.params_after == count_parameters(pruned.module)
    assert result.flops_after < result.flops_before
    assert [b["heads"] for b in result.blocks_after] == [3] * len(blocks)
    # the input policy is untouched: it is the teacher and the drift reference
    assert all(torch.equal(before[k], v) for k, v in policy.module.state_dict().items())
    assert count_parameters(policy.module) == result.params_before


def test_block_removal_keeps_every_stack():
    policy = _fresh("flow")  # vision 2, fusion 2, expert 1: at most 2 blocks can go
    calibration = [policy.example_inputs(8)]
    result = prune(policy, PruneConfig(method="structured", blocks=2, num_frames=8), calibration)
    cfg = result.policy.config
    assert (cfg.vision_depth, cfg.fusion_depth, cfg.expert_depth) == (1, 1, 1)
    assert len(result.removed_blocks) == 2 and "expert.0" not in result.removed_blocks
    assert [b["block"] for b in result.blocks_after] == [
        b["block"] for b in result.blocks_before if b["block"] not in result.removed_blocks]
    assert len(cfg.block_heads) == len(cfg.block_mlp) == 3
    actions = result.policy.run_torch(policy.example_inputs(2))["actions"]
    assert actions.shape == (2, cfg.chunk, cfg.action_dim)
    with pytest.raises(VlaedgeError, match="at most 2 can go"):
        prune(policy, PruneConfig(method="structured", blocks=3, num_frames=8), calibration)


def test_pruned_policy_saves_reloads_and_exports(tmp_path):
    from vlaedge.compress.export import export_onnx

    policy = _fresh("flow")
    result = prune(policy, PruneConfig(method="structured", heads=0.5, mlp=0.25, blocks=1, num_frames=8),
                   [policy.example_inputs(8)])
    loaded = load_policy(result.policy.save(tmp_path / "pruned"))
    assert loaded.config.block_heads == result.policy.config.block_heads
    feeds = policy.example_inputs(4, seed=1)
    np.testing.assert_array_equal(loaded.run_torch(feeds)["actions"],
                                  result.policy.run_torch(feeds)["actions"])
    exported = export_onnx(loaded, tmp_path / "model.onnx", check_feeds=feeds)  # ONNX Runtime vs torch
    assert exported.check and exported.check.max_abs < 1e-4
    assert exported.inputs == ["image", "instruction_ids", "state", "noise"]


def test_importance_beats_random_and_recovery_helps(chunk_policy, tabletop):
    calibration, evaluation = tabletop
    config = PruneConfig(method="structured", heads=0.5, mlp=0.5, num_frames=CALIB)
    ranked = prune(chunk_policy, config, [calibration])
    random = [prune(chunk_policy, config, [calibration], ranking="random", seed=s) for s in (0, 1)]
    drift = _drift(chunk_policy, ranked.policy, evaluation)
    random_drift = [_drift(chunk_policy, r.policy, evaluation) for r in random]
    assert drift < 0.8 * min(random_drift), (drift, random_drift)

    with_recovery = config.model_copy(update={"recover": RecoverConfig(steps=100)})
    recovered = prune(chunk_policy, with_recovery, [calibration])
    recovered_drift = _drift(chunk_policy, recovered.policy, evaluation)
    stats = recovered.recovery
    if stats.kept:  # distillation matched the teacher better on the calibration frames: held-out too
        assert stats.loss_after < stats.loss_before
        assert recovered_drift < drift, (recovered_drift, drift)
    else:  # it did not: the pruned weights are handed back unchanged
        assert stats.loss_after > stats.loss_before
        assert recovered_drift == pytest.approx(drift), (recovered_drift, drift)


# --- 2:4 sparsity ---------------------------------------------------------------------------------------


def _assert_24(result):
    modules = dict(result.policy.module.named_modules())
    assert result and result.sparsity.pattern_ok and result.sparsity.layers
    for name in result.sparsity.layers:
        w = modules[name].weight.detach()
        groups = w.reshape(w.shape[0], -1, 4)
        assert ((groups == 0).sum(-1) >= 2).all(), name
    assert result.params_after == result.params_before and result.flops_after == result.flops_before
    assert any("TensorRT" in n and "CPU" in n for n in result.notes)


def test_sparsegpt_24_pattern(chunk_policy, tabletop):
    calibration, evaluation = tabletop
    before = {k: v.clone() for k, v in chunk_policy.module.state_dict().items()}
    result = prune(chunk_policy, PruneConfig(method="sparsity-2:4", num_frames=32), [calibration])
    _assert_24(result)
    assert result.sparsity.algorithm == "sparsegpt"
    assert "state_proj.0" in result.sparsity.dense_layers  # 4 inputs: left dense
    assert "fusion.0.mlp.fc1" in result.sparsity.layers
    assert 0.0 < _drift(chunk_policy, result.policy, evaluation) < 0.2
    assert all(torch.equal(before[k], v) for k, v in chunk_policy.module.state_dict().items())
    json.dumps(result.to_dict())


TOY_SPEC = {  # tests/toy_policy.py behind the python adapter; its head Linear: 84 inputs -> 12 outputs
    "family": "python", "factory": "toy_policy:build", "factory_kwargs": {"width": 16, "chunk": 4},
    "inputs": [
        {"name": "rgb", "shape": ["B", 3, 32, 32], "dtype": "uint8", "low": 0, "high": 255,
         "source": "image"},
        {"name": "text", "shape": ["B", 6], "dtype": "int64", "low": 0, "high": 6, "source": "instruction"},
        {"name": "proprio", "shape": ["B", 4], "dtype": "float32", "source": "state"},
    ],
    "tokenizer": {"vocab": ["pick", "up", "the", "red", "block"]},
    "outputs": ["actions"],
    "actions": {"names": ["dx", "dy", "grip"], "low": [-1, -1, 0], "high": [1, 1, 1], "chunk": 4,
                "normalised": True},
}


def test_magnitude_fallback_and_python_family(monkeypatch):
    from vlaedge.models.python import PythonPolicy, PythonPolicySpec

    def unavailable(*args, **kwargs):
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setattr(_prune_ops, "sparsegpt", unavailable)
    policy = PythonPolicy(PythonPolicySpec.model_validate(TOY_SPEC))
    result = prune(policy, PruneConfig(method="sparsity-2:4", num_frames=8, recover=RecoverConfig(steps=3)),
                   [policy.example_inputs(8)])
    _assert_24(result)  # the masks survive the recovery steps
    assert result.sparsity.algorithm == "magnitude" and "no NVIDIA driver" in result.sparsity.fallback_reason
    assert result.sparsity.layers == ["head"] and type(result.policy) is PythonPolicy
    assert not (policy.module.head.weight == 0).any()
    with pytest.raises(VlaedgeError, match="prune.heads is set but the model has no attention"):
        prune(policy, PruneConfig(method="structured", heads=0.5, num_frames=8), [policy.example_inputs(8)])


# --- input checks and result ------------------------------------------------------------------------------


def test_bad_calibration_is_a_user_error():
    policy = _fresh("flow")
    config = PruneConfig(method="structured", heads=0.25, num_frames=16)
    with pytest.raises(VlaedgeError, match=r"prune: 8 calibration frames, prune.num_frames needs 16 "
                                           r"\(add episodes or lower prune.num_frames\)"):
        prune(policy, config, [policy.example_inputs(8)])
    feeds = policy.example_inputs(16)
    feeds["noise"][3, 0, 1] = np.nan
    with pytest.raises(VlaedgeError, match="batch 0 input 'noise' has 1 NaN/Inf values"):
        prune(policy, config, [feeds])
    feeds = policy.example_inputs(16)
    del feeds["noise"]
    with pytest.raises(VlaedgeError, match="lacks input"):
        prune(policy, config, [feeds])
    with pytest.raises(VlaedgeError, match="has shape"):
        prune(policy, config, [{**policy.example_inputs(16), "state": np.zeros((16, 7), np.float32)}])


def test_result_reports():
    policy = _fresh("tokens")
    config = PruneConfig(method="structured", heads=0.25, mlp=0.25, blocks=1, num_frames=8,
                         recover=RecoverConfig(steps=2, batch_size=8))
    result = prune(policy, config, [policy.example_inputs(8)])
    assert result and result.recovery.steps == 2 and "KL" in result.recovery.objective
    data = json.loads(json.dumps(result.to_dict()))
    assert data["policy"] == "reference-tokens" and data["removed_blocks"] == result.removed_blocks
    assert "FlopCounterMode" in data["flops_method"]
    text = result.summary()
    assert "parameters" in text and "removed" in text and "recovery: 2 steps" in text
