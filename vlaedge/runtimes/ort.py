"""ONNX Runtime: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import TensorSpec
from vlaedge.runtimes.base import Runtime

try:
    from onnxruntime.capi import onnxruntime_pybind11_state as _state

    ORT_ERRORS: tuple[type[BaseException], ...] = (
        _state.Fail, _state.InvalidGraph, _state.InvalidProtobuf, _state.NoSuchFile, _state.NotImplemented,
        _state.RuntimeException, _state.InvalidArgument)
except ImportError:  # onnxruntime missing: opening a session fails earlier with ImportError
    ORT_ERRORS = ()

PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OrtRuntime(Runtime):
    """An ONNX model in an ONNX Runtime session.

    Args:
        model: the .onnx file.
        input_spec: the policy's inputs (names, dtypes, shapes) the model must take.
        output_names: the outputs to return, in order.
        name: "ort-cpu", "ort-cuda" or "ort-trt".
        threads: intra-op threads.
    """

    def __init__(self, model: str | Path, input_spec: tuple[TensorSpec, ...], output_names: tuple[str, ...],
                 name: str = "ort-cpu", threads: int | None = None):
        import onnxruntime as ort

        self.name, self.input_spec, self.output_names = name, input_spec, output_names
        wanted = PROVIDERS[name]
        if wanted[0] not in ort.get_available_providers():
            raise VlaedgeError(f"{name}: ONNX Runtime here has no {wanted[0]} (it has "
                               f"{', '.join(ort.get_available_providers())})",
                               "install onnxruntime-gpu on a CUDA machine, or use --runtime ort-cpu")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # modelopt exports make ORT print hundreds of initializer warnings
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(model), options, providers=wanted)
        except ORT_ERRORS as e:
            raise VlaedgeError(f"{name}: ONNX Runtime cannot load {model}: {str(e).splitlines()[0][:300]}",
                               "check that the file is a complete ONNX model this runtime supports") from e
        names = {i.name for i in self.session.get_inputs()}
        if names != {s.name for s in input_spec}:
            raise VlaedgeError(f"{name}: {model} takes inputs {sorted(names)}, the policy gives "
                               f"{sorted(s.name for s in input_spec)}", "export the model from this policy")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raises VlaedgeError when ONNX Runtime fails on feeds that match the declared spec, e.g. token
        ids beyond the model's embedding table (a Gather index out of bounds: a model exported from a
        policy with another vocabulary)."""
        try:
            outputs = self.session.run(list(self.output_names), feeds)
        except ORT_ERRORS as e:
            raise VlaedgeError(f"{self.name}: ONNX Runtime failed running the model on the policy's inputs: "
                               f"{str(e).splitlines()[0][:300]}",
                               "check that the model was exported from this policy (same vocabulary, "
                               "image size and input ranges)") from e
        return dict(zip(self.output_names, outputs, strict=True))
