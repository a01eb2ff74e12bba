"""Latency profiling: warm-up, then N timed runs; percentiles, control rate, memory, file size, host.

Several models are timed interleaved in one run (in turns of 20 runs after 3 untimed ones, the starting
model rotated every round) so that clock changes, thermal throttling and other processes affect them
alike; the report gives each model's ratio to the first. With a time box (`max_seconds`, recipe
`verify.profile_max_seconds`) the rounds stop once it is spent and warm-up after a tenth of it: a policy
whose one inference takes seconds (a 450 M VLA with a 10-step expert on a 2-core CPU) is timed in minutes,
not the hour 200 runs of two models would take; the report says how many runs were timed of those asked.

Memory ("peak_rss_delta_mb", what `max_memory_mb` judges): each model file is opened in a fresh process
first (`vlaedge.check.memory`, "method": "fresh process"), with the same runtime, threads and warm-up
feeds, and its peak resident set above the process's baseline is reported: weights, the runtime's arenas,
activations, the same whatever was measured before it or ran earlier in this process. The torch
runtime's policy has no file to open elsewhere: it is measured in this process (`host.MemoryProbe`,
"method" "vmhwm" or "ru_maxrss"). GPU memory is not included.

Load: the machine's load over the timed window is recorded under "load" (`vlaedge.check.host.LoadProbe`:
load average, other processes' share of the CPU, steal), with warnings when it is high.

On a Jetson, `vlaedge.deploy.jetson` (when installed) adds the power mode, clocks and their warnings under
"device" and tegrastats power under "power".
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from vlaedge import progress
from vlaedge.check.host import LoadProbe, MemoryProbe, host_info
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import BATCH, TensorSpec


@dataclass
class LatencyStats:
    """Per-inference wall-clock latency of the timed runs, in milliseconds."""

    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    min_ms: float
    samples_ms: list[float]  # every timed run, in order (for histograms)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        s = np.asarray(samples_ms, np.float64)
        return cls(
            len(s),
            float(np.median(s)),
            float(np.percentile(s, 90)),
            float(np.percentile(s, 99)),
            float(s.max()),
            float(s.mean()),
            float(s.min()),
            [round(float(x), 4) for x in s],
        )


@dataclass
class ModelProfile:
    """One model's measurements."""

    model: str
    runtime: str
    file_bytes: int  # the model file plus its external data files
    latency: LatencyStats
    rate: dict  # inferences_per_s, actions_per_s (whole chunk executed), chunk, control_hz, realtime_margin
    memory: dict  # peak_rss_delta_mb and the method (see the module docstring)
    stages: dict | None = None  # a stage plan's per-stage medians (`stage_times`, issue 23); None: one graph


@dataclass
class ProfileReport:
    """The profile of one or more models on one runtime; truthy when every latency is finite."""

    models: list[ModelProfile]
    runs: int  # timed runs per model (fewer than asked when the time box stopped the rounds)
    warmup: int
    threads: int | None  # None: the runtime's default
    interleaved: bool
    host: dict
    comparisons: list[dict] = field(default_factory=list)  # each model vs the first: latency ratios
    device: dict | None = None  # Jetson power mode and clocks (vlaedge.deploy.jetson)
    power: dict | None = None  # Jetson tegrastats power summary
    load: dict | None = None  # machine load over the timed window (vlaedge.check.host.LoadProbe)
    runs_requested: int | None = None  # the runs asked; None: as many as were timed
    max_seconds: float | None = None  # the time box of the timed runs, s (None: none)

    def __bool__(self) -> bool:
        return bool(self.models) and all(np.isfinite(m.latency.p99_ms) for m in self.models)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A short fixed-width table: one row per model."""
        rows = [
            f"{'model':<28} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8} {'inf/s':>7} {'act/s':>7} "
            f"{'mem MB':>7} {'file MB':>8}"
        ]
        for m in self.models:
            lat = m.latency
            rows.append(
                f"{_short(m.model):<28} {lat.median_ms:8.2f} {lat.p90_ms:8.2f} {lat.p99_ms:8.2f} "
                f"{lat.max_ms:8.2f} {m.rate['inferences_per_s']:7.1f} {m.rate['actions_per_s']:7.1f} "
                f"{m.memory['peak_rss_delta_mb']:7.1f} {m.file_bytes / 1e6:8.2f}"
            )
        rows += [stage_line(m) for m in self.models if m.stages]  # per-stage graphs (issue 23)
        for c in self.comparisons:
            rows.append(
                f"{_short(c['model'])} vs {_short(c['baseline'])}: median x{c['median_ratio']:.3f}, "
                f"p99 x{c['p99_ratio']:.3f}"
            )
        if self.device and self.device.get("warnings"):
            rows.append("device warnings: " + "; ".join(self.device["warnings"]))
        if self.load:
            rows.append(load_line(self.load))
        threads = self.threads or "default"
        rows.append(
            f"{timed_runs(asdict(self))}, threads {threads}, "
            f"{'interleaved' if self.interleaved else 'single model'}, on {self.host.get('cpu')}"
        )
        return "\n".join(rows)


def profile(
    models: Sequence[str | Path],
    runtime: str = "ort-cpu",
    feeds: dict[str, np.ndarray] | None = None,
    policy=None,
    runs: int = 200,
    warmup: int = 20,
    threads: int | None = None,
    control_hz: float | None = None,
    chunk: int | None = None,
    max_seconds: float | None = None,
) -> ProfileReport:
    """Times one or more models on a runtime, interleaved.

    Args:
        models: model files (.onnx); the first is the baseline of the comparisons. With runtime "torch"
            and a policy, pass `[]` to profile the policy's torch module.
        runtime: a name from `vlaedge.runtimes.RUNTIMES`.
        feeds: batch-1 inputs; default: the policy's `example_inputs`, else synthesized from the first
            model's ONNX input metadata (see `synth_feeds`).
        policy: gives input spec, output names and the action chunk; without it they come from the graph.
        runs: timed runs per model (at least 1).
        warmup: untimed runs per model before timing.
        threads: CPU threads for the runtime (None: its default).
        control_hz: the robot's control rate; with it the report gives the real-time margin (how many
            times the chunk's duration, chunk / control_hz, exceeds the p99 latency).
        chunk: actions per inference; default: the policy's, else the first output's dimension 1.
        max_seconds: time box of the timed runs, in seconds (None: always `runs`). The rounds stop after
            the one in which it is spent, so every model gets the same number of runs, at least one round
            (`BLOCK` runs, or `runs` if fewer); each model's warm-up stops after a tenth of it (at least
            one run). The report's `runs` is the number timed, `runs_requested` the number asked.

    Returns:
        The `ProfileReport`.

    Raises:
        VlaedgeError: a missing model file, runs below 1, a runtime that cannot load a model, or
            models whose inputs differ.

    Example:
        >>> report = profile(["runs/cpu-int8/model.onnx", "runs/cpu-int8/model_fp32.onnx"], runs=200)
        >>> print(report.table())
    """
    if runs < 1 or warmup < 0 or (max_seconds is not None and max_seconds <= 0):
        raise VlaedgeError(f"profile: runs={runs}, warmup={warmup}, max_seconds={max_seconds}",
                           "use runs >= 1, warmup >= 0 and a time box above 0 s (or none)")
    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise VlaedgeError(
                f"profile: model {p} does not exist", "pass an .onnx file or a compress output dir"
            )
    if not paths and not (runtime == "torch" and policy is not None):
        raise VlaedgeError(
            "profile: no model given", "pass an .onnx file, or a checkpoint with --runtime torch"
        )
    if policy is None and any(p.suffix == ".json" for p in paths):
        raise VlaedgeError("profile: a stage plan (stages.json) is run through its policy's stage calls",
                           "pass the checkpoint with -c / --checkpoint, or the run folder that names it")
    spec = policy or graph_spec(paths[0])
    feeds = (
        feeds if feeds is not None else (policy.example_inputs(1) if policy else synth_feeds(spec.input_spec))
    )
    jetson = _jetson_module()
    device = jetson.read_device_state() if jetson else None
    from vlaedge.runtimes.staged import SharedStages

    memory = [_fresh_memory(runtime, spec, path, threads, feeds, warmup) for path in paths or [None]]
    shared, opened = SharedStages(), []  # measured first: no child shares the machine with these sessions
    for i, path in enumerate(paths or [None]):
        rt, memory[i], warmed = _open_and_warm(runtime, spec, path, threads, feeds, warmup, memory[i], shared,
                                               max_seconds / 10 if max_seconds else None)
        warmup = min(warmup, warmed)  # the report's figure: what every model had at least
        opened.append(rt)
    chunk = chunk or (policy.action_spec.chunk if policy else _chunk_from_outputs(opened[0].infer(feeds)))
    power = None
    load = LoadProbe()
    if jetson:
        with jetson.PowerMonitor() as monitor:
            samples, stage_samples = _timed_round_robin(opened, feeds, runs, max_seconds)
        power = monitor.summary()
    else:
        samples, stage_samples = _timed_round_robin(opened, feeds, runs, max_seconds)
    load_record = load.stop()
    results = []
    for path, rt, mem, times, per_stage in zip(paths or [None], opened, memory, samples, stage_samples,
                                               strict=True):
        lat = LatencyStats.from_samples(times)
        results.append(
            ModelProfile(
                str(path) if path else "torch:" + getattr(spec, "name", "policy"),
                rt.name,
                model_file_bytes(path) if path else 0,
                lat,
                _rate(lat, chunk, control_hz),
                mem,
            )
        )
        results[-1].stages = stage_times(rt, per_stage, times)  # per-stage graphs (issue 23)
        rt.close()
    base = results[0]
    comparisons = [
        {
            "model": r.model,
            "baseline": base.model,
            "median_ratio": r.latency.median_ms / base.latency.median_ms,
            "p99_ratio": r.latency.p99_ms / base.latency.p99_ms,
        }
        for r in results[1:]
    ]
    return ProfileReport(
        results,
        len(samples[0]),
        warmup,
        threads,
        len(results) > 1,
        host_info(runtime, threads),
        comparisons,
        device,
        power,
        load_record,
        runs,
        max_seconds,
    )


def timed_runs(prof: dict) -> str:
    """How many runs a profile timed, e.g. "20 timed runs (of 200 asked: the 120 s time box was spent) after
    2 warm-up"; `prof` is a `ProfileReport` as a dict (reports before the time box lack its keys)."""
    asked, box = prof.get("runs_requested"), prof.get("max_seconds")
    boxed = f" (of {asked} asked: the {box:g} s time box was spent)" if asked and prof["runs"] < asked else ""
    return f"{prof['runs']} timed runs{boxed} after {prof['warmup']} warm-up"


def load_line(load: dict) -> str:
    """One line describing a load record (`LoadProbe.stop`), warnings included."""

    def share(key: str) -> str:
        return "n/a" if load.get(key) is None else f"{load[key]:.0%}"

    line = (f"machine load: load average {load.get('loadavg_1m_before')} before / "
            f"{load.get('loadavg_1m_after')} after on {load.get('cores')} cores, other processes "
            f"{share('busy_others_share')}, steal {share('steal_share')} of CPU time while timing")
    return line + "".join(f"\nwarning: {w}" for w in load.get("warnings", []))


def _fresh_memory(runtime: str, spec, path: Path | None, threads: int | None, feeds: dict,
                  warmup: int) -> dict | VlaedgeError | None:
    """The memory record of one model file, measured in a fresh process (`vlaedge.check.memory`); the
    error if it failed there (raised once opening it here has said what is wrong, if anything is); None
    for the torch runtime's policy, measured in this process."""
    from vlaedge.check.memory import measure_in_fresh_process

    if path is None or runtime == "torch":
        return None
    try:
        return measure_in_fresh_process(runtime, path, spec, feeds, threads, warmup)
    except VlaedgeError as e:
        return e


def _open_and_warm(runtime: str, spec, path: Path | None, threads: int | None, feeds: dict, warmup: int,
                   memory: dict | VlaedgeError | None, shared=None, max_seconds: float | None = None):
    """Opens one model here for timing and warms it up; returns it, its memory record (`memory`, from
    `_fresh_memory`; None: measured here, the torch runtime's policy) and the warm-up runs made (`warmup`,
    fewer once `max_seconds` is spent, at least one). `shared`: stage sessions shared between the plans
    of this profile (`vlaedge.runtimes.staged.SharedStages`)."""
    from vlaedge.runtimes import open_runtime

    probe = MemoryProbe() if memory is None else None
    rt = open_runtime(runtime, spec, path, threads, shared=shared)
    rt.check_feeds(feeds)
    start, done = time.perf_counter(), 0
    while done < warmup and (done == 0 or max_seconds is None or time.perf_counter() - start < max_seconds):
        rt.infer(feeds)
        done += 1
    if isinstance(memory, VlaedgeError):
        rt.close()
        raise memory
    return rt, memory if memory is not None else probe.peak(), done


BLOCK = 20  # timed runs of one model before the next model's turn
SETTLE = 3  # untimed runs at the start of each turn


def _timed_round_robin(runtimes: list, feeds: dict, runs: int, max_seconds: float | None = None
                       ) -> tuple[list[list[float]], list[list[dict]]]:
    """`runs` timed inferences per runtime, in turns of `BLOCK` runs, rotating which goes first each round;
    returns each runtime's latencies (ms) and, for a stage plan, each timed run's `stage_ms`. Once
    `max_seconds` is spent no further round starts (every runtime has the same number of runs).

    Each turn starts with `SETTLE` untimed runs. Alternating models run by run measured something no
    robot sees: with several threads, the previous model's idle ONNX Runtime workers still spin on the
    cores (the trained `small` policy at 2 threads on 2 cores: FP32 median 15-18 ms alternating run by
    run, 5.4 ms alone, 5.8-6.0 ms in turns of 20-25 after 3-5 settling runs).
    """
    samples: list[list[float]] = [[] for _ in runtimes]
    stage_samples: list[list[dict[str, float]]] = [[] for _ in runtimes]
    n = len(runtimes)
    enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed run would land on whichever model ran then
    rounds, began = -(-runs // BLOCK), time.perf_counter()
    try:
        with progress.stage(f"profile: rounds of {BLOCK} runs x {n} model(s)", rounds) as bar:
            for r in range(rounds):
                if r and max_seconds is not None and time.perf_counter() - began >= max_seconds:
                    break  # the time box is spent: every model has had the same rounds
                count = min(BLOCK, runs - r * BLOCK)
                for k in range(n):
                    i = (r + k) % n
                    for _ in range(SETTLE if n > 1 else 0):
                        runtimes[i].infer(feeds)
                    for _ in range(count):
                        start = time.perf_counter_ns()
                        runtimes[i].infer(feeds)
                        samples[i].append((time.perf_counter_ns() - start) / 1e6)
                        if hasattr(runtimes[i], "stage_ms"):  # a stage plan: what each stage took in this run
                            stage_samples[i].append(dict(runtimes[i].stage_ms))
                bar.advance()
    finally:
        if enabled:
            gc.enable()
    return samples, stage_samples


def _rate(lat: LatencyStats, chunk: int, control_hz: float | None) -> dict:
    rate = {
        "inferences_per_s": 1000.0 / lat.median_ms,
        "actions_per_s": 1000.0 * chunk / lat.median_ms,
        "inferences_per_s_at_p99": 1000.0 / lat.p99_ms,
        "chunk": chunk,
        "control_hz": control_hz,
        "realtime_margin": None,
    }
    if control_hz:
        rate["realtime_margin"] = (chunk / control_hz * 1000.0) / lat.p99_ms
    return rate


def model_file_bytes(path: str | Path) -> int:
    """Size of a model file plus the external data files its ONNX initializers point to."""
    path = Path(path)
    if path.suffix == ".json":  # a stage plan (issue 23): its stage graphs
        return sum(model_file_bytes(f) for f in _plan_files(path))
    total = path.stat().st_size
    if path.suffix != ".onnx":
        return total
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    return total + sum(
        (path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file()
    )


def model_parameter_count(path: str | Path) -> int:
    """Parameters stored in an ONNX file: elements of its initializers, without the scales and zero points
    of Q/DQ nodes (a quantized weight counts once, as its int8 tensor). Pruned models have fewer."""
    import onnx

    if Path(path).suffix == ".json":  # a stage plan (issue 23): its stage graphs
        return sum(model_parameter_count(f) for f in _plan_files(path))

    model = onnx.load(str(path), load_external_data=False)
    qdq_params = {name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  for name in n.input[1:]}
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name not in qdq_params))


def stage_times(runtime, per_stage: list[dict[str, float]], steps_ms: list[float]) -> dict | None:
    """Per-stage medians of a stage plan's timed runs (`vlaedge.runtimes.staged`: its `stage_ms` after each
    run, `per_stage`; the runs' latencies `steps_ms`): {"stages": {name: {"median_ms", "calls",
    "per_call_ms"}}, "step_median_ms", "runs"}; the loop's stage counts all its steps. None for a runtime
    without stages."""
    if not per_stage:  # filled for stage plans only (`_timed_round_robin`)
        return None
    calls = runtime.stage_calls
    stages = {}
    for name in per_stage[0]:
        median = float(np.median([run[name] for run in per_stage]))
        stages[name] = {"median_ms": median, "calls": calls[name], "per_call_ms": median / calls[name]}
    return {"stages": stages, "step_median_ms": float(np.median(steps_ms)), "runs": len(per_stage)}


def stage_line(m: ModelProfile) -> str:
    """One line: each stage's median share of a step (issue 23)."""
    parts = [f"{n} {s['median_ms']:.2f} ms" + (f" ({s['calls']}x {s['per_call_ms']:.2f})" if s["calls"] > 1
                                                else "") for n, s in m.stages["stages"].items()]
    step = m.stages["step_median_ms"]
    return f"stages of {_short(m.model)}: {', '.join(parts)}; whole step {step:.2f} ms (medians)"


def _plan_files(path: Path) -> list[Path]:
    from vlaedge.models.stages import plan_stage_files

    return plan_stage_files(path)


def graph_spec(path: str | Path) -> SimpleNamespace:
    """Input spec and output names read from an ONNX file (for models without a policy).

    A dynamic first dimension becomes the batch; other dynamic dimensions are taken as 1.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        raise VlaedgeError(f"profile: cannot read {path} as ONNX ({e})", "pass an .onnx file") from e
    init = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        shape = tuple(BATCH if (k == 0 and d is None) else (d or 1) for k, d in enumerate(dims))
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)).name
        low, high = _value_range(inp.name, dtype)
        specs.append(TensorSpec(inp.name, shape, dtype, low, high))
    return SimpleNamespace(
        input_spec=tuple(specs), output_names=tuple(o.name for o in model.graph.output), name=Path(path).stem
    )


def _value_range(name: str, dtype: str) -> tuple[float, float]:
    if dtype == "uint8":
        return 0, 255
    if np.issubdtype(np.dtype(dtype), np.integer):
        return 0, 1  # ids 0 (padding) and 1 (unknown word): valid for any vocabulary
    return -1.0, 1.0


def synth_feeds(input_spec: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Batch-1 feeds for a bare ONNX file (no policy, so no declared `source`): uint8 random, integer ids
    small valid values, floats uniform in the spec's range, except an input named `noise` (the name
    vlaedge's exports give the flow noise), standard normal. With a policy, `Policy.example_inputs`
    finds the noise by its `source` instead."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in input_spec:
        shape = s.concrete_shape(1)
        if np.issubdtype(np.dtype(s.dtype), np.integer):
            feeds[s.name] = rng.integers(s.low, s.high + 1, shape).astype(s.dtype)
        elif s.name == "noise":
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        else:
            feeds[s.name] = rng.uniform(s.low, s.high, shape).astype(s.dtype)
    return feeds


def _chunk_from_outputs(outputs: dict[str, np.ndarray]) -> int:
    """Actions per inference from the first output's shape: [B, T, A] or [B, T, A, bins]; else 1."""
    first = next(iter(outputs.values()))
    return int(first.shape[1]) if first.ndim >= 3 else 1


def _jetson_module():
    """`vlaedge.deploy.jetson` when it exists (written for Jetson devices), else None."""
    if importlib.util.find_spec("vlaedge.deploy.jetson") is None:
        return None
    return importlib.import_module("vlaedge.deploy.jetson")


def _short(path: str) -> str:
    from vlaedge.artifact import final_path

    p = final_path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name
