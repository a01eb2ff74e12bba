"""Shape-faithful ONNX graphs of published models, built from their configs (no downloads, no weights).

Weights are external-data placeholders of the right shape and element type (never materialized: the
estimate reads shapes), so a 9B-parameter LLM costs a few MB of ONNX. Precisions per linear layer:
fp16 (plain), int8 (W8A8: Q/DQ on activation and int8 weight), fp8 (E4M3 activation Q/DQ + fp8 weight),
fp4 (NVFP4: fp4 activation and weight), w8 / w4 (weight-only int8 / int4, fp16 activations). The configs
and their sources are in benchmarks/published/README.md ("Architecture configs").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from onnx import TensorProto, helper

F = TensorProto.FLOAT
_ELEM = {
    "int8": TensorProto.INT8,
    "w8": TensorProto.INT8,
    "fp8": TensorProto.FLOAT8E4M3FN,
    "w4": TensorProto.INT4,
    "fp4": TensorProto.FLOAT4E2M1,
}
OPSET = 23  # FLOAT4E2M1 Q/DQ needs opset 23


@dataclass(frozen=True)
class Blocks:
    """A transformer stack: `layers` blocks of width d; `seq` new tokens attend to `kv` tokens (kv >= seq:
    the extra kv - seq tokens are a cache / prefix read as a graph input)."""

    layers: int
    d: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    gated: bool  # SwiGLU/GeGLU (gate, up, down) vs a plain 2-layer MLP
    seq: int
    kv: int
    prec: str = "fp16"  # linear layers
    ffn_prec: str | None = None  # MLP linears, when they differ (pi0.5 NVFP4 runs only the FFN in fp4)
    post_norm: bool = False  # BERT-style LayerNorm after the residual add


class Builder:
    """Accumulates nodes, placeholder initializers and inputs of one graph."""

    def __init__(self) -> None:
        self.nodes, self.inits, self.inputs, self.n = [], [], [], 0
        self.inits.append(helper.make_tensor("qscale", F, [], [0.1]))
        for name, elem in (
            ("z_int8", TensorProto.INT8),
            ("z_fp8", TensorProto.FLOAT8E4M3FN),
            ("z_fp4", TensorProto.FLOAT4E2M1),
        ):
            self.inits.append(helper.make_tensor(name, elem, [], [0]))

    def weight(self, dims: list[int], prec: str = "fp16") -> str:
        """A shape-only weight; through DequantizeLinear when stored quantized."""
        self.n += 1
        name = f"w{self.n}"
        t = TensorProto(
            name=name, data_type=_ELEM.get(prec, F), dims=dims, data_location=TensorProto.EXTERNAL
        )
        t.external_data.add(key="location", value="weights-not-materialized.bin")
        self.inits.append(t)
        return self.op("DequantizeLinear", [name, "qscale"]) if prec in _ELEM else name

    def vector(self, n: int) -> str:
        return self.weight([n])

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{op_type.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def quant(self, x: str, prec: str) -> str:
        """Activation Q/DQ for W8A8 / FP8 / FP4 linears (weight-only and fp16 read x as it is)."""
        zero = {"int8": "z_int8", "fp8": "z_fp8", "fp4": "z_fp4"}.get(prec)
        if zero is None:
            return x
        return self.op("DequantizeLinear", [self.op("QuantizeLinear", [x, "qscale", zero]), "qscale", zero])

    def linear(self, x: str, d_in: int, d_out: int, prec: str = "fp16", bias: bool = False) -> str:
        y = self.op("MatMul", [self.quant(x, prec), self.weight([d_in, d_out], prec)])
        return self.op("Add", [y, self.vector(d_out)]) if bias else y

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        s: int = 1,
        groups: int = 1,
        prec: str = "fp16",
        act: str | None = "Relu",
    ) -> str:
        w = self.weight([c_out, c_in // groups, k, k], prec)
        y = self.op(
            "Conv",
            [self.quant(x, prec), w, self.vector(c_out)],
            kernel_shape=[k, k],
            strides=[s, s],
            pads=[k // 2] * 4,
            group=groups,
        )
        if act == "SiLU":
            return self.op("Mul", [y, self.op("Sigmoid", [y])])
        return self.op(act, [y]) if act else y

    def norm(self, x: str, d: int) -> str:
        return self.op("LayerNormalization", [x, self.vector(d), self.vector(d)], axis=-1)

    def gelu(self, x: str) -> str:
        """The Erf form torch exports: x * 0.5 * (1 + erf(x / sqrt 2))."""
        half, one, r2 = self._scalar(0.5), self._scalar(1.0), self._scalar(1.4142135)
        return self.op(
            "Mul",
            [self.op("Mul", [x, self.op("Add", [self.op("Erf", [self.op("Div", [x, r2])]), one])]), half],
        )

    def _scalar(self, v: float) -> str:
        self.n += 1
        self.inits.append(helper.make_tensor(f"c{self.n}", F, [], [v]))
        return f"c{self.n}"

    def reshape(self, x: str, shape: list[int]) -> str:
        self.n += 1
        self.inits.append(helper.make_tensor(f"shape{self.n}", TensorProto.INT64, [len(shape)], shape))
        return self.op("Reshape", [x, f"shape{self.n}"])

    def graph_input(self, name: str, dims: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, F, dims))
        return name

    def model(self, out: str):
        graph = helper.make_graph(
            self.nodes, "g", self.inputs, [helper.make_tensor_value_info(out, F, None)], self.inits
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def blocks(g: Builder, x: str, b: Blocks, tag: str = "") -> str:
    """`b.layers` transformer blocks on x [1, seq, d]; attention is Q·Kᵀ -> scale -> Softmax -> ·V."""
    group, ffn = b.heads // b.kv_heads, b.ffn_prec or b.prec
    scale = g._scalar(b.head_dim**-0.5)
    for i in range(b.layers):
        h = x if b.post_norm else g.norm(x, b.d)
        q = g.linear(h, b.d, b.heads * b.head_dim, b.prec)
        kv = []
        for part in ("k", "v"):
            new = g.reshape(
                g.linear(h, b.d, b.kv_heads * b.head_dim, b.prec), [1, b.seq, b.kv_heads, b.head_dim]
            )
            new = g.op("Transpose", [new], perm=[0, 2, 1, 3])  # [1, kvh, seq, hd]
            if b.kv > b.seq:  # the cache / prefix of kv - seq tokens, then the new ones
                cache = g.graph_input(f"{tag}{part}{i}", [1, b.kv_heads, b.kv - b.seq, b.head_dim])
                new = g.op("Concat", [cache, new], axis=2)
            kv.append(new)
        qh = g.op(
            "Transpose", [g.reshape(q, [1, b.seq, b.kv_heads, group, b.head_dim])], perm=[0, 2, 3, 1, 4]
        )
        qh = g.reshape(qh, [1, b.kv_heads, group * b.seq, b.head_dim])  # query heads grouped per kv head
        scores = g.op("Mul", [g.op("MatMul", [qh, g.op("Transpose", [kv[0]], perm=[0, 1, 3, 2])]), scale])
        attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), kv[1]])
        attn = g.reshape(
            g.op(
                "Transpose",
                [g.reshape(attn, [1, b.kv_heads, group, b.seq, b.head_dim])],
                perm=[0, 3, 1, 2, 4],
            ),
            [1, b.seq, b.heads * b.head_dim],
        )
        x = g.op("Add", [x, g.linear(attn, b.heads * b.head_dim, b.d, b.prec)])
        if b.post_norm:
            x = g.norm(x, b.d)
        h = x if b.post_norm else g.norm(x, b.d)
        if b.gated:
            gate = g.linear(h, b.d, b.mlp, ffn)
            up = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), g.linear(h, b.d, b.mlp, ffn)])
        else:
            up = g.gelu(g.linear(h, b.d, b.mlp, ffn, bias=True))
        x = g.op("Add", [x, g.linear(up, b.mlp, b.d, ffn)])
        if b.post_norm:
            x = g.norm(x, b.d)
    return x


def transformer(
    b: Blocks, patch: tuple[int, int, int] | None = None, head: int | None = None, head_prec: str = "fp16"
):
    """ONNX of `b`. `patch` = (views, image side, patch size) prepends a patch-embedding conv per view
    (tokens of all views concatenated: seq must equal views x (side / patch)^2); `head` adds a final norm
    and a projection of the last token to `head` classes (an LM head)."""
    g = Builder()
    if patch:
        views, side, p = patch
        img = g.graph_input("image", [views, 3, side, side])
        x = g.op("Conv", [img, g.weight([b.d, 3, p, p])], strides=[p, p])
        x = g.op("Transpose", [g.reshape(x, [1, views, b.d, (side // p) ** 2])], perm=[0, 1, 3, 2])
        x = g.reshape(x, [1, b.seq, b.d])
    else:
        x = g.graph_input("x", [1, b.seq, b.d])
    x = blocks(g, x, b)
    if head:
        last = g.op("Slice", [x, _i64(g, [b.seq - 1]), _i64(g, [b.seq]), _i64(g, [1])])
        x = g.linear(g.norm(last, b.d), b.d, head, head_prec)
    return g.model(x)


def _i64(g: Builder, values: list[int]) -> str:
    g.n += 1
    g.inits.append(helper.make_tensor(f"i{g.n}", TensorProto.INT64, [len(values)], values))
    return f"i{g.n}"


def decode_step(
    layers: int,
    d: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    mlp: int,
    vocab: int,
    context: int,
    prec: str,
    head_prec: str = "fp16",
):
    """One batch-1 LLM decode step: 1 new token attending to `context` cached tokens, then the LM head."""
    b = Blocks(layers, d, heads, kv_heads, head_dim, mlp, True, 1, context + 1, prec)
    return transformer(b, head=vocab, head_prec=head_prec)


def with_prec(b: Blocks, prec: str, ffn_prec: str | None = None) -> Blocks:
    return replace(b, prec=prec, ffn_prec=ffn_prec)
