"""Where the torch side runs: `--device auto|cpu|cuda` (recipe: `load.device`).

One rule for every torch-side stage (the reference actions of drift and of the export check, calibration
forward passes, pruning's importance scoring and recovery training): a policy's module lives on one device,
`Policy.device` (read from its parameters, so a copy or a pruned module cannot disagree with a stored
label), and numpy feeds reach it only through `feed_tensors` (moved there) while outputs come back through
`to_numpy` (CPU numpy). `Policy.run_torch` does both, and also turns TensorFloat-32 off while the reference
runs on a GPU (`exact_float32`): cuDNN convolutions use TF32 by default on Ampere and later, ~1e-3 relative
error that the FP32 reference must not carry into drift.

What stays on the CPU whatever the device: datasets and `make_inputs` (numpy), the ONNX export's trace
(`on_cpu`: the module is moved to host memory for `torch.onnx.export` and back, so its weights are in one
place at a time, never copied twice; the trace then matches what ONNX Runtime CPU checks), and ONNX Runtime
(CPU unless a runtime such as `ort-cuda` or `ort-trt` is named).

Example:
    >>> device = resolve_device("auto")  # "cuda" where torch.cuda.is_available(), else "cpu"
    >>> policy = load_policy("runs/my-policy", device=device)
    >>> policy.run_torch(feeds)  # feeds moved to policy.device, outputs back as CPU numpy
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from vlaedge.errors import VlaedgeError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")  # what --device and load.device take
FIX_NO_CUDA = ("pass --device cpu (recipe: load.device: cpu), or install a CUDA build of torch "
               "(https://pytorch.org/get-started/locally/)")


def resolve_device(requested: str) -> str:
    """The device a request names: "auto" is "cuda" where `torch.cuda.is_available()`, else "cpu".

    Raises:
        VlaedgeError: an unknown name, or "cuda" where torch finds no CUDA device.
    """
    if requested not in DEVICES:
        raise VlaedgeError(f"device: {requested!r} is not a device", f"use one of {', '.join(DEVICES)}")
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        build = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None else
                 f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU")
        raise VlaedgeError(f"device: cuda requested, but torch.cuda.is_available() is False ({build})",
                           FIX_NO_CUDA)
    if requested == "auto":
        return "cuda" if available else "cpu"
    return requested


def device_record(requested: str, device: str) -> dict:
    """The manifest's `device` entry: what was asked, what the torch side ran on, and the GPU's name."""
    name = None
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
    return {"requested": requested, "torch": device, "gpu": name, "export_trace": "cpu",
            "onnxruntime": "cpu unless the runtime names a GPU provider"}


def module_device(module) -> torch.device:
    """The device of the module's first parameter (else buffer); CPU for a module with neither."""
    import torch

    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def feed_tensors(arrays: Iterable[np.ndarray], device) -> list[torch.Tensor]:
    """numpy arrays as torch tensors on `device` (the CPU tensor shares the array's memory)."""
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def to_numpy(tensor) -> np.ndarray:
    """A tensor on any device as a CPU numpy array."""
    return tensor.detach().cpu().numpy()


def place(module, device: str) -> None:
    """Moves `module` to `device` ("cpu" or "cuda"), refusing a GPU without room for its weights first.

    Raises:
        VlaedgeError: the weights and buffers need more than the GPU's free memory.
    """
    import torch

    if torch.device(device) == module_device(module):
        return
    if device == "cuda":
        tensors = itertools.chain(module.parameters(), module.buffers())
        need = sum(t.numel() * t.element_size() for t in tensors)
        free, total = torch.cuda.mem_get_info()
        if need > free:
            raise VlaedgeError(f"device: the weights need {need / 2**30:.1f} GiB on the GPU, "
                               f"{free / 2**30:.1f} GiB of its {total / 2**30:.1f} GiB are free",
                               "load in half precision (--dtype bfloat16), free the GPU, or pass "
                               "--device cpu")
    module.to(device)


@contextmanager
def on_cpu(module) -> Iterator[None]:
    """The module on the CPU inside the block and back on its device after (even on an error): for the
    ONNX export's trace. Moved, not copied: the weights are in host memory once, the GPU's copy is freed
    meanwhile, and the cost is two transfers. A module already on the CPU is left alone."""
    device = module_device(module)
    if device.type == "cpu":
        yield
        return
    module.to("cpu")
    try:
        yield
    finally:
        module.to(device)


@contextmanager
def exact_float32(device) -> Iterator[None]:
    """IEEE float32 (no TensorFloat-32) in cuDNN convolutions and CUDA matmuls inside the block, restored
    after; nothing changes on the CPU. Through the `allow_tf32` flags and torch's own `cudnn.flags`, which
    every torch from 2.4 takes (torch 2.9's `fp32_precision` flags, set on some and read through the old
    ones, make torch raise "a mix of the legacy and new APIs")."""
    import torch

    if getattr(device, "type", device) != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        matmul.allow_tf32 = saved
