"""Policy adapters. `load_policy` reads any checkpoint directory; its config.json names the family."""

from __future__ import annotations

from pathlib import Path

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import ActionSpec, Policy, TensorSpec
from vlaedge.models.checkpoint import read_config

FAMILIES = ("reference", "python")

__all__ = ["ActionSpec", "Policy", "TensorSpec", "load_policy", "FAMILIES"]


def load_policy(checkpoint: str | Path, allow_pickle: bool = False) -> Policy:
    """Loads a policy from a checkpoint directory (config.json + model.safetensors).

    Args:
        checkpoint: the directory. Its config.json has `"family": "reference"` (the built-in VLA)
            or `"family": "python"` (any torch module via `package.module:factory`).
        allow_pickle: also accept .pt/.pth weights. Unpickling runs code: only for files you trust.

    Returns:
        The policy, in eval mode.

    Raises:
        VlaedgeError: missing or truncated files, unknown config keys, mismatched tensor shapes.

    Example:
        >>> policy = load_policy("runs/my-policy")
        >>> actions = policy.act(frames)  # (B, T, A)
    """
    checkpoint = Path(checkpoint)
    raw = read_config(checkpoint)
    family = raw.get("family")
    if family == "reference":
        from vlaedge.models.reference import ReferencePolicy

        return ReferencePolicy.from_checkpoint(checkpoint, raw, allow_pickle)
    if family == "python":
        from vlaedge.models.python import PythonPolicy

        return PythonPolicy.from_checkpoint(checkpoint, raw, allow_pickle)
    raise VlaedgeError(f"checkpoint: {checkpoint}/config.json has family {family!r}",
                       f"set \"family\" to one of {', '.join(FAMILIES)}")
