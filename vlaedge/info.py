"""What this machine offers vlaedge: dependency versions, GPU, CPU features. Imports nothing heavy
that is missing: every probe is guarded."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from pathlib import Path

PACKAGES = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime",
            "modelopt": "nvidia-modelopt", "tensorrt": "tensorrt"}
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorrt_version() -> str | None:
    """Version of an importable TensorRT (JetPack installs it without pip metadata), or None."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt

        return tensorrt.__version__
    except (ImportError, OSError, AttributeError):  # stub packages and missing libnvinfer
        return None


def cpu_features() -> list[str]:
    """The CPU flags that matter for INT8 inference, from /proc/cpuinfo (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in CPU_FEATURES if f in flags]


def int8_dot_product() -> bool | None:
    """Whether this x86 CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8, all
    `vpdpbusd`-class); False on an x86 CPU with AVX2 only, where ONNX Runtime's u8 x s8 kernels add pairs
    of products in saturating int16; None off x86 or where /proc/cpuinfo cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    features = cpu_features()
    if not features:
        return None
    return any(f in features for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def cuda_devices() -> list[str]:
    """Names of visible CUDA GPUs (empty without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def collect_info() -> dict[str, str]:
    """Everything `vlaedge info` prints, as strings."""
    from vlaedge import __version__

    info = {"vlaedge": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for name, dist in PACKAGES.items():
        version = tensorrt_version() if name == "tensorrt" else package_version(dist)
        info[name] = version or "not installed"
    try:
        import onnxruntime

        info["ort providers"] = ", ".join(onnxruntime.get_available_providers())
    except ImportError:
        pass
    gpus = cuda_devices()
    info["cuda gpu"] = ", ".join(gpus) if gpus else "none"
    info["cpu"] = f"{platform.machine()}, features: {', '.join(cpu_features()) or 'none detected'}"
    return info
