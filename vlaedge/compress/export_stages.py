"""Per-stage export: one ONNX graph per declared stage (`vlaedge.models.stages`) plus stages.json, the
plan the runtimes run (the denoise loop outside the graphs).

Each stage is traced by the single-graph export's own machinery (`export._trace`: the GQA/SDPA and MHA
fast-path patches, one-line errors; unused inputs restored; batch sizes checked) on a `StagePolicy`: the
stage seen as a policy whose module is a `StageModule`, a view of the policy's module with the stage's
call as its forward, so node and initializer names are the module's own (quantize.keep patterns and the
node -> module mapping work unchanged). Example inputs of later stages come from running the earlier
stages in torch. Before anything is traced the staged composition must equal the module's forward.

The check: every stage's outputs against torch (cosine similarity, relative L2) fed the torch stage inputs
of the check frames (so errors do not compound; the loop's stage at every step), and the decoded actions
end to end as the single-graph export checks them. Nothing is left on disk when anything fails.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.artifact import final_path, sha256
from vlaedge.compress.export_check import check_batches
from vlaedge.compress.export_graph import (
    EXPORT_BATCH,
    FP8_MIN_OPSET,
    ExportCheck,
    ExportResult,
    _describe,
    _restore_unused_inputs,
    _trace,
    check_against_torch,
)
from vlaedge.compress.external_data import release_memory
from vlaedge.models.base import BATCH, Policy, TensorSpec
from vlaedge.models.stages import (
    Recorder,
    StageFile,
    StageGraph,
    StageIO,
    StageParity,
    StagePlan,
    check_composition,
    plan_of,
    plan_paths,
    record_torch,
    stage_parity,
    torch_runner,
    write_plan_file,
)
from vlaedge.recipe import ExportConfig


def stages_enabled(policy: Policy, config: ExportConfig | None) -> bool:
    """Per-stage export: the policy declares stages and `export.stages` is not false."""
    return plan_of(policy) is not None and (config is None or config.stages is not False)


def stage_module(module, stage: StageGraph):
    """A view of `module` whose forward is the stage's call: it shares the module's submodules,
    parameters and buffers (same names, no copies), so a trace names nodes and weights as the module."""
    from torch import nn

    from vlaedge.models.stages import resolve_call

    class StageModule(nn.Module):
        def __init__(self):
            super().__init__()
            self._modules, self._parameters = module._modules, module._parameters
            self._buffers = module._buffers

        def forward(self, *args):
            return resolve_call(module, stage)(*args)

    return StageModule()


class StagePolicy(Policy):
    """One stage seen as a `Policy` (its graph's inputs and outputs), for tracing, checking and quantizing.

    Args:
        policy: the whole policy.
        plan: its plan.
        stage: the stage.
        example: one recorded call's feeds of the stage (any batch), for the input specs.
        dynamic: the batch dimension is dynamic ("B").
        runs: torch runs of the plan by (batch, seed), shared by the stages of one export (each run is the
            whole policy, the loop's stage `steps` times).
    """

    def __init__(self, policy: Policy, plan: StagePlan, stage: StageGraph, example: dict[str, np.ndarray],
                 dynamic: bool = True, runs: dict | None = None):
        self.policy, self.plan, self.stage = policy, plan, stage
        self.runs = runs if runs is not None else {}
        self.module = stage_module(policy.module, stage)
        self.name = f"{policy.name} stage {stage.name}"
        self.input_spec = tuple(TensorSpec(n, _shape(example[n], dynamic), example[n].dtype.name, -1.0, 1.0)
                                for n in stage.inputs)
        self.output_names = tuple(stage.outputs)
        self.action_spec = policy.action_spec

    def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """The stage's feeds in a torch run of the plan on the policy's example inputs (first call)."""
        if (batch, seed) not in self.runs:
            feeds = self.policy.example_inputs(batch, seed)
            self.runs[batch, seed] = record_torch(self.policy, self.plan, feeds)[1]
        return self.runs[batch, seed].calls[self.stage.name][0][0]

    def run_torch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return torch_runner(self.policy.module)(self.stage, feeds)

    def decode(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The stage's outputs flattened side by side (B, N): what the batch check compares."""
        return np.concatenate([np.asarray(outputs[n], np.float32).reshape(len(outputs[n]), -1)
                               for n in self.output_names], axis=1)

    def check_scale(self, reference: np.ndarray) -> float:
        """A stage's outputs are not actions: differences are a percentage of max(1, max |output|)."""
        return max(1.0, float(np.abs(reference).max()))

    def make_inputs(self, frames: dict, seed: int = 0) -> dict[str, np.ndarray]:
        raise NotImplementedError("a stage takes tensors from earlier stages, not dataset frames")

    def save(self, path):
        raise NotImplementedError("save the whole policy")


def _shape(value: np.ndarray, dynamic: bool) -> tuple:
    return ((BATCH,) + tuple(value.shape[1:])) if dynamic else tuple(value.shape)


@dataclass
class StagedExportResult(ExportResult):
    """What `export_stages` wrote: `path` is the stages.json; `stages` one `ExportResult` dict per graph;
    `parity` each stage output against torch on the check frames."""

    stages: list[dict] = field(default_factory=list)
    parity: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"stages {final_path(self.path)}: {len(self.stages)} graphs, {self.nodes} nodes, "
                 f"{self.size_bytes / 1e6:.1f} MB, {self.qdq_nodes} Q/DQ nodes"]
        lines += [f"  stage {s['name']}: {s['nodes']} nodes, {s['size_bytes'] / 1e6:.2f} MB"
                  + (f", {s['qdq_nodes']} Q/DQ" if s["qdq_nodes"] else "") for s in self.stages]
        lines += ["  " + StageParity(**p).line() for p in self.parity]
        if self.check and not self.check.skipped:
            lines.append(self.check.line("ONNX Runtime (staged)"))
        return "\n".join(lines + self.notes)


def export_stages(policy: Policy, path: str | Path, config: ExportConfig | None = None,
                  check_feeds: dict[str, np.ndarray] | None = None,
                  precision: str | None = None) -> StagedExportResult:
    """Exports each declared stage of `policy` to `<stages>/<name>.onnx` plus the plan `<stages>.json`
    (`plan_paths(path)`: model.onnx -> stages.json + stages/), and checks them.

    Args:
        policy: a policy with a stage plan (`plan_of`); FP32 or fake-quantized by ModelOpt.
        path: the single-graph path this export stands for (model.onnx, model_fp32.onnx).
        config: export settings (opset, dynamic batch, check tolerance).
        check_feeds: the policy's feeds (B, ...) on which each stage's parity and the actions are checked.
        precision: the quantized precision of a ModelOpt policy, if any.

    Returns:
        The result; its `path` is the plan file.

    Raises:
        VlaedgeError: the staged composition differs from forward, a stage fails to export or check, or
            the actions differ from torch beyond `config.max_check_error_pct`. Nothing is left on disk then.
    """
    config = config or ExportConfig()
    plan, start = plan_of(policy), time.perf_counter()
    plan_json, folder = plan_paths(Path(path))
    opset = max(config.opset, FP8_MIN_OPSET) if precision == "fp8" else config.opset
    batch = EXPORT_BATCH if config.dynamic_batch else 1
    example = policy.example_inputs(batch)
    worst = check_composition(policy, plan, example)
    _, recorder = record_torch(policy, plan, example)
    runs = {(batch, 0): recorder}
    staging = plan_json.parent / f".{plan_json.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / folder.name).mkdir(parents=True)
    try:
        stages = [StagePolicy(policy, plan, g, recorder.calls[g.name][0][0], config.dynamic_batch, runs)
                  for g in plan.graphs]
        results = [_export_stage(sp, staging, folder, opset, config, precision) for sp in stages]

        def plan_file() -> Path:
            files = [stage_file(sp.stage, staging, f"{folder.name}/{sp.stage.name}.onnx", sp, recorder,
                                res.nodes, config.dynamic_batch, precision or "fp32")
                     for sp, res in zip(stages, results, strict=True)]
            return write_plan_file(staging / plan_json.name, files, plan.denoise)

        staged_json = plan_file()
        check, parity = None, []
        if check_feeds is not None:  # on the weights in data files, which ONNX Runtime memory-maps
            check, parity = check_staged(policy, staged_json, check_feeds, config.max_check_error_pct,
                                         precision)
            _refuse_failed(check, config)
            release_memory()
        for res in results:  # each stage's weights into its .onnx when it is under 2 GB
            res.finish(staging / folder.name / Path(res.path).name, config.external_data)
        plan_file()
        result = _combined(plan_json, opset, policy, results, start)
        result.notes.append(f"staged torch plan equals {policy.name}'s forward (max |diff| {worst:.2g}); "
                            f"{_loop_note(plan)}")
        result.check, result.parity = check, parity
        _move_into_place(staging, plan_json, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _loop_note(plan: StagePlan) -> str:
    d = plan.denoise
    if d is None:
        return "no denoise loop"
    kind = "Euler loop" if d.update == "euler" else "sampler loop, the stage returning the next sample"
    return f"stage {d.stage} runs {d.steps} times per inference ({kind}, in the runtime, not unrolled)"


def _export_stage(sp: StagePolicy, staging: Path, folder: Path, opset: int, config: ExportConfig,
                  precision: str | None) -> ExportResult:
    """Traces one stage into its own sub-folder (so its size counts its files only), checks other batch
    sizes, and moves its files into `staging/folder.name` (the result names the final `folder`)."""
    own = staging / f".{sp.stage.name}"
    own.mkdir()
    file = own / f"{sp.stage.name}.onnx"
    example = sp.example_inputs(EXPORT_BATCH if config.dynamic_batch else 1)
    data = _trace(sp, example, file, opset, config.dynamic_batch, config.external_data)  # STAGE.onnx.data
    notes = _restore_unused_inputs(sp, file, config.dynamic_batch)
    if config.dynamic_batch:
        notes.append(check_batches(sp, file, (1, 3), EXPORT_BATCH, config.max_check_error_pct,
                                   quantized=precision is not None))
    result = _describe(file, folder / file.name, opset, sp, time.perf_counter(), notes, data)
    for f in own.iterdir():
        os.replace(f, staging / folder.name / f.name)
    own.rmdir()
    return result


def stage_file(g: StageGraph, root: Path, rel: str, sp: StagePolicy, recorder: Recorder, nodes: int,
               dynamic: bool, precision: str) -> StageFile:
    """The plan file's entry for a stage graph at `root / rel` (I/O shapes from the recorded torch call)."""
    from vlaedge.onnx_file import onnx_file_bytes

    feeds, out = recorder.calls[g.name][0]
    io = [StageIO(name=s.name, shape=list(s.shape), dtype=s.dtype) for s in sp.input_spec]
    outs = [StageIO(name=n, shape=list(_shape(out[n], dynamic)), dtype=out[n].dtype.name) for n in g.outputs]
    return StageFile(name=g.name, call=g.call, file=rel, inputs=io, outputs=outs, sha256=sha256(root / rel),
                     bytes=onnx_file_bytes(root / rel), nodes=nodes, precision=precision)


def _combined(plan_json: Path, opset: int, policy: Policy, results: list[ExportResult],
              start: float) -> StagedExportResult:
    return StagedExportResult(
        str(plan_json), opset, sum(r.size_bytes for r in results), any(r.external_data for r in results),
        [s.name for s in policy.input_spec], list(policy.output_names), sum(r.qdq_nodes for r in results),
        time.perf_counter() - start, nodes=sum(r.nodes for r in results),
        stages=[{"name": Path(r.path).stem, **{k: v for k, v in r.to_dict().items() if k != "check"}}
                for r in results])


def check_staged(policy: Policy, plan_json: Path, feeds: dict[str, np.ndarray], tolerance: float,
                 precision: str | None = None) -> tuple[ExportCheck, list[dict]]:
    """The staged model in ONNX Runtime CPU against torch: actions end to end (`check_against_torch`) and
    each stage's outputs fed torch's stage inputs (`vlaedge.models.stages.stage_parity`).

    Returns:
        (the action check, one `StageParity` dict per stage output).

    Raises:
        VlaedgeError: ONNX Runtime cannot load or run a stage.
    """
    from vlaedge.runtimes import open_runtime, qdq_arithmetic

    frames = len(next(iter(feeds.values())))
    with progress.heartbeat(f"export: torch on {frames} frames (the actions and every stage call)"):
        reference, recorder = record_torch(policy, plan_of(policy), feeds)  # one torch pass serves both
    with progress.heartbeat(f"export: ONNX Runtime (staged) vs torch on {frames} frames"):
        check = check_against_torch(policy, plan_json, feeds, tolerance, precision, reference=reference)
    if check.skipped:
        return check, []
    # a TensorRT Q/DQ plan's stages are judged with Q/DQ fusion off, as check_against_torch judged the plan
    runtime = open_runtime("ort-cpu", policy, plan_json, qdq=qdq_arithmetic(None, plan_json), prepack=False)
    try:
        with progress.heartbeat(f"export: per-stage parity on {frames} frames (stages fed torch's inputs)"):
            parity = stage_parity(recorder, runtime.plan, runtime.run_stage)
    finally:
        runtime.close()
    return check, [p.to_dict() for p in parity]


def _refuse_failed(check: ExportCheck, config: ExportConfig) -> None:
    if not check:
        raise check.refusal("ONNX Runtime (staged)")


def _move_into_place(staging: Path, plan_json: Path, folder: Path) -> None:
    """The stage folder first, then the plan file (a plan file implies its stages)."""
    plan_json.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging / folder.name, folder)
    os.replace(staging / plan_json.name, plan_json)
