"""Peak memory of one model, measured in a fresh process, so nothing that ran before can change it.

Measured in the process that profiles, the figure depended on its history: memory the allocator had
freed earlier was reused without raising the resident set (a 462 MB FP32 model "added" 35 MB inside
`vlaedge compress` and 842 MB in a fresh `vlaedge profile`), and it read 0.0-0.1 MB per model on some
machines. Here, for each model, a child Python process (`python -m vlaedge.check.memory REQUEST.json`)
imports numpy, ONNX Runtime and vlaedge's runtimes, reads its resident set (VmRSS), opens the model with
the same runtime, threads and Q/DQ setting as the profile, runs the warm-up feeds, and reports its peak
(VmHWM, or VmRSS if larger) minus that baseline, as JSON: what loading and
running the model takes (weights, ONNX Runtime's arenas and pre-packed weights, activations), whatever
ran before. Without /proc (macOS) the baseline is getrusage's peak. GPU memory is not included. Timing
stays in the profiling process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from vlaedge.check.host import _maxrss_kb, _status_kb  # /proc readers shared with the in-process probe

METHOD = "fresh process"
MAX_WARMUP = 3  # runs in the child: ONNX Runtime's arena and memory pattern are settled after the second
TIMEOUT_S = 1800


def measure_in_fresh_process(runtime: str, model: str | Path, spec, feeds: dict, threads: int | None,
                             warmup: int, qdq: str = "fused") -> dict:
    """The peak memory of `model` on `runtime`, measured in a new Python process.

    Args:
        runtime: an ONNX Runtime (or trt) name from `vlaedge.runtimes.RUNTIMES`.
        model: the .onnx file (or stage plan).
        spec: has `input_spec` and `output_names` (a `Policy` or `profile.graph_spec`).
        feeds: the warm-up inputs (batch 1).
        threads: intra-op threads, as in the profile.
        warmup: the profile's warm-up runs; the child runs min(warmup, MAX_WARMUP), at least one.
        qdq: "fused" or "simulated" (`vlaedge.runtimes.ort`).

    Returns:
        {"peak_rss_delta_mb", "method": "fresh process", "counter" ("VmHWM" or "ru_maxrss"),
        "baseline_rss_mb", "process_peak_rss_mb"}.

    Raises:
        VlaedgeError: the child failed (its last error line is quoted) or ran past TIMEOUT_S.
    """
    import numpy as np

    from vlaedge.errors import VlaedgeError

    with tempfile.TemporaryDirectory(prefix="vlaedge-memory-") as tmp:
        np.savez(Path(tmp) / "feeds.npz", **feeds)
        request = {
            "runtime": runtime, "model": str(Path(model).resolve()), "threads": threads, "qdq": qdq,
            "runs": max(1, min(warmup, MAX_WARMUP)), "feeds": str(Path(tmp) / "feeds.npz"),
            "inputs": [asdict(s) for s in spec.input_spec], "outputs": list(spec.output_names),
        }
        (Path(tmp) / "request.json").write_text(json.dumps(request, default=_plain))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        try:
            command = [sys.executable, "-m", "vlaedge.check.memory", str(Path(tmp) / "request.json")]
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise VlaedgeError(f"profile: measuring the memory of {model} took over {TIMEOUT_S} s",
                               "profile a smaller model, or check the machine's load") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        raise VlaedgeError(f"profile: measuring the memory of {model} in a fresh process failed: {last}",
                           "run 'vlaedge profile' on the model alone to see the error")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _plain(value):
    """numpy scalars in a spec (an adapter's low/high or shape) as Python numbers."""
    return value.item() if hasattr(value, "item") else str(value)


def _child(request_file: str) -> dict:
    """Runs in the fresh process: baseline, open, warm up, peak."""
    from types import SimpleNamespace

    import numpy as np
    import onnxruntime  # noqa: F401 (imported before the baseline: the runtime is not the model)

    from vlaedge.models.base import TensorSpec
    from vlaedge.runtimes import open_runtime

    request = json.loads(Path(request_file).read_text())
    with np.load(request["feeds"]) as data:
        feeds = {k: data[k] for k in data.files}
    spec = SimpleNamespace(input_spec=tuple(TensorSpec(**{**s, "shape": tuple(s["shape"])})
                                            for s in request["inputs"]),
                           output_names=tuple(request["outputs"]))
    counter = "VmHWM" if _status_kb("VmHWM") is not None else "ru_maxrss"
    before = _status_kb("VmRSS") if counter == "VmHWM" else _maxrss_kb()
    runtime = open_runtime(request["runtime"], spec, request["model"], request["threads"],
                           qdq=request["qdq"])
    for _ in range(request["runs"]):
        runtime.infer(feeds)
    after = _peak_kb()
    return {"peak_rss_delta_mb": round(max(0.0, after - before) / 1024.0, 2), "method": METHOD,
            "counter": counter, "baseline_rss_mb": round(before / 1024.0, 2),
            "process_peak_rss_mb": round(after / 1024.0, 2)}


def _peak_kb() -> float:
    """The process's peak resident set so far, KiB: VmHWM, never below the current VmRSS (whatever a
    sandboxed /proc reports). getrusage's maximum only without /proc: on Linux it is not this process's
    own, since exec keeps the peak of the process that forked it (a profiler holding a large model)."""
    values = [v for v in (_status_kb("VmHWM"), _status_kb("VmRSS")) if v is not None]
    return max(values) if values else _maxrss_kb()


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
