"""Putting a checkpoint's tensors into a module without a second copy, in the dtype asked for.

Loading lean is three steps:

1. `check_fits`: the weights, counted from the safetensors headers (nothing read), must fit in the memory
   available (`/proc/meminfo` MemAvailable), else the load is refused before it starts;
2. `empty_parameters`: the factory builds the module with every parameter on torch's meta device (no
   memory, no random init), while buffers are made on the CPU as usual, so computed non-persistent
   buffers (e.g. RoPE `inv_freq`) keep their values;
3. `assign_state`: each checkpoint tensor, memory-mapped by safetensors, becomes its parameter (assigned,
   not copied; converted only when the load dtype differs), tied parameters stay one object.

Peak memory is then the weights once (see tests/test_load_memory.py for the bound), instead of a random
module plus the state dict beside it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import struct
from pathlib import Path

from vlaedge.errors import VlaedgeError

LOAD_DTYPES = ("float32", "float16", "bfloat16", "auto")
HALF = ("float16", "bfloat16")
GB = 1e9
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
             "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_FLOATS = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@contextlib.contextmanager
def empty_parameters(enabled: bool = True):
    """Inside, every parameter a module registers moves to the meta device (shape and dtype, no memory);
    initialisers run on meta tensors, so they cost nothing. Buffers are created on the CPU as usual.
    With `enabled` False it does nothing (a module with no weights to load is built as usual).

    The same idea as accelerate's `init_empty_weights(include_buffers=False)`.

    Example:
        >>> with empty_parameters():
        ...     module = factory()  # parameters on meta, buffers real
    """
    if not enabled:
        yield
        return
    import torch

    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    # torch.nn.init on a meta tensor is a no-op, but the first normal_ on meta imports torch._dynamo
    # (~1 s, ~70 MB): skip initialisers on meta tensors instead
    inits = {name: fn for name, fn in vars(torch.nn.init).items()
             if name.endswith("_") and not name.startswith("_") and callable(fn)}
    torch.nn.Module.register_parameter = register
    for name, fn in inits.items():
        setattr(torch.nn.init, name, _skip_on_meta(fn))
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original
        for name, fn in inits.items():
            setattr(torch.nn.init, name, fn)


def _skip_on_meta(fn):
    @functools.wraps(fn)
    def init(tensor, *args, **kwargs):
        return tensor if getattr(tensor, "is_meta", False) else fn(tensor, *args, **kwargs)

    return init


def safetensors_header(path: Path) -> dict:
    """{tensor name: {"dtype": "F32", "shape": [...], "data_offsets": [start, end]}} of a safetensors file,
    read from its header only.

    Raises:
        VlaedgeError: the file is shorter than its header says, or the header is not JSON.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if n < 2 or 8 + n > size:
            raise VlaedgeError(f"checkpoint: {path} is truncated or corrupt (header of {n} bytes, file of "
                               f"{size})", "re-copy the file, or re-save the checkpoint")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VlaedgeError(f"checkpoint: {path} is truncated or corrupt (header: {e})",
                               "re-copy the file, or re-save the checkpoint") from e
    header.pop("__metadata__", None)
    return header


def weight_bytes(files: list[Path], dtype: str) -> tuple[int, str]:
    """Bytes the weights take once loaded in `dtype`, and `dtype` resolved (`auto` -> a dtype name).

    Floating tensors count at the load dtype (`float32`: 4 bytes; `auto`: as stored), others as stored.
    Pickle files count at their file size.

    Args:
        files: the weight files `load_weights` reads (safetensors or pickle).
        dtype: one of `LOAD_DTYPES`.
    """
    stored: dict[str, int] = {}  # float dtype name -> bytes stored
    other = 0
    for path in files:
        if path.suffix != ".safetensors":
            other += path.stat().st_size
            continue
        for entry in safetensors_header(path).values():
            start, end = entry.get("data_offsets", (0, 0))
            kind = _FLOATS.get(entry.get("dtype"))
            if kind:
                stored[kind] = stored.get(kind, 0) + end - start
            else:
                other += end - start
    resolved = (max(stored, key=stored.get) if stored else "float32") if dtype == "auto" else dtype
    size = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
    floats = sum(n // size[k] * (size[k] if dtype == "auto" else size[resolved]) for k, n in stored.items())
    return floats + other, resolved


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file, e.g. macOS)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(checkpoint: Path, files: list[Path], dtype: str) -> str:
    """Refuses weights larger than the memory available, before anything is loaded.

    Returns:
        The load dtype resolved (`auto` becomes the checkpoint's main float dtype).

    Raises:
        VlaedgeError: the weights in `dtype` exceed MemAvailable; the message names both sizes in GB and
            the options that fit.
    """
    need, resolved = weight_bytes(files, dtype)
    free = available_memory()
    if free is None or need <= free:
        return resolved
    fits = [f"--dtype {d} ({need_d / GB:.1f} GB)" for d in HALF
            for need_d in [weight_bytes(files, d)[0]] if d != resolved and need_d <= free]
    options = " or ".join(fits) or "a machine with more memory"
    raise VlaedgeError(
        f"checkpoint: {checkpoint} needs {need / GB:.1f} GB as {resolved}, {free / GB:.1f} GB of memory is "
        "available", f"load in half precision: {options}; or export the policy per stage; or free memory")


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def assign_state(module, state: dict, dtype: str | None, checkpoint: Path) -> None:
    """Makes each tensor of `state` the module's parameter of that name (no copy when the dtype already
    matches: a memory-mapped tensor stays mapped), copies persistent buffers, and keeps tied parameters
    one object. Each tensor is checked for NaN/Inf and dropped from `state` as it is placed, so a
    converted tensor's mapped source is released at once. Names, shapes and kinds must have been checked
    (`check_state_dict`).

    Args:
        module: the module, parameters typically on the meta device (`empty_parameters`).
        state: `vlaedge.models.checkpoint.Weights` holding exactly the names of `module.state_dict()`;
            emptied.
        dtype: floating parameters and buffers in this dtype ("float16", "bfloat16"); None keeps each
            parameter's own dtype (the factory's, normally float32).
        checkpoint: named in errors.

    Raises:
        VlaedgeError: NaN/Inf weights, or a parameter outside `state_dict()` that stayed on the meta device.
    """
    import torch

    target = torch_dtype(dtype) if dtype else None
    expected = module.state_dict(keep_vars=True)
    params = {id(p) for p in module.parameters()}
    last = {id(t): name for name, t in expected.items() if id(t) in params}  # tied: the last name wins,
    new = {}  # as in load_state_dict
    for name, old in expected.items():
        saved = state.take(name)
        check_finite(name, saved, checkpoint)
        if id(old) not in params:
            with torch.no_grad():
                old.copy_(saved)
        elif last[id(old)] == name:
            want = target if target is not None and old.is_floating_point() else old.dtype
            new[id(old)] = torch.nn.Parameter(saved.detach().to(want), requires_grad=old.requires_grad)
        del saved
    for sub in module.modules():
        for pname, p in sub._parameters.items():
            if p is not None and id(p) in new:
                sub._parameters[pname] = new[id(p)]
    if target is not None:
        module.to(target)  # float buffers (e.g. non-persistent ones the factory computed)
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise VlaedgeError(f"checkpoint: {checkpoint}: parameter(s) {', '.join(left[:3])} are not in the "
                           "module's state_dict, so no weights can load into them",
                           "make the module's state_dict() list every parameter")


def check_finite(name: str, tensor, checkpoint: Path) -> None:
    """Refuses NaN/Inf in a floating tensor. Judged from its max and min (NaN propagates through both),
    which allocate nothing: `torch.isfinite` over every weight kept ~2x the weights resident (measured).

    Raises:
        VlaedgeError: naming the tensor and how many values are not finite.
    """
    import torch

    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if bool(torch.isfinite(tensor.amax())) and bool(torch.isfinite(tensor.amin())):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    raise VlaedgeError(f"checkpoint: tensor {name} holds {bad} NaN/Inf value(s) of {tensor.numel()}",
                       "the weights are corrupt or training diverged: restore a good checkpoint")


def module_dtype(module) -> str:
    """The dtype name of the module's floating parameters ("float32" when it has none)."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return str(p.dtype).removeprefix("torch.") if p is not None else "float32"


def ensure_float32(policy, stage: str, why: str) -> str | None:
    """Casts a half-precision policy's module to float32 in place, for a stage that needs FP32.

    Returns:
        The line for the stage's summary ("export: bfloat16 weights cast to float32 (why)"), or None
        when the module already is float32.
    """
    was = module_dtype(policy.module)
    if was not in HALF:
        return None
    policy.module.float()
    return f"{stage}: {was} weights cast to float32 ({why})"
