"""Reading and writing checkpoint directories, with clear errors.

A checkpoint directory holds a spec and the weights:

- the spec: `config.json` with a `"family"` key, or, in a Hugging Face `save_pretrained` folder whose
  own config.json is the model's (no `"family"`), a `vlaedge.json` beside it;
- the weights: `model.safetensors`, or the sharded layout `model.safetensors.index.json` +
  `model-00001-of-0000N.safetensors` (every shard the index names, and nothing else). Pickle weights
  (.pt/.pth/.bin, or `pytorch_model.bin.index.json` shards) load only with an explicit opt-in, because
  unpickling runs code.

Every weight file in the folder must be read: a shard the index does not name, or a second weights file,
is an error naming it, so a policy never runs on weights other than the ones on disk.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

from vlaedge.artifact import current_umask
from vlaedge.errors import VlaedgeError

CONFIG_FILE = "config.json"
SPEC_FILE = "vlaedge.json"  # the vlaedge spec beside a save_pretrained folder's own config.json
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")


def read_config(checkpoint: Path) -> dict:
    """Reads the vlaedge spec of a checkpoint directory: `vlaedge.json` where there is one, else
    `config.json` (which must then name its `"family"`).

    Raises:
        VlaedgeError: no such directory, no spec, invalid JSON, or a Hugging Face config.json without a
            vlaedge.json beside it.
    """
    if not checkpoint.exists():
        raise VlaedgeError(f"checkpoint: {checkpoint} does not exist",
                           "pass a checkpoint directory with config.json and model.safetensors")
    if not checkpoint.is_dir():
        raise VlaedgeError(f"checkpoint: {checkpoint} is a file; a checkpoint is a directory",
                           f"pass the folder that holds config.json and the weights: {checkpoint.parent}")
    if (checkpoint / SPEC_FILE).is_file():
        return read_json(checkpoint / SPEC_FILE)
    path = checkpoint / CONFIG_FILE
    if not path.is_file():
        raise VlaedgeError(f"checkpoint: {checkpoint} has no {CONFIG_FILE}",
                           "a checkpoint is a directory with config.json and model.safetensors")
    config = read_json(path)
    if "family" not in config and ("model_type" in config or "architectures" in config):
        kind = config.get("model_type") or ", ".join(map(str, config.get("architectures") or []))
        raise VlaedgeError(
            f"checkpoint: {path} is a Hugging Face config ({str(kind)[:60]}) and no {SPEC_FILE} is beside it",
            f"add {checkpoint / SPEC_FILE} naming the factory, inputs, outputs and actions (docs: "
            "guides/own-vla.md 'Bring your own VLA')")
    return config


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a one-line VlaedgeError."""
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VlaedgeError(f"checkpoint: {path} is not valid JSON ({e})",
                           "restore or re-save the checkpoint") from e
    if not isinstance(config, dict):
        raise VlaedgeError(f"checkpoint: {path} must hold a JSON object", "restore or re-save the checkpoint")
    return config


def load_weights(checkpoint: Path, allow_pickle: bool = False,
                 read_elsewhere: frozenset[str] = frozenset()) -> dict:
    """Loads the state dict of a checkpoint directory: single or sharded safetensors, or pickle
    (single or sharded) with `allow_pickle`.

    Args:
        checkpoint: the folder.
        allow_pickle: also accept pickle weights (unpickling runs code).
        read_elsewhere: .safetensors files of the folder that are not weights but are read by the loader
            (LeRobot's processor statistics), so not refused as stray shards.

    Returns:
        `Weights`: {tensor name: tensor} as stored (fp16/bf16 stay fp16/bf16; `check_state_dict`
        converts); safetensors entries are meta tensors (shape and dtype only) until `Weights.take` maps
        the tensor itself, so nothing is read here.

    Raises:
        VlaedgeError: no weights, two weight layouts at once, a shard missing or not named by the index,
            a key in the wrong shard, a truncated file, or pickle weights without `allow_pickle`.
    """
    single, index = checkpoint / WEIGHTS_FILE, checkpoint / INDEX_FILE
    if single.is_file() and index.is_file():
        raise VlaedgeError(f"checkpoint: {checkpoint} holds both {WEIGHTS_FILE} and {INDEX_FILE}",
                           "keep one layout: remove the stale single file or the stale shards")
    if single.is_file():
        _refuse_unread(checkpoint, {single.name} | read_elsewhere)
        return _load_safetensors(single)
    if index.is_file():
        shards = _index_shards(index)
        _refuse_unread(checkpoint, set(shards) | {index.name} | read_elsewhere)
        state = Weights()
        for name, keys in shards.items():
            part = _load_safetensors(checkpoint / name)
            _check_shard(checkpoint / name, part, keys, index)
            state.update(part)
            state.files.update(part.files)
        return state
    pickles = sorted(p for p in checkpoint.iterdir()
                     if p.suffix in PICKLE_SUFFIXES and p.name not in NOT_WEIGHTS)
    if not pickles:
        raise VlaedgeError(f"checkpoint: {checkpoint} has no weights ({WEIGHTS_FILE} or {INDEX_FILE})",
                           "save the weights with safetensors next to the spec (vlaedge train and "
                           "save_pretrained write them)")
    if not allow_pickle:
        raise VlaedgeError(
            f"checkpoint: {pickles[0]} is a pickle file; unpickling runs arbitrary code, so it is refused",
            "convert it to model.safetensors, or pass --allow-pickle if you trust its origin")
    if (checkpoint / PICKLE_INDEX_FILE).is_file():
        shards = _index_shards(checkpoint / PICKLE_INDEX_FILE)
        state = Weights()
        for name, keys in shards.items():
            part = _unpickle(checkpoint / name)
            _check_shard(checkpoint / name, part, keys, checkpoint / PICKLE_INDEX_FILE)
            state.update(part)
        return state
    if len(pickles) > 1:
        raise VlaedgeError(f"checkpoint: {checkpoint} holds {len(pickles)} pickle weight files "
                           f"({', '.join(p.name for p in pickles[:4])}) and no {PICKLE_INDEX_FILE}",
                           "keep only the weights file, or add the index that names the shards")
    return Weights(_unpickle(pickles[0]))


class Weights(dict):
    """{tensor name: tensor} of a checkpoint. Safetensors entries are meta tensors (shape and dtype, from
    the header) and `files` says where each lives; `take` reads one through its own `safe_open`, memory-
    mapped, so its mapping lives exactly as long as the tensor (a converted tensor's source is released at
    once). Pickle entries are the loaded tensors themselves."""

    def __init__(self, *args):
        super().__init__(*args)
        self.files: dict[str, tuple[Path, str]] = {}  # name -> (safetensors file, name stored in it)

    def take(self, name: str):
        """The tensor `name` itself (memory-mapped for safetensors), dropped from the mapping.

        Raises:
            VlaedgeError: the file cannot be read any more (truncated since it was opened).
        """
        value = self.pop(name)
        path, key = self.files.get(name, (None, name))
        if path is None or not value.is_meta:
            return value
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise VlaedgeError(f"checkpoint: {path} is truncated or corrupt ({e})",
                               "re-copy the file, or re-save the checkpoint") from e


def weight_files(checkpoint: Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files `load_weights` would read, found without reading them ([] when there are none, or
    only pickles without `allow_pickle`: `load_weights` then raises the precise error).

    Raises:
        VlaedgeError: an index naming shards that are not there.
    """
    single, index = checkpoint / WEIGHTS_FILE, checkpoint / INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        return [checkpoint / name for name in _index_shards(index)]
    if not allow_pickle:
        return []
    if (checkpoint / PICKLE_INDEX_FILE).is_file():
        return [checkpoint / name for name in _index_shards(checkpoint / PICKLE_INDEX_FILE)]
    return sorted(p for p in checkpoint.iterdir()
                  if p.suffix in PICKLE_SUFFIXES and p.name not in NOT_WEIGHTS)


def _unpickle(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, AttributeError) as e:
        raise VlaedgeError(f"checkpoint: {path} could not be unpickled ({type(e).__name__}: {e})",
                           "check that the file is complete") from e
    return state.state_dict() if hasattr(state, "state_dict") else state


def _index_shards(index: Path) -> dict[str, set[str]]:
    """{shard file name: the tensor names the index puts in it}, every shard checked to exist."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise VlaedgeError(f"checkpoint: {index} has no weight_map", "re-save the checkpoint")
    shards: dict[str, set[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name:
            raise VlaedgeError(f"checkpoint: {index} puts {key} in {str(name)[:80]!r}, not a file beside it",
                               "re-save the checkpoint; shards live next to their index")
        shards.setdefault(name, set()).add(key)
    missing = sorted(n for n in shards if not (index.parent / n).is_file())
    if missing:
        raise VlaedgeError(f"checkpoint: {index.parent} lacks shard(s) {', '.join(missing[:3])} named by "
                           f"{index.name} ({len(missing)} of {len(shards)})",
                           "copy every shard of the checkpoint")
    return shards


def _check_shard(path: Path, part: dict, keys: set[str], index: Path) -> None:
    extra, absent = sorted(set(part) - keys), sorted(keys - set(part))
    if extra or absent:
        what = [f"holds {', '.join(extra[:3])} that {index.name} puts elsewhere or nowhere"] if extra else []
        what += [f"lacks {', '.join(absent[:3])} that {index.name} puts in it"] if absent else []
        raise VlaedgeError(f"checkpoint: shard {path.name} {'; '.join(what)}",
                           "the shards and the index come from different saves: re-save the checkpoint")


def _refuse_unread(checkpoint: Path, read: set[str]) -> None:
    """Weight files that would not be read: stray shards, a second layout's files."""
    unread = sorted(p.name for p in checkpoint.iterdir()
                    if p.name not in read and (p.suffix == ".safetensors" or p.name == INDEX_FILE
                                               or p.name.startswith("pytorch_model") and p.suffix == ".bin"))
    if unread:
        raise VlaedgeError(f"checkpoint: {checkpoint} holds weight file(s) that would not be read: "
                           f"{', '.join(unread[:4])}", "remove stale weight files, or fix the index so it "
                           "names every shard")


def _load_safetensors(path: Path) -> Weights:
    """The tensors of one safetensors file as meta tensors (the header checked by safetensors; no data
    read)."""
    import torch
    from safetensors import SafetensorError, safe_open

    state = Weights()
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                part = f.get_slice(name)
                kind = part.get_dtype()
                if kind not in _TORCH_DTYPES:
                    raise VlaedgeError(f"checkpoint: tensor {name} in {path} has dtype {kind}, which vlaedge "
                                       "does not load", "save the weights as float32, float16 or bfloat16")
                state[name] = torch.empty(part.get_shape(), dtype=getattr(torch, _TORCH_DTYPES[kind]),
                                          device="meta")
                state.files[name] = (path, name)
    except (SafetensorError, OSError, ValueError) as e:
        raise VlaedgeError(f"checkpoint: {path} is truncated or corrupt ({e})",
                           "re-copy the file, or re-save the checkpoint") from e
    return state


_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def check_state_dict(module, state: Weights | dict, checkpoint: Path, dtype: str | None = None) -> None:
    """Checks names, shapes and dtypes of `state` against `module` and puts it into the module, naming
    any mismatch.

    Parameters are assigned, not copied (`vlaedge.models.weights.assign_state`): a module built with
    `empty_parameters` (meta device) gets the memory-mapped tensors themselves, so the weights are in
    memory once. A tensor left out because it is tied to another one that is present (Hugging Face
    `save_pretrained` drops `lm_head.weight` when it is the input embedding) is filled from its partner.
    fp16/bf16 weights load into float32 parameters (an exact conversion) unless `dtype` asks otherwise.

    Args:
        module: the policy's module (parameters on the meta device or real).
        state: {name: tensor} from `load_weights` (consumed: each tensor is read as it is placed, so no
            mapped source outlives the conversion of its tensor), or a plain dict of tensors.
        checkpoint: named in errors.
        dtype: "float16" / "bfloat16": floating parameters and buffers in that dtype; None: the module's.

    Raises:
        VlaedgeError: missing or unexpected keys (counted, the first ones named), a shape mismatch, an
            integer tensor for a float parameter (or the reverse), NaN/Inf weights.
    """
    from vlaedge.models.weights import assign_state

    if not isinstance(state, Weights):
        state = Weights(state)
    expected = module.state_dict(keep_vars=True)
    for name, partner in _tied(expected).items():
        if name not in state and partner in state:
            state[name] = state[partner]
            if partner in state.files:
                state.files[name] = state.files[partner]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"{len(missing)} missing: {', '.join(missing[:3])}"] if missing else []) + (
            [f"{len(unexpected)} unexpected: {', '.join(unexpected[:3])}"] if unexpected else [])
        raise VlaedgeError(f"checkpoint: {checkpoint} does not match its spec ({'; '.join(parts)})",
                           "save the weights together with the config they were trained with")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise VlaedgeError(
                f"checkpoint: tensor {name} has shape {tuple(state[name].shape)}, the config needs "
                f"{tuple(tensor.shape)}", "the weights and config.json come from different models")
        _check_kind(name, state[name], tensor)
    assign_state(module, state, dtype, checkpoint)


def _tied(expected: dict) -> dict[str, str]:
    """{name: the first name holding the same parameter} for parameters shared under several names."""
    first: dict[int, str] = {}
    tied = {}
    for name, tensor in expected.items():
        key = id(tensor)
        if key in first:
            tied[name] = first[key]
            tied.setdefault(first[key], name)
        else:
            first[key] = name
    return tied


def _check_kind(name: str, saved, expected) -> None:
    """Refuses what load_state_dict would accept silently: an integer tensor copied (truncated) into a
    float parameter, or a float into an integer buffer (NaN/Inf: `vlaedge.models.weights.check_finite`)."""
    import torch

    same_kind = (expected.is_floating_point() == saved.is_floating_point()
                 and (expected.dtype == torch.bool) == (saved.dtype == torch.bool))
    if not same_kind:  # fp16/bf16 into float32 is fine: that conversion is exact
        raise VlaedgeError(
            f"checkpoint: tensor {name} is {str(saved.dtype).removeprefix('torch.')}, the model's is "
            f"{str(expected.dtype).removeprefix('torch.')}",
            "save the weights in the dtype they were trained in (loading would silently convert them)")


def write_checkpoint(path: Path, config: dict, state: dict, spec_file: str = CONFIG_FILE,
                     files: dict[str, Path] | None = None) -> Path:
    """Writes the spec + model.safetensors (+ `files`, {name in the checkpoint: source file}) atomically:
    a temporary directory beside `path`, renamed into place once complete.

    Tensors that share storage (tied weights) are written once per name, as copies (CPU copies of a module
    on a GPU)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700: the checkpoint gets the umask's mode
    try:
        save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()},
                  str(tmp / WEIGHTS_FILE))
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~current_umask())
        (tmp / spec_file).write_text(json.dumps(config, indent=2) + "\n")
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
