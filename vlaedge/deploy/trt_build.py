"""The TensorRT Python API build behind `vlaedge.deploy.engine.build_engine`, and the layer-placement check.

Written against the documented TensorRT 10.x Python API (JetPack 6.x ships 10.3): Builder,
NetworkDefinitionCreationFlag.STRONGLY_TYPED, OnnxParser.parse_from_file, IBuilderConfig (precision
flags, SPARSE_WEIGHTS, default_device_type / DLA_core / GPU_FALLBACK, memory pool limit, optimization
profile, timing cache, DETAILED profiling verbosity) and IEngineInspector (LayerInformationFormat.JSON).
There is no INT8 calibrator: INT8 comes from the ONNX's Q/DQ nodes only.

NOT RUN ON REAL TENSORRT: this project's machines have neither TensorRT nor a GPU. `build_plan` has not
been executed; `layer_issues` (pure, over the inspector's JSON) is tested on hand-written JSON in the
documented format. The same settings are in build.sh (trtexec), which is the path that runs on devices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaedge.deploy.bundle import CACHE_NAME, LAYERS_NAME
from vlaedge.errors import VlaedgeError
from vlaedge.runtimes.plan import PLAN_NAME, gpu_compute_capability

_GEMM_HINTS = ("conv", "matrixmultiply", "gemm", "fullyconnected")
_OPAQUE_HINTS = ("myelin", "foreignnode")  # fused subgraphs: per-layer precision not reported


@dataclass
class BuiltPlan:
    """A plan built here."""

    tensorrt: str
    compute_capability: str | None
    issues: list[str] = field(default_factory=list)


def build_plan(onnx_path: Path, settings: Any, out_dir: Path) -> BuiltPlan:
    """Builds `out_dir/model.plan` from the ONNX with `settings` (an `engine.BuildSettings`), updates the
    timing cache, writes the layer information JSON, and returns the layer issues.

    Raises:
        VlaedgeError: the ONNX parser or the builder failed (the first errors are quoted).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strong = settings.strongly_typed or int(trt.__version__.split(".")[0]) >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise VlaedgeError(
            f"engine: TensorRT cannot parse {onnx_path}: {errors}",
            "check the export (opset, custom ops) or run build.sh on the device for its log",
        )
    config = _builder_config(trt, builder, network, settings, strong)
    dla_rejected = _dla_rejected(config, network) if settings.dla_core is not None else []
    cache_file = out_dir / CACHE_NAME
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VlaedgeError(
            f"engine: TensorRT could not build {onnx_path} (see the log above)",
            "try a larger engine.workspace_mb, or run build.sh on the device",
        )
    (out_dir / PLAN_NAME).write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    info_text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    (out_dir / LAYERS_NAME).write_text(info_text)
    issues = [f"{name}: cannot run on DLA, falls back to the GPU" for name in dla_rejected]
    issues += layer_issues(json.loads(info_text), settings.intended, settings.dla_core is not None)
    return BuiltPlan(trt.__version__, gpu_compute_capability(), issues)


def _builder_config(trt: Any, builder: Any, network: Any, s: Any, strong: bool) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_mb << 20)
    if not strong:
        for flag in s.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag.upper()))  # FP16, INT8 (Q/DQ: no calibrator)
    if s.sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if s.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = s.dla_core
        if s.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if s.shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in s.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    return config


def _dla_rejected(config: Any, network: Any) -> list[str]:
    """Names of network layers that IBuilderConfig.can_run_on_DLA refuses (they go to the GPU)."""
    layers = (network.get_layer(i) for i in range(network.num_layers))
    return [layer.name for layer in layers if not config.can_run_on_DLA(layer)]


def layer_precision(layer: dict) -> str | None:
    """A layer's compute precision from the inspector JSON's "Format/Datatype" strings (inputs first)."""
    for io in (*layer.get("Inputs", []), *layer.get("Outputs", [])):
        fmt = str(io.get("Format/Datatype", "")).lower()
        for key, name in (
            ("int8", "int8"),
            ("fp8", "fp8"),
            ("float8", "fp8"),
            ("half", "fp16"),
            ("fp16", "fp16"),
            ("bf16", "bf16"),
            ("fp32", "fp32"),
            ("float", "fp32"),
        ):
            if key in fmt:
                return name
    return None


def layer_issues(info: dict, intended: str, dla: bool = False) -> list[str]:
    """Layers that do not run as intended, from the engine inspector's JSON (DETAILED verbosity).

    Args:
        info: `{"Layers": [...]}` as returned by IEngineInspector.get_engine_information(JSON); a layer is
            a dict with "Name", "LayerType", "Inputs"/"Outputs" (each with "Format/Datatype"), or just a name
            string when the engine was built without DETAILED verbosity.
        intended: "int8", "fp8", "fp16" or "fp32": what convolution / matrix-multiply layers should run in.
        dla: whether the layers should run on a DLA core.

    Returns:
        One line per offending layer, plus one line counting fused (Myelin) layers whose precision the
        inspector does not show.
    """
    issues, opaque = [], 0
    layers = info.get("Layers", [])
    if layers and all(isinstance(x, str) for x in layers):
        return ["layer information has names only: build with --profilingVerbosity=detailed"]
    for layer in layers:
        kind = str(layer.get("LayerType", "")).lower()
        name = layer.get("Name", "?")
        if any(h in kind or h in name.lower() for h in _OPAQUE_HINTS) and "dla" not in kind:
            opaque += 1
            continue
        if dla and "dla" not in kind and kind not in ("reformat", "shuffle", "noop", "constant"):
            issues.append(f"{name} ({layer.get('LayerType')}) runs on the GPU, not the DLA")
        if any(h in kind for h in _GEMM_HINTS):
            got = layer_precision(layer)
            if got is not None and got != intended:
                issues.append(f"{name} ({layer.get('LayerType')}) runs in {got}, intended {intended}")
    if opaque:
        issues.append(
            f"{opaque} fused Myelin layer(s): their precision is not reported by the inspector "
            "(check with trtexec --dumpProfile or Nsight Systems)"
        )
    return issues
