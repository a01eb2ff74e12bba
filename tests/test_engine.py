"""Engine bundle: trtexec flags per recipe, build.sh run against a stand-in trtexec, plan-compatibility
checks, the layer-placement report, and the trt runtime's errors where TensorRT is missing."""

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

from vlaedge.artifact import sha256
from vlaedge.deploy.engine import build_engine, detect_precision
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
    } <= set(args)
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
    assert side["plan_sha256"] == sha256(bundle / "model.plan")
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
