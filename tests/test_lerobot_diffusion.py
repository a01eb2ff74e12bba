"""The Diffusion Policy network (`vlaedge.models.lerobot.diffusion`) against LeRobot 0.4.4's own output.

The fixtures in fixtures/lerobot_diffusion/ were written by LeRobot's code (make_fixture.py there says how;
README.md gives shapes and provenance): `pretrained_model/` folders without model.safetensors, whose
weights `seeded_weights.py` regenerates from a seed, and `reference.npz` with LeRobot's preprocessor output
(`pre/*`), the noise it drew (`noise/*`) and what `DiffusionPolicy.predict_action_chunk` returned
(`action_chunk_normalized`). Two variants: `ddim_pusht` (PushT-like: one 96x96 camera, 2-D state and
action, 2 observation steps, DDIM 10 of 100 steps, epsilon, GroupNorm) and `ddpm_two_cameras` (DDPM 20
steps with 19 variance draws, sample prediction, BatchNorm, one encoder per camera, environment state,
FiLM bias only, 1 observation step). Checked here: the same tensor names and shapes, the same normalized
actions (measured max error 1.8e-6 and 5.5e-7 of the action range; bound 1e-4), the same actions from an
ONNX export with a dynamic batch, and one-line refusals of what is not built.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_helpers import (
    DIFFUSION_FIXTURES,
    load_network,
    load_reference,
    network_state,
    onnx_and_torch,
    onnx_session,
    pre_batch,
    relative_error,
    seeded_weights,
    tensor_layout,
)

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot import diffusion
from vlaedge.models.lerobot import diffusion_sampler as sampler
from vlaedge.models.weights import empty_parameters

VARIANTS = ("ddim_pusht", "ddpm_two_cameras")
BOUND = 1e-4  # of each action dimension's range: the fidelity contract
MEASURED = {"ddim_pusht": 1.8e-6, "ddpm_two_cameras": 5.5e-7}  # max error / range, as measured

needs_fixture = pytest.mark.skipif(not (DIFFUSION_FIXTURES / "seeded_weights.py").is_file(),
                                   reason="tests/fixtures/lerobot_diffusion is not in this checkout")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions over many small steps: on a shared 2-core machine, two threads spend their time
    waiting on each other (10x slower when the machine is loaded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_of(variant: str) -> dict:
    return json.loads((DIFFUSION_FIXTURES / variant / "pretrained_model" / "config.json").read_text())


def checkpoint_state(variant: str) -> dict[str, torch.Tensor]:
    """The regenerated model.safetensors, `diffusion.` prefix removed (the network's own names)."""
    state = {k: torch.from_numpy(v) for k, v in seeded_weights().seeded_state(variant).items()}
    return network_state(state, diffusion.ROOT)


def load_net(variant: str, **changes) -> torch.nn.Module:
    """The fixture's network (config.json with `changes`), built with meta parameters and loaded as the
    adapter loads it."""
    folder = DIFFUSION_FIXTURES / variant / "pretrained_model"
    return load_network(lambda: diffusion.build({**config_of(variant), **changes}, folder),
                        checkpoint_state(variant), folder)


@pytest.fixture(scope="module", params=VARIANTS)
def case(request) -> tuple[str, torch.nn.Module, dict]:
    """(variant, network, reference arrays)."""
    return request.param, load_net(request.param), load_reference(DIFFUSION_FIXTURES / request.param)


def net_batch(reference: dict, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """LeRobot's preprocessor output and its recorded noise, under the network's input names."""
    draws = {diffusion.NOISE_KEY: "noise/initial"}
    if "noise/variance" in reference:
        draws[diffusion.VARIANCE_NOISE_KEY] = "noise/variance"
    return pre_batch(reference, rows, **draws)


@needs_fixture
@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_names_shapes_dtypes_equal_the_checkpoint(variant):
    with empty_parameters():
        module = diffusion.build(config_of(variant), Path("."))
    state = checkpoint_state(variant)
    expected, got = tensor_layout(state), tensor_layout(module.state_dict())
    assert got == expected
    assert all(p.is_meta for p in module.parameters())
    grids = [k for k in got if k.endswith("pos_grid")]
    assert grids and all(torch.equal(module.state_dict()[k], state[k]) for k in grids)  # computed as LeRobot


@needs_fixture
def test_actions_equal_lerobot_batched_and_one_by_one(case):
    variant, net, reference = case
    n = len(reference["seed"])
    with torch.no_grad():
        batched = net(net_batch(reference)).numpy()
        single = [net(net_batch(reference, slice(i, i + 1))).numpy() for i in range(n)]
    assert batched.shape == reference["action_chunk_normalized"].shape and batched.dtype == np.float32
    error = relative_error(batched, reference)
    assert error < BOUND, f"{variant}: {error:.2e} of the action range"
    assert error < 10 * MEASURED[variant]  # a drift from the measured value is a change worth a look
    assert relative_error(np.concatenate(single), reference) < BOUND


@needs_fixture
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the input shape checks are static
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False is what vlaedge's export uses
@pytest.mark.parametrize(("variant", "changes"), [
    ("ddim_pusht", {}),  # 10 steps: also checked against LeRobot's actions
    # DDPM with the variance-noise input, 4 of its 20 steps: an unrolled 20-step graph with a dynamic batch
    # takes onnxruntime ~10x longer to load than a static one (40 s here), too slow for a unit test
    ("ddpm_two_cameras", {"num_inference_steps": 4}),
])
def test_onnx_export_with_dynamic_batch_matches_torch(variant, changes, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net, reference = load_net(variant, **changes), load_reference(DIFFUSION_FIXTURES / variant)
    batch = net_batch(reference)
    shapes = diffusion.noise_shapes({**config_of(variant), **changes})
    key = diffusion.VARIANCE_NOISE_KEY
    if key in shapes:  # fewer steps, fewer draws: the first ones
        batch[key] = batch[key][:, : shapes[key][0]]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as torch here (see _one_thread)
    session = onnx_session(net, batch, tmp_path / f"{variant}.onnx", options)
    assert [i.name for i in session.get_inputs()] == list(batch)
    for n in (1, len(reference["seed"])):
        onnx_out, torch_out = onnx_and_torch(session, net, batch, slice(0, n))
        assert onnx_out.shape == torch_out.shape == (n, *reference["action_chunk_normalized"].shape[1:])
        assert np.abs(onnx_out - torch_out).max() / 2.0 < BOUND
        if not changes:
            assert relative_error(onnx_out, reference, slice(0, n)) < BOUND


@needs_fixture
def test_noise_shapes_are_the_recorded_draws():
    for variant in VARIANTS:
        with np.load(DIFFUSION_FIXTURES / variant / "reference.npz") as ref:
            expected = {diffusion.NOISE_KEY: ref["noise/initial"].shape[1:]}
            if "noise/variance" in ref:
                expected[diffusion.VARIANCE_NOISE_KEY] = ref["noise/variance"].shape[1:]
        assert diffusion.noise_shapes(config_of(variant)) == expected
    assert diffusion.noise_shapes(config_of("ddpm_two_cameras"))["variance_noise"] == (19, 8, 3)


def tiny_config(**changes) -> dict:
    """A small config.json: one 32x32 camera, 2-D state and action, DDPM 10 steps."""
    config = {"type": "diffusion", "n_obs_steps": 1, "horizon": 8, "n_action_steps": 4,
              "input_features": {"observation.images.a": {"type": "VISUAL", "shape": [3, 32, 32]},
                                 "observation.state": {"type": "STATE", "shape": [2]}},
              "output_features": {"action": {"type": "ACTION", "shape": [2]}},
              "down_dims": [16, 32], "diffusion_step_embed_dim": 8, "spatial_softmax_num_keypoints": 4,
              "num_train_timesteps": 10}
    return {**config, **changes}


def test_inputs_with_or_without_the_history_axis_and_missing_noise():
    net = diffusion.build(tiny_config(), Path("."))  # random parameters
    image, state = torch.rand(2, 3, 32, 32), torch.randn(2, 2)
    noise = {"noise": torch.randn(2, 8, 2), "variance_noise": torch.randn(2, 9, 8, 2)}
    with torch.no_grad():
        flat = net({"observation.images.a": image, "observation.state": state, **noise})
        stacked = net({"observation.images.a": image[:, None], "observation.state": state[:, None], **noise})
    assert flat.shape == (2, 4, 2) and torch.equal(flat, stacked)
    with pytest.raises(VlaedgeError, match="'variance_noise' is missing"):
        net({"observation.images.a": image, "observation.state": state, "noise": noise["noise"]})
    two_steps = diffusion.build(tiny_config(n_obs_steps=2), Path("."))
    with pytest.raises(VlaedgeError, match=r"expected \(B, n_obs_steps = 2"):
        two_steps({"observation.images.a": image, "observation.state": state, **noise})


def test_sampler_timesteps_and_draws_follow_diffusers_leading_spacing():
    spec = sampler.SamplerSpec("DDPM", 100, 30, "squaredcos_cap_v2", 1e-4, 0.02, "epsilon", True, 1.0)
    assert sampler.timesteps(spec) == [3 * k for k in range(29, -1, -1)]  # 87, 84, ..., 0
    assert sampler.noise_draws(spec) == 29
    ddim = sampler.SamplerSpec("DDIM", 100, 10, "linear", 1e-4, 0.02, "epsilon", True, 1.0)
    assert sampler.noise_draws(ddim) == 0
    last = sampler.plan(ddim)[-1]
    assert last.t == 0 and last.x0_coef == 1.0 and last.xt_coef == 0.0  # alpha_bar after the end is 1
    for schedule in sampler.BETA_SCHEDULES:
        betas = sampler.betas(sampler.SamplerSpec("DDPM", 50, 50, schedule, 1e-4, 0.02, "sample", False, 1.0))
        assert betas.shape == (50,) and betas.dtype == torch.float32 and bool((betas > 0).all())


@pytest.mark.parametrize(("field", "value"), [
    ("vision_backbone", "resnet50"), ("noise_scheduler_type", "DPMSolver"), ("beta_schedule", "cosine"),
    ("prediction_type", "v_prediction"), ("resize_shape", [64, 64]), ("num_inference_steps", 20),
    ("horizon", 10), ("n_action_steps", 9), ("crop_shape", [40, 32]), ("spatial_softmax_num_keypoints", None),
    ("compile_model", True), ("down_dims", [12, 24]),
])
def test_unsupported_config_is_refused_in_one_line(field, value):
    with pytest.raises(VlaedgeError) as error:
        diffusion.build(tiny_config(**{field: value}), Path("."))
    message = str(error.value)
    assert "\n" not in message
    assert f"config.json: {field} = {value!r} is not supported" in message
