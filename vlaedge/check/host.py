"""Where a profile ran and what it cost the process: host and runtime versions, and peak memory.

Memory: for each model, the process's resident set (RSS) is read before the runtime is opened and its
high-water mark after the warm-up runs. The difference ("peak_rss_delta_mb") is what loading and running
that model added to this process at its peak: weights, the runtime's arenas, activations. On Linux the
high-water mark is reset first (writing 5 to `/proc/self/clear_refs`), so the figure is per model; where
that is not possible, the growth of the process's lifetime peak (`getrusage`) is reported instead, a lower
bound ("method" says which). GPU memory is not included. Freed heap memory that the allocator reuses
does not raise RSS, so inside a long process (e.g. `vlaedge compress`) the figure can undercount; a
fresh `vlaedge profile` process gives the model's footprint.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


class MemoryProbe:
    """RSS before, high-water mark after (see the module docstring)."""

    def __init__(self):
        self.method = "vmhwm" if _reset_hwm() else "ru_maxrss"
        self.before = _status_kb("VmRSS") if self.method == "vmhwm" else _maxrss_kb()

    def peak(self) -> dict:
        after = _status_kb("VmHWM") if self.method == "vmhwm" else _maxrss_kb()
        delta = (
            max(0.0, (after - self.before) / 1024.0) if after is not None and self.before is not None else 0.0
        )
        return {
            "peak_rss_delta_mb": round(delta, 2),
            "method": self.method,
            "process_peak_rss_mb": round((after or 0) / 1024.0, 2),
        }


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform == "darwin" else float(peak)  # bytes on macOS, KiB on Linux


def host_info(runtime: str, threads: int | None) -> dict:
    """Host, CPU model, core count, runtime versions and threads, for the record."""
    from vlaedge.info import package_version, tensorrt_version

    return {
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "runtime": runtime,
        "threads": threads,
        "versions": {
            "onnxruntime": package_version("onnxruntime"),
            "torch": package_version("torch"),
            "tensorrt": tensorrt_version(),
        },
    }


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
