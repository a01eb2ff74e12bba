"""Latency and memory estimate of an ONNX graph on a target, before you own the hardware.

A per-operator roofline: each op takes max(FLOPs / (peak x COMPUTE_EFFICIENCY), bytes / (bandwidth x
MEMORY_EFFICIENCY)) at the precision it will run in, and the ops add up (one at a time, batch from the
graph's inputs). What it counts:

- FLOPs: MatMul / Gemm / Conv as 2 x multiply-accumulates (bias adds count one per output); other
  compute ops one FLOP per output element (they are memory-bound anyway). Shape-only ops (Reshape,
  Transpose, Shape, Q/DQ, ...) cost nothing: TensorRT folds or fuses them.
- Precision (Q/DQ-aware): a MatMul/Gemm/Conv whose activation and weight inputs both come from
  DequantizeLinear of 8-bit integers runs at the target's INT8 peak (FP8 inputs: FP8 peak); weight-only
  Q/DQ (int8/int4 weights, float activations) runs at the FP16 peak with narrow weight bytes. Everything
  else runs at `default_precision` (fp16: what the engine build allows for the rest; bf16 the same speed).
- Bytes: every input and output of the op at its precision: a tensor read through DequantizeLinear counts
  at its quantized width, a tensor written only into QuantizeLinear at 1 byte (the quantize fuses into its
  producer), weights stored as float in a modelopt Q/DQ export count at the quantized width (TensorRT
  quantizes them at build time).
- Memory: weights at their deployed width + the peak of live activations (tensors freed after their last
  consumer, in graph order) + RUNTIME_OVERHEAD_MB for the CUDA context and TensorRT; fits when the total
  is at most USABLE_MEMORY_FRACTION of the device memory (Jetson memory is shared with the OS and CPU).

What it cannot tell: kernel fusion (real engines fuse pointwise chains and attention, so memory-bound
op sums run high), tactic choice, launch overhead, DVFS and power-mode clocks, DLA placement, sparsity,
host-side time and copies. Compare with a measurement before you decide; see
benchmarks/results/estimate_vs_published.md for how far it was from published Jetson numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlaedge.errors import VlaedgeError
from vlaedge.targets import Target, get_target

COMPUTE_EFFICIENCY = 0.5  # fraction of the dense tensor-core peak a TensorRT GEMM/conv reaches (batch 1)
MEMORY_EFFICIENCY = 0.7  # fraction of the datasheet DRAM bandwidth reached by streaming kernels
RUNTIME_OVERHEAD_MB = 600.0  # CUDA context + TensorRT/cuBLAS/cuDNN libraries on JetPack 6 (approximate)
USABLE_MEMORY_FRACTION = 0.8  # share of the module's memory a model may use (the rest: OS, CPU, camera)
BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
_GEMMS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_FREE = {
    "Reshape",
    "Transpose",
    "Shape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Identity",
    "Constant",
    "ConstantOfShape",
    "QuantizeLinear",
    "DequantizeLinear",
    "Gather",
    "Slice",
    "Concat",
    "Split",
    "Expand",
    "Range",
    "Cast",
    "Dropout",
    "Size",
    "NonZero",
    "Unique",
}
_8BIT_INT, _FP8 = {2, 3}, {17, 18, 19, 20}  # onnx.TensorProto: UINT8, INT8; FLOAT8* types
_INT4 = {21, 22}  # UINT4, INT4


@dataclass
class OpEstimate:
    """One operator's share of the estimate."""

    name: str
    op_type: str
    precision: str  # what it computes in: int8, fp8, fp16, fp32, or "w8"/"w4" weight-only (fp16 math)
    flops: float
    bytes: float
    ms: float
    bound: str  # "compute" or "memory"


@dataclass
class Estimate:
    """A roofline estimate; truthy when the model fits in the target's memory."""

    target: str
    batch: int
    default_precision: str
    ops: list[OpEstimate]
    latency_ms: float
    flops: float
    bytes_moved: float
    weights_bytes: float
    peak_activation_bytes: float
    overhead_bytes: float
    memory_bytes: float
    fits: bool
    assumptions: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.fits

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, top: int = 15) -> str:
        """The slowest `top` ops, by type totals, and the verdict, as text."""
        rows = [f"{'op':<44} {'type':<14} {'prec':<5} {'GFLOP':>8} {'MB':>8} {'ms':>8} bound"]
        for op in sorted(self.ops, key=lambda o: -o.ms)[:top]:
            rows.append(
                f"{op.name[:44]:<44} {op.op_type:<14} {op.precision:<5} {op.flops / 1e9:>8.3f} "
                f"{op.bytes / 1e6:>8.2f} {op.ms:>8.4f} {op.bound}"
            )
        by_type: dict[str, float] = {}
        for op in self.ops:
            by_type[op.op_type] = by_type.get(op.op_type, 0.0) + op.ms
        rows.append(
            "by type: "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:8])
        )
        gb = 1024**3
        rows.append(
            f"estimated latency {self.latency_ms:.3f} ms at batch {self.batch} on {self.target} "
            f"({self.flops / 1e9:.2f} GFLOP, {self.bytes_moved / 1e6:.1f} MB moved)"
        )
        rows.append(
            f"memory: weights {self.weights_bytes / 1e6:.1f} MB + peak activations "
            f"{self.peak_activation_bytes / 1e6:.1f} MB + runtime {self.overhead_bytes / 1e6:.0f} MB = "
            f"{self.memory_bytes / gb:.2f} GiB: {'fits' if self.fits else 'DOES NOT FIT'}"
        )
        return "\n".join(rows)


def estimate(
    onnx_path: str | Path | Any, target: Target | str, batch: int = 1, default_precision: str = "fp16"
) -> Estimate:
    """Roofline latency and memory estimate of an ONNX graph on a target (see the module docstring).

    Args:
        onnx_path: the .onnx file (external data is not read: shapes suffice), or an `onnx.ModelProto`.
        target: a TensorRT target (or its name) with tabulated peaks and bandwidth.
        batch: the value of dynamic batch dimensions (other dynamic dimensions become 1).
        default_precision: what non-quantized ops run in ("fp16", "bf16" or "fp32").

    Returns:
        The `Estimate` (per-op breakdown, total latency, memory and the fits verdict).

    Raises:
        VlaedgeError: a target without peaks (cpu), an unreadable graph, or an unknown precision.

    Example:
        >>> print(estimate("runs/orin-int8/model.onnx", "agx-orin-64gb").table())
    """
    target = get_target(target) if isinstance(target, str) else target
    if target.fp16_tflops is None or target.memory_bw_gbs is None:
        raise VlaedgeError(
            f"estimate: {target.name} has no tabulated peaks or bandwidth",
            "estimate for a GPU target (vlaedge targets), or measure with vlaedge profile",
        )
    if default_precision not in ("fp16", "bf16", "fp32"):
        raise VlaedgeError(f"estimate: default precision {default_precision!r}", "use fp16, bf16 or fp32")
    graph = _Graph(_load(onnx_path, batch))
    ops = [op for node in graph.nodes if (op := _op_estimate(node, graph, target, default_precision))]
    weights = sum(graph.weight_bytes(name, default_precision) for name in graph.init_dims)
    peak_act = _peak_activations(graph, default_precision)
    overhead = RUNTIME_OVERHEAD_MB * 1e6
    total = weights + peak_act + overhead
    capacity = (target.memory_gb or 0) * 1024**3 * USABLE_MEMORY_FRACTION
    assumptions = [
        f"compute efficiency {COMPUTE_EFFICIENCY} of dense peaks, memory efficiency {MEMORY_EFFICIENCY} "
        f"of {target.memory_bw_gbs} GB/s",
        f"non-quantized ops in {default_precision}",
        "no fusion, no launch overhead, clocks at the power mode's maximum (jetson_clocks)",
        f"runtime overhead {RUNTIME_OVERHEAD_MB:.0f} MB; usable memory {USABLE_MEMORY_FRACTION:.0%} of "
        f"{target.memory_gb} GB",
    ]
    return Estimate(
        target.name,
        batch,
        default_precision,
        ops,
        sum(o.ms for o in ops),
        sum(o.flops for o in ops),
        sum(o.bytes for o in ops),
        weights,
        peak_act,
        overhead,
        total,
        total <= capacity,
        assumptions,
    )


def _load(source: Any, batch: int) -> Any:
    import onnx

    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    else:
        try:
            model = onnx.load(str(source), load_external_data=False)
        except (OSError, ValueError) as e:
            raise VlaedgeError(f"estimate: cannot read {source} as ONNX ({e})", "pass an .onnx file") from e
    for value in model.graph.input:
        for k, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_value = batch if k == 0 else 1
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise VlaedgeError(
            f"estimate: ONNX shape inference failed: {str(e)[:200]}", "check the export"
        ) from e


class _Graph:
    """Shapes, element types, producers and consumers of an ONNX graph after shape inference."""

    def __init__(self, model: Any):
        g = model.graph
        self.nodes = list(g.node)
        self.dims: dict[str, tuple[int, ...]] = {}
        self.elem: dict[str, int] = {}
        for v in (*g.input, *g.value_info, *g.output):
            t = v.type.tensor_type
            self.elem[v.name] = t.elem_type
            if t.HasField("shape"):
                self.dims[v.name] = tuple(
                    max(d.dim_value, 1) if d.HasField("dim_value") else 1 for d in t.shape.dim
                )
        self.init_dims = {i.name: tuple(i.dims) for i in g.initializer}
        for i in g.initializer:
            self.dims[i.name], self.elem[i.name] = tuple(i.dims), i.data_type
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.outputs = {o.name for o in g.output}

    def numel(self, name: str) -> int:
        n = 1
        for d in self.dims.get(name, ()):
            n *= d
        return n

    def quantized_width(self, name: str) -> str | None:
        """'int8' / 'fp8' / 'int4' when `name` is a DequantizeLinear output (what it was stored as)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        elem = self.elem.get(node.input[0])
        if elem is None and len(node.input) > 2:  # fall back on the zero point's type
            elem = self.elem.get(node.input[2])
        if elem in _8BIT_INT or elem is None:  # QuantizeLinear without zero point emits uint8
            return "int8"
        return "fp8" if elem in _FP8 else "int4" if elem in _INT4 else None

    def is_weight(self, name: str) -> bool:
        """An initializer, or a DQ(Q(initializer)) / DQ(initializer) chain."""
        seen = name
        for _ in range(3):
            if seen in self.init_dims:
                return True
            node = self.producer.get(seen)
            if node is None or node.op_type not in (
                "DequantizeLinear",
                "QuantizeLinear",
                "Transpose",
                "Cast",
            ):
                return False
            seen = node.input[0]
        return False

    def tensor_bytes(self, name: str, default: str) -> float:
        """Bytes of a tensor as read by its consumer: the quantized width through DQ, else the default."""
        width = self.quantized_width(name)
        if width is None:
            users = self.consumers.get(name, [])
            if users and all(u.op_type == "QuantizeLinear" for u in users) and name not in self.outputs:
                width = "int8"  # the quantize fuses into the producer's output
        if width is None and name in self.init_dims and self.elem.get(name) in _8BIT_INT | _FP8 | _INT4:
            width = "int4" if self.elem[name] in _INT4 else "int8"
        return self.numel(name) * BYTES[width or default]

    def weight_bytes(self, name: str, default: str) -> float:
        """Deployed size of an initializer: quantized width where a Q/DQ chain consumes it."""
        users = self.consumers.get(name, [])
        if not users or all(
            u.op_type in ("Shape", "Reshape", "Expand") and u.input[0] != name for u in users
        ):
            return 0.0  # shape constants
        for u in users:
            if u.op_type == "QuantizeLinear" and u.input[0] == name:
                dq = [c for c in self.consumers.get(u.output[0], []) if c.op_type == "DequantizeLinear"]
                if dq:
                    return self.numel(name) * BYTES[self.quantized_width(dq[0].output[0]) or "int8"]
            if u.op_type in ("QuantizeLinear", "DequantizeLinear") and u.input[0] != name:
                return 0.0  # scales and zero points: negligible, folded
        if self.elem.get(name) in _8BIT_INT | _FP8:
            return float(self.numel(name))
        if self.elem.get(name) in _INT4:
            return self.numel(name) * 0.5
        if self.elem.get(name) in (6, 7, 9):  # int32, int64, bool: indices and masks
            return self.numel(name) * (8 if self.elem[name] == 7 else 4 if self.elem[name] == 6 else 1)
        return self.numel(name) * BYTES[default]


def _op_estimate(node: Any, g: _Graph, t: Target, default: str) -> OpEstimate | None:
    if node.op_type in _FREE:
        return None
    out = node.output[0]
    inputs = [n for n in node.input if n]
    flops, precision = float(g.numel(out)), default
    if node.op_type in _GEMMS and len(inputs) >= 2:
        flops = _gemm_flops(node, g)
        a, w = g.quantized_width(inputs[0]), g.quantized_width(inputs[1])
        if a is not None and a == w and a in ("int8", "fp8"):
            precision = a
        elif w in ("int8", "int4") and a is None:
            precision = "w8" if w == "int8" else "w4"
    nbytes = sum(g.tensor_bytes(n, default) for n in inputs if not _is_param(n, node, g))
    nbytes += sum(g.tensor_bytes(o, default) for o in node.output if o)
    peak = {"int8": t.int8_tops, "fp8": t.fp8_tflops, "fp32": t.fp32_tflops}.get(precision, t.fp16_tflops)
    if node.op_type not in _GEMMS:
        peak = t.fp32_tflops or t.fp16_tflops  # CUDA cores, not tensor cores
    compute_s = flops / ((peak or t.fp16_tflops) * 1e12 * COMPUTE_EFFICIENCY)
    memory_s = nbytes / (t.memory_bw_gbs * 1e9 * MEMORY_EFFICIENCY)
    return OpEstimate(
        node.name or f"{node.op_type}:{out}",
        node.op_type,
        precision,
        flops,
        nbytes,
        max(compute_s, memory_s) * 1e3,
        "compute" if compute_s >= memory_s else "memory",
    )


def _is_param(name: str, node: Any, g: _Graph) -> bool:
    """Scales/zero points and shape inputs that are not data (e.g. Reshape's shape, Resize's scales)."""
    return name in g.init_dims and g.numel(name) <= 1 and node.op_type not in _GEMMS


def _gemm_flops(node: Any, g: _Graph) -> float:
    """2 x MACs (+ one per output for a bias) of MatMul, Gemm, Conv, ConvTranspose."""
    a, w, out = node.input[0], node.input[1], node.output[0]
    attrs = {at.name: at for at in node.attribute}
    if node.op_type == "MatMul":
        k = g.dims.get(a, (1,))[-1]
        return 2.0 * g.numel(out) * k
    if node.op_type == "Gemm":
        a_dims = g.dims.get(a, (1, 1))
        k = a_dims[0] if "transA" in attrs and attrs["transA"].i else a_dims[-1]
        bias = g.numel(out) if len(node.input) > 2 and node.input[2] else 0
        return 2.0 * g.numel(out) * k + bias
    w_dims = g.dims.get(w, (1, 1))
    kernel = 1
    for d in w_dims[2:]:
        kernel *= d
    bias = g.numel(out) if len(node.input) > 2 and node.input[2] else 0
    if node.op_type == "Conv":  # weight [Cout, Cin/group, k...]
        return 2.0 * g.numel(out) * w_dims[1] * kernel + bias
    # ConvTranspose: weight [Cin, Cout/group, k...]; every input element scatters Cout/group x kernel MACs
    return 2.0 * g.numel(a) * w_dims[1] * kernel + bias


def _peak_activations(g: _Graph, default: str) -> float:
    """Peak bytes of live activations, executing nodes in graph order."""
    last_use = {}
    for i, n in enumerate(g.nodes):
        for name in n.input:
            last_use[name] = i
    live: dict[str, float] = {}
    peak = 0.0
    for i, n in enumerate(g.nodes):
        for o in n.output:
            if o and o not in g.init_dims and n.op_type not in ("Shape", "Constant", "Size"):
                live[o] = g.tensor_bytes(o, default)
        peak = max(peak, sum(live.values()))
        for name in [k for k in live if last_use.get(k, -1) <= i and k not in g.outputs]:
            del live[name]
    return peak
