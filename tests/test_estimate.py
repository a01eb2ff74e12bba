"""Roofline estimate: FLOP and byte counts on small hand-built graphs, checked against hand arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from vlaedge.deploy.estimate import COMPUTE_EFFICIENCY, MEMORY_EFFICIENCY, RUNTIME_OVERHEAD_MB, estimate
from vlaedge.errors import VlaedgeError
from vlaedge.targets import get_target


def _model(nodes, inputs, outputs, inits):
    graph = h.make_graph(nodes, "g", inputs, outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _f(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def _w(name, shape, dtype=np.float32):
    return nh.from_array(np.zeros(shape, dtype), name)


def _only(est):
    assert len(est.ops) == 1
    return est.ops[0]


def test_matmul_fp16():
    m = _model(
        [h.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [_f("x", ["B", 64])],
        [_f("y", ["B", 32])],
        [_w("W", (64, 32))],
    )
    op = _only(estimate(m, "agx-orin-64gb", batch=2))
    assert op.flops == 2 * 2 * 64 * 32  # 2 * M * K * N, M = batch 2
    assert op.bytes == (2 * 64 + 64 * 32 + 2 * 32) * 2  # x, W, y in fp16
    assert op.precision == "fp16"


def test_batched_matmul_attention_scores():
    m = _model(
        [h.make_node("MatMul", ["q", "k"], ["s"])],
        [_f("q", [1, 4, 10, 16]), _f("k", [1, 4, 16, 10])],
        [_f("s", [1, 4, 10, 10])],
        [],
    )
    op = _only(estimate(m, "agx-orin-64gb"))
    assert op.flops == 2 * 4 * 10 * 10 * 16
    assert op.bytes == (640 + 640 + 400) * 2


def test_gemm_with_transposed_weight_and_bias():
    node = h.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)
    m = _model([node], [_f("x", [3, 8])], [_f("y", [3, 5])], [_w("W", (5, 8)), _w("b", (5,))])
    op = _only(estimate(m, "orin-nano-8gb"))
    assert op.flops == 2 * 3 * 8 * 5 + 3 * 5  # MACs x 2 + one add per output for the bias
    assert op.bytes == (24 + 40 + 5 + 15) * 2


def test_conv_with_groups_and_padding():
    node = h.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)
    m = _model([node], [_f("x", [1, 4, 8, 8])], [_f("y", [1, 6, 8, 8])], [_w("W", (6, 2, 3, 3))])
    op = _only(estimate(m, "agx-orin-64gb", default_precision="fp32"))
    assert op.flops == 2 * (6 * 8 * 8) * (2 * 3 * 3)  # each output: Cin/group * kh * kw MACs
    assert op.bytes == (4 * 64 + 6 * 2 * 9 + 6 * 64) * 4  # fp32 everywhere


def test_qdq_matmul_runs_int8_with_one_byte_operands():
    s, z = nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.array(0, np.int8), "z")
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        h.make_node("QuantizeLinear", ["W", "s", "z"], ["Wq"]),  # modelopt style: float weight + Q/DQ
        h.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wd"]),
        h.make_node("MatMul", ["xd", "Wd"], ["y"], name="mm"),
    ]
    m = _model(nodes, [_f("x", ["B", 64])], [_f("y", ["B", 32])], [_w("W", (64, 32)), s, z])
    est = estimate(m, "agx-orin-64gb")
    op = _only(est)  # Q/DQ cost nothing: fused
    assert op.precision == "int8" and op.flops == 2 * 64 * 32
    assert op.bytes == 64 * 1 + 64 * 32 * 1 + 32 * 2  # int8 activation and weight, fp16 output
    assert est.weights_bytes == 64 * 32  # deployed as int8
    t = get_target("agx-orin-64gb")
    compute = op.flops / (t.int8_tops * 1e12 * COMPUTE_EFFICIENCY)
    memory = op.bytes / (t.memory_bw_gbs * 1e9 * MEMORY_EFFICIENCY)
    assert op.ms == pytest.approx(max(compute, memory) * 1e3)


def test_weight_only_int8_keeps_fp16_math():
    s, z = nh.from_array(np.array(0.1, np.float32), "s"), nh.from_array(np.array(0, np.int8), "z")
    nodes = [
        h.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wd"]),
        h.make_node("MatMul", ["x", "Wd"], ["y"]),
    ]
    m = _model(nodes, [_f("x", [1, 64])], [_f("y", [1, 32])], [_w("Wq", (64, 32), np.int8), s, z])
    op = _only(estimate(m, "agx-orin-64gb"))
    assert op.precision == "w8" and op.bytes == 64 * 2 + 2048 + 32 * 2


def test_compute_bound_large_gemm_and_memory_verdict():
    m = _model(
        [h.make_node("MatMul", ["x", "W"], ["y"])],
        [_f("x", [4096, 4096])],
        [_f("y", [4096, 4096])],
        [_w("W", (4096, 4096))],
    )
    est = estimate(m, "orin-nano-4gb")
    t = get_target("orin-nano-4gb")
    assert est.ops[0].bound == "compute"
    assert est.latency_ms == pytest.approx(2 * 4096**3 / (t.fp16_tflops * 1e12 * COMPUTE_EFFICIENCY) * 1e3)
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


def test_cpu_target_refused():
    m = _model([h.make_node("Relu", ["x"], ["y"])], [_f("x", [1, 4])], [_f("y", [1, 4])], [])
    with pytest.raises(VlaedgeError, match="no tabulated peaks"):
        estimate(m, "cpu")
