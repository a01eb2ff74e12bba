"""The TensorRT Python API build behind `vlaedge.deploy.engine.build_engine`, and the layer-placement check.

Written against the TensorRT 10.x Python API (JetPack 6.x ships 10.3, Thor 10.13): Builder,
NetworkDefinitionCreationFlag.STRONGLY_TYPED, OnnxParser.parse_from_file, IBuilderConfig (precision
flags, SPARSE_WEIGHTS, default_device_type / DLA_core / GPU_FALLBACK / DIRECT_IO /
PREFER_PRECISION_CONSTRAINTS, memory pool limit, optimization profile, timing cache, DETAILED profiling
verbosity) and EngineInspector (LayerInformationFormat.JSON, with an execution context whose input shapes
are the profile's opt shapes: without one TensorRT shows no per-layer format for dynamic shapes). There is
no INT8 calibrator: INT8 comes from the ONNX's Q/DQ nodes only. The DLA settings are trtexec's for
`--useDLACore` (default device DLA, the core, PREFER_PRECISION_CONSTRAINTS, then GPU_FALLBACK or, without
fallback, DIRECT_IO), except that a strongly typed network gets no precision constraint.

Weakly typed builds keep the FP16/INT8 builder flags on TensorRT 10.12-10.x, where they are deprecated
("superseded by strong typing") but still work: strong typing would run an FP32 export in FP32. From
TensorRT 11 (flags removed) the build is strongly typed; the build notes say so.

NOT RUN ON REAL TENSORRT: this project's machines have neither TensorRT nor a GPU. Every TensorRT name used
here is checked against the real 10.3 and 10.13 bindings (tests/trt_api), and `build_plan`'s logic runs
against a fake `tensorrt` module (tests/trt_fakes.py); `layer_issues` is tested on hand-written JSON in the
documented format. The same settings are in build.sh (trtexec), the path that runs on devices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlaedge.deploy.bundle import CACHE_NAME, LAYERS_NAME
from vlaedge.errors import VlaedgeError
from vlaedge.runtimes.plan import PLAN_NAME, gpu_compute_capability
from vlaedge.runtimes.trt import set_dla_core

_GEMM_HINTS = ("conv", "matrixmultiply", "gemm", "fullyconnected")
_OPAQUE_HINTS = ("myelin", "foreignnode")  # fused subgraphs: per-layer precision not reported
_FLAGS_DEPRECATED = (10, 12)  # BuilderFlag.FP16/INT8 deprecated from this TensorRT version on


@dataclass
class BuiltPlan:
    """A plan built here."""

    tensorrt: str
    compute_capability: str | None
    issues: list[str] = field(default_factory=list)  # layers not in the intended precision / device
    notes: list[str] = field(default_factory=list)  # build facts worth reading (timing cache, typing)


def build_plan(onnx_path: Path, settings: Any, out_dir: Path) -> BuiltPlan:
    """Builds `out_dir/model.plan` from the ONNX with `settings` (an `engine.BuildSettings`), reusing and
    updating `out_dir/timing.cache`, writes the layer information JSON, and returns the layer issues.

    Raises:
        VlaedgeError: the ONNX parser, the optimization profile, the timing cache, the builder or the
            deserialization for the inspector failed (TensorRT's first errors are quoted where it gives them).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    version = tuple(int(p) for p in trt.__version__.split(".")[:2])
    strong = settings.strongly_typed or version[0] >= 11
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
    notes = _use_timing_cache(config, cache_file)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VlaedgeError(
            f"engine: TensorRT could not build {onnx_path} (see the log above)",
            "try a larger engine.workspace_mb, or run build.sh on the device",
        )
    (out_dir / PLAN_NAME).write_bytes(bytes(serialized))
    cache = config.get_timing_cache()
    if cache is not None:
        cache_file.write_bytes(bytes(cache.serialize()))
    info_text = _layer_information(trt, logger, serialized, settings)
    (out_dir / LAYERS_NAME).write_text(info_text)
    issues = [f"{name}: cannot run on DLA, falls back to the GPU" for name in dla_rejected]
    issues += layer_issues(json.loads(info_text), settings.intended, settings.dla_core is not None)
    if not strong and version >= _FLAGS_DEPRECATED:
        notes.append(f"TensorRT {trt.__version__} deprecates the {'/'.join(settings.flags).upper()} builder "
                     "flags (superseded by strong typing); this weakly typed build still uses them")
    return BuiltPlan(trt.__version__, gpu_compute_capability(), issues, notes)


def _use_timing_cache(config: Any, cache_file: Path) -> list[str]:
    """Sets the timing cache from `cache_file` (empty when absent). A cache TensorRT refuses (another GPU or
    TensorRT version) is replaced by an empty one, with a note.

    Raises:
        VlaedgeError: TensorRT refuses even an empty timing cache.
    """
    data = cache_file.read_bytes() if cache_file.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        return [f"timing cache: reused {cache_file.name} ({len(data)} bytes)"] if data else []
    if data and config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        return [f"timing cache: {cache_file.name} refused (another GPU or TensorRT version): started empty"]
    raise VlaedgeError(
        "engine: TensorRT refused the timing cache (IBuilderConfig.set_timing_cache returned False)",
        f"delete {cache_file} and rebuild, or run build.sh on the device for its log",
    )


def _layer_information(trt: Any, logger: Any, serialized: Any, settings: Any) -> str:
    """The engine inspector's JSON, from an execution context whose inputs have the profile's opt shapes
    (without it, TensorRT shows no format for layers whose shapes depend on the inputs).

    Raises:
        VlaedgeError: the plan does not deserialize, or an opt shape is refused.
    """
    runtime = trt.Runtime(logger)
    set_dla_core(runtime, settings.dla_core, PLAN_NAME)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise VlaedgeError(
            "engine: TensorRT could not deserialize the plan it just built (see the log above)",
            "run build.sh on the device for trtexec's log",
        )
    inspector = engine.create_engine_inspector()
    context = engine.create_execution_context()
    for name, (_, opt, _) in settings.shapes.items():
        if not context.set_input_shape(name, opt):
            raise VlaedgeError(
                f"engine: the plan refuses input {name} at its opt shape {opt}",
                "check engine.min_batch <= opt_batch <= max_batch",
            )
    inspector.execution_context = context
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def _builder_config(trt: Any, builder: Any, network: Any, s: Any, strong: bool) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_mb << 20)
    if not strong:
        for flag in s.flags:
            config.set_flag(getattr(trt.BuilderFlag, flag.upper()))  # FP16, INT8 (Q/DQ: no calibrator)
    if s.sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if s.dla_core is not None:  # as trtexec --useDLACore [--allowGPUFallback]
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = s.dla_core
        if not strong:  # precision constraints are not allowed on a strongly typed network
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        if s.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        else:  # reformatting runs on the GPU: no I/O reformatting
            config.set_flag(trt.BuilderFlag.DIRECT_IO)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if s.shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in s.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise VlaedgeError(
                f"engine: TensorRT refused the optimization profile {s.shapes}",
                "check engine.min_batch <= opt_batch <= max_batch",
            )
    return config


def _dla_rejected(config: Any, network: Any) -> list[str]:
    """Names of network layers that IBuilderConfig.can_run_on_DLA refuses (they go to the GPU)."""
    layers = (network.get_layer(i) for i in range(network.num_layers))
    return [layer.name for layer in layers if not config.can_run_on_DLA(layer)]


def layer_precision(layer: dict) -> str | None:
    """A layer's compute precision from the inspector JSON's "Format/Datatype" strings (inputs first), or
    None when none of them names a data type ("N/A", missing: TensorRT shows no format)."""
    for io in (*layer.get("Inputs", []), *layer.get("Outputs", [])):
        fmt = str(io.get("Format/Datatype", "")).lower()
        for key, name in (
            ("int8", "int8"),
            ("fp8", "fp8"),
            ("float8", "fp8"),
            ("bfloat16", "bf16"),  # before "float16" and "float", which it contains
            ("bf16", "bf16"),
            ("half", "fp16"),
            ("fp16", "fp16"),
            ("float16", "fp16"),
            ("fp32", "fp32"),
            ("float", "fp32"),
        ):
            if key in fmt:
                return name
    return None


def layer_issues(info: dict, intended: str, dla: bool = False) -> list[str]:
    """Layers that do not run as intended, from the engine inspector's JSON (DETAILED verbosity).

    Args:
        info: `{"Layers": [...]}` as returned by EngineInspector.get_engine_information(JSON); a layer is
            a dict with "Name", "LayerType", "Inputs"/"Outputs" (each with "Format/Datatype"), or just a name
            string when the engine was built without DETAILED verbosity.
        intended: "int8", "fp8", "fp16" or "fp32": what convolution / matrix-multiply layers should run in.
        dla: whether the layers should run on a DLA core.

    Returns:
        One line per offending layer, one line counting convolution / matrix-multiply layers whose precision
        the inspector does not show ("N/A": the check could not be made for them), and one line counting
        fused (Myelin) layers whose precision the inspector does not report.
    """
    issues, opaque, unknown = [], 0, []
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
            if got is None:
                unknown.append(name)
            elif got != intended:
                issues.append(f"{name} ({layer.get('LayerType')}) runs in {got}, intended {intended}")
    if unknown:
        issues.append(
            f"{len(unknown)} convolution/matrix-multiply layer(s) with no format in the layer information "
            f"(e.g. {unknown[0]}): precision unknown, not checked (layer info exported without an execution "
            "context whose input shapes are set?)"
        )
    if opaque:
        issues.append(
            f"{opaque} fused Myelin layer(s): their precision is not reported by the inspector "
            "(check with trtexec --dumpProfile or Nsight Systems)"
        )
    return issues
