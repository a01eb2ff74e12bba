"""Closed loop on a real third-party Gymnasium env: gym-pusht's PushT (an optional test dependency, in the
[dev] extra), run as a user would: a PushT-shaped python-family policy (pixels uint8 96x96x3 and agent_pos
in, 2-dim [0, 512] actions out), a LeRobot dataset recorded from the env itself, a recipe naming the env
and its adapter by `package.module:name`, then `vlaedge compress` and `vlaedge verify RUN_DIR`.

The policy is untrained, so on PushT's own random starts it scores 0/N. `make_solved` starts every episode
with the block already on the goal (gym-pusht's `reset_to_state`), so success comes from the env's
`info["is_success"]` at the first step whatever the policy does: it tests the plumbing (the success key,
the gate passing on N/N), not the policy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from lerobot_helpers import record_pusht
from torch import nn

from vlaedge.check.closedloop import compare_closed_loop
from vlaedge.errors import VlaedgeError
from vlaedge.models.python import PythonPolicy, PythonPolicySpec

pytest.importorskip("gym_pusht")  # rgb_array rendering: pygame needs no display
gym = pytest.importorskip("gymnasium")

TASK = "Push the T-shaped block onto the T-shaped target."
SOLVED = [100.0, 100.0, 224.18, 242.82, np.pi / 4]  # agent far off, block on the goal (coverage > 0.99)
HERE = "test_closedloop_pusht"  # this module, as the recipes name it (tests/ is on sys.path)
RESETS = []  # one entry per env.reset, to tell whether an episode started


class Counted(gym.Wrapper):
    """Counts resets; with `start` every episode starts from that state (agent x, y, block x, y, angle)."""

    def __init__(self, env, start=None):
        super().__init__(env)
        self.start = start

    def reset(self, *, seed=None, options=None):
        RESETS.append(seed)
        return self.env.reset(seed=seed, options={"reset_to_state": self.start} if self.start else options)


def make_env(obs_type: str = "pixels_agent_pos"):
    """What a user's module holds: `verify.env: my_envs:make_env`."""
    return Counted(gym.make("gym_pusht/PushT-v0", obs_type=obs_type))


def make_solved():
    return Counted(gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos"), start=SOLVED)


def make_state():
    return make_env("state")  # a Box (5,): agent x, y, block x, y, angle


def make_keypoints():
    return make_env("environment_state_agent_pos")  # agent_pos + 16 keypoints, no pixels


def adapt(obs):
    """`verify.env_adapter`: PushT's observation -> the frame dict the policy's inputs read."""
    return {"image": obs["pixels"], "state": obs["agent_pos"], "instruction": TASK}


def adapt_pixels_only(obs):
    return {"image": obs["pixels"], "state": obs["agent_pos"]}  # PushT has no language: no instruction


def adapt_chw(obs):
    return {"image": obs["pixels"].transpose(2, 0, 1).astype(np.float32) / 255.0, "state": obs["agent_pos"]}


class PushTPolicy(nn.Module):
    """pixels uint8 [B, 3, 96, 96] and agent_pos [B, 2] -> actions [B, T, A] in [-1, 1]."""

    def __init__(self, action_dim: int = 2, state_dim: int = 2, chunk: int = 4):
        super().__init__()
        self.chunk, self.action_dim = chunk, action_dim
        self.conv = nn.Conv2d(3, 4, 8, stride=8)  # 96 -> 12 x 12
        self.head = nn.Linear(4 * 12 * 12 + state_dim, chunk * action_dim)

    def forward(self, pixels, agent_pos):
        x = torch.cat([self.conv(pixels.float() / 255.0).flatten(1), agent_pos / 512.0], dim=1)
        return torch.tanh(self.head(x)).view(-1, self.chunk, self.action_dim)


def build(**kwargs) -> PushTPolicy:
    return PushTPolicy(**kwargs)


def spec(action_dim: int = 2, state_dim: int = 2, low: float = 0.0, high: float = 512.0) -> dict:
    """A python-family config.json; the default decodes [-1, 1] outputs to PushT's [0, 512] box."""
    return {
        "family": "python", "factory": "test_closedloop_pusht:build",
        "factory_kwargs": {"action_dim": action_dim, "state_dim": state_dim},
        "inputs": [{"name": "pixels", "shape": ["B", 3, 96, 96], "dtype": "uint8", "low": 0, "high": 255,
                    "source": "image", "feature": "observation.image"},
                   {"name": "agent_pos", "shape": ["B", state_dim], "low": 0, "high": 512,
                    "source": "state"}],
        "outputs": ["actions"],
        "actions": {"names": ["x", "y", "z"][:action_dim], "low": [low] * action_dim,
                    "high": [high] * action_dim, "chunk": 4, "normalised": (low, high) == (0.0, 512.0)},
    }


def policy_of(**kwargs) -> PythonPolicy:
    torch.manual_seed(0)
    return PythonPolicy(PythonPolicySpec.model_validate(spec(**kwargs)))


@pytest.fixture(scope="module")
def pusht_data(tmp_path_factory) -> Path:
    """8 short episodes recorded from PushT itself (random targets), as a LeRobot v3 dataset."""
    return record_pusht(tmp_path_factory.mktemp("pusht") / "ds", episodes=8, steps=12, task=TASK)


RECIPE = """\
target: cpu
quantize: {{precision: int8, num_calib_frames: 32}}
verify:
  eval_frames: 32
  profile_runs: 10
  profile_warmup: 2
  closed_loop_episodes: 8   # 8/8 has a Wilson 95% lower bound of 68%: inside a 35-point drop budget
  min_episodes: 8
  env: test_closedloop_pusht:{env}
  env_adapter: test_closedloop_pusht:adapt
  max_steps: 300        # PushT's own limit
budgets:
  max_success_drop: 0.35
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_compress_and_verify_run_dir_gate_on_pusht(tmp_path: Path, pusht_data: Path, capsys, monkeypatch):
    ck = policy_of().save(tmp_path / "ck")
    recipe = write(tmp_path / "pusht.yaml", RECIPE.format(env="make_solved"))
    RESETS.clear()
    code, text = run_cli(["compress", ck, "--data", pusht_data, "--recipe", recipe, "--out", tmp_path / "run",
                          "--trust-code"], capsys, monkeypatch)
    assert code == 0, text
    assert RESETS  # the closed loop ran on gym-pusht
    loop = json.loads((tmp_path / "run" / "report.json").read_text())["closed_loop"]
    assert loop["env"] == "test_closedloop_pusht:make_solved" and loop["max_steps"] == 300
    assert loop["reference"]["per_episode"] == [True] * 8 == loop["candidate"]["per_episode"]  # is_success
    assert loop["reference"]["steps"] == 8  # solved at the first step: the env terminated each episode
    assert "gate: PASS" in text

    # verify RUN_DIR: the env, adapter and max_steps come from the run's manifest, not the tabletop
    budgets = write(tmp_path / "budgets.yaml", "max_success_drop: 0.35\n")
    RESETS.clear()
    code, text = run_cli(["verify", tmp_path / "run", "--episodes", 8, "--min-episodes", 8, "--no-profile",
                          "--budgets", budgets, "--out", tmp_path / "again", "--trust-code"],
                         capsys, monkeypatch)
    assert code == 0, text
    assert "closed-loop env from the run's manifest: test_closedloop_pusht:make_solved" in text
    assert "env_adapter=test_closedloop_pusht:adapt" in text and "max_steps=300" in text
    loop = json.loads((tmp_path / "again" / "report.json").read_text())["closed_loop"]
    assert loop["env"] == "test_closedloop_pusht:make_solved" and loop["reference"]["successes"] == 8
    assert len(RESETS) == 16  # 8 episodes each for the reference and the candidate, on gym-pusht

    # PushT's own random starts: 0/3 vs 0/3 is inconclusive, never a pass: exit 0 without a budget (the
    # summary says why it means little), exit 1 from the gate under max_success_drop; every episode cut at
    # max_steps is counted and shown
    code, text = run_cli(["verify", tmp_path / "run", "--episodes", 3, "--min-episodes", 3, "--no-profile",
                          "--env", f"{HERE}:make_env", "--env-adapter", f"{HERE}:adapt",
                          "--out", tmp_path / "plain", "--trust-code"], capsys, monkeypatch)
    assert code == 0, text
    assert "hit max_steps=40: reference 3/3, candidate 3/3 episodes" in text  # --env: its own settings
    assert "reference succeeds in under 20% of episodes" in text
    loop = json.loads((tmp_path / "plain" / "report.json").read_text())["closed_loop"]
    assert loop["hit_max_steps"] == {"reference": 3, "candidate": 3} and loop["reference"]["successes"] == 0
    code, text = run_cli(["gate", tmp_path / "plain", "--budgets", budgets], capsys, monkeypatch)
    assert code == 1, text
    assert re.search(r"inconclusive\s+max_success_drop:", text) and "below min_reference_success 20%" in text
    assert "hit max_steps=40" in text


def test_actions_in_the_wrong_units_are_refused_before_any_stage(tmp_path: Path, pusht_data: Path, capsys,
                                                                 monkeypatch):
    ck = PythonPolicy(PythonPolicySpec.model_validate(spec(low=-1.0, high=1.0))).save(tmp_path / "ck")
    recipe = write(tmp_path / "pusht.yaml", RECIPE.format(env="make_env"))
    RESETS.clear()
    code, text = run_cli(["compress", ck, "--data", pusht_data, "--recipe", recipe, "--out", tmp_path / "run",
                          "--trust-code"], capsys, monkeypatch)
    assert code == 2 and not (tmp_path / "run").exists() and not RESETS, text
    assert "Traceback" not in text
    assert not any(line.startswith(("quantize", "export", "verify")) for line in text.splitlines())
    (error,) = [line for line in text.splitlines() if line.startswith("error:")]
    assert ("the policy's action bounds low=[-1, -1] high=[1, 1] leave the env's action space low=[0, 0] "
            "high=[512, 512]") in error


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"action_dim": 3}, r"action space has shape \(2,\), the policy's actions have shape \(3,\) \(x, y, z\)"),
    ({"action_dim": 1}, r"action space has shape \(2,\), the policy's actions have shape \(1,\) \(x\)"),
    ({"state_dim": 4}, r"observation 'agent_pos' has shape \(2,\) float64, input 'agent_pos' takes \(4,\)"),
])
def test_a_policy_that_does_not_fit_pusht_is_refused_before_the_first_episode(kwargs, message):
    policy = policy_of(**kwargs)
    RESETS.clear()
    with pytest.raises(VlaedgeError, match=message) as e:
        compare_closed_loop(policy.act, policy.act, episodes=2, min_episodes=1,
                            env="test_closedloop_pusht:make_env", adapter="test_closedloop_pusht:adapt")
    assert not RESETS and "\n" not in e.value.message and e.value.hint


@pytest.mark.parametrize(("env", "adapter", "message"), [
    ("make_env", None,
     r"the observation has no 'image', which input 'pixels' reads \(the observation keys: \['agent_pos', "
     r"'pixels'\]\)"),
    ("make_keypoints", "adapt",
     r"the adapter reads 'pixels', which the env's observation space does not have \(observation keys: "
     r"\['agent_pos', 'environment_state'\]\)"),
    ("make_state", "adapt", r"the adapter fails on the env's observations, float64 \(5,\) arrays "
                            r"\(IndexError"),
    ("make_env", "adapt_chw",
     r"the adapter's 'image' is float32 \(3, 96, 96\), input 'pixels' \(\['B', 3, 96, 96\] uint8, CHW\) is "
     r"fed from uint8 RGB frames \[H, W, 3\]"),
])
def test_observations_that_do_not_fit_the_inputs_are_refused_with_the_keys(env, adapter, message):
    policy = policy_of()
    RESETS.clear()
    with pytest.raises(VlaedgeError, match=message):
        compare_closed_loop(policy.act, policy.act, episodes=2, min_episodes=1, env=f"{HERE}:{env}",
                            adapter=adapter and f"{HERE}:{adapter}")
    assert not RESETS


def test_a_fitting_policy_runs_on_pusht_without_an_instruction():
    policy = policy_of()
    report = compare_closed_loop(policy.act, policy.act, episodes=2, min_episodes=2, seed=0,
                                 env="test_closedloop_pusht:make_solved",
                                 adapter="test_closedloop_pusht:adapt_pixels_only", max_steps=5)
    assert report.reference.successes == 2 == report.candidate.successes
