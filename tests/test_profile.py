"""Latency profiling: statistics, interleaved comparisons, feeds from the graph, file size with external
data, memory, Jetson telemetry hooks, and the `vlaedge profile` command (local and --remote)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import numpy as np
import pytest
from cli_runner import run_cli

from vlaedge.check.host import LoadProbe, load_warnings
from vlaedge.check.profile import (
    BLOCK,
    LatencyStats,
    graph_spec,
    model_file_bytes,
    model_parameter_count,
    profile,
    synth_feeds,
)
from vlaedge.errors import VlaedgeError

FAST = {"runs": 12, "warmup": 2, "threads": 1}


def test_latency_stats_are_ordered_percentiles_of_the_samples():
    samples = list(np.arange(1, 101, dtype=float))  # 1 .. 100 ms
    s = LatencyStats.from_samples(samples)
    assert (s.runs, s.min_ms, s.max_ms) == (100, 1.0, 100.0)
    assert (
        s.median_ms == pytest.approx(50.5)
        and s.p90_ms == pytest.approx(90.1)
        and s.p99_ms == pytest.approx(99.01)
    )


def test_graph_spec_and_synth_feeds_follow_the_onnx_inputs(tiny_run):
    spec = graph_spec(tiny_run.onnx)
    by_name = {s.name: s for s in spec.input_spec}
    assert by_name["image"].shape == ("B", 3, 32, 32) and by_name["image"].dtype == "uint8"
    assert by_name["instruction_ids"].dtype == "int64" and by_name["state"].dtype == "float32"
    feeds = synth_feeds(spec.input_spec)
    assert feeds["image"].shape == (1, 3, 32, 32) and feeds["image"].dtype == np.uint8
    assert feeds["instruction_ids"].min() >= 0 and feeds["instruction_ids"].max() <= 1
    assert spec.output_names == ("actions",)


def test_profile_of_a_bare_onnx_reports_latency_rate_memory_size_and_host(tiny_run):
    report = profile([tiny_run.onnx], control_hz=10, **FAST)
    assert report and len(report.models) == 1 and not report.interleaved
    m = report.models[0]
    lat = m.latency
    assert lat.runs == 12 and len(lat.samples_ms) == 12
    assert 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms
    assert m.rate["chunk"] == 4  # from the graph's output shape [B, 4, 3]
    assert m.rate["actions_per_s"] == pytest.approx(4 * m.rate["inferences_per_s"])
    assert m.rate["realtime_margin"] == pytest.approx(400.0 / lat.p99_ms)  # 4 actions at 10 Hz = 400 ms
    assert m.file_bytes == tiny_run.onnx.stat().st_size
    assert m.memory["peak_rss_delta_mb"] > 0 and m.memory["method"] == "fresh process"
    assert report.host["cores"] >= 1 and report.host["versions"]["onnxruntime"] and report.threads == 1
    assert "median" in report.table()


def test_interleaving_runs_each_model_in_settled_turns():
    """Models alternate in turns (BLOCK timed runs after SETTLE untimed ones), not run by run: run by
    run, the previous model's spinning runtime threads slowed the next one (see _timed_round_robin)."""
    from vlaedge.check.profile import BLOCK, SETTLE, _timed_round_robin

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def infer(self, feeds):
            calls.append(self.name)

    runs = BLOCK + 5
    samples, stage_samples = _timed_round_robin([Fake("a"), Fake("b")], {}, runs)
    assert [len(x) for x in samples] == [runs, runs] and stage_samples == [[], []]  # no stage plans
    turn = SETTLE + BLOCK
    assert calls[:turn] == ["a"] * turn and calls[turn:2 * turn] == ["b"] * turn
    assert calls[2 * turn:] == ["b"] * (SETTLE + 5) + ["a"] * (SETTLE + 5)  # second round: b first
    assert len(calls) == 2 * runs + 4 * SETTLE


def test_interleaved_comparison_gives_ratios_to_the_first_model(tiny_run, tmp_path):
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_run.onnx.read_bytes())
    report = profile([tiny_run.onnx, copy], policy=tiny_run.policy, **FAST)
    assert report.interleaved and len(report.models) == 2
    (c,) = report.comparisons
    assert c["baseline"] == str(tiny_run.onnx) and c["model"] == str(copy)
    assert c["median_ratio"] == pytest.approx(
        report.models[1].latency.median_ms / report.models[0].latency.median_ms
    )
    assert all(m.latency.runs == 12 for m in report.models)


def test_a_spent_time_box_stops_the_rounds_alike_for_every_model_and_says_so(tiny_run, tmp_path):
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_run.onnx.read_bytes())
    report = profile([tiny_run.onnx, copy], policy=tiny_run.policy, runs=200, warmup=5, threads=1,
                     max_seconds=1e-9)  # spent by the first run: one round of BLOCK runs, one warm-up run
    assert [m.latency.runs for m in report.models] == [BLOCK, BLOCK]
    assert (report.runs, report.runs_requested, report.warmup) == (BLOCK, 200, 1)
    assert f"{BLOCK} timed runs (of 200 asked: the 1e-09 s time box was spent) after 1 warm-up" in (
        report.table())
    unboxed = profile([tiny_run.onnx], policy=tiny_run.policy, runs=25, warmup=2, threads=1, max_seconds=600)
    assert (unboxed.runs, unboxed.warmup) == (25, 2) and "asked" not in unboxed.table()


def test_every_profile_records_the_machine_load(tiny_run):
    report = profile([tiny_run.onnx], policy=tiny_run.policy, **FAST)
    load = report.load
    assert load["cores"] >= 1 and load["window_s"] > 0 and isinstance(load["warnings"], list)
    assert load["busy_others_share"] is None or 0 <= load["busy_others_share"] <= 1
    assert "machine load: load average" in report.table()


def test_load_warnings_name_what_is_high():
    quiet = {"loadavg_1m_before": 0.5, "cores": 2, "busy_others_share": 0.05, "steal_share": 0.0}
    assert load_warnings(quiet) == []
    busy = {"loadavg_1m_before": 5.0, "cores": 2, "busy_others_share": 0.6, "steal_share": 0.2}
    warnings = load_warnings(busy)
    assert len(warnings) == 3
    assert "other processes used 60%" in warnings[0] and "steal 20%" in warnings[1]
    assert "load average 5.00 on 2 cores" in warnings[2]
    assert load_warnings({"cores": 2, "busy_others_share": None, "steal_share": None}) == []


def test_the_load_probe_sees_this_process_cpu_as_its_own():
    probe = LoadProbe()
    x = 0
    for i in range(3_000_000):  # ~0.2 s of this process's own CPU time
        x += i
    load = probe.stop()
    if load["busy_others_share"] is not None:  # Linux: our own busy loop is not counted as "others"
        assert load["busy_others_share"] < 0.9


def test_parameter_count_counts_a_quantized_weight_once(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 8), np.int8), "w")
    scale = numpy_helper.from_array(np.ones(8, np.float32), "s")
    zero = numpy_helper.from_array(np.zeros(8, np.int8), "z")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=1),
             helper.make_node("MatMul", ["x", "wf"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [w, scale, zero, bias])
    onnx.save(helper.make_model(graph), tmp_path / "q.onnx")
    assert model_parameter_count(tmp_path / "q.onnx") == 4 * 8 + 8  # weight + bias, not scale/zero point


def test_file_size_includes_external_data(tiny_run, tmp_path):
    import onnx

    model = onnx.load(str(tiny_run.onnx))
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    data = (tmp_path / "ext.onnx.data").stat().st_size
    assert data > 100_000
    assert model_file_bytes(tmp_path / "ext.onnx") == (tmp_path / "ext.onnx").stat().st_size + data


def test_bad_inputs_are_user_errors(tmp_path, tiny_run):
    with pytest.raises(VlaedgeError, match="does not exist"):
        profile([tmp_path / "missing.onnx"])
    with pytest.raises(VlaedgeError, match="runs=0"):
        profile([tiny_run.onnx], runs=0)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(VlaedgeError, match="junk.onnx"):
        profile([tmp_path / "junk.onnx"])


def test_jetson_device_state_and_power_are_recorded_when_the_module_exists(tiny_run, monkeypatch):
    fake = types.ModuleType("vlaedge.deploy.jetson")
    fake.__spec__ = importlib.machinery.ModuleSpec("vlaedge.deploy.jetson", None)
    calls = []

    class PowerMonitor:
        def __enter__(self):
            calls.append("enter")
            return self

        def __exit__(self, *exc):
            calls.append("exit")

        def summary(self):
            return {"VDD_IN_mw_mean": 7100.0}

    fake.read_device_state = lambda: {
        "nvpmodel": "MAXN",
        "jetson_clocks": False,
        "warnings": ["clocks not locked"],
    }
    fake.PowerMonitor = PowerMonitor
    monkeypatch.setitem(sys.modules, "vlaedge.deploy.jetson", fake)
    report = profile([tiny_run.onnx], **FAST)
    assert report.device["nvpmodel"] == "MAXN" and report.device["warnings"] == ["clocks not locked"]
    assert report.power == {"VDD_IN_mw_mean": 7100.0} and calls == ["enter", "exit"]


def test_profile_command_writes_profile_json_with_checkpoint_feeds(tiny_run, tmp_path, capsys, monkeypatch):
    code, text = run_cli(
        [
            "profile",
            tiny_run.onnx,
            "--checkpoint",
            tiny_run.checkpoint,
            "--data",
            tiny_run.data,
            "--runs",
            5,
            "--warmup",
            1,
            "--threads",
            1,
            "--compare",
            tiny_run.onnx,
            "--out",
            tmp_path / "p",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, text
    data = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert data["schema"] == "vlaedge.profile/1" and len(data["models"]) == 2 and data["interleaved"]
    assert data["models"][0]["rate"]["control_hz"] == 10  # the dataset's fps
    assert "median" in text and "profile.json" in text


def test_profile_command_remote_delegates_to_vlaedge_remote(tiny_run, tmp_path, capsys, monkeypatch):
    seen = {}
    fake = types.ModuleType("vlaedge.deploy.remote")

    def profile_remote(**kwargs):
        seen.update(kwargs)
        path = kwargs["out"] / "profile.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        return path

    fake.profile_remote = profile_remote
    monkeypatch.setitem(sys.modules, "vlaedge.deploy.remote", fake)
    code, text = run_cli(
        [
            "profile",
            tiny_run.onnx,
            "--remote",
            "nvidia@orin",
            "--runs",
            50,
            "--threads",
            4,
            "--out",
            tmp_path / "r",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, text
    assert seen == {
        "host": "nvidia@orin",
        "model": tiny_run.onnx,
        "runtime": "ort-cpu",
        "runs": 50,
        "warmup": 20,
        "threads": 4,
        "out": tmp_path / "r",
    }


def test_profile_command_on_a_missing_model_exits_2_in_one_line(tmp_path, capsys, monkeypatch):
    code, text = run_cli(["profile", tmp_path / "nope.onnx"], capsys, monkeypatch)
    assert code == 2 and "nope.onnx does not exist" in text and "Traceback" not in text
