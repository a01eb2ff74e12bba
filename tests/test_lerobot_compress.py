"""A LeRobot checkpoint through every stage with no code to write: a PushT-shaped ACT `pretrained_model/`
(the folder LeRobot saves: config.json, model.safetensors, processor JSONs and normalizer state files;
written by `vlaedge.models.lerobot.synthetic` with seeded weights) and a LeRobot v3 dataset recorded from
gym-pusht itself; `vlaedge compress` with cpu-int8 and orin-int8, closed loop on gym-pusht, gate.

The weights are random, so this tests the plumbing (features mapped by name, normalization in the graph,
the export check in % of PushT's 0-512 pixel range, the closed loop on the env, the gate on drift), not
accuracy; success on PushT is tested in tests/test_closedloop_pusht.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from lerobot_helpers import record_pusht

from vlaedge.data import Episode, EpisodeDataset, save_lerobot
from vlaedge.models import load_policy
from vlaedge.models.lerobot.synthetic import write_pretrained

pytest.importorskip("gym_pusht")
gym = pytest.importorskip("gymnasium")

HERE = "test_lerobot_compress"  # this module, as recipes name it (tests/ is on sys.path)


def make_env():
    """`verify.env`: gym-pusht, pixels and agent position."""
    return gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos")


def adapt(obs):
    """PushT's observation -> frames: LeRobot's PushT feature names, no instruction."""
    return {"observation.image": obs["pixels"], "observation.state": obs["agent_pos"]}


def act_config() -> dict:
    """ACT for PushT (one camera, 2-dim agent position, 2-dim target position), small transformer; the
    camera at 48x48 (PushT renders 96x96: vlaedge resizes, as a user training at a lower resolution does)."""
    return {"type": "act", "n_obs_steps": 1,
            "input_features": {"observation.image": {"type": "VISUAL", "shape": [3, 48, 48]},
                               "observation.state": {"type": "STATE", "shape": [2]}},
            "output_features": {"action": {"type": "ACTION", "shape": [2]}},
            "chunk_size": 8, "n_action_steps": 4,
            "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
            "vision_backbone": "resnet18", "dim_model": 32, "n_heads": 2, "dim_feedforward": 64,
            "n_encoder_layers": 1, "n_decoder_layers": 1, "use_vae": False, "latent_dim": 8}


def diffusion_config() -> dict:
    """Diffusion Policy for PushT (LeRobot's PushT features, 2-step history), a small U-Net, DDIM 4 steps."""
    return {"type": "diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4,
            "input_features": {"observation.image": {"type": "VISUAL", "shape": [3, 48, 48]},
                               "observation.state": {"type": "STATE", "shape": [2]}},
            "output_features": {"action": {"type": "ACTION", "shape": [2]}},
            "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
            "vision_backbone": "resnet18", "crop_shape": None, "use_group_norm": True,
            "spatial_softmax_num_keypoints": 8, "down_dims": [16, 32], "kernel_size": 3, "n_groups": 4,
            "diffusion_step_embed_dim": 16, "noise_scheduler_type": "DDIM", "num_train_timesteps": 100,
            "num_inference_steps": 4, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
            "clip_sample": True, "clip_sample_range": 1.0}


CONFIGS = {"act": act_config, "diffusion": diffusion_config}
PIXELS = {"mean": np.zeros(2) + 256, "std": np.zeros(2) + 150, "min": np.zeros(2), "max": np.zeros(2) + 512}
IMAGE = {"mean": np.full((3, 1, 1), 0.5), "std": np.full((3, 1, 1), 0.25), "min": np.zeros((3, 1, 1)),
         "max": np.ones((3, 1, 1))}


def pusht_checkpoint(folder: Path, kind: str) -> Path:
    return write_pretrained(folder / "pretrained_model", CONFIGS[kind](),
                            {"observation.image": IMAGE, "observation.state": PIXELS, "action": PIXELS})


@pytest.fixture(scope="module")
def act_pusht(tmp_path_factory) -> Path:
    return pusht_checkpoint(tmp_path_factory.mktemp("act"), "act")


@pytest.fixture(scope="module")
def pusht_dataset(tmp_path_factory) -> Path:
    """6 short episodes recorded from PushT (random targets) with LeRobot's PushT feature names."""
    return record_pusht(tmp_path_factory.mktemp("pusht") / "ds", episodes=6, steps=8, task="Push the T")


RECIPE = """\
target: {target}
quantize: {{precision: int8, num_calib_frames: 16}}
export: {{check_frames: 16}}
verify:
  eval_frames: 16
  profile_runs: 3
  profile_warmup: 1
  closed_loop_episodes: 3
  min_episodes: 3
  env: {here}:make_env
  env_adapter: {here}:adapt
  max_steps: 10
budgets:
  max_drift_mean_pct: 3.0
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["act", "diffusion"])
@pytest.mark.parametrize("target", ["cpu", "agx-orin-64gb"])
def test_lerobot_checkpoint_compresses_and_gates_on_pusht(tmp_path, pusht_dataset, kind, target, capsys,
                                                          monkeypatch):
    checkpoint = pusht_checkpoint(tmp_path, kind)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(target=target, here=HERE))
    code, text = run_cli(["compress", checkpoint, "--data", pusht_dataset, "--recipe", recipe,
                          "--out", tmp_path / "run"], capsys, monkeypatch)
    assert code == 0, text
    # no spec and no factory: LeRobot's features feed the inputs by name
    assert "data: observation.image <- observation.image (image in parquet, 96x96 -> 48x48" in text
    assert "data: observation.state <- observation.state" in text
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["policy"]["name"].startswith(f"lerobot {kind}") and report["policy"]["chunk"] == 4
    if kind == "diffusion":  # per stage: the sampler loop in the runtime, not unrolled (4 DDIM steps)
        plan = json.loads((tmp_path / "run" / "stages.json").read_text())
        assert [g["name"] for g in plan["graphs"]] == ["observation", "denoise", "actions"]
        assert plan["denoise"]["update"] == "sample" and "stage denoise (x_next): cosine" in text
        assert "over 4 call(s)" in text
    loop = report["closed_loop"]  # ran on gym-pusht, both policies, cut at max_steps (random weights)
    assert loop["env"] == f"{HERE}:make_env"
    assert loop["reference"]["episodes"] == loop["candidate"]["episodes"] == 3
    assert loop["hit_max_steps"]["reference"] + loop["reference"]["successes"] == 3
    gate = report["gate"]
    assert gate["passed"] and [c["name"] for c in gate["checks"]] == ["max_drift_mean_pct"]
    assert "gate: PASS" in text
    if target != "cpu":
        assert "Q/DQ simulated (fusion off), as TensorRT computes" in text


def test_graph_takes_raw_observations_and_returns_executed_actions(act_pusht):
    policy = load_policy(act_pusht)
    assert [(s.name, s.shape) for s in policy.input_spec] == [("observation.image", ("B", 3, 48, 48)),
                                                             ("observation.state", ("B", 2))]
    assert policy.action_spec.chunk == 4  # n_action_steps of chunk_size 8
    assert policy.action_spec.low == (0.0, 0.0) and policy.action_spec.high == (512.0, 512.0)
    frames = {"observation.image": np.zeros((2, 96, 96, 3), np.uint8),
              "observation.state": np.full((2, 2), 256.0, np.float32)}
    assert policy.act(frames).shape == (2, 4, 2)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "cases" / "lerobot_policies"


def with_steps(case: Path, field: str, tmp_path: Path, steps: int = 3) -> Path:
    """A copy of a fixture's folder (its pretrained_model/ and the tokenizer folder beside it) with `steps`
    Euler steps instead of 10: the stages and the loop are the same, the run 3x shorter (fidelity at the
    real step count is tests/test_lerobot_policy.py's)."""
    for part in (case, case.parent / "paligemma_tokenizer"):  # the tokenizer folder pi0's processor names
        if part.is_dir():
            shutil.copytree(part, tmp_path / "cases" / part.name,
                            ignore=shutil.ignore_patterns("reference.npz"))
    folder = tmp_path / "cases" / case.name / "pretrained_model"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: steps}))
    return folder


@pytest.fixture(scope="module")
def two_camera_dataset(tmp_path_factory) -> Path:
    """SmolVLA fixture's features: two 96x128 cameras, 6-dim state and action, three tasks."""
    rng, episodes = np.random.default_rng(0), []
    tasks = ["pick up the red cube", "open the drawer", "put the cup on the plate"]
    for e in range(4):
        top, wrist = (rng.integers(0, 256, (6, 96, 128, 3), dtype=np.uint8) for _ in range(2))
        episodes.append(Episode(tasks[e % 3], top, rng.normal(0, 1, (6, 6)).astype(np.float32),
                                rng.normal(0, 1, (6, 6)).astype(np.float32), index=e,
                                cameras={"observation.images.top": top, "observation.images.wrist": wrist}))
    dataset = EpisodeDataset.from_episodes(episodes, fps=10, action_names=[f"a{i}" for i in range(6)])
    return save_lerobot(dataset, tmp_path_factory.mktemp("two-cameras") / "ds")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/cases/lerobot_policies is not beside the repo")
def test_smolvla_checkpoint_exports_and_quantizes_per_stage(tmp_path, two_camera_dataset, capsys,
                                                            monkeypatch):
    pytest.importorskip("transformers")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("target: cpu\nquantize: {precision: int8, num_calib_frames: 8}\n"
                      "export: {check_frames: 8}\n"
                      "verify: {eval_frames: 8, profile_runs: 2, profile_warmup: 1}\n")
    checkpoint = with_steps(SHARED / "smolvla_tiny", "num_steps", tmp_path)
    code, text = run_cli(["compress", checkpoint, "--data", two_camera_dataset, "--recipe", recipe,
                          "--out", tmp_path / "run"], capsys, monkeypatch)
    assert code == 0, text
    assert "data: observation.language.tokens <- task (tokens [48])" in text
    plan = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert [g["name"] for g in plan["graphs"]] == ["vision", "prefix", "expert", "actions"]
    assert plan["denoise"]["steps"] == 3 and plan["denoise"]["t_start"] == 1.0
    assert "stage expert (velocity): cosine" in text and "over 3 call(s)" in text
    drift = json.loads((tmp_path / "run" / "report.json").read_text())["drift"]
    assert drift["p99_pct"] < 2.0, drift


@pytest.mark.slow
def test_pi0_checkpoint_exports_and_quantizes_per_stage(tmp_path, capsys, monkeypatch):
    """The pi0 fixture written by LeRobot (tests/fixtures/lerobot_pi0; its widths are tiny, which LeRobot
    takes from its own constants, so the test supplies them) compresses per stage with cpu-int8."""
    from test_lerobot_pi0 import tiny_sizes

    import vlaedge.models.lerobot.pi0_spec as pi0_spec

    monkeypatch.setattr(pi0_spec, "lerobot_sizes", lambda config: tiny_sizes())
    rng, episodes = np.random.default_rng(0), []
    for e in range(4):
        top = rng.integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
        wrist = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        episodes.append(Episode("pick up the cube", top, rng.normal(0, 1, (6, 6)).astype(np.float32),
                                rng.normal(0, 1, (6, 6)).astype(np.float32), index=e,
                                cameras={"observation.images.top": top, "observation.images.wrist": wrist}))
    dataset = EpisodeDataset.from_episodes(episodes, fps=10, action_names=[f"a{i}" for i in range(6)])
    data = save_lerobot(dataset, tmp_path / "ds")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("target: cpu\nquantize: {precision: int8, num_calib_frames: 8}\n"
                      "export: {check_frames: 8}\n"
                      "verify: {eval_frames: 8, profile_runs: 2, profile_warmup: 1}\n")
    checkpoint = with_steps(Path(__file__).resolve().parent / "fixtures/lerobot_pi0/pi0_tiny",
                            "num_inference_steps", tmp_path)
    code, text = run_cli(["compress", checkpoint, "--data", data, "--recipe", recipe,
                          "--out", tmp_path / "run"], capsys, monkeypatch)
    assert code == 0, text
    plan = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert [g["name"] for g in plan["graphs"]] == ["vision", "prefix", "expert", "actions"]
    assert "stage expert (velocity): cosine" in text and "over 3 call(s)" in text
    drift = json.loads((tmp_path / "run" / "report.json").read_text())["drift"]
    # random weights, 8 frames: mean 0.76% / p99 2.5% with 8-bit weights (VNNI), 1.20% / 5.0% with the 7-bit
    # weights compress uses on an AVX2-only CPU (`make test-avx2`)
    assert drift["mean_pct"] < 2.0 and drift["p99_pct"] < 7.0, drift


def test_a_streamed_checkpoint_is_one_model_safetensors_that_loads(tmp_path):
    """Published sizes are written streamed, one tensor in memory at a time, into one model.safetensors as
    LeRobot saves it (pi0's 16 GB was written as shards, which a LeRobot folder never has, and refused)."""
    import torch
    from safetensors import safe_open

    from vlaedge.models.lerobot.synthetic import _draw

    stats = {"observation.image": IMAGE, "observation.state": PIXELS, "action": PIXELS}
    folder = write_pretrained(tmp_path / "pretrained_model", act_config(), stats, seed=3, stream=True)
    assert not list(folder.glob("model-*")) and not (folder / "model.safetensors.index.json").exists()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())  # noqa: SIM118 (a safe_open handle)
        weight = next(n for n in names if n.endswith("weight") and f.get_slice(n).get_shape()[1:])
        stored = f.get_tensor(weight)
    drawn = _draw(weight.split(".", 1)[1], stored.to("meta"), 3)  # the name under the network's root
    assert stored.abs().sum() > 0 and torch.equal(stored, drawn)
    policy = load_policy(folder)  # LeRobot's layout, strict names/shapes/dtypes
    assert all(np.isfinite(v).all() for v in policy.run_torch(policy.example_inputs(2)).values())
