"""Latency and memory estimate of an ONNX graph on a target, before you own the hardware.

A fusion-aware, calibrated roofline:

1. Shapes (`estimate_shapes`): `input_shapes` overrides, a dynamic first axis = `batch`, symbolic shape
   inference; any tensor a costed op touches whose shape is still unknown is refused, naming it (with
   `allow_unknown_dims` the unknown dimensions are taken as 1 and listed in `warnings`).
2. Kernels (`estimate_fusion`): ops are grouped the way TensorRT fuses them (GEMM/conv epilogues,
   normalizations as one memory pass, attention as one kernel); a kernel's bytes are the tensors crossing
   its boundary, at the width they are stored in (Q/DQ-aware: int8/fp8/int4/fp4 through DequantizeLinear,
   1 byte into QuantizeLinear, float weights of a modelopt Q/DQ export at their quantized width).
3. Time: each kernel takes max(tensor FLOPs (N and K rounded up to whole tensor-core tiles, TILE; a conv's
   K per filter tap, `estimate_fusion.gemm_flops`) /
   (peak[precision] x efficiency[precision]), CUDA-core FLOPs / FP32 peak,
   bytes / (bandwidth x memory efficiency), kernel floor); the latency
   is their sum plus a fixed per-inference cost. The efficiencies, floor and fixed cost are per target
   family (`vlaedge.targets.Efficiency`), fitted on published Jetson/Thor measurements (calibration rows of
   benchmarks/published/measurements.csv); benchmarks/results/estimate_vs_published.md has the held-out
   error.
4. Memory: weights at their deployed width, each once however many nodes (unrolled steps) read it, + the
   peak of live activations (graph order; tensors computed from weights alone are weights) +
   RUNTIME_OVERHEAD_MB; fits when at most USABLE_MEMORY_FRACTION of the device memory.

What it cannot see: tactic choice and wave quantization, kernels TensorRT writes that are better or worse
than the roofline (hand-written engines such as FlashRT run ~2x faster than TensorRT on pi0.5), DVFS and
thermal throttling (clocks are the power mode's maximum), DLA placement, 2:4 sparsity, host-side work
(pre/post-processing, tokenization, Python), copies, and parts of a pipeline that do not run in TensorRT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlaedge.deploy.estimate_fusion import Kernel, fuse
from vlaedge.deploy.estimate_shapes import Graph, load_model, parse_input_shapes
from vlaedge.errors import VlaedgeError
from vlaedge.targets import Efficiency, Target, get_target

RUNTIME_OVERHEAD_MB = 600.0  # CUDA context + TensorRT/cuBLAS/cuDNN libraries on JetPack 6 (approximate)
USABLE_MEMORY_FRACTION = 0.8  # share of the module's memory a model may use (the rest: OS, CPU, camera)


@dataclass
class KernelEstimate:
    """One fused kernel's share of the estimate."""

    name: str  # the first node's name
    kind: str  # gemm, conv, attention, norm, pointwise or other
    ops: str  # the fused op types, e.g. "MatMul+Add+Relu"
    precision: str  # int8, fp8, fp4, fp16, bf16, fp32, or "w8"/"w4" weight-only (fp16 math)
    flops: float  # tensor-core FLOPs
    bytes: float  # DRAM bytes read + written
    ms: float
    bound: str  # "compute", "memory" or "floor" (the per-kernel minimum)


@dataclass
class Estimate:
    """A roofline estimate; truthy when the model fits in the target's memory."""

    target: str
    batch: int
    default_precision: str
    kernels: list[KernelEstimate]
    latency_ms: float  # fixed_ms + the kernels' sum
    fixed_ms: float
    flops: float
    bytes_moved: float
    weights_bytes: float
    peak_activation_bytes: float
    overhead_bytes: float
    memory_bytes: float
    fits: bool
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. dimensions taken as 1

    def __bool__(self) -> bool:
        return self.fits

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self, top: int = 15) -> str:
        """The slowest `top` kernels, totals by kind, and the verdict, as text."""
        rows = [f"{'kernel':<34} {'ops':<30} {'prec':<5} {'GFLOP':>8} {'MB':>8} {'ms':>8} bound"]
        for k in sorted(self.kernels, key=lambda o: -o.ms)[:top]:
            rows.append(
                f"{k.name[:34]:<34} {k.ops[:30]:<30} {k.precision:<5} {k.flops / 1e9:>8.3f} "
                f"{k.bytes / 1e6:>8.2f} {k.ms:>8.4f} {k.bound}"
            )
        by_kind: dict[str, list[float]] = {}
        for k in self.kernels:
            by_kind.setdefault(k.kind, []).append(k.ms)
        rows.append(
            "by kind: "
            + ", ".join(
                f"{kind} {len(v)} x = {sum(v):.3f} ms"
                for kind, v in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))
            )
        )
        gb = 1024**3
        rows.append(
            f"estimated latency {self.latency_ms:.3f} ms at batch {self.batch} on {self.target} "
            f"({len(self.kernels)} kernels + {self.fixed_ms:.2f} ms fixed; {self.flops / 1e9:.2f} GFLOP, "
            f"{self.bytes_moved / 1e6:.1f} MB moved)"
        )
        rows.append(
            f"memory: weights {self.weights_bytes / 1e6:.1f} MB + peak activations "
            f"{self.peak_activation_bytes / 1e6:.1f} MB + runtime {self.overhead_bytes / 1e6:.0f} MB = "
            f"{self.memory_bytes / gb:.2f} GiB: {'fits' if self.fits else 'DOES NOT FIT'}"
        )
        rows.extend(self.warnings)
        return "\n".join(rows)


def estimate(
    onnx_path: str | Path | Any,
    target: Target | str,
    batch: int = 1,
    default_precision: str = "fp16",
    input_shapes: dict[str, tuple[int, ...]] | list[str] | None = None,
    allow_unknown_dims: bool = False,
) -> Estimate:
    """Fusion-aware roofline latency and memory estimate of an ONNX graph on a target (module docstring).

    Args:
        onnx_path: the .onnx file (external data is not read: shapes suffice), or an `onnx.ModelProto`.
        target: a TensorRT target (or its name) with tabulated peaks, bandwidth and efficiencies.
        batch: the value of a dynamic first dimension of the graph inputs.
        default_precision: what non-quantized ops run in ("fp16", "bf16" or "fp32").
        input_shapes: input name -> full shape, e.g. {"image": (1, 3, 224, 224)}, or CLI-style strings
            ["image=1x3x224x224"]; wins over `batch`.
        allow_unknown_dims: take dimensions shape inference cannot resolve as 1 (listed in `warnings`)
            instead of refusing.

    Returns:
        The `Estimate` (per-kernel breakdown, total latency, memory and the fits verdict).

    Raises:
        VlaedgeError: a target without peaks (cpu), an unreadable graph, an unknown precision, a bad
            override, or unknown dimensions (naming the tensors) without `allow_unknown_dims`.

    Example:
        >>> print(estimate("runs/orin-int8/model.onnx", "agx-orin-64gb").table())
    """
    target = get_target(target) if isinstance(target, str) else target
    if target.fp16_tflops is None or target.memory_bw_gbs is None or target.efficiency is None:
        raise VlaedgeError(
            f"estimate: {target.name} has no tabulated peaks or bandwidth",
            "estimate for a GPU target (vlaedge targets), or measure with vlaedge profile",
        )
    if default_precision not in ("fp16", "bf16", "fp32"):
        raise VlaedgeError(f"estimate: default precision {default_precision!r}", "use fp16, bf16 or fp32")
    shapes = parse_input_shapes(input_shapes) if isinstance(input_shapes, list) else input_shapes or {}
    model, warnings = load_model(onnx_path, batch, shapes, allow_unknown_dims)
    graph = Graph(model)
    kernels = fuse(graph, default_precision)
    warnings += _check_unknown(graph, kernels, allow_unknown_dims)
    priced = price(kernels, target)
    weights = sum(graph.weight_bytes(name, default_precision) for name in graph.init_dims)
    peak_act = _peak_activations(graph, default_precision)
    overhead = RUNTIME_OVERHEAD_MB * 1e6
    total = weights + peak_act + overhead
    capacity = (target.memory_gb or 0) * 1024**3 * USABLE_MEMORY_FRACTION
    eff = target.efficiency
    return Estimate(
        target.name,
        batch,
        default_precision,
        priced,
        eff.fixed_ms + sum(k.ms for k in priced),
        eff.fixed_ms,
        sum(k.flops for k in priced),
        sum(k.bytes for k in priced),
        weights,
        peak_act,
        overhead,
        total,
        total <= capacity,
        _assumptions(target, default_precision),
        warnings,
    )


def price(
    kernels: list[Kernel], target: Target, efficiency: Efficiency | None = None
) -> list[KernelEstimate]:
    """Each kernel's time on `target` (see the module docstring, step 3).

    Args:
        kernels: from `estimate_fusion.fuse`.
        target: the device (peaks and bandwidth).
        efficiency: overrides `target.efficiency` (the calibration fit tries candidates with it).
    """
    eff = efficiency or target.efficiency
    peaks = {
        "int8": target.int8_tops,
        "fp8": target.fp8_tflops,
        "fp4": target.fp4_tflops,
        "fp32": target.fp32_tflops,
    }
    bandwidth = target.memory_bw_gbs * 1e9 * eff.memory
    out = []
    for k in kernels:
        peak = peaks.get(k.precision) or target.fp16_tflops
        times = {
            "compute": max(
                (k.tile_flops or k.flops) / (peak * 1e12 * eff.compute(k.precision)),
                k.other_flops / ((target.fp32_tflops or target.fp16_tflops) * 1e12),
            ),
            "memory": k.bytes / bandwidth,
            "floor": eff.kernel_floor_us * 1e-6,
        }
        bound = max(times, key=times.get)
        out.append(
            KernelEstimate(
                k.name,
                k.kind,
                "+".join(dict.fromkeys(k.op_types)),
                k.precision,
                k.flops,
                k.bytes,
                times[bound] * 1e3,
                bound,
            )
        )
    return out


def _check_unknown(g: Graph, kernels: list[Kernel], allow: bool) -> list[str]:
    touched = [
        t for k in kernels for n in k.nodes for t in (*n.input, *n.output) if t and t not in g.init_dims
    ]
    missing = list(dict.fromkeys(g.missing(touched)))
    if not missing:
        return []
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    if not allow:
        raise VlaedgeError(
            f"estimate: shape inference left {len(missing)} tensors with unknown dimensions: {shown}",
            "pass --input-shape NAME=1x3x224x224 for the inputs, re-export with static shapes, or "
            "--allow-unknown-dims to take them as 1 (the estimate is then too low)",
        )
    return [f"WARNING: {len(missing)} tensors with unknown dimensions taken as 1 (estimate too low): {shown}"]


def _assumptions(t: Target, default: str) -> list[str]:
    e = t.efficiency
    return [
        f"compute efficiency fp16 {e.fp16} / int8 {e.int8} / fp8 {e.fp8} / fp4 {e.fp4} of dense peaks; "
        "memory "
        f"efficiency {e.memory} of {t.memory_bw_gbs} GB/s; kernel floor {e.kernel_floor_us} us; fixed "
        f"{e.fixed_ms} ms per inference ({e.source})",
        f"non-quantized ops in {default}; TensorRT-style fusion (epilogues, normalizations, attention)",
        f"clocks at the maximum of {t.description.split(', ', 1)[-1]} (jetson_clocks); no host time",
        f"runtime overhead {RUNTIME_OVERHEAD_MB:.0f} MB; usable memory {USABLE_MEMORY_FRACTION:.0%} of "
        f"{t.memory_gb} GB",
    ]


def _peak_activations(g: Graph, default: str) -> float:
    """Peak bytes of live activations, executing nodes in graph order. Tensors computed from weights alone
    (`Graph.folded`: an Identity per unrolled step of a shared weight, a weight's Transpose or DQ) are
    weights, counted once in `weights_bytes`, not activations kept live until their last step."""
    last_use = {}
    for i, n in enumerate(g.nodes):
        for name in n.input:
            last_use[name] = i
    live: dict[str, float] = {}
    peak = now = 0.0
    for i, n in enumerate(g.nodes):
        for o in n.output:
            if o and o not in g.init_dims and o not in g.folded and n.op_type not in ("Shape", "Size"):
                live[o] = g.tensor_bytes(o, default)
                now += live[o]
        peak = max(peak, now)
        for name in n.input:
            if name in live and last_use.get(name) == i and name not in g.outputs:
                now -= live.pop(name)
    return peak
