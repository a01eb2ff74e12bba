"""`--device auto|cpu|cuda` (recipe `load.device`): where the torch side runs (`vlaedge.models.device`).

CPU-only: `auto` resolves to cpu here and is recorded; `cuda` is refused before any stage; and the
torch-side paths (reference run, ModelOpt calibration, pruning, drift, staged torch runs) feed the module
through the device helpers with the policy's device, asserted by spying on them with the CPU device object
a CPU policy reports. That the module then really runs on a GPU is not checked anywhere yet: no machine
with CUDA has been available to this project (docs/guides/device.md says so).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

import vlaedge.models.device as device_mod
from vlaedge.errors import VlaedgeError
from vlaedge.models.device import exact_float32, place, resolve_device
from vlaedge.models.reference import ReferencePolicy

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what happens without CUDA")
FAST = ["--set", "quantize.num_calib_frames=32", "--set", "export.check_frames=8", "--set", "verify=null",
        "--set", "budgets=null"]


@pytest.fixture
def spy(monkeypatch):
    """Every `feed_tensors` call's device, in order (the helper still runs)."""
    seen: list = []
    real = device_mod.feed_tensors

    def feed_tensors(arrays, device):
        seen.append(torch.device(device))
        return real(arrays, device)

    import vlaedge.compress.prune  # noqa: F401  (binds the name at import: patched below like the rest)

    for module in [m for name, m in sys.modules.items() if name.startswith("vlaedge")]:
        if getattr(module, "feed_tensors", None) is real:  # `from vlaedge.models.device import feed_tensors`
            monkeypatch.setattr(module, "feed_tensors", feed_tensors)
    return seen


@pytest.fixture(scope="module")
def nano():
    return ReferencePolicy.build("nano", "chunk", image_size=32)


# --- resolving and refusing ---------------------------------------------------------------------------


@no_cuda
def test_auto_is_cpu_without_cuda_and_cuda_is_refused_naming_the_check_and_the_fix():
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(VlaedgeError) as e:
        resolve_device("cuda")
    assert "torch.cuda.is_available() is False" in e.value.message
    assert "--device cpu" in e.value.hint and "CUDA build of torch" in e.value.hint
    with pytest.raises(VlaedgeError, match="'gpu' is not a device"):
        resolve_device("gpu")


@no_cuda
def test_load_policy_refuses_cuda_before_reading_the_checkpoint(tmp_path):
    from vlaedge.models import load_policy

    with pytest.raises(VlaedgeError, match=r"torch.cuda.is_available\(\)"):
        load_policy(tmp_path / "does-not-exist", device="cuda")  # the device, not the missing folder


@no_cuda
@pytest.mark.parametrize("command", ["compress", "quantize", "prune", "verify"])
def test_cuda_without_cuda_is_one_error_line_and_exit_2_before_any_stage(command, tmp_path, capsys,
                                                                          monkeypatch):
    import vlaedge.models
    import vlaedge.pipeline

    def never(*args, **kwargs):
        raise AssertionError("a stage ran: the policy was loaded")

    monkeypatch.setattr(vlaedge.pipeline, "load_policy", never)
    monkeypatch.setattr(vlaedge.models, "load_policy", never)
    out = tmp_path / "run"
    code, text = run_cli([command, "--device", "cuda", "--out", out], capsys, monkeypatch)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, text
    assert "torch.cuda.is_available() is False" in errors[0] and "--device cpu" in text, text
    assert "Traceback" not in text and not out.exists() and list(tmp_path.iterdir()) == []


def test_recipe_load_device_is_validated_strictly(capsys, monkeypatch, tmp_path):
    code, text = run_cli(["compress", "--set", "load.device=gpu", "--out", tmp_path / "x"], capsys,
                         monkeypatch)
    assert code == 2 and re.search(r"load\.device: Input should be 'auto', 'cpu' or 'cuda'", text), text
    code, text = run_cli(["compress", "--set", "load.devices=cpu", "--out", tmp_path / "x"], capsys,
                         monkeypatch)
    assert code == 2 and "load.devices" in text, text


# --- recorded -----------------------------------------------------------------------------------------


@no_cuda
def test_auto_is_recorded_in_the_manifest_and_the_report(tmp_path, tiny_run, capsys, monkeypatch):
    out = tmp_path / "run"
    code, text = run_cli(["compress", tiny_run.checkpoint, "--data", tiny_run.data, "--recipe", "cpu-int8",
                          "--out", out, *FAST], capsys, monkeypatch)
    assert code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"]["requested"] == "auto" and manifest["device"]["torch"] == "cpu"
    assert manifest["device"]["gpu"] is None and manifest["device"]["export_trace"] == "cpu"
    assert manifest["recipe"]["load"] is None  # what was asked is the recipe's; what ran is "device"
    code, text = run_cli(["verify", tiny_run.onnx, "--checkpoint", tiny_run.checkpoint, "--data",
                          tiny_run.data, "--frames", "16", "--no-profile", "--out", tmp_path / "verify",
                          "--device", "auto"], capsys, monkeypatch)
    assert code == 0, text
    report = json.loads((tmp_path / "verify" / "report.json").read_text())
    assert report["policy"]["device"] == "cpu"


# --- the torch side goes through the device helpers ---------------------------------------------------


def test_run_torch_moves_feeds_to_the_policy_device_and_returns_cpu_numpy(nano, spy):
    seen_inputs: list = []
    hook = nano.module.register_forward_pre_hook(lambda m, args: seen_inputs.extend(a.device for a in args))
    try:
        out = nano.run_torch(nano.example_inputs(2))
    finally:
        hook.remove()
    assert nano.device == torch.device("cpu") == next(nano.module.parameters()).device
    assert spy == [nano.device]  # the feeds went through feed_tensors, to the policy's device
    assert seen_inputs and all(d == nano.device for d in seen_inputs)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in out.values())


def test_policy_to_places_the_module_and_device_reads_it_back(nano):
    assert nano.to("cpu") is nano and nano.to("auto").device.type == resolve_device("auto")


def test_modelopt_calibration_feeds_the_module_on_its_device(nano, spy):
    pytest.importorskip("modelopt.torch.quantization")
    import copy

    from vlaedge.compress.quantize import quantize
    from vlaedge.recipe import QuantizeConfig
    from vlaedge.targets import get_target

    policy = copy.deepcopy(nano)
    feeds = [policy.example_inputs(32, seed=s) for s in range(2)]
    config = QuantizeConfig(precision="int8", num_calib_frames=64)
    quantize(policy, config, feeds, get_target("agx-orin-64gb"))
    assert len(spy) >= 2 and set(spy) == {policy.device}  # one call per calibration batch (and pass)


def test_pruning_calibration_and_flop_count_are_on_the_policy_device(nano, spy):
    from vlaedge.compress import prune

    feeds = [nano.example_inputs(16, seed=3)]
    tensors = prune._calibration(nano, feeds, 16)
    assert all(t.device == nano.device for t in tensors.values())
    prune.count_flops(nano)
    assert len(spy) == 2 and set(spy) == {nano.device}


def test_drift_reference_runs_through_run_torch_on_the_policy_device(nano, spy, tabletop_frames):
    from vlaedge.check.drift import open_loop_drift
    from vlaedge.runtimes.torch import TorchRuntime

    report, _, _ = open_loop_drift(nano, TorchRuntime(nano), tabletop_frames(8), batch_size=4)
    assert report.mean_pct == 0.0
    assert len(spy) == 4 and set(spy) == {nano.device}  # 2 batches x (reference + torch candidate)


def test_staged_torch_runner_feeds_the_module_device(spy):
    from vlaedge.models.stages import StageGraph, torch_runner

    module = torch.nn.Module()
    module.head = torch.nn.Linear(4, 3)
    stage = StageGraph(name="only", call="head", inputs=["x"], outputs=["y"])
    out = torch_runner(module)(stage, {"x": np.ones((2, 4), np.float32)})
    assert out["y"].shape == (2, 3) and isinstance(out["y"], np.ndarray) and spy == [torch.device("cpu")]


LEAN = ("vlaedge/models/lerobot/", "vlaedge/tune/", "vlaedge/executor")  # other owners' modules
ALLOWED = {  # torch.from_numpy outside the helpers, and why it is not a feed to a module on a device
    "vlaedge/models/device.py": "the helper itself",
    "vlaedge/compress/export_graph.py": "the ONNX trace's example inputs: traced on the CPU (on_cpu)",
    "vlaedge/compress/prune.py": "random unit scores (CPU), moved to the device by the surgery",
    "vlaedge/compress/prune_modules.py": "random unit scores (CPU), moved to the device by the surgery",
    "vlaedge/runtimes/trt.py": "TensorRT buffers, copied to CUDA explicitly",
    "vlaedge/sim/train.py": "`vlaedge train` of the built-in policy: CPU only",
}


def test_no_stray_from_numpy_feeds_a_module():
    found = {}
    for path in sorted((ROOT / "vlaedge").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(LEAN) and "torch.from_numpy(" in path.read_text():
            found[rel] = True
    assert set(found) <= set(ALLOWED), sorted(set(found) - set(ALLOWED))


# --- the helpers --------------------------------------------------------------------------------------


def test_exact_float32_turns_tf32_off_on_cuda_only_and_restores_it():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    with exact_float32(torch.device("cpu")):
        assert (cudnn.allow_tf32, matmul.allow_tf32) == before
    with exact_float32("cuda"):  # flags only: nothing runs
        assert not cudnn.allow_tf32 and not matmul.allow_tf32
    assert (cudnn.allow_tf32, matmul.allow_tf32) == before


def test_a_gpu_without_room_for_the_weights_is_refused_before_moving(monkeypatch):
    module = torch.nn.Linear(256, 256)  # 263 kB of weights
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (100_000, 8 * 2**30))
    with pytest.raises(VlaedgeError, match="GiB on the GPU") as e:
        place(module, "cuda")
    assert "--device cpu" in e.value.hint and module.weight.device.type == "cpu"


def test_on_cpu_leaves_a_cpu_module_alone(nano, monkeypatch):
    def moved(*args, **kwargs):
        raise AssertionError("a CPU module was moved")

    monkeypatch.setattr(nano.module, "to", moved)
    with device_mod.on_cpu(nano.module):
        pass
