"""LeRobot <= 0.3 checkpoints: the normalization statistics live in model.safetensors, not in processor files.

Before LeRobot 0.4 (huggingface/lerobot#1452) a policy held its normalization as modules, saved with the
weights as `<module>.buffer_<feature with '.' written '_'>.<stat>`:

- `normalize_inputs.buffer_observation_state.mean` (and `.std`, or `.min` / `.max`): the inputs;
- `normalize_targets.buffer_action.*`: the training targets (unused at inference, but in the file);
- `unnormalize_outputs.buffer_action.*`: the actions out.

LeRobot's own migration (processor/migrate_policy_normalization.py) turns every '_' of the buffer name back
into '.', which misnames a feature such as `observation.images.wrist_cam`. Here a buffer is matched against
the config's feature names written with '_' instead: exactly one feature must match, or the buffer is
refused by name. The buffers are consumed as statistics, so they are not weights of the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError

PREFIXES = ("normalize_inputs", "normalize_targets", "unnormalize_outputs")
INPUTS, TARGETS, OUTPUTS = PREFIXES
EPS = 1e-8  # the epsilon LeRobot <= 0.3 added to std and to the min-max range


def buffer_names(weights: Path) -> frozenset[str]:
    """The normalization buffers of `weights` (model.safetensors), read from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise VlaedgeError(f"lerobot: {weights} is truncated or corrupt ({e})", "re-copy the file") from e
    return frozenset(k for k in keys if k.startswith(tuple(f"{p}.buffer_" for p in PREFIXES)))


def buffer_stats(weights: Path, names: frozenset[str], prefix: str,
                 features: list) -> dict[str, np.ndarray]:
    """`prefix`'s buffers as {"<feature name>.<stat>": float32 array}, like a 0.4 processor state file.

    Args:
        weights: model.safetensors (named in errors).
        names: its buffer names (`buffer_names`).
        prefix: one of `PREFIXES`.
        features: the config's features the buffers belong to (`layout.Feature`, with `.name`).

    Raises:
        VlaedgeError: a buffer whose feature matches no feature, or more than one, of `features`.
    """
    by_flat: dict[str, list[str]] = {}
    for f in features:
        by_flat.setdefault(f.name.replace(".", "_"), []).append(f.name)
    head = f"{prefix}.buffer_"
    wanted = {}
    for name in sorted(n for n in names if n.startswith(head)):
        flat, _, stat = name[len(head):].rpartition(".")
        matches = by_flat.get(flat, [])
        if len(matches) != 1:
            what = f"matches {matches}" if matches else "matches no feature"
            raise VlaedgeError(f"lerobot: {weights}: buffer {name} {what} of config.json (its feature names "
                               "with '.' written '_')",
                               "name the feature in config.json's input_features / output_features as the "
                               "policy was trained, or migrate the checkpoint with LeRobot 0.4")
        wanted[name] = f"{matches[0]}.{stat}"
    tensors = read_buffers(weights, frozenset(wanted))
    return {stat: tensors[name].float().numpy() for name, stat in wanted.items()}


def read_buffers(weights: Path, names: frozenset[str]) -> dict:
    """The buffers `names` of `weights` as torch tensors {name: tensor}, each read alone.

    Raises:
        VlaedgeError: the file cannot be read.
    """
    if not names:
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {n: f.get_tensor(n) for n in sorted(names)}
    except (SafetensorError, OSError, ValueError) as e:
        raise VlaedgeError(f"lerobot: {weights} is truncated or corrupt ({e})", "re-copy the file") from e
