"""What the LeRobot tests share: the fixture folders, a network loaded from its checkpoint as the adapter
loads it, LeRobot's recorded arrays as a batch, the error in the fidelity contract's units, the positional
ONNX wrapper and export, the stage plan of a flow-matching VLA run by the stage executor on torch, the
Diffusion fixtures' seeded weights, and a LeRobot dataset recorded from gym-pusht."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from safetensors.torch import load_file

from vlaedge.models.checkpoint import check_state_dict
from vlaedge.models.stages import StagePlan
from vlaedge.models.weights import empty_parameters

TESTS = Path(__file__).resolve().parent
LEROBOT_CASES = TESTS.parents[1] / "shared" / "cases" / "lerobot_policies"  # ACT and SmolVLA, beside the repo
DIFFUSION_FIXTURES = TESTS / "fixtures" / "lerobot_diffusion"
PI0_FIXTURES = TESTS / "fixtures" / "lerobot_pi0"


def network_state(state: dict[str, torch.Tensor], root: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors with the policy's `root.` prefix removed (the network's own names)."""
    assert all(k.startswith(f"{root}.") for k in state)
    return {k.removeprefix(f"{root}."): v for k, v in state.items()}


def checkpoint_state(folder: Path, root: str) -> dict[str, torch.Tensor]:
    """folder/model.safetensors under the network's own names (the policy's `root.` prefix removed)."""
    return network_state(load_file(folder / "model.safetensors"), root)


def tensor_layout(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of a state dict: what a network built from config must match."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def load_network(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor],
                 folder: Path) -> torch.nn.Module:
    """`build()` with meta parameters, then `state` loaded as the adapter loads folder/model.safetensors."""
    with empty_parameters():
        module = build()
    check_state_dict(module, state, folder / "model.safetensors")
    return module


def load_reference(case: Path) -> dict[str, np.ndarray]:
    """case/reference.npz, with `action_mode`: the ACTION normalization of case/pretrained_model/config.json
    (the space `relative_error` measures in)."""
    with np.load(case / "reference.npz") as f:
        reference = dict(f)
    config = json.loads((case / "pretrained_model" / "config.json").read_text())
    reference["action_mode"] = np.array(config["normalization_mapping"]["ACTION"])
    return reference


def pre_batch(reference: dict, rows: slice = slice(None), **draws: str) -> dict[str, torch.Tensor]:
    """The preprocessor output LeRobot fed the policy (`pre/*`) as a batch, plus each input of `draws`
    from the recorded array it names (`noise="noise/00_normal"`: the noise LeRobot drew)."""
    batch = {k.removeprefix("pre/"): torch.from_numpy(v[rows]) for k, v in reference.items()
             if k.startswith("pre/")}
    batch.update({name: torch.from_numpy(reference[key][rows]) for name, key in draws.items()})
    return batch


def relative_error(actions: np.ndarray, reference: dict, rows=slice(None)) -> float:
    """max |actions - LeRobot's| as a fraction of each dimension's range in normalized space (MEAN_STD:
    range / std; QUANTILES: 2 range / (q99 - q01); MIN_MAX: 2)."""
    low, high = reference["stats/action/min"], reference["stats/action/max"]
    mode = str(reference["action_mode"])
    if mode == "MIN_MAX":
        span = 2.0
    elif mode == "QUANTILES":
        span = 2 * (high - low) / (reference["stats/action/q99"] - reference["stats/action/q01"])
    else:
        span = (high - low) / reference["stats/action/std"]
    return float((np.abs(actions - reference["action_chunk_normalized"][rows]) / span).max())


class Positional(torch.nn.Module):
    """The dict-taking network with positional inputs, as torch.onnx.export needs."""

    def __init__(self, net, names):
        super().__init__()
        self.net, self.names = net, names

    def forward(self, *inputs):
        return self.net(dict(zip(self.names, inputs, strict=True)))


def export(module, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path,
           batch_dims: dict | None = None) -> None:
    """torch.onnx.export as vlaedge runs it (TorchScript, opset 17), every input and output's batch axis
    (0 unless `batch_dims` names another) dynamic; traced with 2 samples."""
    batch_dims = batch_dims or {}
    axes = {n: {batch_dims.get(n, 0): "batch"} for n in [*inputs, *outputs]}
    sample = tuple(v[:, :2] if batch_dims.get(k, 0) == 1 else v[:2] for k, v in inputs.items())
    torch.onnx.export(module, sample, path, dynamo=False, opset_version=17, input_names=list(inputs),
                      output_names=outputs, dynamic_axes=axes)


def onnx_session(net, batch: dict[str, torch.Tensor], path: Path, options=None):
    """The network exported as one graph (`batch` in, `action` out, dynamic batch), opened in ONNX Runtime
    on CPU. The wrapper is put in eval mode: export restores its mode on every submodule, and a module left
    in training mode would run BatchNorm on batch statistics."""
    import onnxruntime as ort

    export(Positional(net, list(batch)).eval(), batch, ["action"], path)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_and_torch(session, net, batch: dict[str, torch.Tensor],
                   rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """The exported graph's and the network's actions for `rows` of `batch`."""
    onnx_out = session.run(None, {k: v[rows].numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        torch_out = net({k: v[rows] for k, v in batch.items()}).numpy()
    return onnx_out, torch_out


def flow_stage_plan(cameras: tuple[str, ...], prefix_inputs: list[str], steps: int) -> StagePlan:
    """The plan an adapter declares for a flow-matching VLA (SmolVLA, pi0, pi0.5): four graphs, the expert
    run by the Euler loop from t=1 (noise) to t=0; the prefix reads the image tokens and `prefix_inputs`."""
    return StagePlan.model_validate({
        "graphs": [
            {"name": "vision", "call": "embed_images", "inputs": list(cameras), "outputs": ["image_tokens"]},
            {"name": "prefix", "call": "encode_prefix", "inputs": ["image_tokens", *prefix_inputs],
             "outputs": ["keys", "values", "prefix_mask"]},
            {"name": "expert", "call": "denoise_step", "inputs": ["x", "t", "keys", "values", "prefix_mask"],
             "outputs": ["velocity"]},
            {"name": "unpad", "call": "unpad_actions", "inputs": ["x_0"], "outputs": ["action"]}],
        "denoise": {"stage": "expert", "steps": steps, "init": "noise", "t_start": 1.0, "t_end": 0.0,
                    "output": "x_0"}})


def torch_stage_runner(net):
    """`run_plan`'s stage runner calling the network's stage methods on torch (numpy in and out)."""

    def run_stage(stage, feeds):
        with torch.no_grad():
            out = getattr(net, stage.call)(*(torch.from_numpy(feeds[n]) for n in stage.inputs))
        out = out if isinstance(out, tuple) else (out,)
        return {n: t.numpy() for n, t in zip(stage.outputs, out, strict=True)}

    return run_stage


def seeded_weights() -> ModuleType:
    """fixtures/lerobot_diffusion/seeded_weights.py, which regenerates the Diffusion fixtures' weights."""
    spec = importlib.util.spec_from_file_location("seeded_weights", DIFFUSION_FIXTURES / "seeded_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeded_diffusion_checkpoint(variant: str, parent: Path) -> Path:
    """A copy of a Diffusion fixture's pretrained_model/ in `parent`, its weights regenerated from the
    seed (tests/fixtures/lerobot_diffusion/README.md)."""
    folder = parent / "pretrained_model"
    shutil.copytree(DIFFUSION_FIXTURES / variant / "pretrained_model", folder)
    seeded_weights().write(variant, folder)
    return folder


def record_pusht(out: Path, episodes: int, steps: int, task: str) -> Path:
    """`episodes` short episodes of random targets recorded from gym-pusht itself, saved at `out` as a
    LeRobot v3 dataset with LeRobot's PushT feature names; returns `out`."""
    import gym_pusht  # noqa: F401  (importing it registers gym_pusht/PushT-v0)
    import gymnasium as gym

    from vlaedge.data import Episode, EpisodeDataset, save_lerobot

    env = gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos")
    rng, recorded = np.random.default_rng(0), []
    for e in range(episodes):
        obs, _ = env.reset(seed=e)
        images, states, actions = [], [], []
        for _ in range(steps):
            action = rng.uniform(50, 460, 2).astype(np.float32)
            images.append(obs["pixels"])
            states.append(obs["agent_pos"])
            actions.append(action)
            obs, *_ = env.step(action)
        recorded.append(Episode(task, np.stack(images), np.stack(states), np.stack(actions), index=e))
    env.close()
    dataset = EpisodeDataset.from_episodes(recorded, fps=10, action_names=["x", "y"])
    return save_lerobot(dataset, out, image_key="observation.image")
