"""Estimate: FLOP and byte counts, fusion into kernels, shape handling, on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runner import run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from vlaedge.deploy.estimate import RUNTIME_OVERHEAD_MB, estimate, price
from vlaedge.deploy.estimate_fusion import FEW_CHANNELS, TILE, fuse, gemm_flops
from vlaedge.deploy.estimate_shapes import Graph, load_model
from vlaedge.errors import VlaedgeError
from vlaedge.targets import get_target


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = h.make_graph(nodes, "g", inputs, outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def _f(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def _w(name, shape, dtype=np.float32):
    return nh.from_array(np.zeros(shape, dtype), name)


def _only(est):
    assert len(est.kernels) == 1
    return est.kernels[0]


def _ms(flops, nbytes, target, precision="fp16"):
    t = get_target(target)
    e = t.efficiency
    peak = {"int8": t.int8_tops, "fp8": t.fp8_tflops, "fp4": t.fp4_tflops}.get(precision) or t.fp16_tflops
    compute = flops / (peak * 1e12 * e.compute(precision))
    memory = nbytes / (t.memory_bw_gbs * 1e9 * e.memory)
    return max(compute, memory, e.kernel_floor_us * 1e-6) * 1e3


def test_matmul_fp16_flops_bytes_and_time():
    m = _model(
        [h.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [_f("x", ["B", 64])],
        [_f("y", ["B", 64])],
        [_w("W", (64, 64))],
    )
    est = estimate(m, "agx-orin-64gb", batch=2)
    k = _only(est)
    assert k.flops == 2 * 2 * 64 * 64  # 2 * M * K * N, M = batch 2
    assert k.bytes == (2 * 64 + 64 * 64 + 2 * 64) * 2  # x, W, y in fp16
    assert k.precision == "fp16" and k.kind == "gemm"
    fixed = get_target("agx-orin-64gb").efficiency.fixed_ms
    assert est.latency_ms == pytest.approx(fixed + _ms(k.flops, k.bytes, "agx-orin-64gb"))


def test_epilogue_fusion_bias_activation_residual():
    nodes = [
        h.make_node("MatMul", ["x", "W"], ["y"]),
        h.make_node("Add", ["y", "b"], ["z"]),
        h.make_node("Relu", ["z"], ["r"]),
        h.make_node("Add", ["r", "x"], ["out"]),  # residual: reads x again, nothing in between is written
    ]
    m = _model(nodes, [_f("x", [8, 64])], [_f("out", [8, 64])], [_w("W", (64, 64)), _w("b", (64,))])
    k = _only(estimate(m, "agx-orin-64gb"))
    assert k.ops == "MatMul+Add+Relu"
    assert k.bytes == (8 * 64 + 64 * 64 + 64 + 8 * 64) * 2  # x (read once), W, b, out


def test_decomposed_layernorm_is_one_memory_pass():
    nodes = [
        h.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        h.make_node("Sub", ["x", "mu"], ["d"]),
        h.make_node("Mul", ["d", "d"], ["d2"]),
        h.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        h.make_node("Add", ["var", "eps"], ["ve"]),
        h.make_node("Sqrt", ["ve"], ["sd"]),
        h.make_node("Div", ["d", "sd"], ["n"]),
        h.make_node("Mul", ["n", "gamma"], ["y"]),
    ]
    inits = [nh.from_array(np.array(1e-5, np.float32), "eps"), _w("gamma", (256,))]
    m = _model(nodes, [_f("x", [16, 256])], [_f("y", [16, 256])], inits)
    k = _only(estimate(m, "orin-nano-8gb"))
    assert k.kind == "norm" and k.bytes == (16 * 256 * 2 + 256) * 2  # read x, gamma; write y


def _attention_graph(seq=128, heads=4, hd=32):
    nodes = [
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        h.make_node("MatMul", ["q", "kt"], ["s"]),
        h.make_node("Mul", ["s", "scale"], ["ss"]),
        h.make_node("Softmax", ["ss"], ["p"], axis=-1),
        h.make_node("MatMul", ["p", "v"], ["o"]),
    ]
    qkv = [_f(n, [1, heads, seq, hd]) for n in "qkv"]
    scale = nh.from_array(np.array(hd**-0.5, np.float32), "scale")
    return _model(nodes, qkv, [_f("o", [1, heads, seq, hd])], [scale])


def test_attention_is_one_fused_kernel():
    seq, heads, hd = 128, 4, 32
    k = _only(estimate(_attention_graph(seq, heads, hd), "agx-thor"))
    assert k.kind == "attention" and k.ops == "MatMul+Mul+Softmax"  # the Transpose of K is free
    assert k.flops == 2 * (2 * heads * seq * seq * hd)  # QKᵀ and P·V
    assert k.bytes == 4 * heads * seq * hd * 2  # q, k, v read and o written; scores never stored


def test_kernel_floor_and_fixed_cost():
    m = _model([h.make_node("Relu", ["x"], ["y"])], [_f("x", [1, 4])], [_f("y", [1, 4])], [])
    est = estimate(m, "orin-nano-8gb-super")
    eff = get_target("orin-nano-8gb-super").efficiency
    assert _only(est).bound == "floor"
    assert est.latency_ms == pytest.approx(eff.fixed_ms + eff.kernel_floor_us / 1e3)


def test_conv_with_groups_and_padding():
    node = h.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)
    m = _model([node], [_f("x", [1, 4, 8, 8])], [_f("y", [1, 6, 8, 8])], [_w("W", (6, 2, 3, 3))])
    k = _only(estimate(m, "agx-orin-64gb", default_precision="fp32"))
    assert k.flops == 2 * (6 * 8 * 8) * (2 * 3 * 3)  # each output: Cin/group * kh * kw MACs
    assert k.bytes == (4 * 64 + 6 * 2 * 9 + 6 * 64) * 4  # fp32 everywhere


def test_narrow_conv_pays_for_whole_tensor_core_tiles():
    def conv(c_out):
        node = h.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        m = _model([node], [_f("x", [1, 256, 256, 256])], [_f("y", [1, c_out, 256, 256])],
                   [_w("W", (c_out, 256, 3, 3))])
        return _only(estimate(m, "agx-orin-64gb"))

    narrow, full = conv(TILE // 8), conv(TILE)
    assert narrow.flops == full.flops / 8 and narrow.bound == full.bound == "compute"
    assert narrow.ms == pytest.approx(full.ms)  # the tensor cores compute whole tiles


def _conv_graph(c_in, c_out=TILE, side=64, k=3):
    node = h.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4)
    return _model([node], [_f("x", [1, c_in, side, side])], [_f("y", [1, c_out, side, side])],
                  [_w("W", (c_out, c_in, k, k))])


def test_conv_reduction_is_rounded_per_filter_tap():
    def tile_flops(c_in):
        g = Graph(load_model(_conv_graph(c_in), 1, {}, False)[0])
        return gemm_flops(g.nodes[0], g, TILE)

    pixels = 64 * 64
    # 16 input channels fill a quarter of each K-tile, once per each of the 9 taps: as costly as 64
    assert tile_flops(16) == tile_flops(TILE) == 2 * pixels * TILE * 9 * TILE
    # a first conv on 3 channels packs its 27 taps x channels into one tile (few-channels kernels)
    assert FEW_CHANNELS >= 3 and tile_flops(3) == 2 * pixels * TILE * TILE


def _residual_mlp():
    """x -> MatMul -> +bias -> Relu -> +x (residual) -> MatMul: one epilogue chain between two GEMMs."""
    nodes = [
        h.make_node("MatMul", ["x", "W"], ["y"]),
        h.make_node("Add", ["y", "b"], ["z"]),
        h.make_node("Relu", ["z"], ["r"]),
        h.make_node("Add", ["r", "x"], ["o"]),
        h.make_node("MatMul", ["o", "W2"], ["out"]),
    ]
    inits = [_w("W", (64, 64)), _w("b", (64,)), _w("W2", (64, 64))]
    return Graph(load_model(_model(nodes, [_f("x", [8, 64])], [_f("out", [8, 64])], inits), 1, {}, False)[0])


def test_fuse_without_epilogues_prices_pytorch_eager():
    g, act, w = _residual_mlp(), 8 * 64, 64 * 64
    fused, eager = fuse(g, "fp16"), fuse(g, "fp16", epilogues=False)
    assert [k.kind for k in fused] == ["gemm", "gemm"]
    assert [k.op_types for k in fused][0] == ["MatMul", "Add", "Relu", "Add"]
    assert [k.kind for k in eager] == ["gemm", "pointwise", "gemm"]  # the chain is one torch op, unfused
    assert eager[1].op_types == ["Add", "Relu", "Add"] and eager[1].other_flops == 3 * act
    assert [k.bytes for k in fused] == [(act + w + 64 + act) * 2, (act + w + act) * 2]
    # eager writes y and reads it back, and reads x a second time for the residual
    assert sum(k.bytes for k in eager) - sum(k.bytes for k in fused) == 3 * act * 2
    target = get_target("agx-orin-64gb")
    floor = target.efficiency.kernel_floor_us / 1e3
    assert [k.bound for k in price(eager, target)] == ["floor"] * 3  # tiny: every kernel pays the floor
    assert sum(k.ms for k in price(fused, target)) == pytest.approx(2 * floor)
    assert sum(k.ms for k in price(eager, target)) == pytest.approx(3 * floor)


def test_fuse_without_epilogues_keeps_attention_one_kernel():
    g = Graph(load_model(_attention_graph(), 1, {}, False)[0])
    (k,) = fuse(g, "fp16", epilogues=False)  # scaled_dot_product_attention: scale and softmax inside
    assert k.kind == "attention" and k.op_types == ["MatMul", "Mul", "Softmax", "MatMul"]
    assert k.bytes == fuse(g, "fp16")[0].bytes == 4 * 4 * 128 * 32 * 2  # q, k, v read, o written


def _qdq_matmul(elem, zero, opset=17):
    s, z = nh.from_array(np.array(0.1, np.float32), "s"), h.make_tensor("z", elem, [], [0])
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        h.make_node("QuantizeLinear", ["W", "s", "z"], ["Wq"]),  # modelopt style: float weight + Q/DQ
        h.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wd"]),
        h.make_node("MatMul", ["xd", "Wd"], ["y"], name="mm"),
    ]
    return _model(nodes, [_f("x", ["B", 64])], [_f("y", ["B", 64])], [_w("W", (64, 64)), s, z], opset)


def test_qdq_matmul_runs_int8_with_one_byte_operands():
    est = estimate(_qdq_matmul(T.INT8, 0), "agx-orin-64gb")
    k = _only(est)  # Q/DQ cost nothing: fused
    assert k.precision == "int8" and k.flops == 2 * 64 * 64
    assert k.bytes == 64 * 1 + 64 * 64 * 1 + 64 * 2  # int8 activation and weight, fp16 output
    assert est.weights_bytes == 64 * 64  # deployed as int8


def test_fp4_on_thor_runs_at_the_fp4_peak():
    est = estimate(_qdq_matmul(T.FLOAT4E2M1, 0, opset=23), "agx-thor")
    k = _only(est)
    assert k.precision == "fp4"
    assert k.bytes == 64 * 0.5 + 64 * 64 * 0.5 + 64 * 2
    assert est.weights_bytes == 64 * 64 * 0.5
    assert k.ms == pytest.approx(_ms(2 * 64 * 64, k.bytes, "agx-thor", "fp4"))


def test_weight_only_int8_keeps_fp16_math():
    s, z = nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.array(0, np.int8), "z")
    nodes = [
        h.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wd"]),
        h.make_node("MatMul", ["x", "Wd"], ["y"]),
    ]
    m = _model(nodes, [_f("x", [1, 64])], [_f("y", [1, 32])], [_w("Wq", (64, 32), np.int8), s, z])
    k = _only(estimate(m, "agx-orin-64gb"))
    assert k.precision == "w8" and k.bytes == 64 * 2 + 2048 + 32 * 2


def test_memory_verdict():
    m = _model(
        [h.make_node("MatMul", ["x", "W"], ["y"])],
        [_f("x", [4096, 4096])],
        [_f("y", [4096, 4096])],
        [_w("W", (4096, 4096))],
    )
    est = estimate(m, "orin-nano-4gb")
    assert est.kernels[0].bound == "compute"
    assert est.weights_bytes == 4096 * 4096 * 2
    assert est.peak_activation_bytes == 4096 * 4096 * 2  # y (x is a graph input, not counted)
    assert est.memory_bytes == est.weights_bytes + est.peak_activation_bytes + RUNTIME_OVERHEAD_MB * 1e6
    assert est.fits


def test_does_not_fit():
    m = _model(
        [h.make_node("MatMul", ["x", "W"], ["y"])],
        [_f("x", [1, 65536])],
        [_f("y", [1, 32768])],
        [nh.from_array(np.zeros((1, 1), np.float32), "W")],
    )
    m.graph.initializer[0].dims[:] = [65536, 32768]  # 4 GiB of fp16 weights, shapes only (no data needed)
    m.graph.initializer[0].ClearField("raw_data")
    est = estimate(m, "orin-nano-4gb")
    assert not est and "DOES NOT FIT" in est.table()


def _conv_on(shape):
    node = h.make_node("Conv", ["image", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    # the output's dims are symbolic (as an export with lost shapes has them): a valid ONNX graph
    return _model([node, h.make_node("Relu", ["y"], ["r"])], [_f("image", shape)],
                  [_f("r", ["B", 16, "H2", "W2"])], [_w("W", (16, 3, 3, 3))])


def test_unknown_input_dims_are_refused_naming_them():
    with pytest.raises(VlaedgeError) as e:
        estimate(_conv_on(["B", 3, "H", "W"]), "orin-nano-8gb")
    assert e.value.message == "estimate: input dimensions without a value: image[2]=H, image[3]=W"
    assert "--input-shape" in e.value.hint


def test_input_shape_override_and_allow_unknown():
    full = estimate(_conv_on(["B", 3, "H", "W"]), "orin-nano-8gb", input_shapes=["image=1x3x640x640"])
    assert full.kernels[0].flops == 2 * 16 * 640 * 640 * 27  # 2 x MACs; the Relu is its epilogue
    loose = estimate(_conv_on(["B", 3, "H", "W"]), "orin-nano-8gb", allow_unknown_dims=True)
    assert loose.latency_ms < full.latency_ms and "image[2]=H" in loose.warnings[0]
    with pytest.raises(VlaedgeError, match="not graph inputs"):
        estimate(_conv_on([1, 3, 8, 8]), "orin-nano-8gb", input_shapes={"img": (1, 3, 8, 8)})
    with pytest.raises(VlaedgeError, match="is not NAME=DxDx"):
        estimate(_conv_on([1, 3, 8, 8]), "orin-nano-8gb", input_shapes=["image=1x3xHx8"])


def test_tensors_whose_shape_inference_lost_are_refused():
    nodes = [  # NonZero's output length depends on the data: everything after it has an unknown dim
        h.make_node("NonZero", ["x"], ["idx"]),
        h.make_node("Cast", ["idx"], ["fidx"], to=T.FLOAT),
        h.make_node("Transpose", ["fidx"], ["rows"]),
        h.make_node("MatMul", ["rows", "W"], ["y"]),
    ]
    m = _model(nodes, [_f("x", [4, 8])], [_f("y", None)], [_w("W", (2, 64))])
    with pytest.raises(VlaedgeError) as e:
        estimate(m, "agx-orin-64gb")
    assert "unknown dimensions" in e.value.message and "rows" in e.value.message
    assert estimate(m, "agx-orin-64gb", allow_unknown_dims=True).warnings


def test_power_mode_slows_compute_bound_work():
    m = _model(
        [h.make_node("MatMul", ["x", "W"], ["y"])],
        [_f("x", [2048, 2048])],
        [_f("y", [2048, 2048])],
        [_w("W", (2048, 2048))],
    )
    maxn, low = estimate(m, "agx-orin-64gb"), estimate(m, "agx-orin-64gb-15w")
    assert low.latency_ms > 5 * maxn.latency_ms


def test_cpu_target_refused():
    m = _model([h.make_node("Relu", ["x"], ["y"])], [_f("x", [1, 4])], [_f("y", [1, 4])], [])
    with pytest.raises(VlaedgeError, match="no tabulated peaks"):
        estimate(m, "cpu")


def test_cli_refuses_unknown_dims_then_estimates_with_an_override(tmp_path, capsys, monkeypatch):
    import onnx

    path = tmp_path / "lost.onnx"
    onnx.save(_conv_on(["B", 3, "H", "W"]), path)
    code, out = run_cli(["estimate", path, "--target", "orin-nano-8gb-super"], capsys, monkeypatch)
    assert code == 2 and "image[2]=H, image[3]=W" in out
    args = ["estimate", path, "--target", "orin-nano-8gb-super", "--input-shape", "image=1x3x640x640"]
    code, out = run_cli([*args, "--json", tmp_path / "e.json"], capsys, monkeypatch)
    assert code == 0 and "estimated latency" in out and (tmp_path / "e.json").exists()


@pytest.mark.parametrize("steps", [1, 4, 10])
def test_weights_shared_by_unrolled_steps_count_once(steps):
    # the legacy exporter's unrolled Euler loop: step 0 reads W itself, each later step an Identity of it,
    # and the Identity nodes all come first in graph order (live from the start if they were activations)
    width = 256
    feeds = [f"W_{k}" for k in range(1, steps)]
    nodes = [h.make_node("Identity", ["W"], [f], name=f"id{k}") for k, f in enumerate(feeds, 1)]
    prev = "x"
    for k, w in enumerate(["W", *feeds]):
        nodes.append(h.make_node("MatMul", [prev, w], [f"h{k}"], name=f"mm{k}"))
        prev = f"h{k}"
    nodes.append(h.make_node("Identity", [prev], ["y"]))
    m = _model(nodes, [_f("x", ["B", width])], [_f("y", ["B", width])], [_w("W", (width, width))])
    est = estimate(m, "agx-orin-64gb", batch=1)
    assert est.weights_bytes == width * width * 2  # once, in fp16
    assert est.peak_activation_bytes <= 2 * width * 2  # one step's input and output, never a copy of W
    assert len(est.kernels) == steps and all(k.kind == "gemm" for k in est.kernels)
    assert all(k.bytes == (width + width * width + width) * 2 for k in est.kernels)  # W read every step
