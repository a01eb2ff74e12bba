"""The pi0 / pi0.5 networks (`vlaedge.models.lerobot.pi0`, `pi05`) against LeRobot 0.4.4's own output.

The fixtures in fixtures/lerobot_pi0/ were written by LeRobot 0.4.4's code on transformers 4.53.3 with
openpi's `transformers_replace` changes (the fix/lerobot_openpi branch LeRobot requires), at tiny sizes
(LeRobot's size constants replaced, nothing else; README.md there says how and what is not covered):
`reference.npz` holds the raw observations, the preprocessor output (`pre/*`), the noise LeRobot drew and
`action_chunk_normalized` from `predict_action_chunk`, each sample run alone. Checked here: the tensor names,
shapes and dtypes (tiny, and LeRobot's real sizes from `full_size_tensors.json.gz`), the actions (float32
and LeRobot's bfloat16 mixed precision), pi0.5's state prompt and its tokens, the stages composed by
vlaedge's stage executor, an ONNX export with a dynamic batch, and the refusals.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_helpers import (
    PI0_FIXTURES,
    checkpoint_state,
    export,
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
from vlaedge.models.lerobot import pi0, pi05
from vlaedge.models.lerobot.pi0_gemma import GemmaSize, PaliGemmaSizes
from vlaedge.models.lerobot.pi0_siglip import VisionSize
from vlaedge.models.stages import COMPOSITION_TOLERANCE, StagePlan, run_plan
from vlaedge.models.weights import empty_parameters

BOUND = 1e-4  # of each action dimension's range: the fidelity contract
CAMERAS = ("observation.images.top", "observation.images.wrist")
# tied to paligemma.lm_head.weight; LeRobot's save_pretrained keeps one of the two names
TIED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
FLOAT32 = ("pi0_tiny", "pi05_tiny")


def tiny_sizes() -> PaliGemmaSizes:
    s = json.loads((PI0_FIXTURES / "tiny_sizes.json").read_text())
    return PaliGemmaSizes(GemmaSize(**s["vlm"]), GemmaSize(**s["expert"]), VisionSize(**s["vision"]),
                          s["vocab"])


def folder(name: str) -> Path:
    return PI0_FIXTURES / name / "pretrained_model"


def config(name: str) -> dict:
    return json.loads((folder(name) / "config.json").read_text())


def load_net(name: str) -> torch.nn.Module:
    """The network built with meta parameters and loaded as the adapter loads it."""
    state = checkpoint_state(folder(name), pi0.ROOT)
    return load_network(lambda: pi0.build(config(name), folder(name), tiny_sizes()), state, folder(name))


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    return {}


def net_of(nets: dict, name: str) -> torch.nn.Module:
    if name not in nets:
        nets[name] = load_net(name)
    return nets[name]


def reference(name: str) -> dict[str, np.ndarray]:
    return load_reference(PI0_FIXTURES / name)


def noised_batch(ref: dict, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """The preprocessor output LeRobot fed the policy and the noise it drew, as one batch."""
    return pre_batch(ref, rows, noise="noise")


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny", "pi0_tiny_bf16", "pi05_tiny_bf16"])
def test_state_dict_names_shapes_dtypes_equal_the_checkpoint(name):
    with empty_parameters():
        module = pi0.build(config(name), folder(name), tiny_sizes())
    expected = tensor_layout(checkpoint_state(folder(name), pi0.ROOT))
    got = tensor_layout(module.state_dict())
    assert got.keys() - expected.keys() == {TIED}
    del got[TIED]
    assert got == expected  # computed buffers (SigLIP position ids) stay out of the state dict
    assert all(p.is_meta for p in module.parameters())
    assert pi0.noise_shapes(config(name)) == {"noise": (10, 32)}


@pytest.mark.parametrize("kind", ["pi0/float32", "pi0/bfloat16", "pi05/float32", "pi05/bfloat16"])
def test_full_size_names_shapes_dtypes_equal_lerobots(kind):
    with gzip.open(PI0_FIXTURES / "full_size_tensors.json.gz", "rt") as f:
        expected = json.load(f)[kind]
    policy, dtype = kind.split("/")
    features = {"input_features": {"observation.images.base": {"type": "VISUAL", "shape": [3, 224, 224]},
                                   "observation.state": {"type": "STATE", "shape": [8]}},
                "output_features": {"action": {"type": "ACTION", "shape": [7]}}}
    with empty_parameters():
        module = pi0.build({"type": policy, "dtype": dtype, **features}, Path("."))
    got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()}
    assert got == expected  # 778 (pi0) / 813 (pi0.5) tensors, gemma_2b + gemma_300m + SigLIP So400m
    count = sum(p.numel() for p in module.parameters())  # the tied embedding counted once
    assert count == {"pi0": 3_501_372_176, "pi05": 3_616_757_520}[policy]


@pytest.mark.parametrize("name", FLOAT32)
def test_actions_equal_lerobot(nets, name):
    ref = reference(name)
    with torch.no_grad():
        actions = net_of(nets, name)(noised_batch(ref)).numpy()
    assert actions.shape == (4, 10, 6) and actions.dtype == np.float32
    assert relative_error(actions, ref) < BOUND  # measured pi0 4.2e-7, pi0.5 2.1e-7 (1.7e-6, 4.8e-7 abs.)


@pytest.mark.parametrize("name", ["pi0_tiny_bf16", "pi05_tiny_bf16"])
def test_bfloat16_actions_equal_lerobot_sample_by_sample(nets, name):
    ref = reference(name)
    net = net_of(nets, name)
    rows = (0, 3)
    with torch.no_grad():  # LeRobot ran each sample alone; bfloat16 GEMMs round by batch size
        actions = np.concatenate([net(noised_batch(ref, slice(i, i + 1))).numpy() for i in rows])
    assert actions.dtype == np.float32
    assert relative_error(actions, ref, list(rows)) < BOUND  # measured 0 for both (batched: pi0 2e-3)


def test_pi05_ignores_the_state_input(nets):
    ref = reference("pi05_tiny")
    batch = noised_batch(ref, slice(0, 1))
    net = net_of(nets, "pi05_tiny")
    with torch.no_grad():
        a = net(batch)
        b = net({**batch, "observation.state": batch["observation.state"] + 1.0})
    assert torch.equal(a, b)


def test_pi05_state_prompts_and_tokens_equal_lerobots():
    from vlaedge.models.tokenizer import FileTokenizer

    ref = reference("pi05_tiny")
    raw = torch.from_numpy(ref["obs/observation.state"])
    q01, q99 = (torch.from_numpy(ref[f"stats/observation.state/{s}"]) for s in ("q01", "q99"))
    normalized = 2 * (raw - q01) / torch.where(q99 - q01 == 0, torch.full_like(q01, 1e-8), q99 - q01) - 1
    assert torch.equal(normalized, torch.from_numpy(ref["pre/observation.state"]))  # LeRobot's normalizer
    prompts = pi05.state_prompts(list(ref["tasks"]), normalized.numpy(), config("pi05_tiny")["max_state_dim"])
    assert prompts == list(ref["prompts"])  # bins -1 (below), 255 (above) and 128 (padding) included
    tokenizer = FileTokenizer(PI0_FIXTURES / "paligemma_tokenizer" / "tokenizer.json", 200)
    ids, mask = tokenizer.encode_with_mask(prompts)
    assert np.array_equal(ids, ref["pre/observation.language.tokens"])
    assert np.array_equal(mask.astype(bool), ref["pre/observation.language.attention_mask"])


def test_discretize_state_edges():
    bins = pi05.discretize_state(np.array([[-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]], np.float32), 8)
    assert bins.tolist() == [[-1, 0, 128, 255, 255, 255, 128, 128]]


def stage_plan(kind: str, steps: int) -> StagePlan:
    """The plan an adapter declares; pi0's prefix takes the state (its state token joins the cache), pi0.5's
    does not."""
    prefix = ["observation.language.tokens", "observation.language.attention_mask"]
    if kind == "pi0":
        prefix.append("observation.state")
    return flow_stage_plan(CAMERAS, prefix, steps)


@pytest.mark.parametrize("name", FLOAT32)
def test_stages_run_by_the_stage_executor_equal_forward(nets, name):
    ref, net = reference(name), net_of(nets, name)
    batch = noised_batch(ref, slice(0, 2))
    plan = stage_plan(net.spec.kind, config(name)["num_inference_steps"])
    feeds = {k: v.numpy() for k, v in batch.items()}
    staged = run_plan(plan, torch_stage_runner(net), feeds, ["action"])["action"]
    with torch.no_grad():
        whole = net(batch).numpy()
        tokens = net.embed_images(*(batch[k] for k in CAMERAS))
        prefix = [batch[n] for n in plan.graphs[1].inputs[1:]]
        keys, values, mask = net.encode_prefix(tokens, *prefix)
    lang = batch["observation.language.tokens"].shape[1]
    state = 1 if net.spec.kind == "pi0" else 0
    assert tokens.shape == (2, 32, 32)  # 2 cameras x 16 patches, VLM width 32
    # (layers, B, kv heads, Lp, head_dim)
    assert keys.shape == values.shape == (2, 2, 1, 32 + lang + state, 8)
    assert mask.shape == (2, 32 + lang + state) and mask.dtype == torch.bool
    assert np.abs(staged - whole).max() < COMPOSITION_TOLERANCE  # measured pi0 6e-7, pi0.5 2.7e-7
    assert relative_error(staged, ref, slice(0, 2)) < BOUND


class _Stage(torch.nn.Module):
    """One stage method of the network with positional inputs, for torch.onnx.export."""

    def __init__(self, net, call):
        super().__init__()
        self.net, self.call = net, call

    def forward(self, *inputs):
        return getattr(self.net, self.call)(*inputs)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # static shapes (image size, token counts)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False is what vlaedge's export uses
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_export_with_dynamic_batch_matches_onnxruntime_and_lerobot(nets, tmp_path):
    """pi0.5 as one graph (LeRobot's 10 Euler steps unrolled), run on 3 samples after tracing with 2."""
    pytest.importorskip("onnxruntime")
    ref, net = reference("pi05_tiny"), net_of(nets, "pi05_tiny")
    batch = noised_batch(ref)
    del batch["observation.state"]  # in the prompt, not a graph input
    session = onnx_session(net, batch, tmp_path / "pi05.onnx")
    rows = slice(1, 4)
    onnx_out, torch_out = onnx_and_torch(session, net, batch, rows)
    assert onnx_out.shape == (3, 10, 6)
    assert np.abs(onnx_out - torch_out).max() < BOUND  # measured 1.5e-5
    assert relative_error(onnx_out, ref, rows) < BOUND  # measured 6.8e-6


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_onnx_stages_run_by_onnxruntime_equal_lerobot(nets, tmp_path):
    """pi0 exported stage by stage (vision, prefix with the state token, one denoising step, unpad), the
    Euler loop run by vlaedge's stage executor on ONNX Runtime sessions."""
    ort = pytest.importorskip("onnxruntime")
    ref, net = reference("pi0_tiny"), net_of(nets, "pi0_tiny")
    plan = stage_plan("pi0", config("pi0_tiny")["num_inference_steps"])
    feeds = {k: v.numpy() for k, v in noised_batch(ref).items()}
    kv = {"keys": 1, "values": 1}
    sessions = {}
    env = {k: torch.from_numpy(v) for k, v in feeds.items()} | {"x": torch.from_numpy(feeds["noise"]),
                                                                   "t": torch.ones(4)}
    for g in plan.graphs:
        inputs = {n: env[n] for n in g.inputs}
        path = tmp_path / f"{g.name}.onnx"
        export(_Stage(net, g.call), inputs, list(g.outputs), path, kv)
        sessions[g.name] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            out = getattr(net, g.call)(*inputs.values())
        env.update(zip(g.outputs, out if isinstance(out, tuple) else (out,), strict=True))
        env["x_0"] = env["noise"]

    def run_stage(stage, stage_feeds):
        out = sessions[stage.name].run(None, {n: stage_feeds[n] for n in stage.inputs})
        return dict(zip(stage.outputs, out, strict=True))

    staged = run_plan(plan, run_stage, feeds, ["action"])["action"]
    assert staged.shape == (4, 10, 6)
    assert relative_error(staged, ref) < BOUND  # measured 2e-5 (ONNX Runtime's float32 rounding)


def test_empty_cameras_are_left_out():
    spec = pi0.PI0Spec.from_config(config("pi05_tiny"), tiny_sizes())
    # LeRobot feeds them as all -1 images whose tokens every query masks out and whose positions do not
    # count: no effect on the actions (the pi0.5 fixture has one; its actions match above)
    assert config("pi05_tiny")["empty_cameras"] == 1 and spec.cameras == CAMERAS


def test_resize_with_pad_centres_and_pads_with_minus_one():
    images = torch.rand(2, 3, 48, 64)
    out = pi0.resize_with_pad(images, 32)  # 48x64 -> 24x32, 4 rows of -1 above and below
    assert out.shape == (2, 3, 32, 32)
    assert (out[:, :, :4] == -1).all() and (out[:, :, 28:] == -1).all()
    expected = torch.nn.functional.interpolate(images, size=(24, 32), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :, 4:28], expected)


BASE = {"type": "pi0", "input_features": {"observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
                                          "observation.state": {"type": "STATE", "shape": [6]}},
        "output_features": {"action": {"type": "ACTION", "shape": [6]}}}


@pytest.mark.parametrize(("field", "value"), [
    ("paligemma_variant", "gemma_300m"), ("action_expert_variant", "gemma_7b"), ("dtype", "float16"),
    ("rtc_config", {"enabled": True}), ("image_resolution", [224, 160]), ("chunk_size", 0),
    ("type", "pi0_fast"), ("output_features.action", {"type": "ACTION", "shape": [40]})])
def test_unsupported_config_fields_are_refused_by_name(field, value):
    config = dict(BASE)
    if field == "output_features.action":
        config["output_features"] = {"action": value}
    else:
        config[field] = value
    with pytest.raises(VlaedgeError, match=f"config.json: {field} = "):
        pi0.PI0Spec.from_config(config)


def test_openpi_keys_are_renamed_as_lerobot_renames_them():
    from vlaedge.models.lerobot.pi0_spec import lerobot_key

    assert lerobot_key("model.state_proj.weight", "pi05") == "model.state_proj.weight"  # LeRobot's own: kept
    assert lerobot_key("time_mlp_out.bias", "pi0") == "model.action_time_mlp_out.bias"
    assert lerobot_key("action_time_mlp_in.weight", "pi05") == "model.time_mlp_in.weight"
    assert lerobot_key("state_proj.weight", "pi05") is None
    norm = "paligemma_with_expert.gemma_expert.model.layers.3.input_layernorm.weight"
    assert lerobot_key(norm, "pi05") is None and lerobot_key(norm, "pi0") == f"model.{norm}"
    assert lerobot_key("paligemma_with_expert.gemma_expert.model.norm.weight", "pi0") == (
        "model.paligemma_with_expert.gemma_expert.model.norm.weight")


def test_builds_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    net = pi0.build(config("pi0_tiny"), folder("pi0_tiny"), tiny_sizes())
    assert sum(p.numel() for p in net.parameters()) > 0
