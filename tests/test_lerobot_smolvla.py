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
from safetensors.torch import load_file

from vlaedge.errors import VlaedgeError
from vlaedge.models.checkpoint import check_state_dict
from vlaedge.models.lerobot import smolvla
from vlaedge.models.stages import COMPOSITION_TOLERANCE, StagePlan, run_plan
from vlaedge.models.weights import empty_parameters

CASE = Path(__file__).resolve().parents[2] / "shared" / "cases" / "lerobot_policies" / "smolvla_tiny"
FOLDER = CASE / "pretrained_model"
BOUND = 1e-4  # of each action dimension's range: the fidelity contract
CAMERAS = ("observation.images.top", "observation.images.wrist")
PREFIX = ("observation.language.tokens", "observation.language.attention_mask", "observation.state")

needs_fixture = pytest.mark.skipif(
    not CASE.is_dir() or importlib.util.find_spec("transformers") is None,
    reason="needs ../shared/cases/lerobot_policies beside the repo and transformers (vlaedge[hf])")


def checkpoint_state() -> dict[str, torch.Tensor]:
    """model.safetensors with the `model.` prefix removed (the network's own names)."""
    state = load_file(FOLDER / "model.safetensors")
    assert all(k.startswith(f"{smolvla.ROOT}.") for k in state)
    return {k.removeprefix(f"{smolvla.ROOT}."): v for k, v in state.items()}


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((FOLDER / "config.json").read_text())


def load_net(config: dict) -> torch.nn.Module:
    """The network built with meta parameters and loaded as the adapter loads it."""
    with empty_parameters():
        module = smolvla.build(config, FOLDER)
    check_state_dict(module, checkpoint_state(), FOLDER / "model.safetensors")
    return module


@pytest.fixture(scope="module")
def net(config):
    return load_net(config)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(CASE / "reference.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def actions(net, reference) -> np.ndarray:
    """The network's actions for the 8 reference samples as one batch."""
    with torch.no_grad():
        return net(pre_batch(reference)).numpy()


def pre_batch(reference: dict, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """The preprocessor output LeRobot fed the policy and the noise it drew, as one batch. The 8 samples'
    language tokens are right-padded to the longest (8) with attention mask False, as stored."""
    batch = {k.removeprefix("pre/"): torch.from_numpy(v[rows]) for k, v in reference.items()
             if k.startswith("pre/")}
    batch["noise"] = torch.from_numpy(reference["noise/00_normal"][rows])
    return batch


def relative_error(actions: np.ndarray, reference: dict, rows: slice = slice(None)) -> float:
    """max |actions - LeRobot's| as a fraction of each dimension's range in normalized space."""
    span = (reference["stats/action/max"] - reference["stats/action/min"]) / reference["stats/action/std"]
    return float((np.abs(actions - reference["action_chunk_normalized"][rows]) / span).max())


@needs_fixture
def test_state_dict_names_shapes_dtypes_equal_the_checkpoint(config):
    with empty_parameters():
        module = smolvla.build(config, FOLDER)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in checkpoint_state().items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}
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
    batch = pre_batch(reference)
    length = config["tokenizer_max_length"]
    for key in ("observation.language.tokens", "observation.language.attention_mask"):
        batch[key] = torch.nn.functional.pad(batch[key], (0, length - batch[key].shape[1]))
    with torch.no_grad():
        padded = net(batch).numpy()
    assert batch["observation.language.tokens"].shape == (8, 48)
    assert np.abs(padded - actions).max() < 1e-5  # measured 4e-7
    assert relative_error(padded, reference) < BOUND


def stage_plan(steps: int) -> StagePlan:
    """The plan an adapter declares for SmolVLA: four graphs, the expert run by the Euler loop from t=1
    (noise) to t=0."""
    return StagePlan.model_validate({
        "graphs": [
            {"name": "vision", "call": "embed_images", "inputs": list(CAMERAS), "outputs": ["image_tokens"]},
            {"name": "prefix", "call": "encode_prefix", "inputs": ["image_tokens", *PREFIX],
             "outputs": ["keys", "values", "prefix_mask"]},
            {"name": "expert", "call": "denoise_step", "inputs": ["x", "t", "keys", "values", "prefix_mask"],
             "outputs": ["velocity"]},
            {"name": "unpad", "call": "unpad_actions", "inputs": ["x_0"], "outputs": ["action"]}],
        "denoise": {"stage": "expert", "steps": steps, "init": "noise", "t_start": 1.0, "t_end": 0.0,
                    "output": "x_0"}})


@needs_fixture
def test_stages_run_by_the_stage_executor_equal_forward(net, reference, config):
    batch = pre_batch(reference, slice(0, 3))
    plan = stage_plan(config["num_steps"])

    def run_stage(stage, feeds):
        with torch.no_grad():
            out = getattr(net, stage.call)(*(torch.from_numpy(feeds[n]) for n in stage.inputs))
        out = out if isinstance(out, tuple) else (out,)
        return {n: t.numpy() for n, t in zip(stage.outputs, out, strict=True)}

    feeds = {k: v.numpy() for k, v in batch.items()}
    staged = run_plan(plan, run_stage, feeds, ["action"])["action"]
    with torch.no_grad():
        whole = net(batch).numpy()
        tokens = net.embed_images(*(batch[k] for k in CAMERAS))
        keys, values, mask = net.encode_prefix(tokens, *(batch[k] for k in PREFIX))
    assert tokens.shape == (3, 32, 64)  # 2 cameras x 16 tokens, text hidden 64
    assert keys.shape == values.shape == (4, 3, 2, 41, 16)  # (layers, B, kv heads, 32 + 8 + 1, head_dim)
    assert mask.shape == (3, 41) and mask.dtype == torch.bool
    assert np.abs(staged - whole).max() < COMPOSITION_TOLERANCE  # measured 5e-7
    assert relative_error(staged, reference, slice(0, 3)) < BOUND


class _Positional(torch.nn.Module):
    """The dict-taking network with positional inputs, as torch.onnx.export needs."""

    def __init__(self, net, names):
        super().__init__()
        self.net, self.names = net, names

    def forward(self, *inputs):
        return self.net(dict(zip(self.names, inputs, strict=True)))


@needs_fixture
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # static shapes (image size, token counts)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False is what vlaedge's export uses
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_export_with_dynamic_batch_matches_torch(net, reference, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    batch = pre_batch(reference)
    names = list(batch)
    path = tmp_path / "smolvla.onnx"
    torch.onnx.export(_Positional(net, names), tuple(batch[k][:2] for k in names), path, dynamo=False,
                      opset_version=17, input_names=names, output_names=["action"],
                      dynamic_axes={**{k: {0: "batch"} for k in names}, "action": {0: "batch"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rows = slice(0, 3)  # a batch size other than the traced one
    onnx_out = session.run(None, {k: v[rows].numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        torch_out = net(pre_batch(reference, rows)).numpy()
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
        actions = net(pre_batch(reference, slice(0, 2))).numpy()
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
