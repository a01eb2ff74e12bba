"""TensorRT plan files: where a model's plan lives, the sidecar that says what it was built for, and the
check made before one is loaded.

A plan is `model.plan` next to the bundle's `model.onnx` (`plan_for`), with a sidecar `model.plan.json`
(`write_plan_sidecar`; build.sh writes the same one) holding the TensorRT version, the GPU compute capability,
the DLA core (null: the GPU), the target and the plan's sha256. Plans load only in the TensorRT version
(major.minor.patch) and on the compute capability they were built for, so `check_plan_compatible` refuses
any other before TensorRT is asked to deserialize it; the `trt` runtime sets the recorded DLA core before
it deserializes. Shared by the `trt` runtime (which loads plans) and `vlaedge.deploy` (which builds
them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlaedge.artifact import sha256
from vlaedge.errors import VlaedgeError
from vlaedge.info import tensorrt_version

ENGINE_DIR = "engine"  # the bundle folder inside a compress output directory
ONNX_NAME, PLAN_NAME = "model.onnx", "model.plan"
SIDECAR_SUFFIX = ".json"  # model.plan -> model.plan.json


def gpu_compute_capability() -> str | None:
    """'8.7' for the current CUDA device, via torch; None without a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def write_plan_sidecar(
    plan: Path,
    tensorrt: str | None,
    compute_capability: str | None,
    target: str,
    dla_core: int | None = None,
    built_with: str = "python",
) -> Path:
    """Writes `<plan>.json` next to the plan: the TensorRT version, compute capability and DLA core (None:
    the GPU) it is for."""
    side = plan.with_name(plan.name + SIDECAR_SUFFIX)
    side.write_text(
        json.dumps(
            {
                "tensorrt": tensorrt,
                "compute_capability": compute_capability,
                "dla_core": dla_core,
                "target": target,
                "built_with": built_with,
                "plan_sha256": sha256(plan),
            }
        )
        + "\n"
    )
    return side


def check_plan_compatible(
    plan: str | Path, tensorrt: str | None = None, compute_capability: str | None = None
) -> dict[str, Any]:
    """Refuses a plan built with another TensorRT version or for another GPU, before it is loaded.

    Args:
        plan: the .plan file; its sidecar `<plan>.json` (from build.sh or build_engine) must exist.
        tensorrt: the TensorRT version here (default: the importable one).
        compute_capability: this GPU's, e.g. "8.7" (default: the current CUDA device's).

    Returns:
        The sidecar's content; its "dla_core" (int, or None for the GPU) is what the runtime must set before
        deserializing.

    Raises:
        VlaedgeError: missing plan or sidecar, a sidecar without a valid "dla_core" (written before the DLA
            core was recorded), or a TensorRT / compute capability mismatch.
    """
    plan = Path(plan)
    side = plan.with_name(plan.name + SIDECAR_SUFFIX)
    rebuild = f"rebuild it on this device: {plan.parent / 'build.sh'}"
    if not plan.is_file():
        raise VlaedgeError(
            f"trt: no engine plan at {plan}", f"build it on this device: {plan.parent / 'build.sh'}"
        )
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise VlaedgeError(
            f"trt: {side} is missing or unreadable ({e.__class__.__name__}); without it the "
            "plan's TensorRT version and GPU are unknown",
            rebuild,
        ) from e
    core = meta.get("dla_core", "missing")
    if core is not None and (not isinstance(core, int) or isinstance(core, bool) or core < 0):
        raise VlaedgeError(
            f"trt: {side.name} records no valid DLA core (dla_core: {core}): the plan's core is unknown",
            rebuild,
        )
    if tensorrt is None:
        tensorrt = tensorrt_version()
    compute_capability = compute_capability or gpu_compute_capability()
    built, here = _version3(meta.get("tensorrt")), _version3(tensorrt)
    if not built or not here or built != here:
        raise VlaedgeError(
            f"trt: {plan.name} was built with TensorRT {meta.get('tensorrt') or 'unknown'}, "
            f"this machine has {tensorrt or 'none'}; plans load only in the same version",
            rebuild,
        )
    if not meta.get("compute_capability") or meta["compute_capability"] != compute_capability:
        raise VlaedgeError(
            f"trt: {plan.name} was built for compute capability "
            f"{meta.get('compute_capability') or 'unknown'}, this GPU is {compute_capability or 'absent'}",
            rebuild,
        )
    return meta


def _version3(version: str | None) -> tuple[str, ...] | None:
    """'10.3.0.30' -> ('10', '3', '0'); plans are tied to major.minor.patch."""
    if not version:
        return None
    parts = version.strip().split(".")
    return tuple((parts + ["0", "0"])[:3])


def plan_for(model: str | Path) -> Path:
    """The plan for a model path: itself for .plan/.engine, else model.plan next to the .onnx."""
    model = Path(model)
    if model.is_dir():
        model = model / ENGINE_DIR / ONNX_NAME if (model / ENGINE_DIR).is_dir() else model / ONNX_NAME
    return model if model.suffix in (".plan", ".engine") else model.with_suffix(".plan")
