"""LeRobot checkpoint layouts across versions (docs/lerobot_versions.md): 0.5 / 0.6 folders (new steps that
shift the normalizer's index, new fields) and LeRobot <= 0.3 folders (statistics as buffers in
model.safetensors, no processor files) load and return the 0.4 folder's actions; an unknown config.json
field or step config key is one line naming it.

Every variant is derived from the ACT fixture LeRobot 0.4.4 wrote (../shared/cases/lerobot_policies/), the
way the other version writes it, and is compared with `load_policy` of the fixture itself on the
observations of its reference.npz.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.lerobot import fields
from vlaedge.models.lerobot.layout import read_checkpoint
from vlaedge.models.lerobot.versions import check_config, check_step

CASES = Path(__file__).resolve().parents[2] / "shared" / "cases" / "lerobot_policies"
ACT = CASES / "act_aloha14" / "pretrained_model"
CAMERAS = ["observation.images.top", "observation.images.wrist"]
WEIGHTS = "model.safetensors"
PRE_STATS = "policy_preprocessor_step_3_normalizer_processor.safetensors"
POST_STATS = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
HERE = Path(__file__).resolve().parent
FIXTURE_FOLDERS = [ACT, CASES / "smolvla_tiny" / "pretrained_model",
                   *sorted((HERE / "fixtures").glob("lerobot_*/*/pretrained_model"))]
LEROBOT_044 = Path("/tmp/lerobot044/lerobot")  # LeRobot 0.4.4's source, where present

pytestmark = pytest.mark.skipif(not CASES.is_dir(),
                                reason="../shared/cases/lerobot_policies is not beside the repo")


@pytest.fixture(scope="module")
def reference():
    """The 0.4 folder's policy, its feeds from reference.npz's raw observations, and its actions."""
    policy = load_policy(ACT)
    ref = dict(np.load(ACT.parent / "reference.npz"))
    frames = {c: ref[f"obs/{c}"] for c in CAMERAS}
    frames["observation.state"] = ref["obs/observation.state"]
    frames["instruction"] = frames["task"] = [str(t) for t in ref["task"]]
    feeds = policy.make_inputs(frames)
    return feeds, actions_of(policy, feeds)


def actions_of(policy, feeds: dict) -> np.ndarray:
    return policy.decode(policy.run_torch(feeds))


def copy_folder(dst: Path, link_weights: bool = True, source: Path = ACT) -> Path:
    """A writable copy of a fixture's folder (ACT's by default), model.safetensors linked (or left out)."""
    dst.mkdir()
    for p in source.iterdir():
        if p.name == "model.safetensors" and link_weights:
            (dst / p.name).symlink_to(p)
        elif p.name != "model.safetensors":
            shutil.copyfile(p, dst / p.name)
    return dst


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def refusal(folder: Path) -> str:
    with pytest.raises(VlaedgeError) as e:
        load_policy(folder)
    assert "\n" not in str(e.value)
    return e.value.message


# --- LeRobot 0.5 / 0.6 -----------------------------------------------------------------------------------

def newer_layout(folder: Path) -> None:
    """What 0.5 / 0.6 change in the folder: `pretrained_revision` in config.json; a (disabled)
    `relative_actions_processor` before the normalizer, which moves it to step 4 (pi0 / pi0.5's 0.5
    pipeline); the unnormalizer after a device step with an `absolute_actions_processor` after it (the
    device step first as in the migrated Hub checkpoints), so both state files have other step indices."""
    edit_json(folder / "config.json", lambda c: c.update(pretrained_revision=None))

    def pre(c):
        c["steps"].insert(3, {"registry_name": "relative_actions_processor",
                              "config": {"enabled": False, "exclude_joints": [], "action_names": None}})
        c["steps"][4]["state_file"] = "policy_preprocessor_step_4_normalizer_processor.safetensors"

    def post(c):
        unnormalizer, device = c["steps"]
        unnormalizer["state_file"] = "policy_postprocessor_step_1_unnormalizer_processor.safetensors"
        c["steps"] = [device, unnormalizer, {"registry_name": "absolute_actions_processor",
                                             "config": {"enabled": False}}]

    edit_json(folder / "policy_preprocessor.json", pre)
    edit_json(folder / "policy_postprocessor.json", post)
    (folder / PRE_STATS).rename(folder / "policy_preprocessor_step_4_normalizer_processor.safetensors")
    (folder / POST_STATS).rename(folder / "policy_postprocessor_step_1_unnormalizer_processor.safetensors")


def test_newer_layout_loads_and_gives_identical_actions(tmp_path, reference):
    folder = copy_folder(tmp_path / "pretrained_model")
    newer_layout(folder)
    ckpt = read_checkpoint(folder)
    assert ckpt.state_files == {"policy_preprocessor_step_4_normalizer_processor.safetensors",
                                "policy_postprocessor_step_1_unnormalizer_processor.safetensors"}
    feeds, want = reference
    np.testing.assert_array_equal(actions_of(load_policy(folder), feeds), want)


def test_unknown_config_field_is_refused_naming_it(tmp_path):
    folder = copy_folder(tmp_path / "pretrained_model")
    edit_json(folder / "config.json", lambda c: c.update(use_flash_decoder=True))
    assert refusal(folder) == (f"lerobot: {folder / 'config.json'}: field 'use_flash_decoder' is not a act "
                               "field of LeRobot 0.4-0.6")


def test_field_of_another_type_is_refused(tmp_path):
    folder = copy_folder(tmp_path / "pretrained_model")
    edit_json(folder / "config.json", lambda c: c.update(horizon=16))  # a Diffusion Policy field
    assert "field 'horizon' is not a act field of LeRobot 0.4-0.6" in refusal(folder)


def test_unknown_step_config_key_is_refused_naming_file_step_and_key(tmp_path):
    folder = copy_folder(tmp_path / "pretrained_model")
    edit_json(folder / "policy_preprocessor.json", lambda c: c["steps"][3]["config"].update(clip_range=3.0))
    assert refusal(folder).startswith(f"lerobot: {folder / 'policy_preprocessor.json'}: steps[3] "
                                      "(normalizer_processor) config key 'clip_range' is not a key of "
                                      "normalizer_processor in LeRobot 0.4-0.6")


def test_enabled_relative_actions_are_refused(tmp_path):
    folder = copy_folder(tmp_path / "pretrained_model")
    newer_layout(folder)
    edit_json(folder / "policy_postprocessor.json", lambda c: c["steps"][2]["config"].update(enabled=True))
    assert "steps[2] (absolute_actions_processor) is enabled (True)" in refusal(folder)


def test_renamed_field_is_read_under_its_new_name(tmp_path, monkeypatch, reference):
    """No field of these types was renamed in 0.5 / 0.6; a rename entry (here a made-up one) maps the new
    name to the one vlaedge reads, and both names at once are refused."""
    monkeypatch.setitem(fields.RENAMED, "act", {"model_width": "dim_model"})
    folder = copy_folder(tmp_path / "pretrained_model")
    edit_json(folder / "config.json", lambda c: c.update(model_width=c.pop("dim_model")))
    assert read_checkpoint(folder).config["dim_model"] == 64
    feeds, want = reference
    np.testing.assert_array_equal(actions_of(load_policy(folder), feeds), want)
    edit_json(folder / "config.json", lambda c: c.update(dim_model=64))
    assert "fields 'model_width' and 'dim_model' are one field" in refusal(folder)


@pytest.mark.parametrize("folder", FIXTURE_FOLDERS, ids=lambda p: p.parent.name)
def test_every_fixture_uses_known_fields_and_keys(folder):
    """The field lists cover what LeRobot 0.4.4 wrote for all five types (ACT, Diffusion, SmolVLA, pi0,
    pi0.5)."""
    config = json.loads((folder / "config.json").read_text())
    assert check_config(config, config["type"], folder / "config.json") == config
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        for i, step in enumerate(json.loads((folder / name).read_text())["steps"]):
            check_step(folder / name, i, step)


@pytest.mark.skipif(not LEROBOT_044.is_dir(), reason="LeRobot 0.4.4's source is not at /tmp/lerobot044")
def test_field_lists_are_what_the_extraction_prints():
    """fields.py's `_EXTRACTED_*` are the extraction script's output for LeRobot 0.4.4 (regenerable)."""
    path = HERE / "fixtures" / "lerobot_versions" / "extract_fields.py"
    spec = importlib.util.spec_from_file_location("extract_fields", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base, types, steps = script.extract(LEROBOT_044)
    assert base == fields._EXTRACTED_BASE
    assert {k: v - base for k, v in types.items()} == fields._EXTRACTED_TYPES
    assert steps == fields._EXTRACTED_STEPS


# --- LeRobot <= 0.3 --------------------------------------------------------------------------------------

def legacy_layout(folder: Path, names: dict[str, str] | None = None, extra: dict | None = None,
                  source: Path = ACT) -> None:
    """The folder as LeRobot <= 0.3 saved it: no processor files; each normalized feature's two statistics
    (mean / std: both fixtures are MEAN_STD) in model.safetensors as
    `normalize_inputs.buffer_<name with '_'>.<stat>`, the action's as `normalize_targets.*` and
    `unnormalize_outputs.*`; config.json without 0.4's `use_peft` / `pretrained_path`. `names` renames
    features (config.json and buffers), `extra` adds tensors to model.safetensors."""
    names = names or {}
    pre, post = (load_file(str(next(folder.glob(f"policy_{p}processor_step_*.safetensors"))))
                 for p in ("pre", "post"))
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(source / WEIGHTS))
    for feature, spec in config["input_features"].items():
        if config["normalization_mapping"].get(spec["type"], "IDENTITY") != "IDENTITY":
            flat = names.get(feature, feature).replace(".", "_")
            state |= {f"normalize_inputs.buffer_{flat}.{s}": pre[f"{feature}.{s}"] for s in ("mean", "std")}
    for prefix, stats in (("normalize_targets", pre), ("unnormalize_outputs", post)):
        state |= {f"{prefix}.buffer_action.{s}": stats[f"action.{s}"] for s in ("mean", "std")}
    (folder / WEIGHTS).unlink(missing_ok=True)
    save_file(state | (extra or {}), str(folder / WEIGHTS))
    for p in folder.glob("policy_*processor*"):
        p.unlink()
    config.pop("use_peft"), config.pop("pretrained_path")
    config["input_features"] = {names.get(k, k): v for k, v in config["input_features"].items()}
    (folder / "config.json").write_text(json.dumps(config, indent=4))


def test_pre_04_layout_loads_and_gives_the_04_actions(tmp_path, reference):
    folder = copy_folder(tmp_path / "pretrained_model", link_weights=False)
    legacy_layout(folder)
    ckpt = read_checkpoint(folder)
    assert ckpt.state_files == frozenset() and len(ckpt.consumed) == 10  # 3 inputs + 2 actions, 2 stats each
    assert {n.mode for n in ckpt.norms.values()} == {"MEAN_STD"}
    feeds, want = reference
    policy = load_policy(folder)
    np.testing.assert_array_equal(actions_of(policy, feeds), want)
    saved = policy.save(tmp_path / "saved")  # the buffers go back into model.safetensors
    assert load_file(str(saved / "model.safetensors")).keys() == load_file(str(folder / WEIGHTS)).keys()
    np.testing.assert_array_equal(actions_of(load_policy(saved), feeds), want)


def test_pre_04_buffer_is_matched_by_the_feature_name_with_underscores(tmp_path, reference):
    """`observation.images.wrist_cam`'s buffer is `..._wrist_cam.mean`: matched to that feature, where
    LeRobot's migration would read it as `observation.images.wrist.cam`."""
    folder = copy_folder(tmp_path / "pretrained_model", link_weights=False)
    legacy_layout(folder, {"observation.images.wrist": "observation.images.wrist_cam"})
    feeds, want = reference
    feeds = {("observation.images.wrist_cam" if k == "observation.images.wrist" else k): v
             for k, v in feeds.items()}
    np.testing.assert_array_equal(actions_of(load_policy(folder), feeds), want)


def test_pre_04_buffer_of_no_feature_is_refused_naming_it(tmp_path):
    folder = copy_folder(tmp_path / "pretrained_model", link_weights=False)
    extra = {"normalize_inputs.buffer_observation_velocity.mean": np.zeros(3, np.float32)}
    legacy_layout(folder, extra=extra)
    assert "buffer normalize_inputs.buffer_observation_velocity.mean matches no feature" in refusal(folder)


def test_pre_04_missing_statistic_is_refused(tmp_path):
    folder = copy_folder(tmp_path / "pretrained_model", link_weights=False)
    legacy_layout(folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["unnormalize_outputs.buffer_action.std"]
    save_file(state, str(folder / "model.safetensors"))
    assert "(unnormalize_outputs buffers) has no action.std" in refusal(folder)


def test_pre_04_smolvla_reads_the_statistics_and_tokenizer_of_the_04_folder(tmp_path):
    """SmolVLA <= 0.3 tokenized the task itself (config.json's VLM and tokenizer_max_length, "\\n"
    appended): the same statistics (cameras IDENTITY) and tokenizer settings as its 0.4 processors."""
    smolvla = CASES / "smolvla_tiny" / "pretrained_model"
    folder = copy_folder(tmp_path / "pretrained_model", link_weights=False, source=smolvla)
    legacy_layout(folder, source=smolvla)
    old, new = read_checkpoint(folder), read_checkpoint(smolvla)
    assert len(old.consumed) == 6  # the state's and the two action buffers, 2 stats each; no camera's
    assert (old.text.tokenizer_name, old.text.max_length, old.text.new_line) == (
        new.text.tokenizer_name, new.text.max_length, new.text.new_line)
    assert old.norms.keys() == new.norms.keys()
    for name, norm in old.norms.items():
        assert norm.mode == new.norms[name].mode
        for stat, value in norm.stats.items():
            np.testing.assert_array_equal(value, new.norms[name].stats[stat])


def test_folder_with_neither_processors_nor_buffers_is_refused_naming_both(tmp_path):
    folder = copy_folder(tmp_path / "pretrained_model")
    for p in folder.glob("policy_*processor*"):
        p.unlink()
    assert refusal(folder) == (f"lerobot: {folder} has neither policy_preprocessor.json / "
                               "policy_postprocessor.json (LeRobot 0.4+) nor normalization buffers in "
                               "model.safetensors (LeRobot <= 0.3)")
