"""Per-stage graphs: a policy's declared stages, checked against its module, and the one executor of
their plan that the torch reference and every ONNX runtime share.

A flow-matching VLA (SmolVLA, pi0, GR00T) is a vision encoder and a language prefix that run once per
control step, then an action expert run N times by an Euler loop; a Diffusion Policy is an observation
encoder, then a U-Net and a scheduler step run N times. Unrolled into one graph the loop's stage is copied
N times (SmolVLA size: ~42,600 nodes); the field exports one graph per stage and runs the loop outside. A
python-family spec declares it (config.json / vlaedge.json)::

    "stages": {"graphs": [
        {"name": "vision", "call": "encode_image", "inputs": ["image"], "outputs": ["patches"]},
        {"name": "prefix", "call": "encode_prefix", "inputs": ["patches", "instruction_ids", "state"],
         "outputs": ["context"]},
        {"name": "expert", "call": "action_head", "inputs": ["x", "t", "context"], "outputs": ["velocity"]}],
      "denoise": {"stage": "expert", "steps": 10, "init": "noise", "sample": "x", "time": "t",
                  "velocity": "velocity", "t_start": 0.0, "t_end": 1.0, "output": "actions"}}

`call` is a dotted attribute of the module (a method or a submodule) called with `inputs` in order.
Stage inputs come from policy inputs, earlier stages' outputs, or (the loop's stage) what the loop feeds.
The loop (`vlaedge.models.stage_loop.DenoiseLoop`) starts from x_0 = feeds[init] and its result x_steps is
`output`. With `update: "euler"` (the default) t_k = t_start + (t_end - t_start) * k / steps (float32,
shape (B,)) and x_{k+1} = x_k + v(x_k, t_k) * (t_end - t_start) / steps, v the stage's `velocity`. With
`update: "sample"` the stage returns x_{k+1} itself (its output `next`: a diffusion scheduler's step in the
graph), fed t_k = `times[k]` (the scheduler's timesteps). Optional for either: `index` (a stage input fed
the step k, int64 (B,)) and `step_inputs` ({stage input: policy input}: policy_input[:, k] at step k, e.g.
DDPM's per-step noise; with `step_input_steps` M < steps, steps k >= M are fed zeros). A DDIM sampler::

      "denoise": {"stage": "denoise", "steps": 10, "init": "noise", "update": "sample", "next": "x_next",
                  "times": [90, 80, 70, 60, 50, 40, 30, 20, 10, 0], "index": "k", "output": "sample"}

The composition must equal the module's forward (`check_composition`, at export).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlaedge.errors import VlaedgeError
from vlaedge.models.stage_loop import FIX, DenoiseLoop, run_loop

COMPOSITION_TOLERANCE = 1e-5  # staged torch vs module.forward, max |diff| relative to max(1, max |ref|)

# run_stage(stage, feeds) -> outputs: one stage on one backend; feeds and outputs keyed by name
StageRunner = Callable[["StageGraph", dict[str, np.ndarray]], dict[str, np.ndarray]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageGraph(_Strict):
    """One exported graph."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # also its file: stages/<name>.onnx
    call: str  # dotted attribute of the module, a method or submodule, e.g. "encode_image", "action_head"
    inputs: list[str] = Field(min_length=1)  # argument names in call order (the graph's input names)
    outputs: list[str] = Field(min_length=1)  # names of what it returns (a tensor, or a tuple in order)


class StagePlan(_Strict):
    """The stages of a policy, in execution order, and the optional denoise loop."""

    graphs: list[StageGraph] = Field(min_length=1)
    denoise: DenoiseLoop | None = None

    @model_validator(mode="after")
    def _loop_stage(self):
        names = [g.name for g in self.graphs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage name(s) {', '.join(dup)} used twice")
        d = self.denoise
        if d is not None:
            if d.stage not in names:
                raise ValueError(f"denoise.stage {d.stage!r} is not a stage ({', '.join(names)})")
            g, field = self.stage(d.stage), "velocity" if d.update == "euler" else "next"
            if g.outputs != [d.result()]:
                raise ValueError(f"stage {g.name!r} is the denoise loop's: its outputs must be exactly "
                                 f"[{d.result()!r}] (denoise.{field}, update {d.update!r}), got {g.outputs}")
            missing = [n for n in d.loop_inputs() if n not in g.inputs]
            if missing:
                raise ValueError(f"stage {g.name!r} must take the loop's {', '.join(missing)} as inputs")
        return self

    def stage(self, name: str) -> StageGraph:
        return next(g for g in self.graphs if g.name == name)

    def is_loop(self, stage: StageGraph) -> bool:
        return self.denoise is not None and stage.name == self.denoise.stage


def plan_of(policy) -> StagePlan | None:
    """The policy's declared stage plan (python-family specs), else None."""
    return getattr(policy, "stage_plan", None)


def check_flow(plan: StagePlan, inputs: list[str], outputs: list[str]) -> None:
    """Every stage input is produced before it runs, every stage output is used, every policy output is
    produced.

    Args:
        plan: the plan.
        inputs: the policy's input names.
        outputs: the policy's output names.

    Raises:
        VlaedgeError: one line naming the stage and the tensor.
    """
    available, d = set(inputs), plan.denoise
    sources = {"init": d.init, **{f"step_inputs.{k}": v for k, v in d.step_inputs.items()}} if d else {}
    for field, name in sources.items():
        if name not in inputs:
            raise VlaedgeError(f"stages: denoise.{field} {name!r} is not a policy input "
                               f"({', '.join(inputs)})", FIX)
    for g in plan.graphs:
        loop_vars = set(d.loop_inputs()) if plan.is_loop(g) else set()
        for name in g.inputs:
            if name not in available and name not in loop_vars:
                raise VlaedgeError(f"stages: stage {g.name!r} input {name!r} is produced by no policy input "
                                   f"or earlier stage (available: {', '.join(sorted(available))})", FIX)
        available |= {d.output} if plan.is_loop(g) else set(g.outputs)
    used = {n for g in plan.graphs for n in g.inputs} | set(outputs)
    for g in plan.graphs:
        produced = [d.output] if plan.is_loop(g) else g.outputs
        for name in produced:
            if name not in used:
                raise VlaedgeError(f"stages: stage {g.name!r} output {name!r} is used by no later stage and "
                                   f"is not a policy output ({', '.join(outputs)})", FIX)
    missing = [n for n in outputs if n not in available]
    if missing:
        raise VlaedgeError(f"stages: policy output {missing[0]!r} is produced by no stage", FIX)


def resolve_call(module, stage: StageGraph):
    """The callable a stage names: a dotted attribute of `module` (a method or a submodule).

    Raises:
        VlaedgeError: an attribute on the path is missing, or the last one is not callable.
    """
    target = module
    for part in stage.call.split("."):
        if not re.fullmatch(r"[A-Za-z_]\w*", part) or not hasattr(target, part):
            raise VlaedgeError(f"stages: stage {stage.name!r} calls {stage.call!r}, which "
                               f"{type(module).__name__} does not have",
                               "name a method or submodule of the module (dotted, e.g. 'action_head')")
        target = getattr(target, part)
    if not callable(target):
        raise VlaedgeError(f"stages: stage {stage.name!r} calls {stage.call!r}, a "
                           f"{type(target).__name__}, not a method or module", "name a method or submodule")
    return target


def check_plan(plan: StagePlan, module, inputs: list[str], outputs: list[str]) -> None:
    """`check_flow` and every stage's `call` resolved on `module` (at load).

    Raises:
        VlaedgeError: one line naming the stage.
    """
    check_flow(plan, inputs, outputs)
    for g in plan.graphs:
        resolve_call(module, g)


def run_plan(plan: StagePlan, run_stage: StageRunner, feeds: dict[str, np.ndarray],
             outputs: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """Runs the plan on numpy feeds: each stage once, the loop's stage `steps` times (`run_loop`).

    Args:
        plan: the plan.
        run_stage: runs one stage on its feeds (torch, an ONNX Runtime session, ...).
        feeds: the policy's inputs, each (B, ...).
        outputs: the policy's output names to return.

    Returns:
        The policy's outputs by name.
    """
    env = dict(feeds)
    for g in plan.graphs:
        if not plan.is_loop(g):
            env.update(run_stage(g, {n: env[n] for n in g.inputs}))
            continue
        env[plan.denoise.output] = run_loop(plan.denoise, g, run_stage, env)
    return {n: env[n] for n in outputs}


def torch_runner(module) -> StageRunner:
    """Runs stages on `module` in torch (inference mode) on the module's device (TF32 off on a GPU, as
    `Policy.run_torch`); outputs as CPU numpy arrays."""
    import torch

    from vlaedge.models.device import exact_float32, feed_tensors, module_device, to_numpy

    def run(stage: StageGraph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fn = resolve_call(module, stage)
        device = module_device(module)
        with torch.inference_mode(), exact_float32(device):
            out = fn(*feed_tensors([feeds[n] for n in stage.inputs], device))
        out = out if isinstance(out, tuple | list) else (out,)
        if len(out) != len(stage.outputs):
            raise VlaedgeError(f"stages: stage {stage.name!r} ({stage.call}) returns {len(out)} tensor(s), "
                               f"the plan names {len(stage.outputs)} ({', '.join(stage.outputs)})", FIX)
        return {n: to_numpy(t) for n, t in zip(stage.outputs, out, strict=True)}

    return run


class Recorder:
    """A `StageRunner` that runs another and keeps every call's feeds and outputs, by stage name."""

    def __init__(self, inner: StageRunner):
        self.inner = inner
        self.calls: dict[str, list[tuple[dict, dict]]] = {}

    def __call__(self, stage: StageGraph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner(stage, feeds)
        self.calls.setdefault(stage.name, []).append((feeds, out))
        return out


def record_torch(policy, plan: StagePlan, feeds: dict[str, np.ndarray]) -> tuple[dict, Recorder]:
    """Runs the plan in torch on `feeds`: (the policy's outputs, the recorder of every stage call)."""
    policy.module.eval()
    recorder = Recorder(torch_runner(policy.module))
    return run_plan(plan, recorder, feeds, policy.output_names), recorder


def check_composition(policy, plan: StagePlan, feeds: dict[str, np.ndarray]) -> float:
    """The staged plan in torch against `policy.run_torch` on the same feeds; returns the max |diff|.

    Raises:
        VlaedgeError: they differ by more than `COMPOSITION_TOLERANCE` (relative to max(1, max |ref|)).
    """
    reference = policy.run_torch(feeds)
    staged, _ = record_torch(policy, plan, feeds)
    worst = 0.0
    for name in policy.output_names:
        ref = reference[name].astype(np.float64)
        diff = float(np.abs(staged[name].astype(np.float64) - ref).max())
        worst = max(worst, diff)
        if diff > COMPOSITION_TOLERANCE * max(1.0, float(np.abs(ref).max())):
            raise VlaedgeError(f"stages: the staged plan differs from {policy.name}'s forward by {diff:.3g} "
                               f"in {name!r} (allowed {COMPOSITION_TOLERANCE:g})",
                               "make forward exactly the declared stages and denoise loop (same order, "
                               "steps, times / t_start..t_end, update), or fix the plan")
    return worst


@dataclass
class StageParity:
    """One stage output, candidate vs torch, on stage inputs taken from torch (errors do not compound)."""

    stage: str
    output: str
    calls: int  # stage calls compared (frames batches x loop steps)
    cosine_mean: float  # per-frame cosine similarity of the flattened output
    cosine_min: float
    rel_l2: float  # ||cand - ref|| / ||ref|| over all calls

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"stage {self.stage} ({self.output}): cosine mean {self.cosine_mean:.5f} / min "
                f"{self.cosine_min:.5f}, rel L2 {self.rel_l2:.4g} over {self.calls} call(s)")


class ParityAccumulator:
    """`StageParity` over several recorded batches: add each batch's recorder, read the totals (cosine per
    frame, rel L2 from the summed squares), so a long evaluation never holds every stage call at once."""

    def __init__(self, plan: StagePlan):
        self.plan = plan
        self._cos: dict[tuple[str, str], list[np.ndarray]] = {}
        self._sq: dict[tuple[str, str], list[float]] = {}  # [sum (cand - ref)^2, sum ref^2]
        self._calls: dict[tuple[str, str], int] = {}

    def add(self, recorder: Recorder, candidate: StageRunner) -> None:
        """Runs `candidate` on every call `recorder` kept (torch's stage inputs) and adds the differences."""
        for g in self.plan.graphs:
            for feeds, out in recorder.calls.get(g.name, []):
                got = candidate(g, feeds)
                for name in g.outputs:
                    key = (g.name, name)
                    sq = self._sq.setdefault(key, [0.0, 0.0])
                    cos = []
                    for ref, cand in zip(out[name], got[name], strict=True):  # float64 copies of one frame
                        ref = ref.astype(np.float64).ravel()
                        cand = cand.astype(np.float64).ravel()
                        norms = np.linalg.norm(ref) * np.linalg.norm(cand)
                        cos.append(float(ref @ cand) / norms if norms > 0 else 1.0)
                        sq[0] += float(np.sum((cand - ref) ** 2))
                        sq[1] += float(ref @ ref)
                    self._cos.setdefault(key, []).append(np.array(cos))
                    self._calls[key] = self._calls.get(key, 0) + 1

    def result(self) -> list[StageParity]:
        """One `StageParity` per stage output that was called, in plan order."""
        out = []
        for g in self.plan.graphs:
            for name in g.outputs:
                key = (g.name, name)
                if key in self._cos:
                    cos = np.concatenate(self._cos[key])
                    diff, ref = self._sq[key]
                    rel = float(np.sqrt(diff) / max(np.sqrt(ref), 1e-30))
                    out.append(StageParity(g.name, name, self._calls[key], float(cos.mean()),
                                           float(cos.min()), rel))
        return out


def stage_parity(recorder: Recorder, plan: StagePlan, candidate: StageRunner) -> list[StageParity]:
    """Each stage's outputs from `candidate` against the torch outputs `recorder` kept, fed the torch
    stage inputs of every recorded call (the loop's stage: every step)."""
    totals = ParityAccumulator(plan)
    totals.add(recorder, candidate)
    return totals.result()


# --- the plan file (stages.json): what export writes and the runtimes, bundle and estimate read --------

PLAN_FORMAT = "vlaedge-stages/1"


class StageIO(_Strict):
    name: str
    shape: list[int | str]  # "B" marks the batch dimension
    dtype: str  # numpy dtype name


class StageFile(_Strict):
    """One stage of a plan file: its graph file and I/O."""

    name: str
    call: str
    file: str  # relative to the plan file, e.g. "stages/vision.onnx"
    inputs: list[StageIO]
    outputs: list[StageIO]
    sha256: str
    bytes: int  # the .onnx plus its external data
    nodes: int
    precision: str = "fp32"  # "fp32", or the quantized precision, e.g. "int8"


class PlanFile(_Strict):
    """stages.json: the stage graphs and the denoise loop, self-contained (no policy needed to run it)."""

    format: str
    graphs: list[StageFile] = Field(min_length=1)
    denoise: DenoiseLoop | None = None

    def plan(self) -> StagePlan:
        return StagePlan(graphs=[StageGraph(name=g.name, call=g.call, inputs=[i.name for i in g.inputs],
                                            outputs=[o.name for o in g.outputs]) for g in self.graphs],
                         denoise=self.denoise)


def plan_paths(model: Path) -> tuple[Path, Path]:
    """The plan file and stage folder standing for a single-graph path: model.onnx -> (stages.json,
    stages/), model_fp32.onnx -> (stages_fp32.json, stages_fp32/), other.onnx -> (other.stages.json,
    other.stages/), so two models in one folder never share files."""
    stem = Path(model).stem
    name = "stages" + stem[len("model"):] if stem.startswith("model") else f"{stem}.stages"
    return Path(model).with_name(f"{name}.json"), Path(model).with_name(name)


def is_plan_file(path: str | Path | None) -> bool:
    """A path naming a stage plan file (a .json), not a single graph."""
    return path is not None and Path(path).suffix == ".json"


def read_plan_file(path: str | Path) -> PlanFile:
    """Reads and checks a stages.json: its format, and that every stage file exists.

    Raises:
        VlaedgeError: unreadable, not a plan file, or a stage file missing.
    """
    import json

    from pydantic import ValidationError

    path = Path(path)
    try:
        plan = PlanFile.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as e:
        raise VlaedgeError(f"stages: {path} is not a readable stage plan ({str(e).splitlines()[0][:160]})",
                           "pass the stages.json that 'vlaedge export' or 'vlaedge compress' wrote") from e
    if plan.format != PLAN_FORMAT:
        raise VlaedgeError(f"stages: {path} has format {plan.format!r}, this vlaedge reads {PLAN_FORMAT!r}",
                           "re-export the policy with this vlaedge")
    for g in plan.graphs:
        if not (path.parent / g.file).is_file():
            raise VlaedgeError(f"stages: stage {g.name!r} file {path.parent / g.file} is missing",
                               "copy the whole run folder (stages.json with its stages/ folder)")
    return plan


def check_stage_hashes(path: str | Path, plan: PlanFile) -> None:
    """Every stage graph file's sha256 equals the one the plan file recorded when it was written (a stage
    file edited, or swapped for another stage's or another run's, would otherwise run silently), and the
    stage's bytes (the .onnx plus its external data) equal the recorded ones.

    The .onnx is hashed, as export records it; an external-data file (up to several GB) is checked by its
    size only, which catches a truncated copy or another run's data file of another size, not an edit
    that keeps the size (the gate hashes data files too, from the run's manifest).

    Raises:
        VlaedgeError: one line naming the first stage whose file differs, or whose data file is missing.
    """
    from vlaedge.artifact import sha256
    from vlaedge.onnx_file import onnx_file_bytes

    path = Path(path)
    fix = ("restore the run folder's stage files, or re-run 'vlaedge compress' / 'vlaedge export' to write "
           "a new plan")
    for g in plan.graphs:
        file = path.parent / g.file
        got = sha256(file)
        if got != g.sha256:
            raise VlaedgeError(f"stages: stage {g.name!r} file {file} has sha256 {got[:12]}, "
                               f"{path.name} records {g.sha256[:12]} (changed or swapped after export)", fix)
        size = file.stat().st_size  # a self-contained graph: its size is the record, nothing to parse
        if size != g.bytes:
            size = onnx_file_bytes(file)  # with its data file (a small .onnx to read); raises if missing
        if size != g.bytes:
            raise VlaedgeError(f"stages: stage {g.name!r} is {size:,} bytes with its data file, {path.name} "
                               f"records {g.bytes:,} (a data file truncated or swapped after export)", fix)


def write_plan_file(path: Path, graphs: list[StageFile], denoise: DenoiseLoop | None) -> Path:
    """Writes stages.json (validated as `PlanFile`)."""
    plan = PlanFile(format=PLAN_FORMAT, graphs=graphs, denoise=denoise)
    path.write_text(plan.model_dump_json(indent=1) + "\n")
    return path


def plan_stage_files(path: str | Path) -> list[Path]:
    """The stage graph files a plan file names (for sizes and fingerprints)."""
    return [Path(path).parent / g.file for g in read_plan_file(path).graphs]
