"""Reading and writing checkpoint directories (config.json + model.safetensors), with clear errors.

Pickle checkpoints (.pt/.pth/.bin) load only with an explicit opt-in, because unpickling runs code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

from vlaedge.errors import VlaedgeError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


def read_config(checkpoint: Path) -> dict:
    """Reads `config.json` of a checkpoint directory."""
    if not checkpoint.exists():
        raise VlaedgeError(f"checkpoint: {checkpoint} does not exist",
                           "pass a checkpoint directory with config.json and model.safetensors")
    if not checkpoint.is_dir():
        raise VlaedgeError(f"checkpoint: {checkpoint} is a file; a checkpoint is a directory",
                           f"pass the folder that holds config.json and the weights: {checkpoint.parent}")
    path = checkpoint / CONFIG_FILE
    if not path.is_file():
        raise VlaedgeError(f"checkpoint: {checkpoint} has no {CONFIG_FILE}",
                           "a checkpoint is a directory with config.json and model.safetensors")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VlaedgeError(f"checkpoint: {path} is not valid JSON ({e})",
                           "restore or re-save the checkpoint") from e
    if not isinstance(config, dict):
        raise VlaedgeError(f"checkpoint: {path} must hold a JSON object", "restore or re-save the checkpoint")
    return config


def load_weights(checkpoint: Path, allow_pickle: bool = False) -> dict:
    """Loads the state dict of a checkpoint directory (safetensors, or pickle with `allow_pickle`)."""
    st = checkpoint / WEIGHTS_FILE
    if st.is_file():
        return _load_safetensors(st)
    pickles = sorted(p for p in checkpoint.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise VlaedgeError(f"checkpoint: {checkpoint} has no {WEIGHTS_FILE}",
                           "save the weights with safetensors (vlaedge train writes them)")
    if not allow_pickle:
        raise VlaedgeError(
            f"checkpoint: {pickles[0]} is a pickle file; unpickling runs arbitrary code, so it is refused",
            "convert it to model.safetensors, or pass --allow-pickle if you trust its origin")
    import torch

    try:
        state = torch.load(pickles[0], map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, AttributeError) as e:
        raise VlaedgeError(f"checkpoint: {pickles[0]} could not be unpickled ({type(e).__name__}: {e})",
                           "check that the file is complete") from e
    return state.state_dict() if hasattr(state, "state_dict") else state


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VlaedgeError(f"checkpoint: {path} is truncated or corrupt ({e})",
                           "re-copy the file, or re-save the checkpoint") from e


def check_state_dict(module, state: dict, checkpoint: Path) -> None:
    """Checks names and shapes of `state` against `module` and loads it, naming any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else [])
        raise VlaedgeError(f"checkpoint: {checkpoint} does not match its config.json ({'; '.join(parts)})",
                           "save the weights together with the config they were trained with")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise VlaedgeError(
                f"checkpoint: tensor {name} has shape {tuple(state[name].shape)}, the config needs "
                f"{tuple(tensor.shape)}", "the weights and config.json come from different models")
        _check_values(name, state[name], tensor, checkpoint)
    module.load_state_dict(state)


def _check_values(name: str, saved, expected, checkpoint: Path) -> None:
    """Refuses what load_state_dict would accept silently: an integer tensor copied (truncated) into a
    float parameter, a float into an integer buffer, and NaN/Inf weights."""
    import torch

    same_kind = (expected.is_floating_point() == saved.is_floating_point()
                 and (expected.dtype == torch.bool) == (saved.dtype == torch.bool))
    if not same_kind:  # fp16/bf16 into float32 is fine: that conversion is exact
        raise VlaedgeError(
            f"checkpoint: tensor {name} is {str(saved.dtype).removeprefix('torch.')}, the model's is "
            f"{str(expected.dtype).removeprefix('torch.')}",
            "save the weights in the dtype they were trained in (loading would silently convert them)")
    if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
        bad = int((~torch.isfinite(saved)).sum())
        raise VlaedgeError(
            f"checkpoint: tensor {name} holds {bad} NaN/Inf value(s) of {saved.numel()}",
            "the weights are corrupt or training diverged: restore a good checkpoint")


def write_checkpoint(path: Path, config: dict, state: dict) -> Path:
    """Writes config.json + model.safetensors atomically (temp directory, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
