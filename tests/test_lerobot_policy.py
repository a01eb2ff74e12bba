"""LeRobot checkpoints as they are: `load_policy(pretrained_model/)` builds the policy with no code to write,
returns LeRobot's own actions (after its postprocessor) for the shipped fixtures, and refuses a broken
folder before any stage with one line naming the file and field.

The fixtures in ../shared/cases/lerobot_policies/ were written by LeRobot 0.4.4's own code (their README
says how): raw observations in, the unnormalized action chunk LeRobot computed out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from lerobot_helpers import (
    DIFFUSION_FIXTURES,
    LEROBOT_CASES,
    PI0_FIXTURES,
    load_reference,
    seeded_diffusion_checkpoint,
)
from safetensors.numpy import load_file, save_file

from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.lerobot.layout import read_checkpoint

ACT = LEROBOT_CASES / "act_aloha14"
SMOLVLA = LEROBOT_CASES / "smolvla_tiny"
BOUND = 1e-4  # of the action range: the fidelity contract

pytestmark = pytest.mark.skipif(not LEROBOT_CASES.is_dir(),
                                reason="../shared/cases/lerobot_policies is not beside the repo")


def frames_of(reference: dict, cameras: list[str]) -> dict:
    """The fixture's raw observations as a vlaedge frame batch (uint8 HWC cameras, state, task)."""
    frames = {c: reference[f"obs/{c}"] for c in cameras}
    frames["observation.state"] = reference["obs/observation.state"]
    frames["instruction"] = frames["task"] = [str(t) for t in reference["task"]]
    return frames


def action_error(policy, reference: dict, feeds: dict) -> float:
    """max |vlaedge - LeRobot| over the chunk, as a fraction of each dimension's recorded range."""
    got = policy.decode(policy.run_torch(feeds))
    want = reference["action_chunk"][:, : policy.action_spec.chunk]
    return float((np.abs(got - want) / policy.action_spec.range).max())


def test_act_fixture_matches_lerobot_from_raw_observations():
    policy = load_policy(ACT / "pretrained_model")
    ref = load_reference(ACT)
    cameras = ["observation.images.top", "observation.images.wrist"]
    feeds = policy.make_inputs(frames_of(ref, cameras))
    for c in cameras:  # the preprocessing vlaedge does outside the graph: LeRobot's, to float rounding
        np.testing.assert_allclose(feeds[c], np.moveaxis(ref[f"obs/{c}"], -1, 1) / 255.0, atol=1e-7)
    assert [s.name for s in policy.input_spec] == [*cameras, "observation.state"]
    assert policy.action_spec.chunk == 20 and policy.action_spec.dim == 14
    assert action_error(policy, ref, feeds) < BOUND


def test_smolvla_fixture_matches_lerobot_with_its_noise():
    pytest.importorskip("transformers")
    policy = load_policy(SMOLVLA / "pretrained_model")
    ref = load_reference(SMOLVLA)
    cameras = ["observation.images.top", "observation.images.wrist"]
    feeds = policy.make_inputs(frames_of(ref, cameras))
    tokens = ref["pre/observation.language.tokens"]
    mask = ref["pre/observation.language.attention_mask"]
    got = feeds["observation.language.tokens"][:, : tokens.shape[1]]
    np.testing.assert_array_equal(got * mask, tokens * mask)
    np.testing.assert_array_equal(feeds["observation.language.attention_mask"][:, : mask.shape[1]], mask)
    assert not feeds["observation.language.attention_mask"][:, mask.shape[1]:].any()
    feeds["noise"] = ref["noise/00_normal"]  # the exact noise LeRobot drew
    assert action_error(policy, ref, feeds) < BOUND


def test_checkpoint_is_read_from_the_processor_files():
    ckpt = read_checkpoint(SMOLVLA / "pretrained_model")
    assert (ckpt.type, ckpt.chunk_size, ckpt.n_action_steps) == ("smolvla", 10, 10)
    assert ckpt.norms["observation.images.top"].mode == "IDENTITY"
    assert ckpt.norms["observation.state"].mode == "MEAN_STD"
    assert ckpt.norms["action"].bounds is not None  # the action range drift is measured in
    assert ckpt.text.max_length == 48 and ckpt.text.new_line


@pytest.fixture
def act_copy(tmp_path):
    """A writable copy of the ACT fixture's pretrained_model/ (weights linked, not copied)."""
    dst = tmp_path / "pretrained_model"
    dst.mkdir()
    for p in (ACT / "pretrained_model").iterdir():
        if p.name == "model.safetensors":
            (dst / p.name).symlink_to(p)
        else:
            shutil.copyfile(p, dst / p.name)
    return dst


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_stats(path: Path, key: str, value) -> None:
    stats = load_file(str(path))
    if value is None:
        del stats[key]
    else:
        stats[key] = np.full_like(stats[key], value)
    save_file(stats, str(path))


PRE_STATS = "policy_preprocessor_step_3_normalizer_processor.safetensors"
BROKEN = {
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
    "missing postprocessor": (lambda d: (d / "policy_postprocessor.json").unlink(),
                              "has no policy_postprocessor.json"),
    "missing state file": (lambda d: (d / PRE_STATS).unlink(), f"{PRE_STATS} does not exist"),
    "unknown type": (lambda d: edit_json(d / "config.json", lambda c: c.update(type="acts")),
                     "type 'acts' is not a LeRobot type"),
    "no type": (lambda d: edit_json(d / "config.json", lambda c: c.pop("type")),
                'looks like a LeRobot policy (input_features, processor files) but has no "type"'),
    "type not built": (lambda d: edit_json(d / "config.json", lambda c: c.update(type="vqbet")),
                       "type 'vqbet' is a LeRobot policy type vlaedge does not build yet"),
    "unknown step": (lambda d: edit_json(d / "policy_preprocessor.json",
                                         lambda c: c["steps"].insert(1, {"registry_name": "my_step"})),
                     "steps[1] is 'my_step'"),
    "unknown mode": (lambda d: edit_json(d / "policy_preprocessor.json",
                                         lambda c: c["steps"][3]["config"]["norm_map"].update(STATE="LOG")),
                     "norm_map has {'STATE': 'LOG'}"),
    "missing statistic": (lambda d: edit_stats(d / PRE_STATS, "observation.state.std", None),
                          "has no observation.state.std"),
    "NaN statistic": (lambda d: edit_stats(d / PRE_STATS, "observation.state.mean", np.nan),
                      "observation.state.mean holds NaN or Inf"),
    "zero std": (lambda d: edit_stats(d / PRE_STATS, "observation.state.std", 0.0),
                 "observation.state has a zero or negative std"),
    "bad feature": (lambda d: edit_json(d / "config.json", lambda c: c["input_features"][
                        "observation.state"].update(type="PROPRIO")),
                    "input_features.observation.state.type is 'PROPRIO'"),
    "steps beyond chunk": (lambda d: edit_json(d / "config.json", lambda c: c.update(n_action_steps=21)),
                           "n_action_steps 21 must be in 1..chunk_size (20)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_is_refused_naming_file_and_field(act_copy, case):
    breaks, message = BROKEN[case]
    breaks(act_copy)
    with pytest.raises(VlaedgeError) as e:
        load_policy(act_copy)
    assert message in e.value.message
    assert "\n" not in str(e.value)


def test_training_checkpoint_folder_points_at_pretrained_model(tmp_path, act_copy):
    outer = act_copy.parent
    with pytest.raises(VlaedgeError, match="pretrained_model"):
        load_policy(outer)


def test_save_writes_a_folder_lerobot_reads(tmp_path):
    policy = load_policy(ACT / "pretrained_model")
    out = policy.save(tmp_path / "copy")
    names = {p.name for p in out.iterdir()}
    assert names == {p.name for p in (ACT / "pretrained_model").iterdir()}
    original = load_file(str(ACT / "pretrained_model" / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(np.array_equal(saved[k], original[k]) for k in original)


@pytest.fixture(scope="module", params=["ddim_pusht", "ddpm_two_cameras"])
def diffusion_case(request, tmp_path_factory):
    """A Diffusion fixture folder written by LeRobot 0.4.4, its weights regenerated from the seed into a
    copy (tests/fixtures/lerobot_diffusion/README.md)."""
    folder = seeded_diffusion_checkpoint(request.param, tmp_path_factory.mktemp(request.param))
    return load_policy(folder), load_reference(DIFFUSION_FIXTURES / request.param)


def test_diffusion_fixtures_match_lerobot_from_raw_observations(diffusion_case):
    policy, ref = diffusion_case
    feeds = {}
    for s in policy.input_spec:
        if s.name in ("noise", "variance_noise"):
            feeds[s.name] = ref[f"noise/{'initial' if s.name == 'noise' else 'variance'}"]
        elif s.name.startswith("observation.images."):  # uint8 HWC (with history) -> [0, 1] CHW
            feeds[s.name] = np.ascontiguousarray(np.moveaxis(ref[f"obs/{s.name}"], -1, -3) / np.float32(255))
        else:
            feeds[s.name] = ref[f"obs/{s.name}"]
    assert action_error(policy, ref, feeds) < BOUND


def test_observation_history_is_the_frame_repeated_as_at_an_episode_start(diffusion_case):
    policy, ref = diffusion_case
    if policy.history == 1:
        pytest.skip("no observation history in this variant")
    frames = {"observation.images.top": ref["obs/observation.images.top"][:, -1],
              "observation.state": ref["obs/observation.state"][:, -1], "instruction": [""] * 4}
    feeds = policy.make_inputs(frames)
    assert feeds["observation.images.top"].shape == (4, 2, 3, 96, 96)
    np.testing.assert_array_equal(feeds["observation.state"][:, 0], feeds["observation.state"][:, 1])
    np.testing.assert_allclose(feeds["observation.images.top"][:, 1],
                               np.moveaxis(frames["observation.images.top"], -1, 1) / 255.0, atol=1e-7)


@pytest.mark.parametrize("variant", ["pi0_tiny", "pi05_tiny"])
def test_pi0_fixtures_match_lerobot_from_raw_observations_and_task(variant, monkeypatch):
    """pi0 / pi0.5 written by LeRobot 0.4.4 (tests/fixtures/lerobot_pi0/README.md) at tiny sizes (which
    LeRobot takes from its own constants, so the test supplies them); pi0.5's state goes into the prompt."""
    from test_lerobot_pi0 import tiny_sizes

    import vlaedge.models.lerobot.pi0_spec as pi0_spec

    monkeypatch.setattr(pi0_spec, "lerobot_sizes", lambda config: tiny_sizes())
    policy = load_policy(PI0_FIXTURES / variant / "pretrained_model")
    ref = load_reference(PI0_FIXTURES / variant)
    cameras = ["observation.images.top", "observation.images.wrist"]
    frames = {c: ref[f"obs/{c}"] for c in cameras}
    frames["observation.state"] = ref["obs/observation.state"]
    frames["instruction"] = frames["task"] = [str(t) for t in ref["tasks"]]
    feeds = policy.make_inputs(frames)
    mask = ref["pre/observation.language.attention_mask"]
    length = feeds["observation.language.tokens"].shape[1]
    np.testing.assert_array_equal(feeds["observation.language.tokens"] * mask[:, :length],
                                  ref["pre/observation.language.tokens"][:, :length] * mask[:, :length])
    assert ("observation.state" in feeds) == (variant == "pi0_tiny")  # pi0.5: in the prompt, not the graph
    feeds["noise"] = ref["noise"]
    assert action_error(policy, ref, feeds) < BOUND
    assert [g.name for g in policy.stage_plan.graphs] == ["vision", "prefix", "expert", "actions"]


def test_action_bounds_outside_an_env_name_the_action_statistics_they_come_from():
    from types import SimpleNamespace

    from vlaedge.check.envspace import check_spaces

    policy = load_policy(ACT / "pretrained_model")
    dims = policy.action_spec.dim
    space = SimpleNamespace(shape=(dims,), low=np.zeros(dims), high=np.full(dims, 1e-3))
    env = SimpleNamespace(action_space=space)
    with pytest.raises(VlaedgeError) as e:
        check_spaces(env, action_spec=policy.action_spec)
    assert "leave the env's action space" in e.value.message
    assert "policy_postprocessor" in e.value.hint and "action_spec" not in e.value.hint


def test_the_policy_is_named_by_the_folder_above_pretrained_model():
    assert load_policy(ACT / "pretrained_model").name == "lerobot act (act_aloha14)"
