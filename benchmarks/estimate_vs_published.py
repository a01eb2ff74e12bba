"""How far is `vlaedge estimate` from published Jetson latencies?

Rebuilds the compute graphs of models with published Jetson AGX Orin latencies (FACTS.md) as ONNX,
shape-faithful (layer counts, widths, heads, token counts from the models' public configs) with weights
as shapes only (external-data placeholders: a 7B model cannot be exported on this machine, and the
estimate reads shapes, not values), estimates each stage on the target and compares the sum with the
published number. No downloads.

Run:  .venv/bin/python benchmarks/estimate_vs_published.py
Writes benchmarks/results/estimate_vs_published.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from onnx import TensorProto, helper

from vlaedge.deploy.estimate import COMPUTE_EFFICIENCY, MEMORY_EFFICIENCY, estimate

OUT = Path(__file__).parent / "results" / "estimate_vs_published.md"
F = TensorProto.FLOAT


@dataclass
class Blocks:
    """A transformer stack: `layers` blocks of width d on `seq` new tokens attending to `kv` tokens."""

    name: str
    layers: int
    d: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    gated: bool  # SwiGLU/GeGLU (gate + up + down) vs plain 2-layer MLP
    seq: int
    kv: int
    int8: bool = False  # Q/DQ (W8A8) on every linear layer


class _Builder:
    def __init__(self, int8: bool):
        self.nodes, self.inits, self.inputs, self.n, self.int8 = [], [], [], 0, int8
        self._scale = self._const("qscale", [])
        self._zero = helper.make_tensor("qzero", TensorProto.INT8, [], [0])
        self.inits.append(self._zero)

    def _const(self, name: str, dims: list[int]) -> str:
        if dims:  # shape-only weight: external data that is never read
            t = TensorProto(name=name, data_type=F, dims=dims, data_location=TensorProto.EXTERNAL)
            t.external_data.add(key="location", value="weights-not-materialized.bin")
        else:
            t = helper.make_tensor(name, F, [], [1.0])
        self.inits.append(t)
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{op_type.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def qdq(self, x: str) -> str:
        return self.op(
            "DequantizeLinear", [self.op("QuantizeLinear", [x, "qscale", "qzero"]), "qscale", "qzero"]
        )

    def linear(self, x: str, d_in: int, d_out: int) -> str:
        w = self._const(f"w_{self.n}_{d_in}x{d_out}", [d_in, d_out])
        if self.int8:
            x, w = self.qdq(x), self.qdq(w)
        return self.op("MatMul", [x, w])

    def norm(self, x: str, d: int) -> str:
        return self.op("LayerNormalization", [x, self._const(f"ln_{self.n}", [d])], axis=-1)

    def reshape(self, x: str, shape: list[int]) -> str:
        s = f"shape_{self.n}"
        self.inits.append(helper.make_tensor(s, TensorProto.INT64, [len(shape)], shape))
        return self.op("Reshape", [x, s])

    def graph_input(self, name: str, dims: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, F, dims))
        return name

    def model(self, out: str):
        graph = helper.make_graph(
            self.nodes, "g", self.inputs, [helper.make_tensor_value_info(out, F, None)], self.inits
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def transformer(b: Blocks, patch: tuple[int, int] | None = None, head: int | None = None):
    """ONNX of `b`; `patch` = (image side, patch size) prepends a patch-embedding conv; `head` adds an
    output projection of the last token to `head` classes (an LM head)."""
    g = _Builder(b.int8)
    if patch:
        side, p = patch
        img = g.graph_input("image", [1, 3, side, side])
        x = g.op("Conv", [img, g._const("patch_w", [b.d, 3, p, p])], strides=[p, p])
        x = g.op("Transpose", [g.reshape(x, [1, b.d, (side // p) ** 2])], perm=[0, 2, 1])
    else:
        x = g.graph_input("x", [1, b.seq, b.d])
    group = b.heads // b.kv_heads
    for i in range(b.layers):
        h = g.norm(x, b.d)
        q = g.linear(h, b.d, b.heads * b.head_dim)
        g.linear(h, b.d, b.kv_heads * b.head_dim)  # k and v projections of the new tokens
        g.linear(h, b.d, b.kv_heads * b.head_dim)
        kt = g.graph_input(f"k{i}", [1, b.kv_heads, b.head_dim, b.kv])  # keys of all kv tokens (cache)
        v = g.graph_input(f"v{i}", [1, b.kv_heads, b.kv, b.head_dim])
        qh = g.reshape(q, [1, b.kv_heads, group * b.seq, b.head_dim])  # query heads grouped per kv head
        attn = g.op("MatMul", [g.op("Softmax", [g.op("MatMul", [qh, kt])], axis=-1), v])
        o = g.linear(g.reshape(attn, [1, b.seq, b.heads * b.head_dim]), b.heads * b.head_dim, b.d)
        x = g.op("Add", [x, o])
        h = g.norm(x, b.d)
        if b.gated:
            gate = g.linear(h, b.d, b.mlp)
            up = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), g.linear(h, b.d, b.mlp)])
        else:
            up = g.linear(h, b.d, b.mlp)
            up = g.op("Mul", [up, g.op("Sigmoid", [up])])
        x = g.op("Add", [x, g.linear(up, b.mlp, b.d)])
    if head:
        last = g.op("Slice", [x, _i64(g, "s0", [b.seq - 1]), _i64(g, "s1", [b.seq]), _i64(g, "ax", [1])])
        x = g.linear(g.norm(last, b.d), b.d, head)
    return g.model(x)


def _i64(g: _Builder, name: str, values: list[int]) -> str:
    g.inits.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
    return name


def _ms(model, target: str, precision: str = "fp16") -> float:
    return estimate(model, target, default_precision=precision).latency_ms


def openvla(target: str) -> tuple[float, list[str]]:
    """OpenVLA-7B: DINOv2 ViT-L/14 + SigLIP So400m/14 at 224 (256 patches each), projector, Llama-2-7B
    prefill of ~277 tokens, then 6 more decode steps for its 7 action tokens."""
    dino = Blocks("dinov2-L", 24, 1024, 16, 16, 64, 4096, False, 256, 256)
    siglip = Blocks("siglip-so400m", 27, 1152, 16, 16, 72, 4304, False, 256, 256)
    prefill = Blocks("llama2-7b prefill", 32, 4096, 32, 32, 128, 11008, True, 277, 277)
    decode = Blocks("llama2-7b decode", 32, 4096, 32, 32, 128, 11008, True, 1, 281)
    proj = _Builder(False)
    x = proj.graph_input("x", [1, 256, 2176])
    x = proj.linear(proj.linear(proj.linear(x, 2176, 8704), 8704, 4096), 4096, 4096)
    parts = {
        "DINOv2 ViT-L/14": _ms(transformer(dino, (224, 14)), target),
        "SigLIP So400m/14": _ms(transformer(siglip, (224, 14)), target),
        "projector": _ms(proj.model(x), target),
        "Llama-2-7B prefill (277 tokens)": _ms(transformer(prefill, head=32000), target),
        "Llama-2-7B decode x6": 6 * _ms(transformer(decode, head=32000), target),
    }
    return sum(parts.values()), [f"{k} {v:.1f} ms" for k, v in parts.items()]


def pi05(target: str, int8: bool) -> tuple[float, list[str]]:
    """pi0.5 (openpi defaults): 3 camera images through SigLIP So400m/14 at 224 (768 tokens) + a 200-token
    padded prompt through Gemma-2B (18 layers, width 2048, MQA, GeGLU 16384), then 10 flow-matching steps
    of the 300M action expert (width 1024, GeGLU 4096) on a 50-action chunk attending to prefix + itself."""
    siglip = Blocks("siglip", 27, 1152, 16, 16, 72, 4304, False, 256, 256, int8)
    prefix = Blocks("gemma-2b", 18, 2048, 8, 1, 256, 16384, True, 968, 968, int8)
    expert = Blocks("expert", 18, 1024, 8, 1, 256, 4096, True, 50, 1018, int8)
    parts = {
        "3 x SigLIP So400m/14": 3 * _ms(transformer(siglip, (224, 14)), target),
        "Gemma-2B prefix (968 tokens)": _ms(transformer(prefix), target),
        "action expert x10 steps": 10 * _ms(transformer(expert), target),
    }
    return sum(parts.values()), [f"{k} {v:.1f} ms" for k, v in parts.items()]


# (model, target, published ms, source, estimator)
CASES = [
    (
        "OpenVLA-7B, FP16",
        "agx-orin-64gb",
        840.0,
        "FACTS.md (OpenVLA-7B on AGX Orin 64GB: 840 ms FP16)",
        lambda t: openvla(t),
    ),
    (
        "pi0.5, BF16",
        "agx-orin-64gb",
        1000 / 5.2,
        "FACTS.md (pi0.5 on AGX Orin: 5.2 Hz BF16)",
        lambda t: pi05(t, False),
    ),
    (
        "pi0.5, INT8 W8A8",
        "agx-orin-64gb",
        1000 / 8.0,
        "FACTS.md (pi0.5 on AGX Orin: 8 Hz INT8 W8A8)",
        lambda t: pi05(t, True),
    ),
]


def main() -> None:
    start = time.perf_counter()
    rows, details = [], []
    for name, target, published, source, fn in CASES:
        est, parts = fn(target)
        err = (est - published) / published
        rows.append(f"| {name} | {target} | {published:.0f} | {est:.0f} | {err:+.0%} | {source} |")
        details.append(f"- {name}: " + "; ".join(parts))
        print(f"{name:<20} published {published:7.1f} ms  estimate {est:7.1f} ms  error {err:+.0%}")
    text = "\n".join(
        [
            "# vlaedge estimate vs published Jetson latencies",
            "",
            f"Command: `.venv/bin/python benchmarks/estimate_vs_published.py` ({time.strftime('%Y-%m-%d')}, "
            f"{time.perf_counter() - start:.0f} s). Efficiency factors: compute {COMPUTE_EFFICIENCY} of the "
            f"dense tensor-core peak, memory {MEMORY_EFFICIENCY} of datasheet bandwidth; non-quantized "
            "ops in fp16.",
            "",
            "| model | target | published ms | estimate ms | error | published source |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Per stage:",
            *details,
            "",
            "Graphs are rebuilt from the models' public configurations (layer counts, widths, heads, token",
            "counts), shapes only; the published runs used their own runtimes (not necessarily TensorRT),",
            "prompt",
            "lengths and power modes, which the estimate does not know. Treat the error as the estimate's",
            "uncertainty on large VLAs, not as a calibration: measure on the device before deciding.",
            "",
        ]
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
