"""Memory of export and ONNX Runtime quantization (issue 23: peak RSS <= 2.5x the FP32 bytes), measured in
a fresh process on an 84 MB policy. ONNX Runtime's static quantization calibrates apart from quantizing,
so it never holds the model to quantize beside the calibration graph and its session (measured here: peak
3.75x the FP32 bytes before, 1.55x after). The export's peak is torch's legacy exporter (~3x: the folded
transposed weights, its ModelProto and the serialized bytes; 3.8x before, 3.7x after): guarded, not yet
at the target."""

from pathlib import Path

import pytest
from test_load_memory import _write, run_measurement  # noqa: E402

MEASURE = r'''
import json, sys
from pathlib import Path
import onnxruntime.quantization, torch  # noqa: F401  (code, not weights: before the baselines)
import vlaedge.compress.export, vlaedge.compress.quantize  # noqa: F401
from vlaedge.compress.export import export_onnx
from vlaedge.compress.quantize import quantize
from vlaedge.models import load_policy
from vlaedge.recipe import ExportConfig, QuantizeConfig
from vlaedge.targets import get_target

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

def reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    return status("VmRSS:")

policy = load_policy(sys.argv[1], trust_code=True)
out = Path(sys.argv[2])
fp32 = sum(p.numel() * p.element_size() for p in policy.module.parameters())
feeds = policy.example_inputs(batch=16)
base = reset()
export_onnx(policy, out / "model_fp32.onnx", ExportConfig(), feeds)
export = {"peak": status("VmHWM:") - base, "kept": status("VmRSS:") - base}
base = reset()
quantize(policy, QuantizeConfig(precision="int8", algorithm="minmax", num_calib_frames=16), [feeds],
         get_target("cpu"), fp32_onnx=out / "model_fp32.onnx", out_onnx=out / "model.onnx")
print(json.dumps({"fp32": fp32, "export": export, "quantize": {"peak": status("VmHWM:") - base}}))
'''


def _measure(checkpoint: Path, out: Path) -> dict:
    return run_measurement(MEASURE, str(checkpoint), str(out), timeout=600)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_export_and_ort_quantization_peaks(tmp_path):
    checkpoint = _write(tmp_path / "wide", width=1024, blocks=20)
    got = _measure(checkpoint, tmp_path)
    fp32 = got["fp32"]
    assert fp32 > 60e6
    mb = {k: {n: f"{v / 1e6:.0f} MB" for n, v in d.items()} for k, d in got.items() if k != "fp32"}
    assert got["export"]["peak"] <= 4.5 * fp32, mb
    assert got["quantize"]["peak"] <= 2.5 * fp32, mb


def test_a_self_contained_export_is_not_parsed_for_its_data_file(tmp_path, monkeypatch):
    """`_one_data_file` after torch wrote one .onnx (no loose tensor files): nothing to do, and the graph
    with all its weights is not parsed to find that out (it was: +1.4x the FP32 bytes of peak)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    from vlaedge.compress.export_graph import _one_data_file

    x, y = h.make_tensor_value_info("x", T.FLOAT, [1]), h.make_tensor_value_info("y", T.FLOAT, [1])
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "model.onnx"
    onnx.save_model(h.make_model(graph), str(path))
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("parsed the graph"))
    assert _one_data_file(path, "auto") is None
