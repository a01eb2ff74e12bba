"""The declared variant space `vlaedge tune` explores, and the module groups of the FP32-fallback search.

A variant is a name and the `QuantizeConfig` fields it changes from the recipe's quantize section, so
every variant is reproduced by `vlaedge compress` with those fields set (nothing is tuner-only).

ONNX Runtime (the cpu target): static QDQ per-channel / per-tensor with the minmax, entropy and
percentile calibrators, static with the attention MatMuls quantized, static after graph fusion, and
dynamic quantization (ONNX Runtime's `quantize_dynamic` defaults: per-tensor; and per-channel; and after
fusion). TensorRT targets: ModelOpt max and SmoothQuant calibration (int8), or the recipe's precision with
max; latency comes from `vlaedge.deploy.estimate` since no device is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CPU_SPACE: dict[str, dict] = {
    "static-pc-minmax": {"mode": "static", "per_channel": True, "algorithm": "minmax"},
    "static-pt-minmax": {"mode": "static", "per_channel": False, "algorithm": "minmax"},
    "static-pc-entropy": {"mode": "static", "per_channel": True, "algorithm": "entropy"},
    "static-pc-percentile": {"mode": "static", "per_channel": True, "algorithm": "percentile"},
    "static-pc-attention": {"mode": "static", "per_channel": True, "algorithm": "minmax",
                            "quantize_attention": True},
    "static-pc-fused": {"mode": "static", "per_channel": True, "algorithm": "minmax", "optimize_graph": True},
    "dynamic-pt": {"mode": "dynamic", "per_channel": False},
    "dynamic-pc": {"mode": "dynamic", "per_channel": True},
    "dynamic-pt-fused": {"mode": "dynamic", "per_channel": False, "optimize_graph": True},
}
TENSORRT_SPACE: dict[str, dict] = {
    "modelopt-max": {"algorithm": "max"},
    "modelopt-smoothquant": {"algorithm": "smoothquant"},
}
SPACES = ("full", "quick")  # quick: the first three cpu variants and dynamic-pt, or modelopt-max
QUICK = ("static-pc-minmax", "static-pt-minmax", "dynamic-pt", "modelopt-max")


@dataclass
class Variant:
    """One configuration to measure: the quantize fields it sets and the modules it keeps in FP32."""

    name: str
    settings: dict  # QuantizeConfig fields changed from the recipe's quantize section
    fallback: list[str] = field(default_factory=list)  # module groups kept FP32 (sensitivity search)

    def config_update(self, keep: list[str]) -> dict:
        """The QuantizeConfig update: the settings, with the recipe's keep patterns plus the fallback."""
        return {**self.settings, "keep": list(keep) + [g for g in self.fallback if g not in keep]}


def declared_space(runtime: str, precision: str, space: str | dict[str, dict] = "full") -> list[Variant]:
    """The variants for a target runtime ("onnxruntime" or "tensorrt") and precision.

    Args:
        runtime: the target's runtime.
        precision: the recipe's quantize precision (SmoothQuant applies to int8 only).
        space: "full", "quick", or an explicit {name: settings} mapping (tests, custom sweeps).
    """
    if isinstance(space, dict):
        return [Variant(name, dict(settings)) for name, settings in space.items()]
    table = CPU_SPACE if runtime == "onnxruntime" else TENSORRT_SPACE
    names = [n for n in table if space == "full" or n in QUICK]
    if runtime != "onnxruntime" and precision != "int8":
        names = ["modelopt-max"]
    return [Variant(n, dict(table[n])) for n in names]


def module_group(module: str) -> str:
    """The fallback unit a module belongs to: its name up to the first numbered block, else the module
    itself, e.g. "vision_tower.blocks.0.attn.q_proj" -> "vision_tower.blocks.0", "film" -> "film"."""
    atoms = module.split(".")
    for i, atom in enumerate(atoms):
        if atom.isnumeric():
            return ".".join(atoms[: i + 1])
    return module


def quantized_groups(decisions) -> list[str]:
    """The module groups with at least one quantized node or module, in graph order.

    A group that contains another (nodes directly in `vision_tower` next to `vision_tower.blocks.0`) is
    left out: a keep pattern on it would keep the inner groups too. Its own nodes stay quantized.
    """
    groups = []
    for d in decisions:
        if d.quantized and d.module:
            g = module_group(d.module)
            if g not in groups:
                groups.append(g)
    return [g for g in groups if not any(o.startswith(g + ".") for o in groups)]
