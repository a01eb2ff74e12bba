"""ONNX Runtime: CPU, CUDA and TensorRT execution providers, and how a Q/DQ graph is computed in them.

A quantized graph's QuantizeLinear / DequantizeLinear nodes can run two ways (`qdq`):

- "fused" (ONNX Runtime's default): its graph optimizer fuses DQ -> MatMul -> Q into integer kernels
  (MatMulIntegerToFloat, QLinearMatMul, QGemm). That is what a model deployed on ONNX Runtime runs (the
  `cpu` target's `cpu-int8` recipes), and it depends on the CPU: without AVX512-VNNI the u8 x s8 kernels add
  pairs of 8-bit products in int16 and saturate (measured on an AVX2 CPU: the trained smolvla_style's
  orin-int8 graph p99 0.21 off torch's fake-quant, 0.04 on a VNNI CPU).
- "simulated" (session config `session.disable_quant_qdq` = "1", the other optimizations kept): Q and DQ
  run as separate float ops between float MatMuls, the arithmetic the graph defines, with nothing that
  can saturate: what TensorRT's explicit-precision INT8 (int32 accumulation) computes, within rounding, on
  any CPU. Use it to check or verify a graph that TensorRT will run (`qdq_arithmetic`).
"""

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

QDQ_FUSED, QDQ_SIMULATED = "fused", "simulated"
QDQ_MODES = (QDQ_FUSED, QDQ_SIMULATED)
DISABLE_QDQ_FUSION = "session.disable_quant_qdq"  # ONNX Runtime's session config key ("1": no Q/DQ fusion)
DISABLE_PREPACKING = "session.disable_prepacking"  # "1": kernels read weights as stored, no packed copies

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
        qdq: "fused" (ONNX Runtime's INT8 kernels) or "simulated" (Q/DQ fusion off; see the module
            docstring). Without Q/DQ nodes both run the same graph.
        prepack: let kernels pack a copy of their weights (ONNX Runtime's default, what is timed); False
            for one-off sessions such as the export's checks (`session_options`).
    """

    def __init__(self, model: str | Path, input_spec: tuple[TensorSpec, ...], output_names: tuple[str, ...],
                 name: str = "ort-cpu", threads: int | None = None, qdq: str = QDQ_FUSED,
                 prepack: bool = True):
        import onnxruntime as ort

        self.name, self.input_spec, self.output_names = name, input_spec, output_names
        self.qdq = qdq
        wanted = PROVIDERS[name]
        if wanted[0] not in ort.get_available_providers():
            raise VlaedgeError(f"{name}: ONNX Runtime here has no {wanted[0]} (it has "
                               f"{', '.join(ort.get_available_providers())})",
                               "install onnxruntime-gpu on a CUDA machine, or use --runtime ort-cpu")
        options = session_options(threads, qdq, prepack)
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

    @property
    def arithmetic(self) -> str:
        """How this session computes Q/DQ, in words, for reports (`qdq_label`)."""
        return qdq_label(self.qdq, self.name)


def session_options(threads: int | None = None, qdq: str = QDQ_FUSED, prepack: bool = True):
    """The `onnxruntime.SessionOptions` every vlaedge session uses: quiet log, `threads` intra-op threads
    (one inter-op), and Q/DQ fusion off for `qdq="simulated"` (all other graph optimizations stay on: they
    are float rewrites, e.g. LayerNorm and GELU fusions, that TensorRT makes too). `prepack=False` keeps
    weights as stored: a graph with external data then reads them from its memory-mapped data file, which
    the kernel can page out, instead of a packed anonymous copy of each MatMul weight (+0.51 GB for a
    0.51 GB graph, measured at session creation).

    Raises:
        VlaedgeError: an unknown `qdq`.
    """
    import onnxruntime as ort

    if qdq not in QDQ_MODES:
        raise VlaedgeError(f"runtime: qdq={qdq!r}", f"use one of {', '.join(QDQ_MODES)}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # modelopt exports make ORT print hundreds of initializer warnings
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if qdq == QDQ_SIMULATED:
        options.add_session_config_entry(DISABLE_QDQ_FUSION, "1")
    if not prepack:
        options.add_session_config_entry(DISABLE_PREPACKING, "1")
    return options


def qdq_label(qdq: str, runtime: str = "ort-cpu") -> str:
    """'Q/DQ simulated (fusion off), as TensorRT computes' or 'ONNX Runtime CPU INT8 kernels (Q/DQ fused)'."""
    if qdq == QDQ_SIMULATED:
        return "Q/DQ simulated (fusion off), as TensorRT computes"
    device = {"ort-cpu": "CPU", "ort-cuda": "CUDA", "ort-trt": "TensorRT EP"}.get(runtime, runtime)
    return f"ONNX Runtime {device} INT8 kernels (Q/DQ fused)"


def graph_quantization(model: str | Path) -> str | None:
    """Who quantized the graph at `model`, read from its nodes (no weights are loaded).

    Returns:
        "tensorrt" when a QuantizeLinear quantizes a float constant (ModelOpt's explicit-precision export
        for TensorRT keeps FP32 weights behind their Q/DQ pair); "onnxruntime" when the graph has Q/DQ or
        integer kernels but stores its weights quantized (ONNX Runtime's quantize_static/dynamic); None
        for a float graph or a file that is not a readable ONNX graph (a stage plan: see its stages).
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except (DecodeError, OSError, ValueError):
        return None
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    constants = {i.name for i in graph.initializer if i.data_type in floats}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.attribute
                  and n.attribute[0].t.data_type in floats}
    quantized = False
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in constants:
            return "tensorrt"
        quantized = quantized or node.op_type in INTEGER_OPS
    return "onnxruntime" if quantized else None


# Nodes of a quantized graph: Q/DQ and the integer kernels ONNX Runtime fuses them into (or its
# quantize_dynamic writes).
INTEGER_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                         "QLinearMatMul", "QLinearConv", "ConvInteger", "QGemm", "MatMulIntegerToFloat",
                         "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul"})
