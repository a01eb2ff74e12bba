"""Runtimes, registered by name and imported lazily (optional backends may be missing).

`open_runtime("ort-cpu", model="model.onnx", policy=policy)` returns a `Runtime` whose `infer(feeds)`
checks the feeds against the policy's inputs and runs the model.
"""

from __future__ import annotations

from pathlib import Path

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.runtimes.base import Runtime

RUNTIMES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")

__all__ = ["RUNTIMES", "Runtime", "open_runtime"]


def open_runtime(name: str, policy: Policy, model: str | Path | None = None,
                 threads: int | None = None) -> Runtime:
    """Opens `model` (or the policy's torch module for "torch") on the runtime called `name`.

    Args:
        name: one of `RUNTIMES`.
        policy: gives the input spec and output names (and the module for "torch").
        model: the exported file (.onnx, or a stage plan stages.json on ort-*) for the non-torch runtimes.
        threads: CPU threads.

    Raises:
        VlaedgeError: an unknown name (the available ones are listed) or a backend that is missing here.
    """
    if name == "torch":
        from vlaedge.runtimes.torch import TorchRuntime

        return TorchRuntime(policy, threads)
    if name.startswith("ort-") and name in RUNTIMES:
        if model is None:
            raise VlaedgeError(f"{name}: needs an exported model file", "export the policy to ONNX first")
        if Path(model).suffix == ".json":  # a stage plan (stages.json): one session per stage
            from vlaedge.runtimes.staged import StagedRuntime

            return StagedRuntime(model, policy.input_spec, policy.output_names, name, threads)
        from vlaedge.runtimes.ort import OrtRuntime

        return OrtRuntime(model, policy.input_spec, policy.output_names, name, threads)
    if name == "trt":
        if model is None:
            raise VlaedgeError("trt: needs a model (.onnx with model.plan next to it, or a .plan)",
                               "build the engine with the bundle's build.sh on the device")
        if Path(model).suffix == ".json":  # a stage plan: one engine per stage (the bundle's stages.json)
            from vlaedge.runtimes.staged import StagedRuntime

            return StagedRuntime(model, policy.input_spec, policy.output_names, name)
        from vlaedge.runtimes.trt import TrtRuntime  # imports tensorrt lazily, inside

        return TrtRuntime(model, policy.input_spec, policy.output_names)
    raise VlaedgeError(f"runtime: unknown runtime {name!r}", f"available: {', '.join(RUNTIMES)}")
