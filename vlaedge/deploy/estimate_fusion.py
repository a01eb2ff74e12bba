"""Which ONNX ops become one TensorRT kernel: the fusion rules of `vlaedge estimate`.

Nodes are grouped in graph order into kernels; a kernel's bytes are the tensors that cross its boundary
(read from outside, or written for a consumer outside / a graph output), so a fused intermediate costs
nothing. The rules follow what TensorRT documents it fuses:

- **Epilogue fusion.** A pointwise op (bias Add, Relu/Sigmoid/Tanh/Erf/Gelu/Clip, the Mul of SiLU/GeGLU,
  a residual Add, BatchNormalization, ...) joins the kernel that produced its most recent input:
  into a GEMM/conv that is its epilogue, into a pointwise kernel it extends the chain. TensorRT's
  Layer Fusion Catalog lists convolution + activation / + ElementWise sum, matrix multiply + bias /
  activation, and pointwise fusion of consecutive pointwise layers
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/performance/fusion-catalog.html).
- **Normalization as one memory pass.** LayerNormalization / RMSNorm / Softmax / Reduce* start a kernel;
  the pointwise ops and further reductions of the same decomposed pattern (ReduceMean, Sub, Pow,
  Sqrt, Div, Mul, Add) join it, so a decomposed LayerNorm or RMSNorm reads its input once and writes
  once (TensorRT imports these as INormalizationLayer / fuses reduction + pointwise, same catalog).
- **Fused attention.** MatMul(Q, Kᵀ) [+ scale/mask pointwise] -> Softmax -> MatMul(P, V), with both
  MatMuls between activations, is one kernel: Q, K, V are read and the output written, the score
  matrix never reaches memory. TensorRT fuses this pattern built from IMatrixMultiply and ISoftMax
  layers for MHA, GQA and MQA ("Fused Attention",
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/transformers-fused-attention.html).
- **Free ops.** Shape-only ops (Reshape, Transpose, Slice, Concat, Q/DQ, ...) join the kernel of their
  input and cost nothing themselves; ops that only read constants are folded at build time.
- Everything else (pooling, Resize, TopK, ...) is one kernel of its own.

`fuse(..., epilogues=False)` prices a graph the way PyTorch eager runs it instead: no pointwise op joins a
GEMM/conv (eager launches one kernel per torch op; fusion is what TensorRT or torch.compile add, see
https://docs.pytorch.org/docs/stable/torch.compiler.html), a chain of pointwise ops counts as one kernel
(a decomposed GELU/SiLU is one torch op), normalizations and attention (with its scale/mask) stay one
kernel each (fused torch LayerNorm and scaled_dot_product_attention kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlaedge.deploy.estimate_shapes import Graph

GEMMS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
FREE = {
    "Reshape", "Transpose", "Shape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Constant",
    "ConstantOfShape", "QuantizeLinear", "DequantizeLinear", "Gather", "Slice", "Concat", "Split",
    "Expand", "Range", "Cast", "Dropout", "Size", "NonZero", "Unique",
}  # fmt: skip
POINTWISE = {
    "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Clip", "HardSigmoid",
    "HardSwish", "LeakyRelu", "Elu", "Selu", "Softplus", "Mish", "PRelu", "Pow", "Sqrt", "Reciprocal",
    "Neg", "Exp", "Log", "Abs", "Sin", "Cos", "Where", "Max", "Min", "Equal", "Less", "Greater", "Not",
    "And", "Or", "BatchNormalization", "Floor", "Ceil", "Round", "Sign",
}  # fmt: skip
NORMS = {
    "LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "Softmax", "LogSoftmax",
    "GroupNormalization", "InstanceNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
    "ReduceL2", "ReduceSumSquare", "ReduceProd",
}  # fmt: skip
_JOINABLE = ("gemm", "conv", "attention", "norm", "pointwise")
# tensor-core tile granularity of N and K (a conv's K per filter tap): narrow layers waste part of a tile
TILE = 64  # (64 fits the calib rows better than 32 or 128, see gemm_flops)
FEW_CHANNELS = 8  # a conv with at most this many input channels packs its filter taps into one reduction


@dataclass(eq=False)
class Kernel:
    """One fused kernel: its ops, tensor-core and CUDA-core FLOPs, and the bytes crossing its boundary."""

    name: str  # the first node's name
    kind: str  # gemm, conv, attention, norm, pointwise or other
    precision: str  # what its GEMMs compute in: fp16, bf16, fp32, int8, fp8, fp4, w8, w4
    op_types: list[str] = field(default_factory=list)  # every fused op, free ones included
    flops: float = 0.0  # tensor-core FLOPs (GEMM, conv, attention MatMuls)
    tile_flops: float = 0.0  # the same with N and K rounded up to TILE: what the tensor cores execute
    other_flops: float = 0.0  # one per output element of non-epilogue pointwise / normalization ops
    bytes: float = 0.0  # read from and written to DRAM at the precisions they are stored in
    nodes: list[Any] = field(default_factory=list, repr=False)
    softmax_after: Kernel | None = field(default=None, repr=False)  # norm kernel: the QKᵀ kernel before it


def fuse(g: Graph, default: str, epilogues: bool = True) -> list[Kernel]:
    """The kernels of `g` in execution order, each with FLOPs and boundary bytes (see module docstring).

    `epilogues=False`: PyTorch-eager grouping (pointwise ops never fuse into a GEMM/conv)."""
    owner: dict[str, Kernel] = {}  # tensor -> the kernel that writes it
    const = set(g.init_dims)
    kernels: list[Kernel] = []
    order: dict[Kernel, int] = {}  # kernel (by identity) -> creation index, to find the latest producer
    for node in g.nodes:
        data = [n for n in node.input if n and n not in const]
        if not data:
            const.update(o for o in node.output if o)  # constant-folded at build time
            continue
        producers = [owner[n] for n in data if n in owner]
        latest = max(producers, key=order.__getitem__, default=None)
        if node.op_type in FREE and node.input[0] in owner:  # shape ops follow their data input
            latest = owner[node.input[0]]
        kernel = _place(node, g, latest, default, epilogues)
        if kernel is None:  # a free op whose input came from outside every kernel
            continue
        if kernel not in order:
            order[kernel] = len(order)
            kernels.append(kernel)
        if kernel.kind == "attention" and kernel is not latest:  # merged two kernels: drop the parts
            kernels = [k for k in kernels if k is not latest and k is not latest.softmax_after]
            for n in kernel.nodes:
                owner.update({o: kernel for o in n.output if o})
        for out in node.output:
            if out:
                owner[out] = kernel
    for k in kernels:
        _count(k, g, default)
    return [k for k in kernels if k.kind != "free"]


def _place(node: Any, g: Graph, latest: Kernel | None, default: str, epilogues: bool) -> Kernel | None:
    op = node.op_type
    joinable = latest is not None and (
        latest.kind in _JOINABLE
        if epilogues
        else latest.kind == "pointwise" or (latest.kind == "gemm" and _is_bmm(latest, g))  # SDPA scale/mask
    )
    if op in FREE:
        if latest is None:
            return None
        return _join(latest, node)
    if op in GEMMS:
        b = ([*node.input, "", ""])[1]
        if op == "MatMul" and not g.is_weight(b) and latest is not None and latest.softmax_after is not None:
            return _attention(latest, node)
        kind = "conv" if op.startswith("Conv") else "gemm"
        return _join(Kernel(node.name or op, kind, _precision(node, g, default)), node)
    if op in NORMS:
        if joinable and latest.kind == "norm" and op != "Softmax":
            return _join(latest, node)
        k = Kernel(node.name or op, "norm", default)
        if op == "Softmax" and latest is not None and latest.kind == "gemm" and _is_bmm(latest, g):
            k.softmax_after = latest
        return _join(k, node)
    if op in POINTWISE and joinable:
        return _join(latest, node)
    return _join(Kernel(node.name or op, "pointwise" if op in POINTWISE else "other", default), node)


def _join(kernel: Kernel, node: Any) -> Kernel:
    kernel.nodes.append(node)
    kernel.op_types.append(node.op_type)
    return kernel


def _attention(softmax: Kernel, node: Any) -> Kernel:
    """QKᵀ kernel + softmax kernel + this P·V MatMul become one fused attention kernel."""
    qk = softmax.softmax_after
    k = Kernel(qk.name, "attention", qk.precision, nodes=qk.nodes + softmax.nodes)
    k.op_types = qk.op_types + softmax.op_types
    return _join(k, node)


def _is_bmm(kernel: Kernel, g: Graph) -> bool:
    first = kernel.nodes[0]
    return first.op_type == "MatMul" and not g.is_weight(first.input[1])


def _precision(node: Any, g: Graph, default: str) -> str:
    inputs = [n for n in node.input if n]
    if len(inputs) < 2:
        return default
    a, w = g.quantized_width(inputs[0]), g.quantized_width(inputs[1])
    if a is not None and a == w and a in ("int8", "fp8", "fp4"):
        return a
    if w in ("int8", "int4", "fp4") and a is None:
        return "w8" if w == "int8" else "w4"
    if w == "fp4" and a == "fp8":
        return "fp8"
    return default


def _count(k: Kernel, g: Graph, default: str) -> None:
    inside = {o for n in k.nodes for o in n.output if o}
    members = {id(n) for n in k.nodes}
    seen: set[str] = set()
    for n in k.nodes:
        if n.op_type in GEMMS and len([i for i in n.input if i]) >= 2:
            k.flops += gemm_flops(n, g)
            k.tile_flops += gemm_flops(n, g, TILE)
        elif n.op_type not in FREE and (k.kind in ("norm", "pointwise", "other")):
            k.other_flops += g.numel(n.output[0])
        for name in n.input:
            if name and name not in inside and name not in seen and not _is_param(name, n, g):
                seen.add(name)
                k.bytes += g.tensor_bytes(name, default)
    for name in inside:
        users = g.consumers.get(name, [])
        leaves = any(id(u) not in members and u.op_type != "Shape" for u in users)
        if name in g.outputs or leaves:
            k.bytes += g.tensor_bytes(name, default)
    if not any(n.op_type not in FREE for n in k.nodes):
        k.kind = "free"


def _is_param(name: str, node: Any, g: Graph) -> bool:
    """Scales/zero points and shape inputs that are not data (e.g. Reshape's shape, Resize's scales)."""
    if node.op_type in (
        "Reshape",
        "Expand",
        "Slice",
        "Resize",
        "Tile",
        "Pad",
        "Split",
        "Squeeze",
        "Unsqueeze",
    ):
        return name != node.input[0]
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return name != node.input[0]
    return name in g.init_dims and g.numel(name) <= 1 and node.op_type not in GEMMS


def gemm_flops(node: Any, g: Graph, tile: int = 1) -> float:
    """2 x MACs (+ one per output for a bias) of MatMul, Gemm, Conv, ConvTranspose; with `tile` > 1 the
    output-channel (N) and reduction (K) sizes are rounded up to a multiple of it (ungrouped ops only).

    A Conv's reduction is rounded per filter tap: an implicit-GEMM convolution steps over the kh x kw filter
    positions and reads the input channels of one position in K-tiles, so a 3x3 conv with 16 input channels
    fills 16 of each tile's 64 lanes 9 times (CUTLASS implicit-GEMM fprop, `IteratorAlgorithm::kOptimized`
    / `kAnalytic`). Up to FEW_CHANNELS input channels (a network's first conv on 3-8 padded channels) the
    taps are packed into one reduction instead (`kFixedChannels` / `kFewChannels`,
    https://github.com/NVIDIA/cutlass include/cutlass/conv/convolution.h). TensorRT's own conv kernels are
    not public: this is an assumption, kept because it lowers the calibration loss of
    benchmarks/estimate_vs_published.py --fit (2.39 -> 2.11; TILE 32 or 128 per tap: 2.47, 2.62)."""
    a, w, out = node.input[0], node.input[1], node.output[0]
    attrs = {at.name: at for at in node.attribute}

    def up(n: int) -> int:
        return -(-n // tile) * tile

    out_dims = g.dims.get(out, (1,))
    if node.op_type in ("MatMul", "Gemm"):
        a_dims = g.dims.get(a, (1, 1))
        k = a_dims[0] if "transA" in attrs and attrs["transA"].i else a_dims[-1]
        bias = g.numel(out) if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else 0
        return 2.0 * g.numel(out) / out_dims[-1] * up(out_dims[-1]) * up(k) + bias
    bias = g.numel(out) if len(node.input) > 2 and node.input[2] else 0
    w_dims = g.dims.get(w, (1, 1))
    kernel = 1
    for d in w_dims[2:]:
        kernel *= d
    if "group" in attrs and attrs["group"].i > 1:
        tile = 1
    if node.op_type == "Conv":  # weight [Cout, Cin/group, k...]; output [N, Cout, spatial...]
        pixels = g.numel(out) / max(out_dims[1] if len(out_dims) > 1 else 1, 1)
        c_in = w_dims[1]
        reduction = up(c_in * kernel) if c_in <= FEW_CHANNELS else up(c_in) * kernel
        return 2.0 * pixels * up(w_dims[0]) * reduction + bias
    # ConvTranspose: weight [Cin, Cout/group, k...]; every input element scatters Cout/group x kernel MACs
    return 2.0 * g.numel(a) * w_dims[1] * kernel + bias
