"""What differs between LeRobot 0.4.x and 0.5 / 0.6 checkpoints, checked: config.json fields and processor
step configs against the known lists of `fields` (docs/lerobot_versions.md says what changed).

Unknown is refused, never defaulted: a config.json field that no LeRobot 0.4-0.6 version of that type
writes, or a step config key that step never writes, is one line naming the file, the step and the key.
A field a newer version renamed is read under its new name and handed on under the name vlaedge reads.
"""

from __future__ import annotations

from pathlib import Path

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot.fields import FIELDS, RENAMED, STEP_KEYS

RANGE = "LeRobot 0.4-0.6"
# steps that change the output when enabled: action = network output + state (relative actions, 0.5+)
RELATIVE_STEPS = ("relative_actions_processor", "absolute_actions_processor")


def check_config(config: dict, kind: str, path: Path) -> dict:
    """`config` with each field checked against `kind`'s known fields and renamed fields mapped to the
    names vlaedge reads. Types without a field list (not built by vlaedge) pass unchanged.

    Raises:
        VlaedgeError: a field that is not one of `kind`'s, or a field given under both its old and new name.
    """
    known = FIELDS.get(kind)
    if known is None:
        return config
    renamed = RENAMED.get(kind, {})
    out = {}
    for key, value in config.items():
        name = renamed.get(key, key)
        if name not in known:
            raise VlaedgeError(f"lerobot: {path}: field {key!r} is not a {kind} field of {RANGE}",
                               f"remove it if it is a typo; a field of a newer LeRobot is refused because "
                               f"vlaedge does not know what it changes (re-save with {RANGE})")
        if name != key and name in config:
            raise VlaedgeError(f"lerobot: {path}: fields {key!r} and {name!r} are one field under its new "
                               "and old name", f"keep {key!r}")
        out[name] = value
    return out


def check_step(path: Path, index: int, step: dict) -> None:
    """Checks one processor step's config keys against the keys that step writes in 0.4-0.6, and refuses
    an enabled relative-actions step (vlaedge's graph returns absolute actions from the network alone).

    Raises:
        VlaedgeError: naming the file, the step index and name, and the key.
    """
    reg, config = step["registry_name"], step.get("config", {})
    unknown = sorted(set(config) - STEP_KEYS.get(reg, frozenset()))
    if unknown:
        raise VlaedgeError(f"lerobot: {path}: steps[{index}] ({reg}) config key {unknown[0]!r} is not a key "
                           f"of {reg} in {RANGE}",
                           f"{reg} writes {sorted(STEP_KEYS.get(reg, ())) or 'no keys'}; remove the key or "
                           f"re-save the processors with {RANGE}")
    if reg in RELATIVE_STEPS and config.get("enabled", False) is not False:
        raise VlaedgeError(f"lerobot: {path}: steps[{index}] ({reg}) is enabled ({config.get('enabled')!r}): "
                           "relative actions (action = output + state) are not run by vlaedge",
                           "use a checkpoint trained with use_relative_actions=false")
