"""What the LeRobot network specs share: the batch keys LeRobot names, the input and output features they
read from config.json, and the one-line refusal of a field they do not build."""

from __future__ import annotations

from vlaedge.errors import VlaedgeError

STATE_KEY = "observation.state"
ENV_KEY = "observation.environment_state"
TOKENS_KEY = "observation.language.tokens"
MASK_KEY = "observation.language.attention_mask"
NOISE_KEY = "noise"
ACTION_KEY = "action"
EMPTY_CAMERA = "observation.images.empty_camera_"  # LeRobot's name for the `empty_cameras` placeholders


def refuse(field: str, value: object, fix: str) -> VlaedgeError:
    """The error for a config.json field this module does not build: its name, its value and the fix."""
    return VlaedgeError(f"lerobot: config.json: {field} = {value!r} is not supported", fix)


def camera_keys(config: dict) -> tuple[str, ...]:
    """The VISUAL input keys of config.json, in its order, less LeRobot's `empty_cameras` placeholders."""
    empty = {f"{EMPTY_CAMERA}{i}" for i in range(config.get("empty_cameras", 0))}
    inputs = config.get("input_features") or {}
    return tuple(k for k, f in inputs.items() if f.get("type") == "VISUAL" and k not in empty)


def action_feature(config: dict) -> dict | None:
    """config.json's `output_features.action` (type and shape), None where it has none."""
    return (config.get("output_features") or {}).get(ACTION_KEY)
