"""`vlaedge device-check`: its refusals where TensorRT or a GPU is missing (this machine), and the plan-vs-
ONNX Runtime comparison it makes on the device, run here on two CPU runtimes (issue 17)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_runner import run_cli
from trt_fakes import fake_orin_run

import vlaedge.check.memory
import vlaedge.info
import vlaedge.runtimes
import vlaedge.runtimes.plan
from vlaedge.data import sample_frames
from vlaedge.device_check import compare_runtimes, device_check
from vlaedge.errors import VlaedgeError
from vlaedge.info import tensorrt_version
from vlaedge.runtimes import open_runtime


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_device_check_refuses_without_tensorrt(tmp_path, capsys, monkeypatch):
    code, out = run_cli(["device-check", tmp_path], capsys, monkeypatch)
    assert code == 2
    assert out.splitlines()[0] == (
        "error: device-check: TensorRT is not importable here: the device check runs on the device"
    )
    assert "make setup-jetson" in out


def test_device_check_refuses_without_a_gpu_and_outside_a_run(tmp_path, tiny_run, monkeypatch):
    monkeypatch.setattr(vlaedge.info, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(vlaedge.runtimes.plan, "gpu_compute_capability", lambda: None)
    with pytest.raises(VlaedgeError, match="no CUDA GPU visible to torch"):
        device_check(tmp_path)
    monkeypatch.setattr(vlaedge.runtimes.plan, "gpu_compute_capability", lambda: "8.7")
    with pytest.raises(VlaedgeError, match="is not a 'vlaedge compress' output directory"):
        device_check(tiny_run.onnx.parent)


class _Offset:
    """A runtime whose float outputs are another's plus a constant (a wrong plan, in effect)."""

    def __init__(self, runtime, offset: float):
        self.runtime, self.offset = runtime, offset

    def infer(self, feeds):
        out = self.runtime.infer(feeds)
        return {k: v + self.offset if v.dtype.kind == "f" else v for k, v in out.items()}


def test_compare_runtimes_measures_outputs_and_actions(tiny_run):
    policy = tiny_run.policy
    frames = sample_frames(tiny_run.dataset, 10, 0)
    ort = open_runtime("ort-cpu", policy, tiny_run.onnx)
    same = compare_runtimes(policy, ort, open_runtime("torch", policy), frames, batch=4)
    assert same["frames"] == 10 and same["batch"] == 4 and set(same["outputs"]) == set(policy.output_names)
    assert max(o["max_abs"] for o in same["outputs"].values()) < 1e-3 and same["drift_max_pct"] < 0.1
    off = compare_runtimes(policy, ort, _Offset(ort, 0.05), frames, batch=3)
    assert all(o["max_abs"] == pytest.approx(0.05, rel=1e-3) for o in off["outputs"].values())
    assert off["drift_mean_pct"] > 1.0 and off["nonfinite"] == 0
    nan = compare_runtimes(policy, ort, _Offset(ort, np.nan), frames, batch=10)
    assert nan["nonfinite"] > 0


def test_device_check_builds_compares_profiles_and_writes_its_report(tmp_path, tiny_run, monkeypatch):
    """The whole chain on stand-ins: the fake tensorrt module builds, and ONNX Runtime plays the plan."""
    run = tmp_path / "run"
    run.mkdir()
    for f in tiny_run.onnx.parent.glob("model.onnx*"):
        shutil.copyfile(f, run / f.name)
    fake_orin_run(run, tiny_run, monkeypatch)
    real, opened = vlaedge.runtimes.open_runtime, []

    def plan_as_ort(name, policy, model=None, threads=None, qdq="fused", **options):
        opened.append((name, model))
        return real("ort-cpu" if name == "trt" else name, policy, model, threads, qdq, **options)

    monkeypatch.setattr(vlaedge.runtimes, "open_runtime", plan_as_ort)
    # memory is measured in a fresh process, which cannot see the fake tensorrt: a fixed record here
    monkeypatch.setattr(vlaedge.check.memory, "measure_in_fresh_process", lambda *args, **kwargs: {
        "peak_rss_delta_mb": 1.0, "method": "fresh process", "counter": "VmHWM", "baseline_rss_mb": 1.0,
        "process_peak_rss_mb": 2.0})
    check = device_check(run, frames=6, runs=3, warmup=1, log=lambda line: None)
    bundle_onnx = run / "engine" / "model.onnx"
    assert ("trt", bundle_onnx) in opened and ("ort-cpu", bundle_onnx) in opened
    assert check and check.compare["frames"] == 6 and check.compare["batch"] == 8
    assert check.compare["drift_max_pct"] == 0.0 and check.profile["runs"] == 3
    assert check.issues == ["fc (CaskGemmMatrixMultiply) runs in fp16, intended int8"]  # the fake's layer
    assert (run / "engine" / "model.plan").is_file()
    summary = check.summary()
    assert "TensorRT 10.3.0, compute capability 8.7" in summary and "on 6 evaluation frames" in summary
    assert json.loads((run / "device_check.json").read_text())["compare"]["frames"] == 6
