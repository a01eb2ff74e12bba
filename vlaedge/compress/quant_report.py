"""What quantization did, module by module (ModelOpt) or node by node (ONNX Runtime), and why.

Helper of `quantize` (this wing only): the result objects, the matching of the recipe's `keep` patterns,
the mapping from ONNX node names to torch module names, and the per-module / per-node decisions read
back from the quantized model (never from what we asked for).

Keep patterns are `fnmatch` patterns on torch module names (`model.named_modules()`); a module is kept
when it or one of its ancestors matches, so `action_head*` keeps every layer under `action_head` and
`vision_tower.patch_embed` keeps that one convolution.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from vlaedge.artifact import final_path

LAYERNORM_REASON = "LayerNorm input (not quantized by default: it wrecks a trained model's actions)"
# Measured on the small reference VLA (ORT 1.31, 2 threads, batch 1): quantizing the attention-score
# MatMuls too made the model slower (27.7 vs 25.5 ms median) and drift more (0.0042 vs 0.0038).
ACTIVATION_MATMUL_REASON = "activation x activation (attention) not quantized: slower and less exact on CPU"
NORM_OPS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                      "RMSNormalization", "GroupNormalization", "InstanceNormalization",
                      "BatchNormalization"})


@dataclass
class QuantDecision:
    """One module (ModelOpt path) or ONNX node (ONNX Runtime path) and what happened to it.

    Attributes:
        name: torch module name, e.g. "vision_tower.blocks.0.attn.q_proj", or ONNX node name, e.g.
            "/vision_tower/blocks.0/attn/q_proj/MatMul".
        kind: module class ("Linear", "LayerNorm") or ONNX op type ("MatMul").
        quantized: whether any quantizer of it is active in the result.
        reason: why, e.g. "kept by recipe pattern 'action_head*'".
        module: ONNX path: the torch module the node was exported from ("" for the top level).
        quantizers: ModelOpt path: the enabled quantizers ("weight", "input", "output").
    """

    name: str
    kind: str
    quantized: bool
    reason: str
    module: str = ""
    quantizers: list[str] = field(default_factory=list)


@dataclass
class QuantizeResult:
    """What `vlaedge.compress.quantize.quantize` did: truthy when something was quantized.

    Attributes:
        path: "modelopt" (fake-quantized torch module, for TensorRT) or "onnxruntime" (QDQ ONNX file).
        precision: the recipe's precision, e.g. "int8".
        algorithm: calibration algorithm, e.g. "max", "smoothquant", "awq", "minmax", "entropy".
        decisions: one entry per module (modelopt) or per candidate node (onnxruntime), see `QuantDecision`.
        calib_frames: calibration frames used.
        seconds: wall time of calibration and quantization.
        output: onnxruntime path: the quantized ONNX file.
        fp32_bytes: onnxruntime path: size of the FP32 ONNX.
        output_bytes: onnxruntime path: size of the quantized ONNX.
        int8_weights: onnxruntime path: int8 weight initializers (rank >= 2) in the output.
        output_drift: onnxruntime path: mean |quantized - FP32| of the raw outputs on one calibration
            batch (a smoke check that the graph runs; verify measures drift properly).
        notes: anything else worth knowing (removed ModelOpt name skips, settings that did not apply).
    """

    path: Literal["modelopt", "onnxruntime"]
    precision: str
    algorithm: str
    decisions: list[QuantDecision]
    calib_frames: int
    seconds: float
    output: str | None = None
    fp32_bytes: int | None = None
    output_bytes: int | None = None
    int8_weights: int | None = None
    output_drift: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def quantized(self) -> list[QuantDecision]:
        return [d for d in self.decisions if d.quantized]

    @property
    def skipped(self) -> list[QuantDecision]:
        return [d for d in self.decisions if not d.quantized]

    def __bool__(self) -> bool:
        return bool(self.quantized)

    def reasons(self) -> Counter:
        """How many decisions carry each reason."""
        return Counter(d.reason for d in self.decisions)

    def summary(self) -> str:
        unit = "modules" if self.path == "modelopt" else "nodes"
        lines = [f"quantize ({self.path}): {self.precision} {self.algorithm} on {self.calib_frames} "
                 f"calibration frames in {self.seconds:.1f} s: {len(self.quantized)} {unit} quantized, "
                 f"{len(self.skipped)} skipped"]
        if self.output:
            ratio = f" ({self.output_bytes / self.fp32_bytes:.0%} of FP32)" if self.fp32_bytes else ""
            lines.append(f"  wrote {final_path(self.output)}: {self.output_bytes / 1e6:.2f} MB{ratio}, "
                         f"{self.int8_weights} int8 weight tensors, output drift {self.output_drift:.4g}")
        for (quantized, reason), count in sorted(
                Counter((d.quantized, d.reason) for d in self.decisions).items(), key=lambda kv: -kv[1]):
            lines.append(f"  {'quantized' if quantized else 'skipped'} x{count}: {reason or '-'}")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])

    def to_dict(self) -> dict:
        """For manifest.json: every field, plus the counts."""
        out = asdict(self)
        out["counts"] = {"quantized": len(self.quantized), "skipped": len(self.skipped)}
        return out


def kept_by(name: str, patterns: list[str]) -> str | None:
    """The first `keep` pattern matching module `name` or one of its ancestors, else None."""
    atoms = name.split(".") if name else []
    prefixes = [".".join(atoms[:i]) for i in range(1, len(atoms) + 1)]
    for pattern in patterns:
        if any(fnmatchcase(p, pattern) for p in prefixes):
            return pattern
    return None


def unmatched_patterns(module_names: list[str], patterns: list[str]) -> list[str]:
    """The keep patterns that match no module (typos would otherwise silently keep nothing)."""
    return [p for p in patterns if not any(kept_by(n, [p]) for n in module_names)]


# --- ModelOpt -----------------------------------------------------------------------------------------


def modelopt_decisions(module, config, removed_skips: list[str], class_skips: dict[str, type]) -> list[
        QuantDecision]:
    """Per-module decisions read from the quantizers ModelOpt attached to `module`.

    Args:
        module: the quantized torch module.
        config: the `QuantizeConfig` (keep patterns, quantize_layernorm, precision).
        removed_skips: the ModelOpt default name-skip patterns we removed from its config.
        class_skips: ModelOpt's class skips still in force, e.g. {"nn.Embedding": QuantEmbedding}.
    """
    from torch import nn

    decisions = []
    for name, m in module.named_modules():
        quantizers = _quantizers(m)
        if not quantizers:
            continue
        enabled = [q.removesuffix("_quantizer") for q, on in quantizers.items() if on]
        kind = type(m).__name__.removeprefix("Quant")
        if enabled:
            reason = _quantized_reason(name, quantizers, removed_skips, isinstance(m, nn.LayerNorm))
        else:
            reason = _skipped_reason(name, m, config, class_skips)
        decisions.append(QuantDecision(name, kind, bool(enabled), reason, name, enabled))
    return decisions


def _quantizers(m) -> dict[str, bool]:
    """{attribute name: enabled} of the ModelOpt quantizers that are direct children of `m`."""
    from modelopt.torch.quantization.nn import SequentialQuantizer, TensorQuantizer

    found = {}
    for child_name, child in m.named_children():
        if isinstance(child, SequentialQuantizer):
            found[child_name] = any(q.is_enabled for q in child)
        elif isinstance(child, TensorQuantizer):
            found[child_name] = bool(child.is_enabled)
    return found


def _quantized_reason(name: str, quantizers: dict[str, bool], removed_skips: list[str], is_norm: bool) -> str:
    if is_norm:
        return "LayerNorm input quantized (quantize_layernorm: true; measured: this destroyed accuracy)"
    names = [f"{name}.{q}" for q in quantizers]
    hit = [p for p in removed_skips if any(fnmatchcase(n, p) for n in names)]
    if hit:
        return f"ModelOpt default name skip {', '.join(repr(p) for p in hit)} removed"
    return "quantized"


def _skipped_reason(name: str, m, config, class_skips: dict[str, type]) -> str:
    from torch import nn

    pattern = kept_by(name, list(config.keep))
    if pattern:
        return f"kept by recipe pattern '{pattern}'"
    if isinstance(m, nn.LayerNorm):
        if not config.quantize_layernorm:
            return LAYERNORM_REASON
        return f"LayerNorm has no weight quantizer ({config.precision})"
    for class_name, quant_class in class_skips.items():
        if isinstance(m, quant_class):
            return f"ModelOpt default skip for {class_name}"
    return "disabled by the ModelOpt config"


# --- ONNX ---------------------------------------------------------------------------------------------


def node_modules(node_names: list[str], module_names: list[str]) -> dict[str, str]:
    """Maps ONNX node names from the legacy exporter to the torch module each came from.

    The legacy exporter (`torch.onnx.export(..., dynamo=False)`) names a node by the chain of *called*
    modules it ran in, each written unqualified: the last non-numeric atom of the qualified name plus the
    numeric atoms after it. So module `vision_tower.blocks.0.attn.q_proj` gives
    `/vision_tower/blocks.0/attn/q_proj/MatMul`, and `state_proj.0` (inside the called Sequential
    `state_proj`) gives `/state_proj/state_proj.0/Gemm`. A module called again in the same parent call
    (the flow head's unrolled steps) gets `_1`, `_2`, ... appended: `/action_head/action_in_2/MatMul`.
    We walk the chain, at each step choosing the closest descendant whose unqualified name is the next
    component. Nodes outside any module (or from another exporter) map to "".
    """
    by_unqualified: dict[str, list[str]] = {}
    for q in module_names:
        if q:
            by_unqualified.setdefault(_unqualified(q), []).append(q)
    mapping = {}
    for node in node_names:
        current = ""
        for component in node.strip("/").split("/")[:-1] if node.startswith("/") else []:
            below = _below(by_unqualified, component, current)
            if not below and re.fullmatch(r".+_\d+", component):  # a module's 2nd, 3rd... call: "fc1_2"
                below = _below(by_unqualified, component.rsplit("_", 1)[0], current)
            if not below:
                break
            current = min(below, key=lambda q: q.count("."))
        mapping[node] = current
    return mapping


def _below(by_unqualified: dict[str, list[str]], component: str, current: str) -> list[str]:
    return [q for q in by_unqualified.get(component, ()) if not current or q.startswith(current + ".")]


def _unqualified(qualified: str) -> str:
    atoms = qualified.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified


def plan_onnx(model, module, config, op_types: tuple[str, ...]) -> tuple[list[QuantDecision], list[str]]:
    """Per-node decisions before quantization, and the node names to exclude.

    Reported nodes: every node of a quantized op type, every normalisation node, and every other node
    that reads a floating-point weight (an initializer of rank >= 2, e.g. an embedding Gather). Nodes of a
    quantized op type without a weight input (attention-score MatMuls) are excluded unless
    `config.quantize_attention`.
    """
    from torch import nn

    modules = dict(module.named_modules())
    weights = {i.name for i in model.graph.initializer if len(i.dims) >= 2 and i.data_type in (1, 10, 11, 16)}
    mapping = node_modules([n.name for n in model.graph.node], list(modules))
    decisions, exclude = [], []
    for node in model.graph.node:
        owner = mapping[node.name]
        is_norm = node.op_type in NORM_OPS or isinstance(modules.get(owner), nn.LayerNorm | nn.GroupNorm)
        has_weight = any(i in weights for i in node.input)
        if node.op_type not in op_types and not is_norm and not has_weight:
            continue
        pattern = kept_by(owner, list(config.keep))
        if pattern:
            reason = f"kept by recipe pattern '{pattern}'"
        elif is_norm and not config.quantize_layernorm:
            reason = LAYERNORM_REASON
        elif node.op_type not in op_types:
            reason = f"op type {node.op_type} not quantized"
        elif not has_weight and not is_norm and not getattr(config, "quantize_attention", False):
            reason = ACTIVATION_MATMUL_REASON
        else:
            reason = ""
        if reason and node.op_type in op_types:
            exclude.append(node.name)
        decisions.append(QuantDecision(node.name, node.op_type, not reason, reason, owner))
    return decisions, exclude


def confirm_onnx(decisions: list[QuantDecision], quantized_model, weight_type: str) -> None:
    """Sets each planned decision from the quantized graph: a node is quantized when an input comes from a
    DequantizeLinear. Nodes ONNX Runtime declined are reported as such; nodes the plan left out stay out
    (a norm or kept node can read a DequantizeLinear output that belongs to its producer)."""
    graph = quantized_model.graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    dq_of_weight = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"
                    and n.input[0] in {i.name for i in graph.initializer}}
    nodes = {n.name: n for n in graph.node}
    for d in decisions:
        if not d.quantized:  # excluded or not quantizable: a DQ output reaching it is its producer's
            continue
        node = nodes.get(d.name)
        actual = node is not None and any(i in dq_outputs for i in node.input)
        if d.quantized and not actual:
            d.reason = "not quantized by ONNX Runtime (no calibrated range or unsupported pattern)"
        elif actual:
            has_weight = any(i in dq_of_weight for i in node.input)
            d.reason = f"weights {weight_type}, activations uint8" if has_weight else "activations uint8"
        d.quantized = actual
