"""Jetson device state and power: nvpmodel mode, jetson_clocks, GPU/EMC clocks, tegrastats power.

Two entry points, both safe to call anywhere (they return None off a Jetson):

- `read_device_state()` -> the power mode, whether clocks are locked, the current GPU and memory clocks,
  and warnings such as "clocks are not locked: run sudo jetson_clocks". Record it with every measurement:
  the same plan can run 4x slower when DVFS keeps the GPU at its lowest clock.
- `PowerMonitor(interval_ms)` -> a context manager sampling power in the background (jtop when
  importable, else `tegrastats`); `.summary()` gives mean / peak W per rail and in total.

The parsers (`parse_tegrastats_line`, `parse_nvpmodel`, `parse_jetson_clocks_show`, `summarize_power`) are
pure functions over the tools' text output, tested on real-format sample lines.
Not run on a real Jetson in this project's CI (there is none); the formats are those of JetPack 5/6.
"""

from __future__ import annotations

import contextlib
import glob
import re
import shutil
import statistics
import subprocess
import threading
from pathlib import Path
from typing import Any

_TOOL_TIMEOUT_S = 10
# A rail reading: "VDD_GPU_SOC 3178mW/3178mW" (JetPack 5/6) or "POM_5V_GPU 1234/1200" (JetPack 4).
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_GR3D_RE = re.compile(r"GR3D_FREQ\s+(\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC_RE = re.compile(r"EMC_FREQ\s+(\d+)%(?:@(\d+))?")
_RAM_RE = re.compile(r"\bRAM\s+(\d+)/(\d+)MB")
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # module input rails; where present they are the total
_NOT_RAILS = {"NC", "RAM", "SWAP"}


def is_jetson(root: Path = Path("/")) -> bool:
    """True when this machine is a Jetson (an L4T release file, or a device-tree model naming Jetson)."""
    if (root / "etc/nv_tegra_release").exists():
        return True
    model = _read_text(root / "proc/device-tree/model")
    return model is not None and "jetson" in model.lower()


def parse_tegrastats_line(line: str) -> dict[str, Any]:
    """One tegrastats line -> {"rails_mw": {name: mW}, "gpu_util", "gpu_freq_mhz", "emc_util",
    "emc_freq_mhz", "ram_used_mb", "ram_total_mb"}; missing fields are absent or None.

    Example:
        >>> parse_tegrastats_line("EMC_FREQ 3%@2133 GR3D_FREQ 9%@[305] VDD_IN 4868mW/4868mW")["rails_mw"]
        {'VDD_IN': 4868}
    """
    rails = {m.group(1): int(m.group(2)) for m in _RAIL_RE.finditer(line) if m.group(1) not in _NOT_RAILS}
    out: dict[str, Any] = {"rails_mw": rails}
    if m := _GR3D_RE.search(line):
        freqs = [int(f) for f in (m.group(2) or "").split(",") if f]
        out["gpu_util"] = int(m.group(1))
        out["gpu_freq_mhz"] = max(freqs) if freqs else None  # one value per GPC on AGX Orin
    if m := _EMC_RE.search(line):
        out["emc_util"] = int(m.group(1))
        out["emc_freq_mhz"] = int(m.group(2)) if m.group(2) else None
    if m := _RAM_RE.search(line):
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    return out


def total_power_mw(rails_mw: dict[str, int]) -> int | None:
    """Module power: the input rail where the module reports one (Orin Nano/NX), else the sum (AGX)."""
    for name in _TOTAL_RAILS:
        if name in rails_mw:
            return rails_mw[name]
    return sum(rails_mw.values()) if rails_mw else None


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """`nvpmodel -q` output -> {"name": "MAXN", "id": 0}; either may be None.

    Example:
        >>> parse_nvpmodel("NV Fan Mode:quiet\\nNV Power Mode: 15W\\n2\\n")
        {'name': '15W', 'id': 2}
    """
    name, mode_id = None, None
    lines = [ln.strip() for ln in text.splitlines()]
    for i, ln in enumerate(lines):
        if m := re.match(r"NV Power Mode:\s*(.+)$", ln):
            name = m.group(1).strip()
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                mode_id = int(lines[i + 1])
    return {"name": name, "id": mode_id}


def parse_jetson_clocks_show(text: str) -> dict[str, Any]:
    """`jetson_clocks --show` output -> GPU/EMC min/max/current Hz and whether the GPU clock is locked.

    Locked means the GPU minimum equals its maximum (what `jetson_clocks` sets); None when not reported.
    """
    out: dict[str, Any] = {}
    for unit in ("GPU", "EMC"):
        m = re.search(rf"^{unit}\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text, re.MULTILINE)
        if m:
            lo, hi, cur = (int(g) for g in m.groups())
            out[unit.lower()] = {"min_hz": lo, "max_hz": hi, "cur_hz": cur}
    gpu = out.get("gpu")
    out["locked"] = None if gpu is None else gpu["min_hz"] == gpu["max_hz"]
    if m := re.search(r"NV Power Mode:\s*(.+)$", text, re.MULTILINE):
        out["power_mode"] = m.group(1).strip()
    return out


def summarize_power(samples: list[dict[str, int]], interval_ms: int, source: str) -> dict[str, Any] | None:
    """Per-sample rail readings (mW) -> mean / peak W per rail and in total; None without samples."""
    if not samples:
        return None
    names = sorted({name for s in samples for name in s})
    rails = {}
    for name in names:
        values = [s[name] / 1000 for s in samples if name in s]
        rails[name] = {"mean_w": round(statistics.fmean(values), 3), "peak_w": round(max(values), 3)}
    totals = [t / 1000 for t in (total_power_mw(s) for s in samples) if t is not None]
    total = (
        {"mean_w": round(statistics.fmean(totals), 3), "peak_w": round(max(totals), 3)} if totals else None
    )
    return {
        "source": source,
        "interval_ms": interval_ms,
        "samples": len(samples),
        "rails": rails,
        "total": total,
    }


def read_device_state() -> dict[str, Any] | None:
    """The Jetson's power mode and clocks, with warnings; None when this is not a Jetson.

    Returns:
        {"model", "nvpmodel": {"name", "id"} | None, "jetson_clocks": bool | None, "gpu_freq_hz",
        "emc_freq_hz", "warnings": [str]}. `jetson_clocks` is None when it could not be read
        (`jetson_clocks --show` needs root; the sysfs devfreq limits are tried next).
    """
    if not is_jetson():
        return None
    model = (_read_text(Path("/proc/device-tree/model")) or "").strip("\x00 \n") or None
    nvp_text = _run(["nvpmodel", "-q"])
    nvpmodel = parse_nvpmodel(nvp_text) if nvp_text else None
    clocks = parse_jetson_clocks_show(_run(["jetson_clocks", "--show"]) or "")
    locked, gpu_hz = clocks.get("locked"), clocks.get("gpu", {}).get("cur_hz")
    if locked is None or gpu_hz is None:
        sys_locked, sys_hz = _gpu_devfreq()
        locked = sys_locked if locked is None else locked
        gpu_hz = sys_hz if gpu_hz is None else gpu_hz
    emc_hz = clocks.get("emc", {}).get("cur_hz") or _emc_rate_hz()
    warnings = []
    if locked is False:
        warnings.append("clocks are not locked: run sudo jetson_clocks")
    elif locked is None:
        warnings.append("could not tell whether clocks are locked (run as root, or run sudo jetson_clocks)")
    if nvpmodel is None or nvpmodel["name"] is None:
        warnings.append("power mode unknown: nvpmodel -q failed")
    return {
        "model": model,
        "nvpmodel": nvpmodel,
        "jetson_clocks": locked,
        "gpu_freq_hz": gpu_hz,
        "emc_freq_hz": emc_hz,
        "warnings": warnings,
    }


class PowerMonitor:
    """Sample module power in the background while a block runs; `.summary()` afterwards.

    Uses jtop (jetson-stats) when importable, else `tegrastats --interval N`. Off a Jetson it does
    nothing and `.summary()` is None.

    Example:
        >>> with PowerMonitor(interval_ms=100) as pm:
        ...     run_benchmark()
        >>> pm.summary()  # {"total": {"mean_w": 14.2, "peak_w": 19.8}, "rails": {...}, ...} or None
    """

    def __init__(self, interval_ms: int = 100):
        self.interval_ms = int(interval_ms)
        self._samples: list[dict[str, int]] = []
        self._source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> PowerMonitor:
        if not is_jetson():
            return self
        if _jtop_available():
            self._source, target = "jtop", self._poll_jtop
        elif shutil.which("tegrastats"):
            self._source, target = "tegrastats", self._read_tegrastats
            self._proc = subprocess.Popen(
                ["tegrastats", "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        else:
            return self
        self._thread = threading.Thread(target=target, name="vlaedge-power", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any] | None:
        """Mean and peak W per rail and total over the block; None off a Jetson or without samples."""
        if self._source is None:
            return None
        return summarize_power(list(self._samples), self.interval_ms, self._source)

    def _read_tegrastats(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None  # set in __enter__
        for line in self._proc.stdout:
            rails = parse_tegrastats_line(line)["rails_mw"]
            if rails:
                self._samples.append(rails)
            if self._stop.is_set():
                break

    def _poll_jtop(self) -> None:
        from jtop import jtop  # optional: jetson-stats

        with jtop(interval=self.interval_ms / 1000) as jetson:
            while not self._stop.is_set() and jetson.ok():
                rails = {name: int(r.get("power", 0)) for name, r in jetson.power.get("rail", {}).items()}
                if rails:
                    self._samples.append(rails)


def _jtop_available() -> bool:
    try:
        import jtop  # noqa: F401
    except ImportError:
        return False
    return True


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def _read_text(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")
    return None


def _gpu_devfreq() -> tuple[bool | None, int | None]:
    """GPU (locked, current Hz) from sysfs devfreq (readable without root)."""
    for dev in sorted(glob.glob("/sys/class/devfreq/*")):
        name = Path(dev).name
        if not any(key in name for key in ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")):
            continue
        vals = [_read_text(Path(dev) / f) for f in ("min_freq", "max_freq", "cur_freq")]
        if all(v and v.strip().isdigit() for v in vals):
            lo, hi, cur = (int(v) for v in vals)  # type: ignore[arg-type]
            return lo == hi, cur
    return None, None


def _emc_rate_hz() -> int | None:
    for path in ("/sys/kernel/debug/bpmp/debug/clk/emc/rate", "/sys/kernel/debug/clk/emc/clk_rate"):
        text = _read_text(Path(path))
        if text and text.strip().isdigit():
            return int(text.strip())
    return None
