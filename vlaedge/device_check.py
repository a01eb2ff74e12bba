"""`vlaedge device-check RUN_DIR`: the one check to run on the device (a Jetson, or any machine with TensorRT
and a CUDA GPU) after `vlaedge compress` made RUN_DIR elsewhere.

It builds the run's TensorRT plan here (the Python API build, or the bundle's own build.sh with trtexec),
runs that plan (the `trt` runtime) and ONNX Runtime on the same ONNX and the same evaluation frames of the
run's recorded split, measures how far the plan's outputs and decoded actions are from ONNX Runtime's (so
TensorRT's own effect is separated from quantization's, which `vlaedge verify` measures against the FP32
policy), profiles the plan, prints one summary and writes `RUN_DIR/device_check.json`. Where TensorRT or a
GPU is missing it refuses with one line before touching anything.

`fleet` runs `vlaedge profile` or `vlaedge device-check` on every device of an inventory file over SSH at
once (`vlaedge.deploy.fleet`) and judges each device against its own target's budgets: one table per
device in OUT/fleet.md, the figures in OUT/fleet.json, nothing at OUT unless every device answered.

Like `vlaedge.pipeline`, it strings stages of several wings together (deploy: the build; check: drift and
profile), so it sits at the pipeline's layer, above the wings. NOT RUN ON REAL TENSORRT: no machine of this
project has TensorRT and a GPU; the refusals and the comparison (on two ONNX Runtime sessions) are tested.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError

BUILDERS = ("python", "trtexec")
REPORT_NAME = "device_check.json"


@dataclass
class DeviceCheck:
    """What `device_check` measured. Truthy when the plan's actions are finite."""

    run: str
    plan: str
    tensorrt: str
    compute_capability: str
    builder: str  # "python" (TensorRT Python API) or "trtexec" (the bundle's build.sh)
    build_seconds: float
    issues: list[str] = field(default_factory=list)  # layers not in the intended precision / device
    notes: list[str] = field(default_factory=list)
    compare: dict | None = None  # the plan against ONNX Runtime (see `compare_runtimes`)
    compare_skipped: str = ""  # why ONNX Runtime could not run the ONNX (e.g. an FP8 export)
    profile: dict | None = None  # the plan's latency and rate (vlaedge.check.profile.ProfileReport)

    def __bool__(self) -> bool:
        return self.compare is None or self.compare["nonfinite"] == 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"device-check {self.run}: TensorRT {self.tensorrt}, compute capability "
                 f"{self.compute_capability}, plan built with {self.builder} in {self.build_seconds:.1f} s"]
        if self.compare:
            c = self.compare
            worst = max(c["outputs"].items(), key=lambda kv: kv[1]["max_abs"])
            lines.append(f"  vs ONNX Runtime on {c['frames']} evaluation frames: actions mean "
                         f"{c['drift_mean_pct']:.3f}% / p99 {c['drift_p99_pct']:.3f}% / max "
                         f"{c['drift_max_pct']:.3f}% of range; largest output difference "
                         f"{worst[1]['max_abs']:.3g} ({worst[0]}); {c['nonfinite']} non-finite")
        else:
            lines.append(f"  vs ONNX Runtime: not compared ({self.compare_skipped})")
        if self.profile:
            p = self.profile
            lines.append(f"  latency median {p['median_ms']:.3f} ms, p99 {p['p99_ms']:.3f} ms "
                         f"({p['inferences_per_s']:.1f} inferences/s, batch 1, {p['runs']} runs)")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  layer: {i}" for i in self.issues[:10]]
        if len(self.issues) > 10:
            lines.append(f"  ... {len(self.issues) - 10} more layer issues in {REPORT_NAME}")
        return "\n".join(lines)


def preflight() -> tuple[str, str]:
    """(TensorRT version, compute capability) of this machine.

    Raises:
        VlaedgeError: TensorRT does not import, or torch sees no CUDA GPU.
    """
    from vlaedge.info import tensorrt_version
    from vlaedge.runtimes.plan import gpu_compute_capability

    version = tensorrt_version()
    if version is None:
        raise VlaedgeError(
            "device-check: TensorRT is not importable here: the device check runs on the device",
            "on the Jetson: make setup-jetson (keeps JetPack's TensorRT and torch), then "
            ".venv-jetson/bin/vlaedge device-check RUN_DIR",
        )
    capability = gpu_compute_capability()
    if capability is None:
        raise VlaedgeError(
            "device-check: no CUDA GPU visible to torch",
            "run on the Jetson/GPU machine with a CUDA torch (on a Jetson JetPack's: make setup-jetson)",
        )
    return version, capability


def device_check(run_dir: str | Path, frames: int = 64, runs: int = 200, warmup: int = 20,
                 builder: str = "python", seed: int = 0, log=print, trust_code: bool = False) -> DeviceCheck:
    """Builds RUN_DIR's plan here, compares it with ONNX Runtime on the evaluation frames, profiles it.

    Args:
        run_dir: a `vlaedge compress` output directory whose recipe has an engine section.
        frames: evaluation frames compared (at most the split's).
        runs: timed runs of the plan (batch 1); warmup: untimed runs before.
        builder: "python" (TensorRT Python API, `vlaedge.deploy.engine.build_engine`) or "trtexec" (the
            bundle's build.sh).
        seed: seeds the frame draw and `make_inputs` (a flow head's noise).
        log: where progress lines go.

    Returns:
        The `DeviceCheck` (also written to RUN_DIR/device_check.json).

    Raises:
        VlaedgeError: no TensorRT or GPU here, RUN_DIR is not a TensorRT run, or a stage failed.
    """
    trt_version, capability = preflight()
    if builder not in BUILDERS:
        raise VlaedgeError(f"device-check: unknown builder {builder!r}", f"use one of {', '.join(BUILDERS)}")
    from vlaedge.artifact import resolve_model
    from vlaedge.recipe import validate_recipe

    run_dir = Path(run_dir)
    resolved = resolve_model(run_dir) if (run_dir / "manifest.json").is_file() else None
    if resolved is None or "recipe" not in resolved.manifest:
        raise VlaedgeError(f"device-check: {run_dir} is not a 'vlaedge compress' output directory",
                           "pass the directory 'vlaedge compress --recipe ... --out DIR' wrote")
    recipe = validate_recipe(resolved.manifest["recipe"], f"{run_dir}/manifest.json recipe")
    log(f"device-check: building the {recipe.target} plan with {builder}")
    check = _build(run_dir, recipe, builder, trt_version, capability)
    onnx = run_dir / "engine" / "model.onnx"
    policy, evaluation = _reference(resolved, trust_code)
    batch = _batch(check.plan, recipe)
    from vlaedge.data import sample_frames
    from vlaedge.runtimes import open_runtime, qdq_arithmetic

    candidate = open_runtime("trt", policy, onnx)
    try:  # ONNX Runtime computes a TensorRT Q/DQ graph with fusion off: the arithmetic TensorRT runs
        reference = open_runtime("ort-cpu", policy, onnx, qdq=qdq_arithmetic(None, onnx))
    except VlaedgeError as e:
        check.compare_skipped = f"ONNX Runtime cannot load it: {e.message[:160]}"
    else:
        n = min(frames, evaluation.num_frames)
        log(f"device-check: plan vs ONNX Runtime on {n} evaluation frames, batch {batch}")
        check.compare = compare_runtimes(policy, reference, candidate, sample_frames(evaluation, n, seed),
                                         batch, seed)
        reference.close()
    candidate.close()
    log(f"device-check: profiling the plan ({runs} runs)")
    check.profile = _profile(onnx, policy, evaluation, runs, warmup, seed)
    (run_dir / REPORT_NAME).write_text(json.dumps(check.to_dict(), indent=1) + "\n")
    return check


def compare_runtimes(policy, reference, candidate, frames: dict, batch: int, seed: int = 0) -> dict:
    """The candidate runtime's outputs and decoded actions against the reference runtime's, on identical
    feeds (`policy.make_inputs` per batch, seeded).

    Returns:
        {"frames", "batch", "outputs": {name: {"max_abs", "mean_abs"}}, "drift_mean_pct", "drift_p99_pct",
        "drift_max_pct" (actions, % of each dimension's range), "nonfinite" (candidate action values)}.
    """
    from vlaedge.check.drift import action_drift

    n = len(frames["instruction"])
    diffs: dict[str, list[np.ndarray]] = {}
    ref_actions, cand_actions = [], []
    for start in range(0, n, batch):
        feeds = policy.make_inputs({k: v[start:start + batch] for k, v in frames.items()}, seed=seed + start)
        ref, cand = reference.infer(feeds), candidate.infer(feeds)
        for name in policy.output_names:
            diffs.setdefault(name, []).append(np.abs(cand[name].astype(np.float64) - ref[name]).ravel())
        ref_actions.append(policy.decode(ref))
        cand_actions.append(policy.decode(cand))
    drift = action_drift(np.concatenate(ref_actions), np.concatenate(cand_actions), policy.action_spec)
    outputs = {}
    for name, parts in diffs.items():
        d = np.concatenate(parts)
        outputs[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean())}  # NaN if any is
    return {"frames": n, "batch": batch, "outputs": outputs, "drift_mean_pct": drift.mean_pct,
            "drift_p99_pct": drift.p99_pct, "drift_max_pct": drift.max_pct, "nonfinite": drift.nonfinite}


def _build(run_dir: Path, recipe, builder: str, trt_version: str, capability: str) -> DeviceCheck:
    """The bundle and its plan, built here with the Python API or with build.sh (trtexec)."""
    from vlaedge.deploy.engine import build_engine
    from vlaedge.recipe import EngineConfig

    config = (recipe.engine or EngineConfig()).model_copy(update={"build": builder == "python"})
    precision = recipe.quantize.precision if recipe.quantize else None
    start = time.perf_counter()
    result = build_engine(run_dir / "model.onnx", config, recipe.target, precision, run_dir)
    issues = result.issues if builder == "python" else _run_build_sh(Path(result.bundle), result.settings)
    return DeviceCheck(str(run_dir), str(Path(result.bundle) / "model.plan"), trt_version, capability,
                       builder, time.perf_counter() - start, issues, result.notes)


def _run_build_sh(bundle: Path, settings: dict) -> list[str]:
    """Runs the bundle's build.sh (trtexec); returns the layer issues from the layers.json it exported.

    Raises:
        VlaedgeError: build.sh failed (its last lines are quoted).
    """
    from vlaedge.deploy.engine import BuildSettings
    from vlaedge.deploy.trt_build import layer_issues

    run = subprocess.run(["bash", str(bundle / "build.sh")], capture_output=True, text=True)
    if run.returncode != 0:
        tail = " | ".join(line for line in run.stderr.splitlines()[-3:] if line.strip())
        raise VlaedgeError(f"device-check: {bundle}/build.sh failed (exit {run.returncode}): {tail}",
                           f"see {bundle}/build.log")
    s = BuildSettings(**settings)
    return layer_issues(json.loads((bundle / "layers.json").read_text()), s.intended, s.dla_core is not None)


def _reference(resolved, trust_code: bool = False):
    """The run's policy (for make_inputs / decode) and its recorded evaluation split."""
    from vlaedge.data import load_dataset, split_as_recorded
    from vlaedge.defaults import default_checkpoint, default_dataset
    from vlaedge.models import load_policy

    policy = load_policy(resolved.reference("device-check") or default_checkpoint(), trust_code=trust_code)
    dataset = load_dataset(resolved.data or default_dataset())
    _, evaluation = split_as_recorded(dataset, resolved.manifest.get("split"))
    return policy, evaluation


def _batch(plan: str, recipe) -> int:
    """The largest batch the plan takes: the profile's max for a dynamic batch, else the static one."""
    from vlaedge.deploy.engine import onnx_input_shapes

    shapes = onnx_input_shapes(Path(plan).with_name("model.onnx"))
    static = {dims[0] for dims in shapes.values() if dims and dims[0] is not None}
    return min(static) if static else (recipe.engine.max_batch if recipe.engine else 1)


def _profile(onnx: Path, policy, evaluation, runs: int, warmup: int, seed: int) -> dict:
    from vlaedge.check.profile import profile
    from vlaedge.data import sample_frames

    feeds = policy.make_inputs(sample_frames(evaluation, 1, seed), seed=seed)
    report = profile([onnx], "trt", feeds, policy, runs, warmup)
    model = report.models[0]
    return {"runs": runs, "median_ms": model.latency.median_ms, "p99_ms": model.latency.p99_ms,
            "inferences_per_s": model.rate.get("inferences_per_s"), "device": report.device,
            "power": report.power}


FLEET_BUDGETS = ("max_latency_p99_ms", "min_rate_hz", "max_memory_mb", "max_file_size_mb", "targets")


@dataclass
class FleetRun:
    """A fleet command's per-device results; truthy when every device met its target's budgets."""

    command: str  # "profile" or "device-check"
    out: Path
    devices: list[dict]  # {name, ssh, target, report (the pulled profile / device check), checks, passed}

    def __bool__(self) -> bool:
        return all(d["passed"] for d in self.devices)

    def failure_line(self) -> str:
        bad = [f"{d['name']} ({d['target']}): {', '.join(c['name'] for c in d['checks'] if not c['ok'])}"
               for d in self.devices if not d["passed"]]
        return f"fleet {self.command}: budgets violated on {'; '.join(bad)}"

    def markdown(self) -> str:
        """One table per device: its latency figures and its target's budgets, judged."""
        parts = [f"# vlaedge fleet {self.command}\n"]
        for d in self.devices:
            verdict = "within its target's budgets" if d["passed"] else "OVER BUDGET"
            parts.append(f"## {d['name']} ({d['ssh']}, target {d['target']}): {verdict}\n")
            parts += ["| figure | value |", "| --- | --- |"]
            parts += [f"| {k} | {v} |" for k, v in d["figures"].items()]
            parts += ["", "| budget | measured | allowed | verdict |", "| --- | --- | --- | --- |"]
            parts += [f"| {c['name']} | {c['measured']} | {c['op']} {c['allowed']} | {c['status']} |"
                      for c in d["checks"]] or ["| (none set for this target) | | | |"]
            parts.append("")
        return "\n".join(parts)


def fleet(command: str, inventory_path: Path, subject: Path, out: Path, budgets_path: Path | None = None,
          force: bool = False, log=print, **options) -> FleetRun:
    """`vlaedge profile --inventory` / `vlaedge device-check --inventory`: the remote step on every device of
    the inventory at once (`vlaedge.deploy.fleet`), each judged against the budgets of its own target
    (`budgets.targets.<target>` over the top-level latency, rate, memory and size budgets).

    Args:
        command: "profile" (`subject` is a model, bundle or run directory) or "device-check" (a run).
        inventory_path: the inventory YAML (name, ssh, target per device).
        subject: what runs on each device.
        out: the output directory: fleet.json, fleet.md and DEVICE/ (its pulled report) per device; written
            only when every device succeeded (staged, then moved into place).
        budgets_path: budgets YAML or a recipe; None: nothing judged.
        force: replace an existing `out`.
        options: the remote step's (runtime, runs, warmup, threads; frames, builder).

    Returns:
        The `FleetRun` (falsy when a device is over its budgets).

    Raises:
        VlaedgeError: a bad inventory or budgets file, or a device that failed (named, with its address).
    """
    from vlaedge.artifact import OutputDir
    from vlaedge.deploy.fleet import load_inventory, on_each
    from vlaedge.deploy.remote import device_check_remote, profile_remote
    from vlaedge.recipe import Budgets, load_budgets

    inventory = load_inventory(inventory_path)
    budgets = load_budgets(budgets_path) if budgets_path else Budgets()
    budgets = Budgets(**{k: getattr(budgets, k) for k in FLEET_BUDGETS})
    log(f"fleet {command}: {len(inventory.devices)} device(s): "
        + ", ".join(f"{d.name} ({d.target})" for d in inventory.devices))

    def step(device, folder: Path) -> Path:
        common = {"port": device.port, "remote_dir": device.remote_dir, "remote_vlaedge": device.vlaedge,
                  "ssh_config": inventory.ssh_config}
        if command == "profile":
            return profile_remote(device.ssh, subject, out=folder, **common, **options)
        return device_check_remote(device.ssh, subject, folder, **common, **options)

    protect = (Path(subject), Path(inventory_path))
    with OutputDir(out, force, protect=protect, command=f"fleet {command}") as od:
        pulled = on_each(inventory, step, od.path, command)
        devices = [_judged(d, json.loads(pulled[d.name].read_text()), command, budgets)
                   for d in inventory.devices]
        result = FleetRun(command, Path(out), devices)
        (od.path / "fleet.json").write_text(json.dumps({"schema": "vlaedge.fleet/1", "command": command,
                                                        "passed": bool(result), "devices": devices},
                                                       indent=1, default=str) + "\n")
        (od.path / "fleet.md").write_text(result.markdown())
        od.commit()
    return result


def _judged(device, report: dict, command: str, budgets) -> dict:
    """One device's row: its figures and its target's budgets judged on them."""
    from vlaedge.check.gate import PASSING, gate

    if command == "profile":
        model = report["models"][0]
        lat, rate = model["latency"], model["rate"]
        figures = {"runtime": model["runtime"], "median ms": f"{lat['median_ms']:.3f}",
                   "p99 ms": f"{lat['p99_ms']:.3f}", "inferences/s": f"{rate['inferences_per_s']:.1f}"}
        judged = gate({"profile": report, "policy": {}, "candidate": {}, "target": device.target}, budgets,
                      device.target)
        checks = [{"name": c.name, "status": c.status, "measured": c.measured, "allowed": c.allowed,
                   "op": c.op, "ok": c.status in PASSING} for c in judged.checks]
    else:
        prof = report.get("profile") or {}
        figures = {"TensorRT": report.get("tensorrt"), "plan": report.get("plan"),
                   "median ms": prof.get("median_ms"), "p99 ms": prof.get("p99_ms")}
        checks = []
    return {"name": device.name, "ssh": device.ssh, "target": device.target, "figures": figures,
            "checks": checks, "passed": all(c["ok"] for c in checks), "report": report}
