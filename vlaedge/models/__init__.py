"""Policy adapters. `load_policy` reads any checkpoint directory; its config.json names the family."""

from __future__ import annotations

from pathlib import Path

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import ActionSpec, Policy, TensorSpec
from vlaedge.models.checkpoint import CONFIG_FILE, SPEC_FILE, read_config, weight_files
from vlaedge.models.device import resolve_device
from vlaedge.models.lerobot.layout import is_lerobot
from vlaedge.models.weights import LOAD_DTYPES, check_fits

FAMILIES = ("reference", "python", "lerobot")

__all__ = ["ActionSpec", "Policy", "TensorSpec", "load_policy", "FAMILIES"]


def load_policy(checkpoint: str | Path, allow_pickle: bool = False, trust_code: bool = False,
                dtype: str = "float32", device: str = "cpu") -> Policy:
    """Loads a policy from a checkpoint directory (config.json + model.safetensors), lean: the module is
    built without weights (meta device) and each safetensors tensor, memory-mapped, becomes its parameter,
    so peak memory is about the weights once (`vlaedge.models.weights`).

    Args:
        checkpoint: the directory. Its spec (config.json, or vlaedge.json beside a Hugging Face
            config.json) has `"family": "reference"` (the built-in VLA) or `"family": "python"` (any
            torch module via `package.module:factory` or `policy.py:factory`); or a LeRobot
            `pretrained_model/` folder (config.json with `"type"`: act, diffusion, smolvla; processor files
            beside it; `vlaedge.models.lerobot`), built with no code to write. Weights: model.safetensors
            or sharded safetensors with model.safetensors.index.json (`vlaedge.models.checkpoint`).
        allow_pickle: also accept .pt/.pth weights. Unpickling runs code: only for files you trust.
        trust_code: allow a `python` checkpoint to import and call the factory its config.json names
            (as Hugging Face's `trust_remote_code`): that is running code the checkpoint chose.
        dtype: floating weights in "float32" (default: as the factory builds them), "float16" or
            "bfloat16" (half the memory), or "auto" (the dtype most of the checkpoint's weights are stored
            in).
        device: where the module runs: "cpu" (default), "cuda", or "auto" (cuda where
            `torch.cuda.is_available()`); checked before anything is read, the module moved there after
            loading (`vlaedge.models.device`). `Policy.run_torch` then feeds it there.

    Returns:
        The policy, in eval mode, on `device`.

    Raises:
        VlaedgeError: missing or truncated files, unknown config keys, mismatched tensor shapes or
            dtypes, NaN/Inf weights, a `python` checkpoint without `trust_code`, an unknown `dtype`, or
            weights larger than the memory available (checked before loading; the message names the
            options that fit), or "cuda" without CUDA or without room on the GPU.

    Example:
        >>> policy = load_policy("runs/my-policy")
        >>> actions = policy.act(frames)  # (B, T, A)
    """
    if dtype not in LOAD_DTYPES:
        raise VlaedgeError(f"load: dtype {dtype!r} is not a load dtype",
                           f"use one of {', '.join(LOAD_DTYPES)}")
    device = resolve_device(device)  # refused before a byte is read
    return _load(Path(checkpoint), allow_pickle, trust_code, dtype).to(device)


def _load(checkpoint: Path, allow_pickle: bool, trust_code: bool, dtype: str) -> Policy:
    if checkpoint.is_dir() and is_lerobot(checkpoint):
        from vlaedge.models.lerobot.policy import LeRobotPolicy

        dtype = check_fits(checkpoint, weight_files(checkpoint), dtype)
        return LeRobotPolicy.from_checkpoint(checkpoint, dtype)
    if checkpoint.is_dir() and is_lerobot(checkpoint / "pretrained_model"):
        raise VlaedgeError(f"checkpoint: {checkpoint} is a LeRobot training checkpoint; the policy is in its "
                           "pretrained_model/ folder", f"pass {checkpoint / 'pretrained_model'}")
    raw = read_config(checkpoint)
    spec_name = SPEC_FILE if (checkpoint / SPEC_FILE).is_file() else CONFIG_FILE
    family = raw.get("family")
    if family == "reference":
        from vlaedge.models.reference import ReferencePolicy

        dtype = check_fits(checkpoint, weight_files(checkpoint, allow_pickle), dtype)
        return ReferencePolicy.from_checkpoint(checkpoint, raw, allow_pickle, dtype)
    if family == "python":
        if not trust_code:
            raise VlaedgeError(
                f"checkpoint: {checkpoint}/{spec_name} asks to import and call factory "
                f"{str(raw.get('factory'))[:120]!r}, which runs code from the checkpoint",
                "pass --trust-code if you trust where this checkpoint comes from",
            )
        from vlaedge.models.python import PythonPolicy

        dtype = check_fits(checkpoint, weight_files(checkpoint, allow_pickle), dtype)
        return PythonPolicy.from_checkpoint(checkpoint, raw, allow_pickle, dtype)
    if family is None and is_lerobot(checkpoint, typed=False):
        from vlaedge.models.lerobot.layout import BUILT

        raise VlaedgeError(f"checkpoint: {checkpoint}/config.json looks like a LeRobot policy "
                           "(input_features, processor files) but has no \"type\"",
                           f"set \"type\" to the LeRobot policy type it was trained as: {', '.join(BUILT)}")
    raise VlaedgeError(f"checkpoint: {checkpoint}/{spec_name} has family {family!r}",
                       f"set \"family\" to one of {', '.join(FAMILIES)}")
