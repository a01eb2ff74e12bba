"""The denoise loop with a sampler update (`vlaedge.models.stage_loop`): a stage that returns the next
sample itself, fed the scheduler's timestep, the step index and per-step slices of a policy input.

A tiny module with a DDIM and a DDPM sampler (vlaedge's diffusers-equivalent coefficients) runs as a plan
and equals its own unrolled forward; the plan fields are validated with one-line errors; the LeRobot
Diffusion Policy fixtures (fixtures/lerobot_diffusion/, weights regenerated from the seed) export per stage
(observation, denoise x N, actions) and their staged ONNX Runtime actions match LeRobot's reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_helpers import DIFFUSION_FIXTURES, load_reference, seeded_diffusion_checkpoint
from pydantic import ValidationError
from torch import nn

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot import diffusion_sampler as sampler
from vlaedge.models.stage_loop import DenoiseLoop
from vlaedge.models.stages import Recorder, StagePlan, check_flow, run_plan, torch_runner

BOUND = 1e-4  # of each action dimension's range: the fidelity contract


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small convolutions over many steps: one thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinySampler(nn.Module):
    """obs (B, 4) -> cond (B, 8); eps(x (B, 3, 2), t (B,), cond); the sampler over `steps` of 50 steps."""

    def __init__(self, scheduler: str, steps: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.spec = sampler.SamplerSpec(scheduler, 50, steps, "squaredcos_cap_v2", 1e-4, 0.02, "epsilon",
                                        True, 1.0)
        self.plan = sampler.plan(self.spec)
        self.register_buffer("table", sampler.step_table(self.spec), persistent=False)
        self.cond_in, self.x_in = nn.Linear(4, 8), nn.Linear(2, 8)
        self.t_in, self.out = nn.Linear(1, 8), nn.Linear(8, 2)

    def encode(self, obs):
        return torch.tanh(self.cond_in(obs))

    def eps(self, x, t, cond):
        return self.out(torch.relu(self.x_in(x) + self.t_in(t[:, None] / 50)[:, None] + cond[:, None]))

    def step(self, x, t, k, cond, z=None):
        """The loop's stage: x_k -> x_{k+1}, coefficients gathered by k."""
        step = sampler.indexed_step(self.spec, self.table, k)
        return sampler.reverse_step(self.spec, step, x, self.eps(x, t, cond), z)

    def forward(self, obs, noise, variance_noise=None):
        """Unrolled: every step's coefficients Python floats, DDPM's draws in step order."""
        cond, x, draw = self.encode(obs), noise, 0
        for s in self.plan:
            z = variance_noise[:, draw] if s.std is not None else None
            draw += s.std is not None
            x = sampler.reverse_step(self.spec, s, x, self.eps(x, torch.full((len(x),), float(s.t)), cond), z)
        return x


def tiny_plan(module: TinySampler, **changes) -> dict:
    draws = sampler.noise_draws(module.spec)
    loop = {"stage": "step", "steps": len(module.plan), "init": "noise", "update": "sample", "next": "x_next",
            "times": [float(s.t) for s in module.plan], "index": "k", "output": "actions"}
    if draws:
        loop |= {"step_inputs": {"z": "variance_noise"}, "step_input_steps": draws}
    step = ["x", "t", "k", "cond", *(["z"] if draws else [])]
    plan = {"graphs": [{"name": "encode", "call": "encode", "inputs": ["obs"], "outputs": ["cond"]},
                       {"name": "step", "call": "step", "inputs": step, "outputs": ["x_next"]}],
            "denoise": loop}
    plan["denoise"] |= changes
    return plan


def tiny_feeds(module: TinySampler, batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"obs": rng.standard_normal((batch, 4)), "noise": rng.standard_normal((batch, 3, 2))}
    draws = sampler.noise_draws(module.spec)
    if draws:
        feeds["variance_noise"] = rng.standard_normal((batch, draws, 3, 2))
    return {k: v.astype(np.float32) for k, v in feeds.items()}


@pytest.mark.parametrize("scheduler", ["DDIM", "DDPM"])
def test_sampler_loop_equals_the_unrolled_forward(scheduler):
    module = TinySampler(scheduler).eval()
    plan = StagePlan.model_validate(tiny_plan(module))
    feeds = tiny_feeds(module)
    check_flow(plan, list(feeds), ["actions"])
    recorder = Recorder(torch_runner(module))
    staged = run_plan(plan, recorder, feeds, ["actions"])["actions"]
    with torch.no_grad():
        reference = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert np.abs(staged - reference).max() <= 1e-6
    calls = recorder.calls["step"]
    assert len(calls) == 5
    for k, (fed, _) in enumerate(calls):  # what the loop fed each step
        assert fed["k"].dtype == np.int64 and (fed["k"] == k).all()
        assert fed["t"].dtype == np.float32 and (fed["t"] == module.plan[k].t).all()
        if scheduler == "DDPM":  # step k's draw; the last step (t = 0, no draw) zeros
            want = feeds["variance_noise"][:, k] if k < 4 else np.zeros((3, 3, 2), np.float32)
            np.testing.assert_array_equal(fed["z"], want)


def test_a_plan_file_round_trips_the_sampler_fields_and_an_old_plan_is_euler():
    loop = StagePlan.model_validate(tiny_plan(TinySampler("DDPM"))).denoise
    assert DenoiseLoop.model_validate_json(loop.model_dump_json()) == loop  # as stages.json writes it
    old = StagePlan.model_validate({"graphs": [{"name": "e", "call": "f", "inputs": ["x", "t"],
                                                "outputs": ["velocity"]}],
                                    "denoise": {"stage": "e", "steps": 2, "init": "noise", "output": "a"}})
    assert old.denoise.update == "euler" and old.denoise.step_times() == [0.0, 0.5]


@pytest.mark.parametrize(("changes", "words"), [
    ({"next": None}, "name it in `next`"),
    ({"update": "euler", "next": None}, "times is for update 'sample'"),
    ({"times": [3.0, 2.0]}, "times has 2 values, steps is 5"),
    ({"times": None, "t_start": 5.0, "t_end": 0.0, "velocity": "v"}, "velocity 'v' is the euler update's"),
    ({"t_start": 1.0}, "times and t_start/t_end"),
    ({"step_input_steps": 6}, "step_input_steps 6 needs step_inputs and must be 1..steps = 5"),
    ({"index": "x"}, "must be distinct"),
    ({"next": "eps"}, "outputs must be exactly ['eps'] (denoise.next, update 'sample')"),
    ({"index": "i"}, "must take the loop's i as inputs"),
])
def test_sampler_fields_are_validated_in_one_line(changes, words):
    with pytest.raises(ValidationError) as error:
        StagePlan.model_validate(tiny_plan(TinySampler("DDPM"), **changes))
    assert words in str(error.value)


def test_a_step_input_that_is_no_policy_input_or_of_the_wrong_length_is_one_line():
    module = TinySampler("DDPM").eval()
    plan = StagePlan.model_validate(tiny_plan(module, step_inputs={"z": "draws"}))
    with pytest.raises(VlaedgeError, match=r"denoise.step_inputs.z 'draws' is not a policy input"):
        check_flow(plan, ["obs", "noise", "variance_noise"], ["actions"])
    feeds = tiny_feeds(module)
    feeds["variance_noise"] = feeds["variance_noise"][:, :2]
    with pytest.raises(VlaedgeError) as error:
        run_plan(StagePlan.model_validate(tiny_plan(module)), torch_runner(module), feeds, ["actions"])
    assert "'variance_noise' has shape (3, 2, 3, 2), the loop slices (B = 3, 4, ...)" in str(error.value)
    assert "\n" not in str(error.value)


# --- LeRobot's Diffusion Policy per stage --------------------------------------------------------------


@pytest.fixture(scope="module", params=["ddim_pusht", "ddpm_two_cameras"])
def diffusion_case(request, tmp_path_factory):
    """(policy, reference arrays) of a Diffusion fixture, its weights regenerated into a tmp copy."""
    if not (DIFFUSION_FIXTURES / "seeded_weights.py").is_file():
        pytest.skip("tests/fixtures/lerobot_diffusion is not in this checkout")
    from vlaedge.models import load_policy

    folder = seeded_diffusion_checkpoint(request.param, tmp_path_factory.mktemp(request.param))
    return load_policy(folder), load_reference(DIFFUSION_FIXTURES / request.param)


def reference_feeds(policy, ref: dict) -> dict[str, np.ndarray]:
    """LeRobot's raw observations (uint8 HWC -> [0, 1] CHW) and recorded draws, under the policy's inputs."""
    feeds = {}
    for s in policy.input_spec:
        if s.name in ("noise", "variance_noise"):
            feeds[s.name] = ref[f"noise/{'initial' if s.name == 'noise' else 'variance'}"]
            continue
        value = ref[f"obs/{s.name}"]
        if s.name.startswith("observation.images."):
            value = np.moveaxis(value, -1, -3) / np.float32(255)
        feeds[s.name] = np.ascontiguousarray(value if policy.history > 1 else value[:, 0], np.float32)
    return feeds


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusion_policy_exports_per_stage_and_matches_lerobot(diffusion_case, tmp_path):
    import onnx

    from vlaedge.compress.export import export_onnx
    from vlaedge.runtimes import open_runtime

    policy, ref = diffusion_case
    feeds = reference_feeds(policy, ref)
    result = export_onnx(policy, tmp_path / "model.onnx", check_feeds=feeds)
    plan = json.loads(Path(result.path).read_text())
    steps = len(plan["denoise"]["times"])
    assert [g["name"] for g in plan["graphs"]] == ["observation", "denoise", "actions"]
    assert plan["denoise"]["update"] == "sample" and plan["denoise"]["times"][-1] == 0.0
    assert bool(plan["denoise"]["step_inputs"]) == ("variance_noise" in feeds)
    # the loop's stage holds one U-Net: as many convolutions as the module has, not `steps` times as many
    denoise = onnx.load(str(tmp_path / "stages" / "denoise.onnx"), load_external_data=False)
    convs = sum(isinstance(m, nn.Conv1d | nn.ConvTranspose1d) for m in policy.module.diffusion.unet.modules())
    assert sum(n.op_type in ("Conv", "ConvTranspose") for n in denoise.graph.node) == convs
    assert all(p["cosine_min"] > 0.99999 for p in result.parity)
    assert next(p for p in result.parity if p["stage"] == "denoise")["calls"] == steps
    runtime = open_runtime("ort-cpu", policy, result.path, threads=1)
    try:
        got = policy.decode(runtime.infer(feeds))
        inputs = {i.name: list(i.shape) for i in runtime.session.get_inputs()}
    finally:
        runtime.close()
    want = ref["action_chunk"][:, : policy.action_spec.chunk]
    error = float((np.abs(got - want) / policy.action_spec.range).max())
    assert error < BOUND, f"{error:.2e} of the action range"
    if "variance_noise" in feeds:  # only the loop reads it, a slice per step: the policy's own shape
        assert inputs["variance_noise"][1:] == list(feeds["variance_noise"].shape[1:])
