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


def check_cameras(config: dict, cameras: tuple[str, ...], policy: str) -> set[tuple[int, ...]]:
    """At least one camera, each (3, H, W); returns their shapes.

    Raises:
        VlaedgeError: no camera, or one of another shape (`policy` names the network in the message).
    """
    inputs = config.get("input_features") or {}
    if not cameras:
        raise refuse("input_features", sorted(inputs), f"{policy} needs at least one VISUAL input")
    shapes = {tuple(inputs[k]["shape"]) for k in cameras}
    if any(len(s) != 3 or s[0] != 3 for s in shapes):
        raise refuse("input_features", sorted(shapes), "images must be (3, H, W)")
    return shapes


def check_state(config: dict, state: dict | None, policy: str) -> None:
    """A STATE input of at most `max_state_dim` values (zero-padded to it)."""
    if state is None or state.get("type") != "STATE" or state["shape"][0] > config["max_state_dim"]:
        raise refuse(f"input_features.{STATE_KEY}", state, f"{policy} needs a STATE input of at most "
                     f"max_state_dim = {config['max_state_dim']} values")


def check_action(config: dict, action: dict | None, policy: str) -> None:
    """An ACTION output of at most `max_action_dim` values (the first of the padded action)."""
    if action is None or action.get("type") != "ACTION" or action["shape"][0] > config["max_action_dim"]:
        raise refuse(f"output_features.{ACTION_KEY}", action, f"{policy} needs an ACTION output of at most "
                     f"max_action_dim = {config['max_action_dim']} values")
