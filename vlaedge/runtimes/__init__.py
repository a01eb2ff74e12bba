"""Runtimes, registered by name and imported lazily (optional backends may be missing).

`open_runtime("ort-cpu", model="model.onnx", policy=policy)` returns a `Runtime` whose `infer(feeds)`
checks the feeds against the policy's inputs and runs the model.

A Q/DQ graph that TensorRT will run is checked on ONNX Runtime with its Q/DQ fusion off (`qdq="simulated"`,
see `vlaedge.runtimes.ort`): ONNX Runtime's own INT8 kernels compute something else on some CPUs.
`qdq_arithmetic(target, model)` says which one a check or verify of `model` for `target` uses.
"""

from __future__ import annotations

from pathlib import Path

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.runtimes.base import Runtime

RUNTIMES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")

__all__ = ["RUNTIMES", "Runtime", "open_runtime", "qdq_arithmetic"]


def open_runtime(name: str, policy: Policy, model: str | Path | None = None,
                 threads: int | None = None, qdq: str = "fused", prepack: bool = True,
                 shared=None) -> Runtime:
    """Opens `model` (or the policy's torch module for "torch") on the runtime called `name`.

    Args:
        name: one of `RUNTIMES`.
        policy: gives the input spec and output names (and the module for "torch").
        model: the exported file (.onnx, or a stage plan stages.json on ort-*) for the non-torch runtimes.
        threads: CPU threads.
        qdq: on ort-*: "fused" (ONNX Runtime's INT8 kernels, its default) or "simulated" (Q/DQ fusion
            off: the graph's own arithmetic, as TensorRT computes it; see `qdq_arithmetic`).
        prepack: on ort-*: False for one-off sessions, e.g. checks (`vlaedge.runtimes.ort.session_options`).
        shared: a `vlaedge.runtimes.staged.SharedStages` for stage plans opened together (one session per
            stage file they have in common); None: the plan's own sessions.

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

            return StagedRuntime(model, policy.input_spec, policy.output_names, name, threads, qdq, prepack,
                                 shared)
        from vlaedge.runtimes.ort import OrtRuntime

        return OrtRuntime(model, policy.input_spec, policy.output_names, name, threads, qdq, prepack)
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


def qdq_arithmetic(target: str | None, model: str | Path | None) -> str:
    """How ONNX Runtime should compute `model`'s Q/DQ to judge it for `target`.

    "simulated" (Q/DQ fusion off) where TensorRT runs the graph: a target whose runtime is TensorRT (a
    Jetson or GPU target), or, with no known target, a graph quantized the way ModelOpt exports for
    TensorRT (`vlaedge.runtimes.ort.graph_quantization`). "fused" (ONNX Runtime's INT8 kernels) for the
    ONNX Runtime `cpu` target, whose deployment runs exactly those kernels, and for anything else.

    Example:
        >>> qdq_arithmetic("agx-orin-64gb", "runs/orin-int8/model.onnx")
        'simulated'
    """
    from vlaedge.targets import TARGETS

    if target in TARGETS:
        return "simulated" if TARGETS[target].runtime == "tensorrt" else "fused"
    return "simulated" if model is not None and model_quantization(model) == "tensorrt" else "fused"


def model_quantization(model: str | Path) -> str | None:
    """`vlaedge.runtimes.ort.graph_quantization` of an .onnx file, or of a stage plan's graphs together
    ("tensorrt" if any stage is, else "onnxruntime" if any is, else None)."""
    from vlaedge.runtimes.ort import graph_quantization

    model = Path(model)
    files = [model]
    if model.suffix == ".json":  # a stage plan (stages.json): its stage graphs
        from vlaedge.models.stages import read_plan_file

        files = [model.parent / g.file for g in read_plan_file(model).graphs]
    kinds = {graph_quantization(f) for f in files}
    return next((k for k in ("tensorrt", "onnxruntime") if k in kinds), None)
