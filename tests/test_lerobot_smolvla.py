"""The SmolVLA network (`vlaedge.models.lerobot.smolvla`) against LeRobot 0.4.4's own output.

The fixture ../shared/cases/lerobot_policies/smolvla_tiny/ was written by LeRobot's code with transformers
4.57 (its README says how): `reference.npz` holds the preprocessor output (`pre/*`), the flow-matching
noise LeRobot drew (`noise/00_normal`) and `action_chunk_normalized`, what
`SmolVLAPolicy.predict_action_chunk` returned. Here the network alone is checked: the checkpoint's tensor
names, shapes and dtypes; the same normalized actions (measured max error 1.1e-7 of the action range,
bound 1e-4); the same actions with the language padded to tokenizer_max_length; the per-stage methods
composed by vlaedge's stage executor; an ONNX export with a dynamic batch; and the errors.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_helpers import (
    LEROBOT_CASES,
    checkpoint_state,
    flow_stage_plan,
    load_network,
    load_reference,
    onnx_and_torch,
    onnx_session,
    pre_batch,
    relative_error,
    tensor_layout,
    torch_stage_runner,
)

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot import smolvla
from vlaedge.models.stages import COMPOSITION_TOLERANCE, run_plan
from vlaedge.models.weights import empty_parameters

CASE = LEROBOT_CASES / "smolvla_tiny"
FOLDER = CASE / "pretrained_model"
BOUND = 1e-4  # of each action dimension's range: the fidelity contract
CAMERAS = ("observation.images.top", "observation.images.wrist")
PREFIX = ("observation.language.tokens", "observation.language.attention_mask", "observation.state")

needs_fixture = pytest.mark.skipif(
    not CASE.is_dir() or importlib.util.find_spec("transformers") is None,
    reason="needs ../shared/cases/lerobot_policies beside the repo and transformers (vlaedge[hf])")


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((FOLDER / "config.json").read_text())


def load_net(config: dict) -> torch.nn.Module:
    """The network built with meta parameters and loaded as the adapter loads it."""
    return load_network(lambda: smolvla.build(config, FOLDER), checkpoint_state(FOLDER, smolvla.ROOT), FOLDER)


@pytest.fixture(scope="module")
def net(config):
    return load_net(config)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return load_reference(CASE)


@pytest.fixture(scope="module")
def actions(net, reference) -> np.ndarray:
    """The network's actions for the 8 reference samples as one batch."""
    with torch.no_grad():
        return net(noised_batch(reference)).numpy()


def noised_batch(reference: dict, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """The preprocessor output LeRobot fed the policy and the noise it drew, as one batch. The 8 samples'
    language tokens are right-padded to the longest (8) with attention mask False, as stored."""
    return pre_batch(reference, rows, noise="noise/00_normal")


@needs_fixture
def test_state_dict_names_shapes_dtypes_equal_the_checkpoint(config):
    with empty_parameters():
        module = smolvla.build(config, FOLDER)
    expected, got = tensor_layout(checkpoint_state(FOLDER, smolvla.ROOT)), tensor_layout(module.state_dict())
    assert got == expected  # computed buffers (RoPE inv_freq, patch positions) stay out of the state dict
    assert all(p.is_meta for p in module.parameters())
    assert smolvla.noise_shapes(config) == {"noise": (10, 32)}
    assert smolvla.vlm_folder(config, FOLDER) == (CASE / "tiny_smolvlm2").resolve()


@needs_fixture
def test_loaded_network_has_every_parameter(net):
    assert not any(p.is_meta for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == 425_728  # the fixture README's count


@needs_fixture
def test_actions_equal_lerobot(actions, reference):
    assert actions.shape == (8, 10, 6) and actions.dtype == np.float32
    assert relative_error(actions, reference) < BOUND  # measured 1.1e-7 (4.8e-7 absolute)


@needs_fixture
def test_language_padded_to_tokenizer_max_length_gives_the_same_actions(net, actions, reference, config):
    batch = noised_batch(reference)
    length = config["tokenizer_max_length"]
    for key in ("observation.language.tokens", "observation.language.attention_mask"):
        batch[key] = torch.nn.functional.pad(batch[key], (0, length - batch[key].shape[1]))
    with torch.no_grad():
        padded = net(batch).numpy()
    assert batch["observation.language.tokens"].shape == (8, 48)
    assert np.abs(padded - actions).max() < 1e-5  # measured 4e-7
    assert relative_error(padded, reference) < BOUND


@needs_fixture
def test_stages_run_by_the_stage_executor_equal_forward(net, reference, config):
    batch = noised_batch(reference, slice(0, 3))
    plan = flow_stage_plan(CAMERAS, list(PREFIX), config["num_steps"])
    feeds = {k: v.numpy() for k, v in batch.items()}
    staged = run_plan(plan, torch_stage_runner(net), feeds, ["action"])["action"]
    with torch.no_grad():
        whole = net(batch).numpy()
        tokens = net.embed_images(*(batch[k] for k in CAMERAS))
        keys, values, mask = net.encode_prefix(tokens, *(batch[k] for k in PREFIX))
    assert tokens.shape == (3, 32, 64)  # 2 cameras x 16 tokens, text hidden 64
    assert keys.shape == values.shape == (4, 3, 2, 41, 16)  # (layers, B, kv heads, 32 + 8 + 1, head_dim)
    assert mask.shape == (3, 41) and mask.dtype == torch.bool
    assert np.abs(staged - whole).max() < COMPOSITION_TOLERANCE  # measured 5e-7
    assert relative_error(staged, reference, slice(0, 3)) < BOUND


@needs_fixture
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # static shapes (image size, token counts)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False is what vlaedge's export uses
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_export_with_dynamic_batch_matches_torch(net, reference, tmp_path):
    pytest.importorskip("onnxruntime")
    batch = noised_batch(reference)
    session = onnx_session(net, batch, tmp_path / "smolvla.onnx")
    rows = slice(0, 3)  # a batch size other than the traced one
    onnx_out, torch_out = onnx_and_torch(session, net, batch, rows)
    assert onnx_out.shape == (3, 10, 6)
    assert np.abs(onnx_out - torch_out).max() < BOUND  # measured 1e-7
    assert relative_error(onnx_out, reference, rows) < BOUND


@needs_fixture
def test_load_vlm_weights_runs_the_vlm_in_bfloat16_as_lerobot_does(config, reference):
    net = load_net({**config, "load_vlm_weights": True})
    vlm = {p.dtype for n, p in net.named_parameters() if n.startswith("vlm_with_expert.vlm.")}
    rest = {p.dtype for n, p in net.named_parameters() if not n.startswith("vlm_with_expert.vlm.")}
    assert vlm == {torch.bfloat16} and rest == {torch.float32}
    with torch.no_grad():
        actions = net(noised_batch(reference, slice(0, 2))).numpy()
    assert actions.dtype == np.float32
    # bfloat16 rounding and 4.57's bfloat16 patch positions: not LeRobot's float32 run (measured 2.3e-3)
    assert relative_error(actions, reference, slice(0, 2)) < 1e-2


@needs_fixture
def test_empty_cameras_are_left_out(config):
    features = {**config["input_features"], "observation.images.empty_camera_0": {
        "type": "VISUAL", "shape": [3, 480, 640]}}
    spec = smolvla.SmolVLASpec.from_config({**config, "empty_cameras": 1, "input_features": features})
    # LeRobot feeds them as all -1 images whose tokens every query masks out: no effect on the actions
    assert spec.cameras == CAMERAS


def test_patch_positions_follow_transformers_4_57():
    from vlaedge.models.lerobot.smolvla_expert import patch_positions

    assert patch_positions(1, 8, 8, torch.float32).tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    assert patch_positions(1, 8, 8, torch.bfloat16).tolist() == list(range(8))


@needs_fixture
def test_hub_id_without_local_files_is_refused_naming_the_file(config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(VlaedgeError, match=r"no config\.json was found .*never downloads"):
        smolvla.build({**config, "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"}, FOLDER)


@pytest.mark.parametrize(("field", "value"), [
    ("add_image_special_tokens", True), ("adapt_to_pi_aloha", True), ("use_cache", False),
    ("num_expert_layers", 2), ("resize_imgs_with_padding", [64])])
def test_unsupported_config_fields_are_refused_by_name(field, value):
    config = {"input_features": {"observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
                                 "observation.state": {"type": "STATE", "shape": [6]}},
              "output_features": {"action": {"type": "ACTION", "shape": [6]}}, "num_vlm_layers": 4,
              field: value}
    with pytest.raises(VlaedgeError, match=f"config.json: {field} = "):
        smolvla.SmolVLASpec.from_config(config)


def test_without_transformers_build_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(VlaedgeError, match="SmolVLA needs transformers") as e:
        smolvla.build({}, Path("."))
    assert "vlaedge[hf]" in str(e.value)


def test_spec_reads_resize_as_width_then_height():
    config = {"input_features": {"observation.images.top": {"type": "VISUAL", "shape": [3, 96, 128]},
                                 "observation.state": {"type": "STATE", "shape": [6]}},
              "output_features": {"action": {"type": "ACTION", "shape": [6]}},
              "resize_imgs_with_padding": [64, 48]}
    spec = smolvla.SmolVLASpec.from_config(config)
    assert spec.image_size == (48, 64) and spec.resize
    images = torch.ones(1, 3, 96, 128)
    padded = smolvla.resize_with_pad(images, 64, 64)  # 96x128 -> 48x64, 16 rows of 0 on top
    assert padded.shape == (1, 3, 64, 64)
    assert padded[:, :, :16].abs().max() == 0 and torch.allclose(padded[:, :, 16:], torch.ones(1, 3, 48, 64))
