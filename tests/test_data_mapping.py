"""Dataset features -> model inputs: the spec's mapping and preprocessing, the up-front checks, and
compress end to end on two-camera, 14-dim and video LeRobot datasets with a matching python-adapter policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from test_video import CAMERAS, CODECS, two_camera_dataset

from vlaedge.data import load_dataset, save_lerobot
from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.preprocess import bind_data
from vlaedge.models.python import PythonPolicy, PythonPolicySpec
from vlaedge.pipeline import calibration_feeds, load_inputs
from vlaedge.recipe import load_recipe

SHARED = Path(__file__).resolve().parents[2] / "shared" / "cases" / "lerobot"
LENGTHS = (12, 10, 14, 11, 13, 9, 12, 15)  # 96 frames, 8 episodes


def camera_spec(state_dim: int = 4, action_dim: int = 3, cameras=CAMERAS, **input_fields) -> dict:
    """A python-adapter spec for tests/toy_policy.py:CameraPolicy: one float [0, 1] 32x32 input per camera."""
    names = ["high", "wrist", "third"][: len(cameras)]
    images = [{"name": n, "shape": ["B", 3, 32, 32], "low": 0.0, "high": 1.0, "source": "image", "feature": f}
              for n, f in zip(names, cameras, strict=True)]
    return {
        "family": "python", "factory": "toy_policy:build_cameras",
        "factory_kwargs": {"cameras": len(cameras), "state_dim": state_dim, "action_dim": action_dim},
        "inputs": [*images,
                   {"name": "ids", "shape": ["B", 6], "dtype": "int64", "low": 0, "high": 9,
                    "source": "instruction"},
                   {"name": "mask", "shape": ["B", 6], "dtype": "int64", "low": 0, "high": 1,
                    "source": "instruction_mask"},
                   {"name": "state", "shape": ["B", state_dim], "source": "state", **input_fields}],
        "tokenizer": {"vocab": ["pick", "up", "the", "red", "blue", "block"]},
        "outputs": ["actions"],
        "actions": {"names": [f"j{i}" for i in range(action_dim)], "low": [-1.0] * action_dim,
                    "high": [1.0] * action_dim, "chunk": 2},
    }


def policy_of(spec: dict) -> PythonPolicy:
    return PythonPolicy(PythonPolicySpec.model_validate(spec))


@pytest.fixture(scope="module")
def img2(tmp_path_factory) -> Path:
    return save_lerobot(two_camera_dataset(LENGTHS), tmp_path_factory.mktemp("img2") / "ds")


@pytest.fixture(scope="module")
def aloha(tmp_path_factory) -> Path:
    return save_lerobot(two_camera_dataset(LENGTHS, 14, 14), tmp_path_factory.mktemp("aloha") / "ds")


def test_each_camera_feeds_its_input_scaled_to_the_declared_range(img2: Path) -> None:
    ds = load_dataset(img2)
    policy = policy_of(camera_spec())
    binding = bind_data(policy, ds)
    assert binding.cameras == list(CAMERAS)
    frames = ds.frames([0, 20])
    feeds = policy.make_inputs(frames)
    for name, key in zip(("high", "wrist"), CAMERAS, strict=True):
        expected = frames[key][:, ::2, ::2].transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # 64 -> 32
        assert feeds[name].dtype == np.float32 and np.array_equal(feeds[name], expected)
    assert not np.array_equal(feeds["high"], feeds["wrist"])
    assert feeds["mask"].tolist()[0] == [1, 1, 1, 1, 1, 0]  # "pick up the red block" + padding
    # calibration and the export check build feeds the same way: float images in [0, 1], never raw 0-255
    for batch in calibration_feeds(policy, ds, 40):
        assert batch["high"].min() >= 0.0 and batch["high"].max() <= 1.0
    example = policy.example_inputs(2)
    assert example["high"].min() >= 0.0 and example["high"].max() <= 1.0


def test_mean_std_comes_from_stats_json_unless_the_checkpoint_has_it(img2: Path) -> None:
    ds = load_dataset(img2)
    frames = ds.frames([3, 4])
    policy = policy_of(camera_spec(normalize="mean_std"))
    bind_data(policy, ds)
    mean, std = (np.asarray(ds.stats["observation.state"][k], np.float32) for k in ("mean", "std"))
    assert np.allclose(policy.make_inputs(frames)["state"], (frames["state"] - mean) / std, atol=1e-6)
    own = policy_of(camera_spec(normalize="mean_std", stats={"mean": [1.0] * 4, "std": [2.0] * 4}))
    bind_data(own, ds)
    assert np.allclose(own.make_inputs(frames)["state"], (frames["state"] - 1.0) / 2.0)


def test_data_map_picks_another_camera_without_editing_the_checkpoint(img2: Path) -> None:
    ds = load_dataset(img2)
    policy = policy_of(camera_spec(cameras=CAMERAS[:1]))
    binding = bind_data(policy, ds, {"high": CAMERAS[1]})
    assert binding.cameras == [CAMERAS[1]]
    frames = ds.frames([5])
    assert np.allclose(policy.make_inputs(frames)["high"][0, :, 0, 0], frames[CAMERAS[1]][0, 0, 0] / 255.0)


@pytest.mark.parametrize(
    ("spec", "mapping", "needles"),
    [
        (camera_spec(action_dim=5), None, ["'action' has 3 dims in the dataset", "actions have 5"]),
        (camera_spec(state_dim=14), None, ["'observation.state' has 4 dims", "'state' takes 14"]),
        (camera_spec(), {"wrist": "observation.images.cam_left"}, ["'observation.images.cam_left'",
                                                                   "did you mean"]),
        (camera_spec(), {"wrist": "observation.state"}, ["takes images", "vector float32 [4]"]),
        (camera_spec(normalize="min_max"), None, None),  # stats.json has min/max: fits
        (camera_spec(), {"rgb": CAMERAS[0]}, ["data.map: ['rgb'] are not inputs"]),
    ],
)
def test_mismatches_are_one_line_before_any_stage(img2: Path, spec, mapping, needles) -> None:
    ds = load_dataset(img2)
    if needles is None:
        bind_data(policy_of(spec), ds, mapping)
        return
    with pytest.raises(VlaedgeError) as err:
        bind_data(policy_of(spec), ds, mapping)
    assert "\n" not in err.value.message and err.value.hint
    for needle in needles:
        assert needle in err.value.message


def test_missing_stats_and_short_splits_are_refused(tmp_path: Path, img2: Path) -> None:
    root = save_lerobot(two_camera_dataset(LENGTHS), tmp_path / "nostats", stats=False)
    with pytest.raises(VlaedgeError, match=r"normalised \(mean_std\) but neither config.json nor .*stats"):
        bind_data(policy_of(camera_spec(normalize="mean_std")), load_dataset(root))
    ck = policy_of(camera_spec()).save(tmp_path / "ck")
    with pytest.raises(VlaedgeError,
                       match=r"quantize.num_calib_frames needs 256 frames, the calibration split .* \d+ "):
        load_inputs(ck, img2, recipe=load_recipe("cpu-int8"), trust_code=True)
    small = ["quantize.num_calib_frames=8", "export.check_frames=8", "prune.num_frames=8"]
    # drift-bounded pruning's 128 held-out frames come on top of prune.num_frames
    needs = r"prune.max_drift_mean_pct needs 136 frames, the calibration split"
    with pytest.raises(VlaedgeError, match=needs) as err:
        load_inputs(ck, img2, recipe=load_recipe("cpu-pruned-int8", small), trust_code=True)
    assert "--set prune.max_drift_mean_pct=null" in err.value.hint


E2E = [arg for item in ("quantize.num_calib_frames=32", "quantize.keep=[head]",
                        "verify.closed_loop_episodes=0", "budgets.max_success_drop=null",
                        "budgets.min_speedup=null",  # a 20-node graph's INT8/FP32 ratio is noise (0.34x seen)
                        "budgets.max_drift_per_dim_p99_pct={}",
                        "verify.eval_frames=48", "verify.profile_runs=20", "verify.profile_warmup=2")
       for arg in ("--set", item)] + ["--trust-code"]  # the test policies are python checkpoints


@pytest.mark.parametrize("case", ["img2", "aloha", "video"])
def test_compress_end_to_end(tmp_path: Path, img2: Path, aloha: Path, case: str, capsys, monkeypatch) -> None:
    dims = 14 if case == "aloha" else 4, 14 if case == "aloha" else 3
    data = {"img2": img2, "aloha": aloha}.get(case) or save_lerobot(
        two_camera_dataset(LENGTHS), tmp_path / "video", video_codec=CODECS[0])
    ck = policy_of(camera_spec(*dims)).save(tmp_path / "ck")
    code, text = run_cli(["compress", ck, "--data", data, "--out", tmp_path / "run", *E2E], capsys,
                         monkeypatch)
    assert code == 0, text
    assert f"data: wrist <- {CAMERAS[1]}" in text
    assert f"data: state <- observation.state ({dims[0]} dims" in text
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["cameras"] == list(CAMERAS)
    assert manifest["data"]["action"] == {"feature": "action", "dims": dims[1], "units": "env"}


def test_compress_refuses_a_mismatched_dataset_before_any_stage(tmp_path: Path, aloha: Path, capsys,
                                                                monkeypatch) -> None:
    ck = policy_of(camera_spec()).save(tmp_path / "ck")  # 4-dim state, 3-dim actions vs 14 / 14
    code, text = run_cli(["compress", ck, "--data", aloha, "--out", tmp_path / "run", *E2E], capsys,
                         monkeypatch)
    assert code == 2 and not (tmp_path / "run").exists()
    assert "ONNX" not in text and "Traceback" not in text
    error = next(line for line in text.splitlines() if line.startswith("error:"))
    assert "'observation.state' has 14 dims in the dataset, input 'state' takes 4" in error
    assert "'action' has 14 dims in the dataset, the policy's actions have 3" in error


@pytest.mark.parametrize("dims,needle", [
    ((14, 14), "closed loop (tabletop): action space has shape (3,), the policy's actions have shape (14,)"),
    ((4, 3), "closed loop (tabletop): the policy reads 2 cameras")])
def test_a_policy_that_does_not_fit_the_tabletop_closed_loop_is_refused_before_any_stage(
        tmp_path: Path, img2: Path, aloha: Path, dims, needle, capsys, monkeypatch) -> None:
    """The shipped recipes run 100 tabletop episodes: a 14-dim ALOHA policy used to crash there after export
    (internal error, exit 2) and a two-camera policy got the tabletop's one image in both inputs."""
    ck = policy_of(camera_spec(*dims)).save(tmp_path / "ck")
    loop = ["--set", "verify.closed_loop_episodes=100", "--set", "budgets.max_success_drop=0.15"]  # cpu-int8
    data = aloha if dims[0] == 14 else img2
    code, text = run_cli(["compress", ck, "--data", data, "--out", tmp_path / "run", *E2E, *loop], capsys,
                         monkeypatch)
    assert code == 2 and not (tmp_path / "run").exists(), text
    assert "ONNX" not in text and "Traceback" not in text
    error = next(line for line in text.splitlines() if line.startswith("error:"))
    assert needle in error
    assert "--set verify.closed_loop_episodes=0 --set budgets.max_success_drop=null" in text


def test_data_command_prints_what_to_check_before_calibrating(tmp_path: Path, img2: Path, capsys,
                                                              monkeypatch) -> None:
    code, text = run_cli(["data", img2], capsys, monkeypatch)
    assert code == 0, text
    assert "episodes: 8, frames: 96" in text and "fps: 10" in text
    assert f"{CAMERAS[1]}: image [64, 64, 3] (camera, image in parquet)" in text
    assert "'pick up the red block': 4 episodes" in text and "action.mean: [" in text
    ck = policy_of(camera_spec(action_dim=5)).save(tmp_path / "ck")
    code, text = run_cli(["data", img2, "--checkpoint", ck, "--trust-code"], capsys, monkeypatch)
    assert code == 2 and "actions have 5" in text
    ck = policy_of(camera_spec(cameras=CAMERAS[:1])).save(tmp_path / "ck1")
    code, text = run_cli(["data", img2, "-c", ck, "--map", f"high={CAMERAS[1]}", "--trust-code"], capsys,
                         monkeypatch)
    assert code == 0 and f"data: high <- {CAMERAS[1]}" in text


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/cases/lerobot is not checked out next to the repo")
@pytest.mark.parametrize(("case", "spec"), [
    ("vid1", camera_spec(cameras=CAMERAS[:1])), ("img2", camera_spec()), ("aloha", camera_spec(14, 14))])
def test_shared_cases_fit_a_policy_of_their_shape(case: str, spec: dict) -> None:
    ds = load_dataset(SHARED / case)
    policy = policy_of(spec)
    binding = bind_data(policy, ds)
    assert binding.cameras == [c for c in CAMERAS if c in ds.camera_keys]
    assert policy.act(ds.frames([0, 149])).shape == (2, 2, spec["factory_kwargs"]["action_dim"])
    with pytest.raises(VlaedgeError, match="dims in the dataset"):
        bind_data(policy_of(camera_spec(5, 1, cameras=CAMERAS[:1])), ds)


def test_a_saved_policy_keeps_its_mapping(tmp_path: Path, img2: Path) -> None:
    ck = policy_of(camera_spec(cameras=(CAMERAS[1], CAMERAS[0]))).save(tmp_path / "ck")
    policy = load_policy(ck, trust_code=True)
    assert bind_data(policy, load_dataset(img2)).cameras == [CAMERAS[1], CAMERAS[0]]


class _TwoCameraEnv:
    """A Gymnasium-style env whose observation holds two cameras of different content and a state."""

    def __init__(self):
        from gymnasium import spaces  # optional test dependency, as in test_closedloop_pusht
        cams = {key: spaces.Box(0, 255, (48, 48, 3), np.uint8) for key in ("top", "wrist")}
        self.observation_space = spaces.Dict({**cams, "qpos": spaces.Box(-1.0, 1.0, (4,), np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, (3,), np.float32)

    def _obs(self):
        return {"top": np.full((48, 48, 3), 200, np.uint8), "wrist": np.full((48, 48, 3), 20, np.uint8),
                "qpos": np.zeros(4, np.float32)}

    def reset(self, seed=None):
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 0.0, False, False, {"is_success": False}


def test_closed_loop_feeds_each_camera_its_own_frame_and_refuses_one_image_for_two() -> None:
    pytest.importorskip("gymnasium")
    from vlaedge.check.closedloop import closed_loop
    policy = policy_of(camera_spec())
    seen = []

    def act(frames):
        feeds = policy.make_inputs(frames)
        seen.append((float(feeds["high"].mean()), float(feeds["wrist"].mean())))
        return policy.act(frames)

    def per_camera(obs):
        return {CAMERAS[0]: obs["top"], CAMERAS[1]: obs["wrist"], "state": obs["qpos"], "instruction": "pick"}

    rate = closed_loop(act, episodes=1, make_env=_TwoCameraEnv, adapter=per_camera, max_steps=4,
                       action_spec=policy.action_spec, policy=policy)
    assert rate.episodes == 1 and rate.hit_max_steps == 1
    assert seen and all(high == pytest.approx(200 / 255) and wrist == pytest.approx(20 / 255)
                        for high, wrist in seen)

    def one_image(obs):
        return {"image": obs["top"], "state": obs["qpos"], "instruction": "pick"}

    with pytest.raises(VlaedgeError, match=r"the policy reads 2 cameras \(observation\.images\.cam_high, "
                                           r"observation\.images\.cam_left_wrist\) and the adapter gives one "
                                           r"image, so input 'high' would not see its own camera"):
        closed_loop(act, episodes=1, make_env=_TwoCameraEnv, adapter=one_image, max_steps=4,
                    action_spec=policy.action_spec, policy=policy)
