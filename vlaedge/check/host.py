"""Where a profile ran and what it cost the process: host and runtime versions, and peak memory.

Memory (`MemoryProbe`, used by profile only for the torch runtime's policy, which has no file to open
in another process; model files are measured in a fresh process, `vlaedge.check.memory`): the process's
resident set (RSS) is read before the runtime is opened and its high-water mark after the warm-up runs.
On Linux the high-water mark is reset first (writing 5 to `/proc/self/clear_refs`); where that is not
possible, the growth of the process's lifetime peak (`getrusage`) is reported instead, a lower bound
("method" says which). Freed heap memory that the allocator reuses does not raise RSS, so inside a long
process this undercounts. GPU memory is not included.

Load (`LoadProbe`): what else the machine was doing while a profile ran, since a shared CI runner or a
busy laptop moves absolute latencies by tens of percent (two identical demo runs on a loaded machine: p99
within and over the same 50 ms budget). Recorded: the 1-minute load average before and after, and from
the aggregate `cpu` line of `/proc/stat` over the timed window the share of CPU time other processes used
(busy time minus this process's own CPU time) and the steal share (time a hypervisor gave the vCPUs to
another guest; Linux only, absent elsewhere). Ratios between models timed interleaved in the same window
(speedup over FP32) are far less sensitive to load than absolute latencies.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path

# Warning thresholds: shares of all cores' time over the timed window, and load average per core.
BUSY_OTHERS_WARN = 0.25
STEAL_WARN = 0.05
LOADAVG_PER_CORE_WARN = 1.0


class LoadProbe:
    """Machine load over a timed window (see the module docstring); `stop()` returns the record."""

    def __init__(self):
        self.loadavg_before = _loadavg()
        self.stat_before = _proc_stat()
        self.own_before = _own_cpu_s()
        self.wall_before = time.monotonic()

    def stop(self) -> dict:
        """The load record: load averages, other processes' and steal shares (None where unknown), and
        warnings when any exceeds its threshold."""
        after = _proc_stat()
        cores = os.cpu_count() or 1
        others = steal = None
        if self.stat_before and after:
            total = sum(after) - sum(self.stat_before)
            if total > 0:
                hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
                idle = (after[3] + after[4]) - (self.stat_before[3] + self.stat_before[4])
                steal_ticks = after[7] - self.stat_before[7] if len(after) > 7 else 0
                own = (_own_cpu_s() - self.own_before) * hz
                others = max(0.0, (total - idle - steal_ticks - own) / total)
                steal = steal_ticks / total if len(after) > 7 else None
        record = {
            "loadavg_1m_before": self.loadavg_before,
            "loadavg_1m_after": _loadavg(),
            "cores": cores,
            "busy_others_share": None if others is None else round(others, 4),
            "steal_share": None if steal is None else round(steal, 4),
            "window_s": round(time.monotonic() - self.wall_before, 3),
            "warnings": [],
        }
        record["warnings"] = load_warnings(record)
        return record


def load_warnings(load: dict) -> list[str]:
    """Human-readable warnings for a load record whose figures exceed the thresholds above."""
    warnings = []
    others, steal, avg = load.get("busy_others_share"), load.get("steal_share"), load.get("loadavg_1m_before")
    if others is not None and others > BUSY_OTHERS_WARN:
        warnings.append(f"other processes used {others:.0%} of the CPU time while timing (warn above "
                        f"{BUSY_OTHERS_WARN:.0%}): absolute latencies are inflated, compare ratios")
    if steal is not None and steal > STEAL_WARN:
        warnings.append(f"CPU steal {steal:.0%} while timing (warn above {STEAL_WARN:.0%}): the hypervisor "
                        "gave this VM's cores to others")
    if avg is not None and avg > LOADAVG_PER_CORE_WARN * load.get("cores", 1):
        warnings.append(f"load average {avg:.2f} on {load.get('cores')} cores before timing")
    return warnings


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _proc_stat() -> list[int] | None:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ... (ticks)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    return [int(x) for x in first[1:9]]


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


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
    from vlaedge.info import cpu_features, package_version, tensorrt_version

    return {
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
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
