"""Peak memory per model, measured in a fresh process (issue 23 item 6, issue 25): the figure covers the
model's weights, does not depend on what was measured before it, and a `max_memory_mb` budget fails a
model that needs more."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vlaedge.check.gate import gate
from vlaedge.check.memory import METHOD, measure_in_fresh_process
from vlaedge.check.profile import graph_spec, profile, synth_feeds
from vlaedge.recipe import Budgets

WIDTH = 3200  # input width of both models
BIG, SMALL = 3200, 200  # output widths: 3200 x 3200 FP32 weights are 41 MB, 3200 x 200 2.6 MB
FAST = {"runs": 4, "warmup": 2, "threads": 1}


def _matmul_model(path, width: int, seed: int) -> int:
    """x [B, WIDTH] @ W [WIDTH, width]: returns the weight bytes."""
    w = np.random.default_rng(seed).standard_normal((WIDTH, width)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", width])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return w.nbytes


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    big, small = root / "big.onnx", root / "small.onnx"
    return big, _matmul_model(big, BIG, 0), small, _matmul_model(small, SMALL, 1)


def test_a_models_memory_covers_its_weights_in_a_fresh_process(models):
    big, weight_bytes, _, _ = models
    spec = graph_spec(big)
    record = measure_in_fresh_process("ort-cpu", big, spec, synth_feeds(spec.input_spec), 1, 2)
    assert record["method"] == METHOD == "fresh process"
    assert record["peak_rss_delta_mb"] * 2**20 >= weight_bytes, record
    # the three figures are each rounded to 0.01 MB, so their sum may be off by up to 0.015 MB
    assert record["process_peak_rss_mb"] >= record["baseline_rss_mb"] + record["peak_rss_delta_mb"] - 0.02


def test_memory_does_not_depend_on_the_order_of_measurement(models):
    """Big then small vs small then big in one profile each: every model's figure agrees within 10% + 3 MB
    (in-process, the second model of a pair reused what the first had freed)."""
    big, weight_bytes, small, _ = models
    first = {m.model: m.memory for m in profile([big, small], **FAST).models}
    second = {m.model: m.memory for m in profile([small, big], **FAST).models}
    for path in (str(big), str(small)):
        a, b = first[path]["peak_rss_delta_mb"], second[path]["peak_rss_delta_mb"]
        assert abs(a - b) <= 0.1 * max(a, b) + 3, (path, a, b)
        assert first[path]["method"] == "fresh process"
    assert first[str(big)]["peak_rss_delta_mb"] * 2**20 >= weight_bytes
    assert first[str(small)]["peak_rss_delta_mb"] < first[str(big)]["peak_rss_delta_mb"]


def test_a_memory_budget_fails_a_model_that_needs_more(models):
    from test_gate import make_report

    big, weight_bytes, _, _ = models
    measured = profile([big], **FAST).models[0].memory
    report = make_report()
    report["profile"]["models"][0]["memory"] = measured
    weights_mb = weight_bytes / 1e6
    tight = gate(report, Budgets(max_memory_mb=weights_mb / 2))
    assert [c.status for c in tight.checks] == ["fail"] and not tight
    assert "fresh process" in tight.checks[0].detail
    assert gate(report, Budgets(max_memory_mb=measured["peak_rss_delta_mb"] + 1))
