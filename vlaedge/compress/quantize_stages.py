"""Quantization of a staged policy (`vlaedge.models.stages`), per stage.

- ONNX Runtime (cpu target): each stage graph of the FP32 plan (stages_fp32.json) is quantized by
  `quantize_ort.quantize_onnx`, calibrated on that stage's own inputs, made by running the torch stages on
  the calibration frames (the denoise loop's stage: at every step, so its calibration set covers all of
  them). `quantize_feeds.StageInputs` runs the torch plan once per batch, only as far as the last stage
  calibrated, and writes the calls' feeds to disk; each stage's calibration reads them back one call at a
  time, so no torch stage runs twice and memory never holds a stage's inputs for all frames and steps.
  A dynamically quantized stage needs only the first batch's calls. `quantize.keep` patterns go to the
  stages whose modules they name.
- ModelOpt (TensorRT targets): the module is quantized in place through its full forward (which runs every
  stage) and exported per stage afterwards; a stage left in FP32 has its modules added to `keep`.

`quantize.stages` chooses per stage: the recipe's precision (default), "fp32" / "keep" (not quantized), or
on the cpu target "static" / "dynamic" (that stage's ONNX Runtime mode). On the cpu target the denoise
loop's stage is quantized dynamically unless the recipe sets `quantize.mode` (`loop_stage_default`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.compress.quant_report import QuantizeResult, unmatched_patterns
from vlaedge.compress.quantize_feeds import StageCalibration, StageInputs
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.models.stages import (
    StageFile,
    StagePlan,
    plan_of,
    plan_paths,
    read_plan_file,
    write_plan_file,
)
from vlaedge.recipe import QuantizeConfig

KEPT = ("fp32", "keep")
MODES = ("static", "dynamic")  # quantize.stages values that pick a stage's ONNX Runtime mode (cpu target)
LOOP_MODE = "dynamic"  # the denoise loop's stage on the cpu target, unless the recipe says otherwise


def loop_stage_default(policy: Policy, config: QuantizeConfig) -> QuantizeConfig:
    """cpu target: the denoise loop's stage is quantized dynamically (ONNX Runtime `quantize_dynamic`: int8
    weights, each activation's range taken per run), unless the recipe sets `quantize.mode` or names that
    stage in `quantize.stages`. Recorded in the fitted recipe as `quantize.stages: {<stage>: dynamic}`.

    Why, in general: the loop runs one graph at every denoise step, and its activations change with t (the
    time embedding, and x going from noise to actions), so a static scale per tensor, calibrated on all
    steps' inputs, must span every step's range and is coarse for each; the single unrolled graph had one
    scale per step. Dynamic quantization takes the range per call, i.e. per step, and needs no calibration.

    Measured on examples/smolvla_style (vision and prefix static minmax; action head kept; mean drift in %
    of range vs torch FP32 on the 240 evaluation frames / the first 128; ONNX Runtime 1.31, AVX512-VNNI
    CPU). The expert static minmax 1.07 / 0.99, percentile 0.99 / 0.82, dynamic 0.88 / 0.80, FP32 0.72 /
    0.60; the single unrolled static graph 1.02 / 0.97. With 7-bit weights (reduce_range, what compress
    does on an AVX2-only CPU): minmax 1.50 / 1.09, percentile 1.45 / 1.07, entropy 1.56 / 1.15 (velocity
    cosine min 0.62), minmax with the time MLP in FP32 1.49 / 1.09, dynamic 1.38 / 0.93, FP32 1.19 / 0.83;
    single unrolled graph 1.39 / 0.99. Dynamic is the best quantized expert on both and needs no
    calibration pass; its per-call time was within the noise of static's (batch 1, 2 threads, a loaded
    2-core machine: 0.40 vs 0.44 ms per step, FP32 0.38): time it on your robot computer
    (`vlaedge profile RUN_DIR`).

    Returns:
        `config`, with the loop's stage set to dynamic where the rule applies.
    """
    plan = plan_of(policy)
    if plan is None or plan.denoise is None or config.precision != "int8" \
            or "mode" in config.model_fields_set or plan.denoise.stage in config.stages:
        return config
    return config.model_copy(update={"stages": {**config.stages, plan.denoise.stage: LOOP_MODE}})


def stage_mode(config: QuantizeConfig, name: str) -> str | None:
    """A stage's quantization on the cpu target: None (kept in FP32), "static" or "dynamic"."""
    choice = config.stages.get(name, config.precision)
    return None if choice in KEPT else choice if choice in MODES else config.mode


def check_stage_overrides(policy: Policy, config: QuantizeConfig, exported_per_stage: bool = True,
                          runtime: str = "onnxruntime") -> None:
    """`quantize.stages` names only stages the policy declares, the export is per stage, and a stage's
    static / dynamic mode is asked of ONNX Runtime (the cpu target) only.

    Raises:
        VlaedgeError: a name that is not a stage (or stages given for a policy without any, or with
            `export.stages: false`), or a mode for a TensorRT target.
    """
    if not config.stages:
        return
    modes = {n: v for n, v in config.stages.items() if v in MODES}
    if modes and runtime != "onnxruntime":
        name, value = next(iter(modes.items()))
        raise VlaedgeError(f"quantize.stages.{name}: {value} is an ONNX Runtime (cpu target) mode; this "
                           "target quantizes with ModelOpt for TensorRT",
                           f"use {config.precision}, fp32 or keep")
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
        each = [f"{k} {'fp32 (kept)' if r is None else f'{r.precision} ({r.algorithm})'}"
                for k, r in self.stages.items()]
        lines = [f"quantize per stage: {', '.join(each)}"]
        for name, r in self.stages.items():
            if r is not None:
                lines += [f"[{name}] " + r.summary().replace("\n", f"\n[{name}] ")]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


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
        VlaedgeError: bad calibration feeds, a stage too large for the memory available
            (`check_quantize_memory`, before any stage is quantized), or a stage that ONNX Runtime cannot
            quantize (see `quantize_onnx`).
    """
    from vlaedge.compress.export_stages import StagePolicy
    from vlaedge.compress.quantize import check_calibration
    from vlaedge.compress.quantize_ort import (
        CALIBRATION_RUN_FRAMES,
        check_quantize_memory,
        ort_config,
        quantize_onnx,
    )
    from vlaedge.onnx_file import external_data_files, onnx_file_bytes

    start, plan = time.perf_counter(), plan_of(policy)
    batches = check_calibration(policy, config, calibration)
    modules = stage_module_names(policy, plan, {k: v[:1] for k, v in batches[0].items()})
    fp32 = read_plan_file(fp32_plan)
    modes = {e.name: stage_mode(config, e.name) for e in fp32.graphs}
    for entry in fp32.graphs:  # before anything is written or calibrated
        if modes[entry.name] is not None:
            check_quantize_memory(f"stage {entry.name}", onnx_file_bytes(fp32_plan.parent / entry.file),
                                  f"keep it in FP32 (--set quantize.stages.{entry.name}=fp32, recipe "
                                  f"quantize.stages), or free memory")
    out_json, out_dir = plan_paths(out_model)
    staging = out_json.parent / f".{out_json.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / out_dir.name).mkdir(parents=True)
    results: dict[str, QuantizeResult | None] = {}
    files = []
    try:
        inputs = StageInputs(policy, plan, batches, staging / "calibration",
                             full={n for n, m in modes.items() if m == "static"},
                             first={n for n, m in modes.items() if m == "dynamic"},
                             run_frames=CALIBRATION_RUN_FRAMES).record()
        for entry in fp32.graphs:
            src, dst = fp32_plan.parent / entry.file, staging / out_dir.name / f"{entry.name}.onnx"
            mode = modes[entry.name]
            if mode is None:
                for file in (src, *external_data_files(src, "quantize")):  # kept: with its data file
                    _link_or_copy(file, dst.parent / file.name)
                results[entry.name] = None
            else:
                g = plan.stage(entry.name)
                keep = [p for p in config.keep if not unmatched_patterns(sorted(modules[g.name]), [p])]
                feeds = StageCalibration(inputs, g.name)  # dynamic: the first batch's calls only
                cfg = ort_config(config.model_copy(update={"keep": keep, "num_calib_frames": feeds.frames,
                                                           "mode": mode}), target)
                sp = StagePolicy(policy, plan, g, feeds[0])
                began = time.perf_counter()
                with progress.heartbeat(f"quantize: stage {g.name} ({mode}; its calibration inputs from the "
                                        f"torch stages before it, {feeds.frames} frames)"):
                    results[g.name] = quantize_onnx(sp, cfg, feeds, src, dst)
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


def _link_or_copy(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (a stage kept in FP32 is the FP32 plan's file: no second copy on disk,
    and profile's plans share one session for it, `vlaedge.runtimes.staged.SharedStages`), or a copy
    where the file system cannot link (another device, no hard links)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _entry(fp32: StageFile, root: Path, folder: str, precision: str) -> StageFile:
    """The plan entry of a stage written to `root/folder/<name>.onnx`: the FP32 entry's I/O, this file's
    hash, size and node count."""
    import onnx

    from vlaedge.artifact import sha256
    from vlaedge.onnx_file import onnx_file_bytes

    path = root / folder / f"{fp32.name}.onnx"
    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    return fp32.model_copy(update={"file": f"{folder}/{fp32.name}.onnx", "sha256": sha256(path),
                                   "bytes": onnx_file_bytes(path), "nodes": nodes, "precision": precision})
