"""Reading a LeRobot `pretrained_model/` folder: its config, features and processor pipelines, checked.

The folder, as LeRobot's training script saves it (0.4.x; see `../shared/cases/lerobot_policies/`):

- `config.json`: `"type"` (act, diffusion, smolvla, pi0, pi05, ...), `input_features` / `output_features`
  (name -> {type: VISUAL | STATE | ENV | LANGUAGE | ACTION, shape}), `normalization_mapping` (feature type ->
  IDENTITY | MEAN_STD | MIN_MAX | QUANTILES | QUANTILE10), `chunk_size`, `n_action_steps`, the network's
  sizes;
- `model.safetensors`: the weights;
- `policy_preprocessor.json` / `policy_postprocessor.json`: the processor steps in order (`registry_name`,
  `config`, optional `state_file`), e.g. rename -> to_batch -> [new line -> tokenizer] -> device ->
  normalizer; unnormalizer -> device. The normalizer's statistics live in the step's `state_file`
  (`<feature>.<stat>` tensors), whose step index differs between policy types and LeRobot versions, so it
  is read from the JSON, never guessed.

Other LeRobot versions (docs/lerobot_versions.md): 0.5 / 0.6 folders load the same way (their new steps,
which shift the normalizer's index, and their new fields are known, `versions`); LeRobot <= 0.3 folders have
no processor files and keep the statistics as buffers in model.safetensors (`legacy`), read from there.

Everything is validated here, before any stage: a missing file, an unknown type, config.json field,
processor step, step config key or normalization mode, a statistic the normalization needs but the state
file lacks, NaN/Inf statistics or a zero std/range are one-line errors naming the file and field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot import legacy
from vlaedge.models.lerobot.fields import NEWER_TYPES
from vlaedge.models.lerobot.versions import check_config, check_step

CONFIG = "config.json"
PREPROCESSOR = "policy_preprocessor.json"
POSTPROCESSOR = "policy_postprocessor.json"
WEIGHTS = "model.safetensors"
BUILT = ("act", "diffusion", "smolvla", "pi0", "pi05")  # types vlaedge builds (a module each, here)
KNOWN = ("act", "diffusion", "smolvla", "pi0", "pi05", "pi0_fast", "tdmpc", "vqbet", "sac", "groot", "xvla",
         "wall_x", "sarm", "reward_classifier") + NEWER_TYPES  # LeRobot's registered policy types (0.4-0.6)
LEGACY_TYPES = ("act", "diffusion", "smolvla")  # types whose LeRobot <= 0.3 checkpoints load (`legacy`)
MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")
STATS_OF = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
            "QUANTILE10": ("q10", "q90")}
FEATURE_TYPES = ("VISUAL", "STATE", "ENV", "LANGUAGE", "ACTION", "REWARD")
# processor steps that do nothing to one observation on the CPU (batching, device moves)
NO_OP_STEPS = ("to_batch_processor", "device_processor", "to_batch_processor_observation",
               "to_batch_processor_action", "to_batch_processor_complementary_data")
NEW_LINE_STEPS = ("smolvla_new_line_processor", "pi0_new_line_processor")
# relative / absolute actions (0.5+): no-ops while disabled, refused when enabled (`versions.check_step`)
PRE_STEPS = NO_OP_STEPS + NEW_LINE_STEPS + ("pi05_prepare_state_tokenizer_processor_step",
                                            "rename_observations_processor", "tokenizer_processor",
                                            "normalizer_processor", "relative_actions_processor")
POST_STEPS = NO_OP_STEPS + ("unnormalizer_processor", "absolute_actions_processor")


@dataclass(frozen=True)
class Feature:
    """One LeRobot feature: `type` (VISUAL, STATE, ENV, ACTION) and per-sample `shape`, e.g. (3, 96, 96)."""

    name: str
    type: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Normalization:
    """How one feature is (un)normalised, as LeRobot's normalizer step does it.

    Attributes:
        mode: "IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES" or "QUANTILE10".
        stats: the two statistics the mode needs ({"mean", "std"}, {"min", "max"}, {"q01", "q99"},
            {"q10", "q90"}), float32 arrays of the feature's shape (images: (3, 1, 1)).
        eps: the normalizer's epsilon (added to std; replaces a zero range).
        bounds: the feature's recorded (min, max) when the state file has them (the action range that
            drift is measured in), else None.
    """

    mode: str
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    eps: float = 1e-8
    bounds: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class TextSettings:
    """The tokenizer step: `tokenizer_name` (a folder or Hub id), `max_length` tokens, `padding_side`,
    `truncation`, whether a new-line step appends "\\n" to the task first, and whether pi0.5's state step
    writes the normalized state into the prompt (`pi05.state_prompts`) before tokenizing."""

    tokenizer_name: str
    max_length: int
    padding_side: str = "right"
    truncation: bool = True
    new_line: bool = False
    state_prompt: bool = False


@dataclass(frozen=True)
class LeRobotCheckpoint:
    """A validated `pretrained_model/` folder.

    Attributes:
        root: the folder.
        type: the policy type ("act", "diffusion", "smolvla").
        config: config.json as parsed.
        inputs: the input features in config order (cameras, state, environment state).
        action: the action feature (shape (A,)).
        norms: feature name -> `Normalization` (inputs from the preprocessor, "action" from the
            postprocessor).
        rename: policy feature -> the dataset feature it is read from (the rename step, inverted).
        text: the tokenizer step, or None for policies without language.
        chunk_size: actions the network predicts per call (`chunk_size`, or Diffusion Policy's `horizon`).
        n_action_steps: actions executed per call (the graph's output length).
        state_files: the processor state files the JSONs name (read here, not weights).
        n_obs_steps: observation steps each call sees (1, or a history as Diffusion Policy's).
        consumed: tensors of model.safetensors read here as statistics, not weights (LeRobot <= 0.3
            normalization buffers; empty for 0.4+ folders).
    """

    root: Path
    type: str
    config: dict
    inputs: tuple[Feature, ...]
    action: Feature
    norms: dict[str, Normalization]
    rename: dict[str, str]
    text: TextSettings | None
    chunk_size: int
    n_action_steps: int
    state_files: frozenset[str] = frozenset()
    n_obs_steps: int = 1
    consumed: frozenset[str] = frozenset()


def is_lerobot(checkpoint: Path, typed: bool = True) -> bool:
    """Whether `checkpoint` looks like a LeRobot `pretrained_model/` folder: config.json with
    `input_features` (or a `policy_preprocessor.json` beside it), a `"type"` (unless `typed` is False) and
    no vlaedge `"family"`. Reads config.json only."""
    path = checkpoint / CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("type" in config or not typed) and "family" not in config and (
        "input_features" in config or (checkpoint / PREPROCESSOR).is_file())


def read_checkpoint(root: Path) -> LeRobotCheckpoint:
    """Reads and validates a LeRobot `pretrained_model/` folder (weights are not read here).

    Raises:
        VlaedgeError: a missing file, an unknown or unsupported type, feature type, processor step or
            normalization mode, a missing/NaN/Inf/zero statistic, or inconsistent chunk sizes; one line
            naming the file and field.
    """
    config = _json(root / CONFIG)
    kind = config.get("type")
    if kind not in BUILT:
        known = ("a LeRobot policy type vlaedge does not build yet" if kind in KNOWN
                 else "not a LeRobot type (LeRobot 0.4-0.6)")
        raise VlaedgeError(f"lerobot: {root / CONFIG}: type {kind!r} is {known}",
                           f"vlaedge builds {', '.join(BUILT)}; for others write a python-family spec "
                           "(docs: guides/own-vla.md 'Bring your own VLA')")
    config = check_config(config, kind, root / CONFIG)
    processors = [name for name in (PREPROCESSOR, POSTPROCESSOR) if (root / name).is_file()]
    for name in (WEIGHTS, *((PREPROCESSOR, POSTPROCESSOR) if processors else ())):
        if not (root / name).is_file():
            raise VlaedgeError(f"lerobot: {root} has no {name}",
                               "copy the whole pretrained_model/ folder LeRobot saved (config.json, "
                               "model.safetensors, policy_preprocessor*.json/.safetensors, "
                               "policy_postprocessor*.json/.safetensors)")
    inputs = _features(config, "input_features", root)
    outputs = _features(config, "output_features", root)
    actions = [f for f in outputs if f.type == "ACTION"]
    if len(actions) != 1 or len(actions[0].shape) != 1:
        raise VlaedgeError(f"lerobot: {root / CONFIG}: output_features must hold one ACTION feature of shape "
                           f"(A,), got {[(f.name, f.type, f.shape) for f in outputs]}",
                           "re-save the checkpoint with LeRobot")
    # actions per network call: `chunk_size` (ACT, SmolVLA, pi0) or the diffusion `horizon`
    chunk_key = "chunk_size" if "chunk_size" in config or "horizon" not in config else "horizon"
    chunk = _int(config, chunk_key, root)
    steps = _int(config, "n_action_steps", root)
    if not 1 <= steps <= chunk:
        raise VlaedgeError(f"lerobot: {root / CONFIG}: n_action_steps {steps} must be in 1..chunk_size "
                           f"({chunk})", "set n_action_steps <= chunk_size")
    read = _processors(root, inputs, actions) if processors else _legacy(root, kind, config, inputs, actions)
    history = _int(config, "n_obs_steps", root) if "n_obs_steps" in config else 1
    return LeRobotCheckpoint(root, kind, config, tuple(inputs), actions[0], chunk_size=chunk,
                             n_action_steps=steps, n_obs_steps=history, **read)


def _processors(root: Path, inputs: list[Feature], actions: list[Feature]) -> dict:
    """Normalizations, rename map, text settings and state files from the processor JSONs (0.4+)."""
    pre = _steps(root, PREPROCESSOR, PRE_STEPS)
    post = _steps(root, POSTPROCESSOR, POST_STEPS)
    norms = _normalizations(root, pre, "normalizer_processor", inputs)
    norms.update(_normalizations(root, post, "unnormalizer_processor", actions))
    named = frozenset(s["state_file"] for s in pre + post if isinstance(s.get("state_file"), str))
    return {"norms": norms, "rename": _rename(pre), "text": _text(root, pre), "state_files": named}


def _legacy(root: Path, kind: str, config: dict, inputs: list[Feature], actions: list[Feature]) -> dict:
    """The same from a LeRobot <= 0.3 folder: statistics from model.safetensors' normalization buffers,
    modes from config.json's `normalization_mapping`, the tokenizer from the config (`legacy`)."""
    weights = root / WEIGHTS
    names = legacy.buffer_names(weights)
    if not names:
        raise VlaedgeError(f"lerobot: {root} has neither {PREPROCESSOR} / {POSTPROCESSOR} (LeRobot 0.4+) nor "
                           f"normalization buffers in {WEIGHTS} (LeRobot <= 0.3)",
                           "copy the whole pretrained_model/ folder LeRobot saved")
    if kind not in LEGACY_TYPES:
        raise VlaedgeError(f"lerobot: {root}: a {kind} checkpoint of LeRobot <= 0.3 (normalization buffers "
                           f"in {WEIGHTS}) is not read", "migrate it with LeRobot 0.4's "
                           "processor/migrate_policy_normalization.py")
    modes = _legacy_modes(root, config)
    legacy.buffer_stats(weights, names, legacy.TARGETS, actions)  # training only: checked, not used
    norms = {}
    for prefix, features in ((legacy.INPUTS, inputs), (legacy.OUTPUTS, actions)):
        state = legacy.buffer_stats(weights, names, prefix, features)
        norms.update({f.name: _one(root, f"{WEIGHTS} ({prefix} buffers)", f, modes.get(f.type, "IDENTITY"),
                                   state, legacy.EPS) for f in features})
    text = None
    if kind == "smolvla":  # <= 0.3 SmolVLA tokenized itself: "\n" appended, padded right, untruncated
        name = config.get("vlm_model_name")
        if not isinstance(name, str):
            raise VlaedgeError(f"lerobot: {root / CONFIG}: vlm_model_name is {name!r}", "name the VLM folder")
        text = TextSettings(name, _int(config, "tokenizer_max_length", root), truncation=False, new_line=True)
    return {"norms": norms, "rename": {}, "text": text, "consumed": names}


def _legacy_modes(root: Path, config: dict) -> dict[str, str]:
    modes = config.get("normalization_mapping")
    if not isinstance(modes, dict) or any(v not in MODES for v in modes.values()):
        raise VlaedgeError(f"lerobot: {root / CONFIG}: normalization_mapping is {modes!r}; a LeRobot <= 0.3 "
                           "checkpoint needs it to read its normalization buffers",
                           f"map feature types to {', '.join(MODES)}")
    return modes


def _json(path: Path) -> dict:
    if not path.is_file():
        raise VlaedgeError(f"lerobot: {path} does not exist", "copy the whole pretrained_model/ folder")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise VlaedgeError(f"lerobot: {path} is not valid JSON ({e})", "restore the file from the "
                           "checkpoint LeRobot saved") from e
    if not isinstance(value, dict):
        raise VlaedgeError(f"lerobot: {path} must hold a JSON object", "restore the file")
    return value


def _int(config: dict, key: str, root: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise VlaedgeError(f"lerobot: {root / CONFIG}: {key} is {value!r}, not a positive integer",
                           "re-save the checkpoint with LeRobot")
    return value


def _features(config: dict, key: str, root: Path) -> list[Feature]:
    raw = config.get(key)
    if not isinstance(raw, dict) or not raw:
        raise VlaedgeError(f"lerobot: {root / CONFIG}: {key} is missing or empty",
                           "re-save the checkpoint with LeRobot (0.4 or later writes the features)")
    out = []
    for name, spec in raw.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if kind not in FEATURE_TYPES:
            raise VlaedgeError(f"lerobot: {root / CONFIG}: {key}.{name}.type is {kind!r}",
                               f"use one of {', '.join(FEATURE_TYPES)}")
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d < 100_000 for d in shape):
            raise VlaedgeError(f"lerobot: {root / CONFIG}: {key}.{name}.shape is {shape!r}",
                               "a list of positive dimensions, e.g. [3, 96, 96] or [14]")
        if kind == "VISUAL" and (len(shape) != 3 or shape[0] != 3):
            raise VlaedgeError(f"lerobot: {root / CONFIG}: {key}.{name} is VISUAL with shape {shape}",
                               "cameras are [3, H, W] (RGB, channels first)")
        out.append(Feature(name, kind, tuple(shape)))
    return out


def _steps(root: Path, name: str, allowed: tuple[str, ...]) -> list[dict]:
    raw = _json(root / name).get("steps")
    if not isinstance(raw, list):
        raise VlaedgeError(f"lerobot: {root / name} has no steps list", "restore the file")
    for i, step in enumerate(raw):
        reg = step.get("registry_name") if isinstance(step, dict) else None
        if reg not in allowed:
            what = f"class {step['class']!r}" if isinstance(step, dict) and "class" in step else repr(reg)
            raise VlaedgeError(f"lerobot: {root / name}: steps[{i}] is {what}, a processor step vlaedge "
                               "does not run",
                               f"vlaedge runs {', '.join(allowed)}; remove the step or export its effect "
                               "into the policy")
        if not isinstance(step.get("config", {}), dict):
            raise VlaedgeError(f"lerobot: {root / name}: steps[{i}].config is not an object", "restore it")
        check_step(root / name, i, step)
    return raw


def _rename(pre: list[dict]) -> dict[str, str]:
    """policy feature -> dataset feature, from the rename step (dataset name -> policy name)."""
    out: dict[str, str] = {}
    for step in pre:
        if step["registry_name"] == "rename_observations_processor":
            mapping = step.get("config", {}).get("rename_map") or {}
            out.update({str(new): str(old) for old, new in mapping.items()})
    return out


def _text(root: Path, pre: list[dict]) -> TextSettings | None:
    steps = [s for s in pre if s["registry_name"] == "tokenizer_processor"]
    if not steps:
        return None
    c = steps[0].get("config", {})
    length, name = c.get("max_length"), c.get("tokenizer_name")
    where = f"{root / PREPROCESSOR}: tokenizer_processor.config"
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 4096:
        raise VlaedgeError(f"lerobot: {where}.max_length is {length!r}", "a positive number of tokens")
    if c.get("padding_side", "right") not in ("right", "left"):
        raise VlaedgeError(f"lerobot: {where}.padding_side is {c.get('padding_side')!r}", "right or left")
    if c.get("task_key", "task") != "task":
        raise VlaedgeError(f"lerobot: {where}.task_key is {c.get('task_key')!r}; vlaedge feeds the "
                           "dataset's task", "set it to \"task\"")
    if not isinstance(name, str):
        raise VlaedgeError(f"lerobot: {where}.tokenizer_name is {name!r}", "name the tokenizer's folder")
    new_line = any(s["registry_name"] in NEW_LINE_STEPS for s in pre)
    state_prompt = any(s["registry_name"] == "pi05_prepare_state_tokenizer_processor_step" for s in pre)
    return TextSettings(name, length, c.get("padding_side", "right"), bool(c.get("truncation", True)),
                        new_line, state_prompt)


def _normalizations(root: Path, steps: list[dict], registry: str,
                    features: list[Feature]) -> dict[str, Normalization]:
    """The `Normalization` of each of `features` from the (un)normalizer step, checked."""
    file = PREPROCESSOR if registry == "normalizer_processor" else POSTPROCESSOR
    found = [s for s in steps if s["registry_name"] == registry]
    if not found:
        return {f.name: Normalization("IDENTITY") for f in features}
    step = found[0]
    config = step.get("config", {})
    norm_map = config.get("norm_map") or {}
    bad = {k: v for k, v in norm_map.items() if v not in MODES}
    if bad:
        raise VlaedgeError(f"lerobot: {root / file}: {registry}.norm_map has {bad}",
                           f"modes are {', '.join(MODES)}")
    eps = config.get("eps", 1e-8)
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        raise VlaedgeError(f"lerobot: {root / file}: {registry}.eps is {eps!r}", "a small positive number")
    needed = {f.name: norm_map.get(f.type, "IDENTITY") if _normalized(root / file, config, f) else "IDENTITY"
              for f in features}
    state = _state(root, file, step) if any(m != "IDENTITY" for m in needed.values()) else {}
    return {f.name: _one(root, step.get("state_file", file), f, needed[f.name], state, float(eps))
            for f in features}


def _normalized(path: Path, config: dict, feature: Feature) -> bool:
    """Whether the step normalizes `feature`: actions always, observations only those named by
    `normalize_observation_keys` when the step has that key (LeRobot's normalizer skips the others)."""
    keys = config.get("normalize_observation_keys")
    if keys is None or feature.type == "ACTION":
        return True
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise VlaedgeError(f"lerobot: {path}: normalize_observation_keys is {keys!r}",
                           "a list of observation feature names")
    return feature.name in keys


def _state(root: Path, file: str, step: dict) -> dict[str, np.ndarray]:
    name = step.get("state_file")
    if not isinstance(name, str) or Path(name).name != name:
        raise VlaedgeError(f"lerobot: {root / file}: {step['registry_name']}.state_file is {name!r}",
                           "name the statistics file saved beside it")
    path = root / name
    if not path.is_file():
        raise VlaedgeError(f"lerobot: {path} does not exist ({file} names it)",
                           "copy the whole pretrained_model/ folder")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VlaedgeError(f"lerobot: {path} is truncated or corrupt ({e})", "re-copy the file") from e


def _one(root: Path, file: str, feature: Feature, mode: str, state: dict,
         eps: float) -> Normalization:
    if mode == "IDENTITY":
        return Normalization(mode)
    stats = {}
    for stat in STATS_OF[mode]:
        key = f"{feature.name}.{stat}"
        if key not in state:
            raise VlaedgeError(f"lerobot: {root / file} has no {key} ({mode} normalization of "
                               f"{feature.name} needs it)", "re-save the processors with the dataset's stats")
        value = np.asarray(state[key], np.float32)
        if not np.isfinite(value).all():
            raise VlaedgeError(f"lerobot: {root / file}: {key} holds NaN or Inf",
                               "recompute the dataset statistics and re-save the processors")
        stats[stat] = value
    low, high = stats[STATS_OF[mode][0]], stats[STATS_OF[mode][1]]
    # a zero std is refused; a zero range is not (LeRobot divides by eps there: a constant dimension)
    bad = np.ravel(high <= 0) if mode == "MEAN_STD" else np.ravel(high < low)
    if bad.any():
        low_name, high_name = STATS_OF[mode]
        what = "a zero or negative std" if mode == "MEAN_STD" else f"{high_name} below {low_name}"
        raise VlaedgeError(f"lerobot: {root / file}: {feature.name} has {what} (dims "
                           f"{np.flatnonzero(bad).tolist()[:8]})",
                           "drop constant dimensions from the features, or recompute the statistics")
    bounds = None
    if f"{feature.name}.min" in state and f"{feature.name}.max" in state:
        bounds = (np.asarray(state[f"{feature.name}.min"], np.float32),
                  np.asarray(state[f"{feature.name}.max"], np.float32))
        if not (np.isfinite(bounds[0]).all() and np.isfinite(bounds[1]).all()):
            raise VlaedgeError(f"lerobot: {root / file}: {feature.name}.min/max hold NaN or Inf",
                               "recompute the dataset statistics and re-save the processors")
    return Normalization(mode, stats, eps, bounds)
