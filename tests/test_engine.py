"""Engine bundle: trtexec flags per recipe, build.sh run against a stand-in trtexec, plan-compatibility
checks, the layer-placement report, the Python API build against a fake tensorrt module (tests/trt_fakes.py:
inspector context, timing cache, DLA settings; issue 17), and the trt runtime's errors where TensorRT is
missing."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx import save
from trt_fakes import FakeTensorRT

from vlaedge.artifact import sha256
from vlaedge.deploy import engine as engine_module
from vlaedge.deploy import trt_build
from vlaedge.deploy.engine import build_engine, build_settings, detect_precision
from vlaedge.deploy.trt_build import layer_issues
from vlaedge.errors import VlaedgeError
from vlaedge.info import tensorrt_version
from vlaedge.recipe import EngineConfig, load_recipe
from vlaedge.runtimes.plan import check_plan_compatible, write_plan_sidecar

ROOT = Path(__file__).resolve().parent.parent
ENGINE_RECIPES = sorted(
    p.name for p in (ROOT / "recipes").glob("*.yaml") if load_recipe(p).engine is not None
)
IMAGE = "obs image's"  # a name that needs quoting in the shell and in trtexec shape specs

# recipe -> flags that must (and must not) be in the trtexec command
EXPECTED = {
    "orin-int8.yaml": (
        ["--int8", "--fp16", "--memPoolSize=workspace:1024", f"--maxShapes='{IMAGE}':8x3x8x8,state:8x4"],
        ["--stronglyTyped", "--sparsity=enable", "--useDLACore=0"],
    ),
    "orin-int8-sparse.yaml": (["--int8", "--fp16", "--sparsity=enable"], ["--stronglyTyped"]),
    "orin-nano-int8.yaml": (
        ["--int8", "--fp16", "--memPoolSize=workspace:512", f"--maxShapes='{IMAGE}':4x3x8x8,state:4x4"],
        ["--sparsity=enable"],
    ),
    "thor-fp8.yaml": (["--stronglyTyped"], ["--int8", "--fp16", "--fp8"]),
    "x86-fp8.yaml": (
        ["--stronglyTyped", "--memPoolSize=workspace:2048", f"--maxShapes='{IMAGE}':16x3x8x8,state:16x4"],
        ["--int8", "--fp16"],
    ),
}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """A tiny graph with a dynamic batch and two inputs, one with an awkward name."""
    nodes = [
        h.make_node("Flatten", [IMAGE], ["flat"]),
        h.make_node("MatMul", ["flat", "W"], ["a"]),
        h.make_node("MatMul", ["state", "V"], ["b"]),
        h.make_node("Add", ["a", "b"], ["actions"]),
    ]
    graph = h.make_graph(
        nodes,
        "g",
        [
            h.make_tensor_value_info(IMAGE, T.FLOAT, ["B", 3, 8, 8]),
            h.make_tensor_value_info("state", T.FLOAT, ["B", 4]),
        ],
        [h.make_tensor_value_info("actions", T.FLOAT, ["B", 2])],
        [nh.from_array(np.ones((192, 2), np.float32), "W"), nh.from_array(np.ones((4, 2), np.float32), "V")],
    )
    path = tmp_path_factory.mktemp("onnx") / "policy.onnx"
    save(
        h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="policy.onnx.data",
        size_threshold=0,
    )
    return path


@pytest.fixture
def fake_trtexec(tmp_path) -> Path:
    """A stand-in trtexec: records its argv, prints the lines build.sh parses, writes the plan."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "trtexec"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
json.dump(args, open("argv.json", "w"))
print("[I] TensorRT version: 10.3.0")
print("[I] Selected Device: Orin")
print("[I] Compute Capability: 8.7")
plan = next(a.split("=", 1)[1] for a in args if a.startswith("--saveEngine="))
open(plan, "wb").write(b"not a real plan")
""")
    script.chmod(0o755)
    return bin_dir


def _build(recipe: str, onnx_model: Path, out: Path, overrides=()):
    r = load_recipe(ROOT / "recipes" / recipe, list(overrides))
    return build_engine(onnx_model, r.engine, r.target, r.quantize.precision if r.quantize else None, out)


def test_every_tensorrt_recipe_is_covered():
    assert set(ENGINE_RECIPES) == set(EXPECTED)


@pytest.mark.parametrize("recipe", ENGINE_RECIPES)
def test_bundle_trtexec_flags_follow_the_recipe(recipe, onnx_model, tmp_path):
    result = _build(recipe, onnx_model, tmp_path)
    bundle = Path(result.bundle)
    must, must_not = EXPECTED[recipe]
    args = result.trtexec
    for flag in must:
        assert flag in args, (flag, args)
    for flag in must_not:
        assert flag not in args, (flag, args)
    assert args[:2] == ["--onnx=model.onnx", "--saveEngine=model.plan"]
    assert (
        f"--minShapes='{IMAGE}':1x3x8x8,state:1x4" in args
        and f"--optShapes='{IMAGE}':1x3x8x8,state:1x4" in args
    )
    assert {
        "--timingCacheFile=timing.cache",
        "--profilingVerbosity=detailed",
        "--exportLayerInfo=layers.json",
        f"--shapes='{IMAGE}':1x3x8x8,state:1x4",  # layer info from an inference context at the opt shapes
    } <= set(args)
    assert "--skipInference" not in args  # it would export layer info without a context: no formats
    assert not any("calib" in a.lower() for a in args)  # Q/DQ only: no implicit INT8 calibration, ever
    assert shlex.join(args) in (bundle / "build.sh").read_text()
    assert "--runtime trt" in (bundle / "profile.sh").read_text()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["trtexec"] == args and manifest["target"] == load_recipe(ROOT / "recipes" / recipe).target
    assert set(manifest["files"]) == {"model.onnx", "policy.onnx.data", "build.sh", "profile.sh"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256(bundle / name)
    if tensorrt_version() is None:
        assert result.plan is None and "TensorRT" in result.skipped and manifest["plan"] is None


def test_dla_override_adds_dla_flags(onnx_model, tmp_path):
    over = ["engine.dla_core=1", "engine.max_batch=1"]
    args = _build("orin-int8.yaml", onnx_model, tmp_path, over).trtexec
    assert "--useDLACore=1" in args and "--allowGPUFallback" in args
    over.append("engine.gpu_fallback=false")
    assert "--allowGPUFallback" not in _build("orin-int8.yaml", onnx_model, tmp_path, over).trtexec


def test_dla_build_sh_for_a_dynamic_batch_onnx_records_the_core(onnx_model, tmp_path, fake_trtexec):
    # the ONNX's batch is dynamic; DLA needs static shapes, so the recipe pins min = opt = max
    over = ["engine.dla_core=1", "engine.min_batch=2", "engine.opt_batch=2", "engine.max_batch=2"]
    result = _build("orin-int8.yaml", onnx_model, tmp_path, over)
    args = result.trtexec
    assert {"--useDLACore=1", "--allowGPUFallback", "--int8", "--fp16", "--exportLayerInfo=layers.json",
            f"--optShapes='{IMAGE}':2x3x8x8,state:2x4", f"--shapes='{IMAGE}':2x3x8x8,state:2x4"} <= set(args)
    assert "--skipInference" not in args
    bundle = Path(result.bundle)
    env = {**os.environ, "PATH": f"{fake_trtexec}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        ["bash", str(bundle / "build.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((bundle / "argv.json").read_text()) == args
    assert check_plan_compatible(bundle / "model.plan", "10.3.0", "8.7")["dla_core"] == 1


def test_unquantized_model_builds_fp16_and_cpu_target_is_refused(onnx_model, tmp_path):
    assert detect_precision(onnx_model) is None
    result = build_engine(onnx_model, EngineConfig(), "agx-orin-32gb", None, tmp_path)
    assert "--fp16" in result.trtexec and "--int8" not in result.trtexec
    with pytest.raises(VlaedgeError, match="ONNX Runtime, not TensorRT"):
        build_engine(onnx_model, EngineConfig(), "cpu", "int8", tmp_path)


def test_build_sh_runs_trtexec_with_exactly_these_args_and_writes_the_sidecar(
    onnx_model, tmp_path, fake_trtexec
):
    result = _build("orin-int8-sparse.yaml", onnx_model, tmp_path)
    bundle = Path(result.bundle)
    env = {**os.environ, "PATH": f"{fake_trtexec}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        ["bash", str(bundle / "build.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((bundle / "argv.json").read_text()) == result.trtexec  # shell quoting round-trips
    side = json.loads((bundle / "model.plan.json").read_text())
    assert (
        side["tensorrt"] == "10.3.0"
        and side["compute_capability"] == "8.7"
        and side["target"] == "agx-orin-64gb"
    )
    assert side["plan_sha256"] == sha256(bundle / "model.plan") and side["dla_core"] is None
    assert check_plan_compatible(bundle / "model.plan", "10.3.0.30", "8.7")["built_with"] == "trtexec"


def test_build_sh_without_tensorrt_fails_clearly(onnx_model, tmp_path):
    bundle = Path(_build("orin-int8.yaml", onnx_model, tmp_path).bundle)
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        ["bash", str(bundle / "build.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    if Path("/usr/src/tensorrt/bin/trtexec").exists():
        pytest.skip("TensorRT is installed here")
    assert run.returncode == 3 and "TensorRT is absent" in run.stderr


def test_plan_compatibility_errors(tmp_path):
    plan = tmp_path / "model.plan"
    with pytest.raises(VlaedgeError, match="no engine plan"):
        check_plan_compatible(plan, "10.3.0", "8.7")
    plan.write_bytes(b"plan")
    with pytest.raises(VlaedgeError, match="missing or unreadable") as e:
        check_plan_compatible(plan, "10.3.0", "8.7")
    assert "build.sh" in e.value.hint
    write_plan_sidecar(plan, "10.3.0.30", "8.7", "agx-orin-64gb")
    assert check_plan_compatible(plan, "10.3.0", "8.7")["target"] == "agx-orin-64gb"
    with pytest.raises(VlaedgeError, match="built with TensorRT 10.3.0.30, this machine has 10.7.0"):
        check_plan_compatible(plan, "10.7.0", "8.7")
    with pytest.raises(VlaedgeError, match="this machine has none"):
        check_plan_compatible(plan, "", "8.7")
    with pytest.raises(VlaedgeError, match="built for compute capability 8.7, this GPU is 9.0"):
        check_plan_compatible(plan, "10.3.0", "9.0")
    side = plan.with_name("model.plan.json")
    old = {k: v for k, v in json.loads(side.read_text()).items() if k != "dla_core"}
    side.write_text(json.dumps(old))  # a sidecar from before the DLA core was recorded
    with pytest.raises(VlaedgeError, match="records no valid DLA core"):
        check_plan_compatible(plan, "10.3.0", "8.7")
    write_plan_sidecar(plan, "10.3.0.30", "8.7", "agx-orin-64gb", dla_core=1)
    assert check_plan_compatible(plan, "10.3.0", "8.7")["dla_core"] == 1
    with pytest.raises(VlaedgeError, match="this GPU is absent"):
        check_plan_compatible(plan, "10.3.0", None) if not _has_gpu() else pytest.skip("GPU here")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_layer_issues_from_inspector_json():
    def io(fmt):
        return [{"Name": "t", "Dimensions": [1, 64], "Format/Datatype": fmt}]

    info = {
        "Layers": [
            {
                "Name": "fc1",
                "LayerType": "CaskGemmMatrixMultiply",
                "Inputs": io("Row major linear Int8 format"),
                "Outputs": io("Row major linear Int8 format"),
            },
            {
                "Name": "fc2",
                "LayerType": "CaskGemmMatrixMultiply",
                "Inputs": io("Row major linear FP16 format"),
                "Outputs": io("Row major linear FP16 format"),
            },
            {
                "Name": "conv",
                "LayerType": "CaskConvolution",
                "Inputs": io("Channel major FP32 format"),
                "Outputs": [],
            },
            {"Name": "{ForeignNode[attn...]}", "LayerType": "Myelin", "Inputs": io("Half"), "Outputs": []},
            {
                "Name": "relu",
                "LayerType": "PointWiseV2",
                "Inputs": io("Row major linear FP16 format"),
                "Outputs": [],
            },
        ]
    }
    issues = layer_issues(info, "int8")
    assert issues[0].startswith("fc2 (CaskGemmMatrixMultiply) runs in fp16, intended int8")
    assert issues[1].startswith("conv (CaskConvolution) runs in fp32")
    assert "1 fused Myelin layer(s)" in issues[2] and len(issues) == 3
    assert any(
        "runs on the GPU, not the DLA" in i and i.startswith("fc1")
        for i in layer_issues(info, "int8", dla=True)
    )
    assert "names only" in layer_issues({"Layers": ["a", "b"]}, "int8")[0]


def test_layer_issues_say_when_formats_are_missing():
    na = [{"Name": "t", "Format/Datatype": "N/A"}]
    info = {"Layers": [{"Name": "fc", "LayerType": "CaskGemmMatrixMultiply", "Inputs": na, "Outputs": na},
                       {"Name": "conv", "LayerType": "CaskConvolution", "Inputs": [], "Outputs": []}]}
    issues = layer_issues(info, "int8")
    assert len(issues) == 1 and issues[0].startswith("2 convolution/matrix-multiply layer(s) with no format")
    assert "precision unknown" in issues[0]
    bf16 = [{"Name": "t", "Format/Datatype": "Row major linear BFloat16 format"}]
    info = {"Layers": [{"Name": "fc", "LayerType": "CaskGemmMatrixMultiply", "Inputs": bf16, "Outputs": []}]}
    assert layer_issues(info, "fp16") == ["fc (CaskGemmMatrixMultiply) runs in bf16, intended fp16"]


@pytest.fixture
def fake_trt(monkeypatch):
    """Installs a fake tensorrt module (keyword arguments: see FakeTensorRT) and lets build_engine build."""

    def install(**kwargs) -> FakeTensorRT:
        trt = FakeTensorRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(engine_module, "_why_no_build", lambda config: "")
        monkeypatch.setattr(trt_build, "gpu_compute_capability", lambda: "8.7")
        return trt

    return install


def test_python_build_inspects_layers_with_a_context_at_the_opt_shapes(onnx_model, tmp_path, fake_trt):
    trt = fake_trt()
    result = _build("orin-int8.yaml", onnx_model, tmp_path, ["engine.opt_batch=2"])
    assert ("inspect", {IMAGE: (2, 3, 8, 8), "state": (2, 4)}) in trt.calls
    assert result.issues == ["fc (CaskGemmMatrixMultiply) runs in fp16, intended int8"]  # not silently []
    layers = json.loads((Path(result.bundle) / "layers.json").read_text())
    assert layers["Layers"][0]["Inputs"][0]["Format/Datatype"] != "N/A"
    side = json.loads((Path(result.bundle) / "model.plan.json").read_text())
    assert side["built_with"] == "python" and side["dla_core"] is None and side["compute_capability"] == "8.7"


def test_python_build_reuses_the_timing_cache_across_rebuilds(onnx_model, tmp_path, fake_trt):
    trt = fake_trt()
    first = _build("orin-int8.yaml", onnx_model, tmp_path)
    cache = (Path(first.bundle) / "timing.cache").read_bytes()
    second = _build("orin-int8.yaml", onnx_model, tmp_path)  # replaces engine/, keeps its timing cache
    caches = [c for c in trt.calls if c[0] == "create_timing_cache"]
    assert caches == [("create_timing_cache", b""), ("create_timing_cache", cache)]
    assert not first.notes and second.notes == [f"timing cache: reused timing.cache ({len(cache)} bytes)"]
    assert "timing.cache" in json.loads((Path(second.bundle) / "manifest.json").read_text())["files"]


def test_python_build_checks_that_tensorrt_takes_the_timing_cache(onnx_model, tmp_path, fake_trt):
    fake_trt()
    _build("orin-int8.yaml", onnx_model, tmp_path)
    fake_trt(accept_cache=lambda data: False)
    with pytest.raises(VlaedgeError, match="refused the timing cache"):
        _build("orin-int8.yaml", onnx_model, tmp_path)
    fake_trt(accept_cache=lambda data: not data)  # e.g. the cache came from another GPU
    result = _build("orin-int8.yaml", onnx_model, tmp_path)
    assert result.notes == [
        "timing cache: timing.cache refused (another GPU or TensorRT version): started empty"
    ]


def test_python_dla_build_matches_trtexec_and_records_the_core(onnx_model, tmp_path, fake_trt):
    trt = fake_trt(dla_cores=2)
    f = trt.BuilderFlag
    result = _build("orin-int8.yaml", onnx_model, tmp_path, ["engine.dla_core=1", "engine.max_batch=1"])
    flags = sorted({f.INT8, f.FP16, f.PREFER_PRECISION_CONSTRAINTS, f.GPU_FALLBACK})
    assert ("build", flags, 1, 1) in trt.calls
    assert ("deserialize", 1) in trt.calls  # the inspector's engine loads on the plan's DLA core
    assert check_plan_compatible(result.plan, "10.3.0", "8.7")["dla_core"] == 1
    over = ["engine.dla_core=0", "engine.max_batch=1", "engine.gpu_fallback=false"]
    _build("orin-int8.yaml", onnx_model, tmp_path, over)
    assert ("build", sorted({f.INT8, f.FP16, f.PREFER_PRECISION_CONSTRAINTS, f.DIRECT_IO}), 1, 0) in trt.calls


def test_python_build_notes_deprecated_flags_from_tensorrt_10_12(onnx_model, tmp_path, fake_trt):
    fake_trt(version="10.13.3.9")
    result = _build("orin-int8.yaml", onnx_model, tmp_path)
    assert any("deprecates the INT8/FP16 builder flags" in n for n in result.notes)
    assert "deprecates" in result.summary()
    assert json.loads((Path(result.bundle) / "manifest.json").read_text())["notes"] == result.notes
    fake_trt(version="10.3.0")
    assert not any("deprecates" in n for n in _build("orin-int8.yaml", onnx_model, tmp_path).notes)


def test_weight_only_int8_expects_fp16_activations():
    shapes = {"x": (None, 4)}
    assert build_settings(EngineConfig(), "int8-weight-only", shapes).intended == "fp16"
    assert build_settings(EngineConfig(), "int8", shapes).intended == "int8"


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_trt_runtime_without_tensorrt_is_a_clear_error(onnx_model):
    from vlaedge.check.profile import graph_spec
    from vlaedge.runtimes import open_runtime

    spec = graph_spec(onnx_model)
    with pytest.raises(VlaedgeError, match="TensorRT is not importable") as e:
        open_runtime("trt", spec, onnx_model)
    assert "JetPack" in e.value.hint


@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_version() is None, reason="needs the TensorRT Python package")
def test_python_api_build_and_run(
    onnx_model, tmp_path
):  # pragma: no cover - not run on this project's machines
    if not _has_gpu():
        pytest.skip("needs a CUDA GPU")
    from vlaedge.check.profile import graph_spec, synth_feeds
    from vlaedge.runtimes import open_runtime

    result = build_engine(onnx_model, EngineConfig(max_batch=2), "x86-ampere", None, tmp_path)
    assert result.plan and Path(result.plan).is_file() and result.tensorrt == tensorrt_version()
    spec = graph_spec(tmp_path / "engine" / "model.onnx")
    rt = open_runtime("trt", spec, tmp_path / "engine" / "model.onnx")
    out = rt.infer(synth_feeds(spec.input_spec))
    assert out["actions"].shape == (1, 2)
