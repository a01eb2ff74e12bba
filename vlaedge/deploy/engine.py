"""Engines: a TensorRT plan where TensorRT and a GPU are here, and always an on-device build bundle.

Engines are specific to the GPU model and the TensorRT version, so the real build happens on the Jetson.
`build_engine` writes `engine/` (the bundle) with:

- `model.onnx` (+ its external data files): the explicit Q/DQ ONNX;
- `build.sh`: `trtexec` with the same settings as the Python build (precision / strong typing, the batch
  optimization profile, timing cache, 2:4 sparsity, DLA with GPU fallback, layer info export after one
  inference at the opt shapes, so the layer formats are shown); after the build it writes the plan's
  sidecar `model.plan.json` (TensorRT version, compute capability, DLA core);
- `timing.cache`: carried over from the bundle this one replaces (TensorRT's kernel timings: a rebuild on
  the same GPU and TensorRT version is faster; TensorRT refuses a cache from another);
- `profile.sh`: `vlaedge profile model.onnx --runtime trt` on the device;
- `manifest.json`: sha256 of every file, the target, the settings, and the TensorRT version and compute
  capability of a plan built here (if any).

Precision, from the recipe's `quantize.precision` (TensorRT 10.x, JetPack 6.x ships 10.3):

| quantize          | network        | trtexec flags       | why                                            |
| ----------------- | -------------- | ------------------- | ---------------------------------------------- |
| (none)            | weakly typed   | --fp16              | FP16 tensor cores for an FP32 export            |
| int8              | weakly typed   | --int8 --fp16       | Q/DQ nodes fix the INT8 layers; FP16 elsewhere |
| int8-weight-only  | weakly typed   | --int8 --fp16       | INT8 weights, FP16 activations (GEMM I/O fp16) |
| fp8, int4-w-only  | strongly typed | --stronglyTyped     | types come from the Q/DQ graph itself          |

INT8 comes only from the Q/DQ nodes (explicit quantization): there is no calibrator and no calibration
cache anywhere (TensorRT 10.1 deprecated implicit INT8 calibration, 11 removed it). TensorRT 10.12
deprecated the FP16/INT8 flags (Thor's 10.13 still takes them; the build notes say so); with TensorRT >= 11
(flags removed) the Python build switches to strong typing. trtexec's `--int8` on an ONNX without Q/DQ
nodes makes trtexec invent placeholder scales; vlaedge only passes `--int8` for a quantized (Q/DQ) export.

`vlaedge.runtimes.plan.check_plan_compatible` reads the sidecar before a plan is loaded and refuses a plan
built by another TensorRT version or for another compute capability, with the fix (rebuild with build.sh
on this device).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlaedge.artifact import final_path, sha256
from vlaedge.deploy.bundle import CACHE_NAME, LAYERS_NAME, build_script, profile_script
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import EngineConfig
from vlaedge.runtimes.plan import ENGINE_DIR, ONNX_NAME, PLAN_NAME, gpu_compute_capability, write_plan_sidecar
from vlaedge.targets import Target, get_target

_STRONG = ("fp8", "int4-weight-only")
_INT8 = ("int8", "int8-weight-only")


@dataclass(frozen=True)
class BuildSettings:
    """How to build, derived from the recipe's engine section, the target and the quantize precision."""

    precision: str | None  # quantize.precision, None for an FP32 export
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED / --stronglyTyped
    flags: tuple[str, ...]  # weakly typed precision flags: "fp16", "int8"
    sparsity: bool  # BuilderFlag.SPARSE_WEIGHTS / --sparsity=enable
    dla_core: int | None  # default_device_type DLA on this core / --useDLACore
    gpu_fallback: bool  # BuilderFlag.GPU_FALLBACK / --allowGPUFallback
    workspace_mb: int  # MemoryPoolType.WORKSPACE / --memPoolSize=workspace:N (MiB)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> min, opt, max
    notes: tuple[str, ...] = ()

    @property
    def intended(self) -> str:
        """The precision the GEMM/conv layers should run in, as the inspector shows their I/O formats
        (weight-only INT8: INT8 weights, FP16 activations)."""
        if self.precision == "int8":
            return "int8"
        if self.precision == "fp8":
            return "fp8"
        return "fp16" if "fp16" in self.flags else "fp32"


@dataclass
class EngineResult:
    """What `build_engine` wrote: always a bundle; a plan when TensorRT and a GPU were here. Truthy."""

    bundle: str  # the engine/ directory
    target: str
    settings: dict
    trtexec: list[str]  # the trtexec arguments in build.sh
    plan: str | None = None
    tensorrt: str | None = None  # version the plan was built with
    compute_capability: str | None = None
    skipped: str = ""  # why no plan was built here
    issues: list[str] = field(default_factory=list)  # layers not in the intended precision / device
    notes: list[str] = field(default_factory=list)  # build facts (timing cache reuse, deprecated flags)
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return True

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        head = f"engine bundle {final_path(self.bundle)} for {self.target}: run build.sh on the device"
        if self.plan:
            head = (
                f"TensorRT {self.tensorrt} plan {self.plan} (compute capability {self.compute_capability})"
                f"; bundle {final_path(self.bundle)}"
            )
        lines = [head, "  " + shlex.join(["trtexec", *self.trtexec])]
        if self.skipped:
            lines.append(f"  no plan built here: {self.skipped}")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  layer: {i}" for i in self.issues[:20]]
        if len(self.issues) > 20:
            lines.append(f"  ... {len(self.issues) - 20} more in layers.json")
        return "\n".join(lines)


def build_engine(
    onnx_path: str | Path,
    config: EngineConfig,
    target: Target | str,
    precision: str | None,
    out_dir: str | Path,
) -> EngineResult:
    """Writes the on-device bundle to `out_dir/engine/`, and builds a plan there too when TensorRT imports
    and a GPU is present (and `config.build`).

    Args:
        onnx_path: the exported (Q/DQ) ONNX.
        config: the recipe's engine section.
        target: the target (or its name); must run TensorRT.
        precision: the recipe's `quantize.precision`, or None for an unquantized export.
        out_dir: the output directory; `engine/` is created inside it (replaced if present; its
            timing.cache is kept).

    Returns:
        The `EngineResult`: bundle path, trtexec arguments, and the plan with its layer issues if built.

    Raises:
        VlaedgeError: a target without TensorRT, a missing ONNX, or a TensorRT build that failed here.

    Example:
        >>> r = build_engine("runs/orin/model.onnx", recipe.engine, "agx-orin-64gb", "int8", "runs/orin")
        >>> print(r.summary())
    """
    start = time.perf_counter()
    target = get_target(target) if isinstance(target, str) else target
    onnx_path = Path(onnx_path)
    if target.runtime != "tensorrt":
        raise VlaedgeError(
            f"engine: {target.name} runs ONNX Runtime, not TensorRT: there is no engine to build",
            "pick a TensorRT target (vlaedge targets)",
        )
    if not onnx_path.is_file():
        raise VlaedgeError(f"engine: {onnx_path} does not exist", "export the model first (vlaedge compress)")
    settings = build_settings(config, precision, onnx_input_shapes(onnx_path))
    bundle = Path(out_dir) / ENGINE_DIR
    cache = bundle / CACHE_NAME
    timings = cache.read_bytes() if cache.is_file() else None  # TensorRT's timings outlive the bundle
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    if timings:
        cache.write_bytes(timings)
    copy_onnx(onnx_path, bundle)
    args = trtexec_args(settings)
    (bundle / "build.sh").write_text(build_script(args, target, settings.dla_core))
    (bundle / "profile.sh").write_text(profile_script())
    for script in ("build.sh", "profile.sh"):
        (bundle / script).chmod(0o755)
    result = EngineResult(str(bundle), target.name, asdict(settings), args)
    result.skipped = _why_no_build(config)
    if not result.skipped:
        from vlaedge.deploy.trt_build import build_plan

        built = build_plan(bundle / ONNX_NAME, settings, bundle)
        write_plan_sidecar(
            bundle / PLAN_NAME, built.tensorrt, built.compute_capability, target.name, settings.dla_core
        )
        result.plan, result.tensorrt = str(bundle / PLAN_NAME), built.tensorrt
        result.compute_capability, result.issues = built.compute_capability, built.issues
        result.notes = built.notes
    write_bundle_manifest(bundle, target, settings, args, result)
    result.seconds = time.perf_counter() - start
    return result


def build_settings(
    config: EngineConfig, precision: str | None, input_shapes: dict[str, tuple[int | None, ...]]
) -> BuildSettings:
    """The build settings for a recipe's engine section and quantize precision on an ONNX's inputs.

    A dynamic first dimension is the batch (min/opt/max from the config); other dynamic dimensions are
    not supported by the bundle (fix them at export).

    Raises:
        VlaedgeError: an input with a dynamic dimension other than the batch.
    """
    strong = precision in _STRONG
    flags = () if strong else (("int8", "fp16") if precision in _INT8 else ("fp16",))
    shapes, notes = {}, []
    for name, dims in input_shapes.items():
        if any(d is None for d in dims[1:]):
            raise VlaedgeError(
                f"engine: input {name} has dynamic dimensions {list(dims)} besides the batch",
                "export with fixed image/sequence sizes; only the batch may be dynamic",
            )
        if dims and dims[0] is None:
            rest = tuple(int(d) for d in dims[1:])
            shapes[name] = tuple((b, *rest) for b in (config.min_batch, config.opt_batch, config.max_batch))
    if not shapes and input_shapes:
        notes.append("the ONNX has a static batch: no optimization profile (min/opt/max_batch unused)")
    return BuildSettings(
        precision,
        strong,
        flags,
        config.sparsity,
        config.dla_core,
        config.gpu_fallback,
        config.workspace_mb,
        shapes,
        tuple(notes),
    )


def trtexec_args(s: BuildSettings) -> list[str]:
    """The trtexec arguments (without the program) that build the same engine as the Python API path.

    The layer information is exported after one short inference at the opt shapes (`--shapes`), not with
    `--skipInference`: without an execution context whose shapes are set, trtexec exports layer info with
    no formats for dynamic shapes, and the precision check could not be made.
    """
    args = [f"--onnx={ONNX_NAME}", f"--saveEngine={PLAN_NAME}"]
    args += ["--stronglyTyped"] if s.strongly_typed else [f"--{f}" for f in s.flags]
    if s.sparsity:
        args.append("--sparsity=enable")
    if s.dla_core is not None:
        args.append(f"--useDLACore={s.dla_core}")
        if s.gpu_fallback:
            args.append("--allowGPUFallback")
    if s.shapes:  # min, opt, max of the profile; --shapes (the inference's) = opt
        for flag, i in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2), ("--shapes", 1)):
            spec = ",".join(f"{_shape_name(n)}:{'x'.join(map(str, dims[i]))}" for n, dims in s.shapes.items())
            args.append(f"{flag}={spec}")
    args += [
        f"--memPoolSize=workspace:{s.workspace_mb}",
        f"--timingCacheFile={CACHE_NAME}",
        "--profilingVerbosity=detailed",
        f"--exportLayerInfo={LAYERS_NAME}",
        "--iterations=1",  # one inference (with its context) so the layer info has formats; no timing
        "--duration=0",
        "--warmUp=0",
    ]
    return args


def _shape_name(name: str) -> str:
    """trtexec shape specs separate with ':' and ','; names containing them are single-quoted."""
    return f"'{name}'" if any(c in name for c in ":,'") else name


def write_bundle_manifest(
    bundle: Path, target: Target, settings: BuildSettings, args: list[str], result: EngineResult
) -> None:
    """manifest.json: every file of the bundle with its sha256, the target and the build settings."""
    files = {
        str(p.relative_to(bundle)): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = {
        "target": target.name,
        "gpu": target.label,
        "compute_capability": target.compute_capability,
        "expected_tensorrt": target.tensorrt,
        "settings": asdict(settings),
        "trtexec": args,
        "plan": {
            "path": PLAN_NAME,
            "tensorrt": result.tensorrt,
            "compute_capability": result.compute_capability,
        }
        if result.plan
        else None,
        "plan_skipped": result.skipped or None,
        "issues": result.issues,
        "notes": result.notes,
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def onnx_input_shapes(path: Path) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (not initializers) -> dims, None for a dynamic dimension."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return {
        i.name: tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in i.type.tensor_type.shape.dim
        )
        for i in model.graph.input
        if i.name not in init
    }


def copy_onnx(path: Path, dest_dir: Path) -> list[Path]:
    """Copies the ONNX as model.onnx with its external data files (same relative names)."""
    copied = [Path(shutil.copyfile(path, dest_dir / ONNX_NAME))]
    for loc in external_data(path):
        (dest_dir / loc).parent.mkdir(parents=True, exist_ok=True)
        copied.append(Path(shutil.copyfile(path.parent / loc, dest_dir / loc)))
    return copied


def detect_precision(path: str | Path) -> str | None:
    """The quantized precision of an ONNX from its Q/DQ nodes: "fp8", "int8", or None (no Q/DQ)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name: i.data_type for i in model.graph.initializer}
    found = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = init.get(node.input[2]) if len(node.input) > 2 else None
            found.add("fp8" if zero in (17, 18, 19, 20) else "int8")
    return "fp8" if "fp8" in found else "int8" if found else None


def external_data(path: Path) -> list[str]:
    """The external data files an ONNX refers to, relative to its folder.

    Raises:
        VlaedgeError: one of them is missing.
    """
    from vlaedge.onnx_file import external_data_files

    return [str(f.relative_to(path.parent)) for f in external_data_files(path, "engine")]


def _why_no_build(config: EngineConfig) -> str:
    """Empty when a plan can be built here, else the reason."""
    if not config.build:
        return "engine.build is false"
    from vlaedge.info import tensorrt_version

    if tensorrt_version() is None:
        return "TensorRT is not importable here"
    if not gpu_compute_capability():
        return "no CUDA GPU visible here"
    return ""
