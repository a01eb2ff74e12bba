"""Quantization of a staged policy (`vlaedge.models.stages`), per stage.

- ONNX Runtime (cpu target): each stage graph of the FP32 plan (stages_fp32.json) is quantized by
  `quantize_ort.quantize_onnx`, calibrated on that stage's own inputs, collected by running the torch
  stages on the calibration frames (the denoise loop's stage: at every step, so its calibration set covers
  all of them). `quantize.keep` patterns go to the stages whose modules they name.
- ModelOpt (TensorRT targets): the module is quantized in place through its full forward (which runs every
  stage) and exported per stage afterwards; a stage left in FP32 has its modules added to `keep`.

`quantize.stages` chooses per stage: the recipe's precision (default) or "fp32" / "keep" (not quantized).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaedge.compress.quant_report import QuantizeResult, unmatched_patterns
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.models.stages import (
    StageFile,
    StagePlan,
    plan_of,
    plan_paths,
    read_plan_file,
    record_torch,
    write_plan_file,
)
from vlaedge.recipe import QuantizeConfig

KEPT = ("fp32", "keep")


def check_stage_overrides(policy: Policy, config: QuantizeConfig, exported_per_stage: bool = True) -> None:
    """`quantize.stages` names only stages the policy declares, and the export is per stage.

    Raises:
        VlaedgeError: a name that is not a stage (or stages given for a policy without any, or with
            `export.stages: false`).
    """
    if not config.stages:
        return
    plan = plan_of(policy)
    if plan is not None and not exported_per_stage:
        raise VlaedgeError("quantize.stages: set, but export.stages: false exports one graph",
                           "drop quantize.stages, or let the export run per stage (export.stages: true)")
    names = [g.name for g in plan.graphs] if plan else []
    unknown = [n for n in config.stages if n not in names]
    if unknown:
        have = f"its stages are {', '.join(names)}" if names else "it declares no stages"
        raise VlaedgeError(f"quantize.stages: {', '.join(map(repr, unknown))} is not a stage of "
                           f"{policy.name}; {have}",
                           "name declared stages (config.json 'stages'), or drop quantize.stages")


def stage_module_names(policy: Policy, plan: StagePlan, feeds: dict[str, np.ndarray]) -> dict[str, set[str]]:
    """The qualified names of the modules each stage runs (one torch run of the plan on `feeds`)."""
    from vlaedge.models.stages import Recorder, run_plan, torch_runner

    current: list[str] = []
    seen: dict[str, set[str]] = {g.name: set() for g in plan.graphs}
    names = {m: n for n, m in policy.module.named_modules() if n}
    def enter(mod, _args) -> None:
        if current:
            seen[current[-1]].add(names[mod])

    hooks = [m.register_forward_pre_hook(enter) for m in names]
    inner = torch_runner(policy.module)

    def run(stage, stage_feeds):
        current.append(stage.name)
        try:
            return inner(stage, stage_feeds)
        finally:
            current.pop()

    try:
        run_plan(plan, Recorder(run), feeds, policy.output_names)
    finally:
        for h in hooks:
            h.remove()
    return seen


def modelopt_stage_config(policy: Policy, config: QuantizeConfig,
                          feeds: dict[str, np.ndarray]) -> QuantizeConfig:
    """The ModelOpt config with the modules of the stages kept in FP32 (and of no quantized stage) added
    to `keep`."""
    plan = plan_of(policy)
    kept = [n for n, v in config.stages.items() if v in KEPT]
    if plan is None or not kept:
        return config
    modules = stage_module_names(policy, plan, {k: v[:1] for k, v in feeds.items()})
    quantized = set().union(*(modules[g.name] for g in plan.graphs if g.name not in kept))
    extra = sorted({n for s in kept for n in modules[s]} - quantized)
    return config.model_copy(update={"keep": list(config.keep) + [n for n in extra if n not in config.keep]})


@dataclass
class StagedQuantizeResult:
    """Per-stage quantization: one `QuantizeResult` per quantized stage, None for a stage kept in FP32."""

    stages: dict[str, QuantizeResult | None]
    output: str  # the quantized plan file
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(bool(r) for r in self.stages.values() if r is not None)

    def to_dict(self) -> dict:
        stages = {k: (r.to_dict() if r is not None else {"kept": "fp32"}) for k, r in self.stages.items()}
        return {"output": self.output, "seconds": self.seconds, "notes": self.notes, "stages": stages}

    def summary(self) -> str:
        each = [f"{k} {'fp32 (kept)' if r is None else r.precision}" for k, r in self.stages.items()]
        lines = [f"quantize per stage: {', '.join(each)}"]
        for name, r in self.stages.items():
            if r is not None:
                lines += [f"[{name}] " + r.summary().replace("\n", f"\n[{name}] ")]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def stage_calibration(policy: Policy, plan: StagePlan,
                      batches: list[dict[str, np.ndarray]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each stage's calibration feeds: its inputs in torch runs of the plan on the calibration batches (the
    loop's stage once per step, so every step's inputs are in its set)."""
    per_stage: dict[str, list[dict[str, np.ndarray]]] = {g.name: [] for g in plan.graphs}
    for batch in batches:
        _, recorder = record_torch(policy, plan, batch)
        for name, calls in recorder.calls.items():
            per_stage[name] += [feeds for feeds, _ in calls]
    return per_stage


def quantize_stages(policy: Policy, config: QuantizeConfig, calibration: list[dict[str, np.ndarray]], target,
                    fp32_plan: Path, out_model: Path) -> StagedQuantizeResult:
    """ONNX Runtime quantization of each stage of the FP32 plan into the plan standing for `out_model`
    (model.onnx -> stages.json + stages/), written atomically.

    Args:
        policy: the staged policy the FP32 plan was exported from.
        config: the recipe's quantize section (`stages` picks per stage; `keep` goes where it applies).
        calibration: the policy's feed batches (as for `vlaedge.compress.quantize.quantize`).
        target: the cpu target.
        fp32_plan: the FP32 stages_fp32.json.
        out_model: the single-graph path the quantized plan stands for.

    Returns:
        The per-stage result.

    Raises:
        VlaedgeError: bad calibration feeds, or a stage that ONNX Runtime cannot quantize (see
            `quantize_onnx`).
    """
    from vlaedge.compress.export_stages import StagePolicy
    from vlaedge.compress.quantize import check_calibration
    from vlaedge.compress.quantize_ort import ort_config, quantize_onnx

    start, plan = time.perf_counter(), plan_of(policy)
    batches = check_calibration(policy, config, calibration)
    feeds = stage_calibration(policy, plan, batches)
    modules = stage_module_names(policy, plan, {k: v[:1] for k, v in batches[0].items()})
    fp32 = read_plan_file(fp32_plan)
    out_json, out_dir = plan_paths(out_model)
    staging = out_json.parent / f".{out_json.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / out_dir.name).mkdir(parents=True)
    results: dict[str, QuantizeResult | None] = {}
    files = []
    try:
        for entry in fp32.graphs:
            src, dst = fp32_plan.parent / entry.file, staging / out_dir.name / f"{entry.name}.onnx"
            if config.stages.get(entry.name, config.precision) in KEPT:
                shutil.copyfile(src, dst)
                results[entry.name] = None
            else:
                g = plan.stage(entry.name)
                keep = [p for p in config.keep if not unmatched_patterns(sorted(modules[g.name]), [p])]
                frames = sum(len(next(iter(f.values()))) for f in feeds[g.name])
                cfg = ort_config(config.model_copy(update={"keep": keep, "num_calib_frames": frames}), target)
                sp = StagePolicy(policy, plan, g, feeds[g.name][0])
                began = time.perf_counter()
                results[g.name] = quantize_onnx(sp, cfg, feeds[g.name], src, dst)
                results[g.name].seconds = time.perf_counter() - began
                results[g.name].output = str(out_dir / dst.name)
            precision = config.precision if results[entry.name] is not None else "fp32"
            files.append(_entry(entry, staging, out_dir.name, precision))
        write_plan_file(staging / out_json.name, files, fp32.denoise)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_json.unlink(missing_ok=True)
        (staging / out_dir.name).rename(out_dir)
        (staging / out_json.name).rename(out_json)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return StagedQuantizeResult(results, str(out_json), time.perf_counter() - start)


def _entry(fp32: StageFile, root: Path, folder: str, precision: str) -> StageFile:
    """The plan entry of a stage written to `root/folder/<name>.onnx`: the FP32 entry's I/O, this file's
    hash, size and node count."""
    import onnx

    from vlaedge.artifact import sha256
    from vlaedge.check.profile import model_file_bytes

    path = root / folder / f"{fp32.name}.onnx"
    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    return fp32.model_copy(update={"file": f"{folder}/{fp32.name}.onnx", "sha256": sha256(path),
                                   "bytes": model_file_bytes(path), "nodes": nodes, "precision": precision})
