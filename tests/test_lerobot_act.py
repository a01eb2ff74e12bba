"""The ACT network (`vlaedge.models.lerobot.act`) against LeRobot 0.4.4's own output.

The fixture ../shared/cases/lerobot_policies/act_aloha14/ was written by LeRobot's code (its README says
how): `reference.npz` holds the preprocessor output (`pre/*`) and `action_chunk_normalized`, what
`ACTPolicy.predict_action_chunk` returned for it. Here the network alone is checked: same tensor names and
shapes as model.safetensors, the same normalized actions (measured max error 8e-7, 2e-7 of the action range;
bound 1e-4), and the same actions again from an ONNX export with a dynamic batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_helpers import (
    LEROBOT_CASES,
    checkpoint_state,
    load_network,
    load_reference,
    onnx_and_torch,
    onnx_session,
    pre_batch,
    relative_error,
    tensor_layout,
)

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot import act
from vlaedge.models.weights import empty_parameters

CASE = LEROBOT_CASES / "act_aloha14"
FOLDER = CASE / "pretrained_model"
BOUND = 1e-4  # of each action dimension's range: the fidelity contract

needs_fixture = pytest.mark.skipif(not CASE.is_dir(),
                                   reason="../shared/cases/lerobot_policies is not beside the repo")


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((FOLDER / "config.json").read_text())


@pytest.fixture(scope="module")
def net(config):
    """The fixture's network, built with meta parameters and loaded as the adapter loads it."""
    return load_network(lambda: act.build(config, FOLDER), checkpoint_state(FOLDER, act.ROOT), FOLDER)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_reference(CASE)


@needs_fixture
def test_state_dict_names_shapes_dtypes_equal_the_checkpoint(config):
    with empty_parameters():
        module = act.build(config, FOLDER)
    expected, got = tensor_layout(checkpoint_state(FOLDER, act.ROOT)), tensor_layout(module.state_dict())
    assert got == expected
    assert any(k.startswith("vae_encoder.") for k in got)  # use_vae: true keeps the training-only tensors
    assert all(p.is_meta for p in module.parameters())
    assert act.noise_shapes(config) == {}


@needs_fixture
def test_actions_equal_lerobot_batched_and_one_by_one(net, reference):
    with torch.no_grad():
        batched = net(pre_batch(reference)).numpy()
        single = [net(pre_batch(reference, slice(i, i + 1))).numpy() for i in range(8)]
    assert batched.shape == (8, 20, 14) and batched.dtype == np.float32
    assert relative_error(batched, reference) < BOUND  # measured 2e-7 (8e-7 absolute)
    assert relative_error(np.concatenate(single), reference) < BOUND


@needs_fixture
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # nn.MultiheadAttention's static shape checks
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False is what vlaedge's export uses
def test_onnx_export_with_dynamic_batch_matches_torch(net, reference, tmp_path):
    pytest.importorskip("onnxruntime")
    batch = pre_batch(reference)
    session = onnx_session(net, batch, tmp_path / "act.onnx")
    for n in (1, 8):
        rows = slice(0, n)
        onnx_out, torch_out = onnx_and_torch(session, net, batch, rows)
        assert onnx_out.shape == (n, 20, 14)
        assert np.abs(onnx_out - torch_out).max() < BOUND
        assert relative_error(onnx_out, reference, rows) < BOUND


def tiny_config(**changes) -> dict:
    """A small ACT config.json: two 32x32 cameras of different shapes, state and environment inputs."""
    config = {"type": "act", "chunk_size": 5, "dim_model": 16, "n_heads": 2, "dim_feedforward": 32,
              "n_encoder_layers": 1, "n_decoder_layers": 2, "latent_dim": 4, "n_vae_encoder_layers": 1,
              "input_features": {"observation.images.a": {"type": "VISUAL", "shape": [3, 32, 32]},
                                 "observation.images.b": {"type": "VISUAL", "shape": [3, 64, 32]},
                                 "observation.state": {"type": "STATE", "shape": [3]},
                                 "observation.environment_state": {"type": "ENV", "shape": [2]}},
              "output_features": {"action": {"type": "ACTION", "shape": [4]}}}
    return {**config, **changes}


@pytest.mark.parametrize("pre_norm", [False, True])
def test_other_layouts_build_and_run(pre_norm):
    with empty_parameters():
        module = act.build(tiny_config(pre_norm=pre_norm, use_vae=False), Path("."))
    keys = module.state_dict().keys()
    assert not any(k.startswith("vae_encoder") for k in keys)
    assert {"encoder_env_state_input_proj.weight", "decoder.layers.1.norm3.weight"} <= keys
    assert ("encoder.norm.weight" in keys) == pre_norm
    module = act.build(tiny_config(pre_norm=pre_norm), Path("."))  # real (random) parameters
    batch = {"observation.images.a": torch.randn(2, 3, 32, 32),
             "observation.images.b": torch.randn(2, 3, 64, 32),
             "observation.state": torch.randn(2, 3), "observation.environment_state": torch.randn(2, 2)}
    with torch.no_grad():
        out = module(batch)
    assert out.shape == (2, 5, 4) and torch.isfinite(out).all()
    assert module.image_pos_embed.shape == (1 + 2, 1, 16)  # 1x1 and 2x1 feature maps


@pytest.mark.parametrize(("field", "value"), [
    ("replace_final_stride_with_dilation", True), ("vision_backbone", "resnet50"),
    ("temporal_ensemble_coeff", 0.01), ("feedforward_activation", "glu"), ("n_obs_steps", 2),
])
def test_unsupported_config_is_refused_in_one_line(field, value):
    with pytest.raises(VlaedgeError) as error:
        act.build(tiny_config(**{field: value}), Path("."))
    message = str(error.value)
    assert "\n" not in message
    assert f"config.json: {field} = {value!r} is not supported" in message
