"""Recipes: one YAML file says how to compress, export, verify and gate a policy for one target.

Validated strictly: an unknown key is an error naming the valid keys, every error reads
`path.to.field: message`, and cross-field rules (a precision the target cannot run) are checked at load.
A missing section skips its stage. `recipe_reference()` renders every field as Markdown tables for the
docs page docs/reference/recipes.md; `python -m vlaedge.recipe` (or `make docs`) rewrites that block.
"""

from __future__ import annotations

import difflib
import inspect
import json
import reprlib
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlaedge import safe_yaml
from vlaedge.defaults import MAX_THREADS
from vlaedge.errors import VlaedgeError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecoverConfig(Section):
    """Short distillation from the unpruned policy on calibration frames after pruning."""

    steps: int = Field(200, ge=1, description="optimiser steps")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate")
    batch_size: int = Field(32, ge=1, description="calibration frames per optimiser step")


class PruneConfig(Section):
    """Structured pruning (physically smaller) or 2:4 semi-structured sparsity (TensorRT targets)."""

    method: Literal["structured", "sparsity-2:4"] = Field(
        description="structured: smaller matrices, faster anywhere; sparsity-2:4: TensorRT sparse kernels")
    heads: float = Field(
        0.0, ge=0, lt=1, description="structured: fraction of attention heads removed per block")
    mlp: float = Field(0.0, ge=0, lt=1, description="structured: fraction of MLP channels removed per block")
    blocks: int = Field(
        0, ge=0, description="structured: whole transformer blocks removed (least important)")
    num_frames: int = Field(128, ge=8, description="calibration frames used to rank importance")
    recover: RecoverConfig | None = Field(None, description="optional distillation afterwards")
    max_drift_mean_pct: float | None = Field(
        None, gt=0, description="structured: drift-bounded pruning. After pruning and recovery, the "
        "student's mean action drift from the unpruned policy (% of action range) is measured on "
        "calibration frames that ranking and recovery did not see; above this, pruning starts again from "
        "the unpruned policy with half the heads and mlp fractions and half the blocks, up to "
        "max_attempts times. null: prune exactly as asked")
    max_attempts: int = Field(
        3, ge=1, description="structured with max_drift_mean_pct: attempts, each half as aggressive; if "
        "the last one is still over, it is kept and the result says so (the gate judges the drift)")

    @model_validator(mode="after")
    def _something_to_do(self):
        if self.method == "structured" and not (self.heads or self.mlp or self.blocks):
            raise ValueError("structured pruning needs heads, mlp or blocks above 0")
        if self.method != "structured" and self.max_drift_mean_pct is not None:
            raise ValueError("max_drift_mean_pct bounds structured pruning only; 2:4 sparsity has no "
                             "amount to back off (remove it, or use method: structured)")
        return self


class QuantizeConfig(Section):
    """Post-training quantization. The target decides the path: ModelOpt Q/DQ for TensorRT targets,
    ONNX Runtime static quantization for the cpu target."""

    precision: Literal["int8", "fp8", "int8-weight-only", "int4-weight-only"] = Field(
        description="no default: say what you want; the target must support it (`vlaedge targets`)")
    algorithm: Literal["max", "smoothquant", "awq", "minmax", "entropy", "percentile"] = Field(
        "max", description="calibration. ModelOpt (TensorRT targets): max, smoothquant (int8), awq "
        "(int4-weight-only); ONNX Runtime (cpu target): minmax, entropy, percentile. Default: max, or "
        "minmax on the cpu target (vlaedge.targets)")
    num_calib_frames: int = Field(256, ge=1, description="calibration frames from the calibration split")
    keep: list[str] = Field(
        [], description='module name patterns (fnmatch) kept in higher precision, e.g. "vision.stem*"; '
        "checked against the policy before any stage runs")
    keep_action_head: bool = Field(
        False, description="keep the policy's action head in higher precision: the modules its adapter "
        "declares (the python spec's `action_head`), else the last layer with weights in forward")
    quantize_layernorm: bool = Field(
        False, description="true quantizes LayerNorm inputs (ModelOpt's default; wrecks trained models)")
    per_channel: bool = Field(True, description="per-output-channel weight scales")
    mode: Literal["static", "dynamic"] = Field(
        "static", description="cpu target: static (QDQ, activation ranges calibrated) or dynamic (ONNX "
        "Runtime quantize_dynamic: activations quantized per run, no calibration)")
    quantize_attention: bool = Field(
        False, description="cpu target: also quantize activation x activation (attention) MatMuls")
    optimize_graph: bool = Field(
        False, description="cpu target: fuse the FP32 graph with ONNX Runtime's transformer optimizer first")
    reduce_range: bool | None = Field(
        None, description="cpu target: 7-bit weights (ONNX Runtime's reduce_range), for CPUs without an int8 "
        "dot-product instruction (AVX512-VNNI, AVX-VNNI, AMX-INT8), where ONNX Runtime's u8 x s8 kernels "
        "sum pairs into saturating int16 (vpmaddubsw). Default (null): on when the CPU running compress "
        "has none of them; set false for a VNNI robot computer quantized elsewhere")
    # per-stage graphs (issue 23): checked against the policy's declared stage names in fit_recipe
    stages: dict[str, Literal["int8", "fp8", "int8-weight-only", "int4-weight-only", "fp32", "keep", "static",
                              "dynamic"]] = Field(
        {}, description='policies that declare stages: stage name -> the recipe\'s precision (quantized), '
        '"fp32" / "keep" (left in FP32), or on the cpu target (int8) "static" / "dynamic" (that stage\'s '
        'quantize.mode), e.g. {expert: fp32}; stages not named are quantized, the denoise loop\'s stage '
        'dynamically on the cpu target unless quantize.mode is set (vlaedge.compress.quantize_stages)')

    @model_validator(mode="after")
    def _stage_precisions(self):
        modes = ("static", "dynamic") if self.precision == "int8" else ()
        other = {k: v for k, v in self.stages.items() if v not in (self.precision, "fp32", "keep", *modes)}
        if other:
            name, value = next(iter(other.items()))
            allowed = ", ".join((self.precision, "fp32", "keep", *modes))
            raise ValueError(f"stages.{name}: {value} differs from precision {self.precision}; a stage is "
                             f"quantized at the recipe's precision or kept: {allowed}")
        return self


class ExportConfig(Section):
    """ONNX export."""

    opset: int = Field(17, ge=13, le=23, description="FP8 needs >= 19 (raised automatically)")
    dynamic_batch: bool = Field(True, description="dynamic batch axis on every input and output")
    check_frames: int = Field(32, ge=1, description="frames for the ONNX Runtime vs torch check")
    max_check_error_pct: float = Field(
        2.5, gt=0, le=100, description="ONNX Runtime vs torch action difference allowed, in % of each action "
                                       "dimension's range: the max for FP32 graphs, the p99 for quantized "
                                       "ones (rounding ties differ); a ModelOpt graph over it is allowed up "
                                       "to twice the module's own one-ulp rounding sensitivity when that is "
                                       "larger (docs/guides/real-size.md)")
    external_data: Literal["auto", "always", "never"] = Field(
        "auto", description="weights in one data file beside the .onnx (NAME.onnx.data): auto = only when "
                            "the graph exceeds protobuf's 2 GB limit; never refuses a graph over 2 GB")
    # per-stage graphs (issue 23, vlaedge.models.stages): null = on when the policy declares stages
    stages: bool | None = Field(
        None, description="policies that declare stages: one ONNX per stage + stages.json, the denoise loop "
                          "in the runtime (null/true); false forces one unrolled graph. No effect without "
                          "stages")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "max_check_error" in data:
            raise ValueError("max_check_error (environment units) was replaced by max_check_error_pct (% of "
                             "each action dimension's range): 0.05 on a range of 2 is "
                             "max_check_error_pct: 2.5")
        return data


class EngineConfig(Section):
    """TensorRT engine: built here when TensorRT and a GPU are present; a build bundle always."""

    build: bool = Field(True, description="try to build a plan on this machine")
    workspace_mb: int = Field(1024, ge=64, description="TensorRT builder workspace memory pool (MiB)")
    sparsity: bool = Field(False, description="let TensorRT pick 2:4 sparse kernels (Ampere+)")
    dla_core: int | None = Field(None, ge=0, le=1, description="run on this DLA core (AGX Orin / Orin NX)")
    gpu_fallback: bool = Field(True, description="layers DLA cannot run go to the GPU")
    min_batch: int = Field(1, ge=1, description="optimization profile: smallest batch")
    opt_batch: int = Field(1, ge=1, description="optimization profile: the batch TensorRT tunes for")
    max_batch: int = Field(8, ge=1, description="optimization profile: largest batch")


class VerifyConfig(Section):
    """Reference vs candidate on the evaluation split (open loop) and in the tabletop env (closed loop)."""

    runtime: str = Field("ort-cpu", description="candidate runtime: torch, ort-cpu, ort-cuda, ort-trt or "
                         "trt (`vlaedge targets` lists each target's runtime)")
    eval_frames: int = Field(512, ge=1, description="open-loop frames from the evaluation split")
    stage_parity_frames: int = Field(
        8, ge=0, description="per-stage candidates: each stage's parity with the FP32 torch stage on the "
        "first this many evaluation frames (one more pass of the candidate's stages over them, their stage "
        "inputs and outputs held meanwhile: at SmolVLA size 32 frames added 27 s and 1.2 GB; 0: none)")
    closed_loop_episodes: int = Field(0, ge=0, description="0 skips the closed-loop check")
    min_episodes: int = Field(50, ge=1, description="fewer episodes: the check refuses to conclude")
    seed: int = Field(0, description="seed for the sampled frames and the shared noise")
    profile_runs: int = Field(200, ge=1, description="timed latency runs")
    profile_warmup: int = Field(20, ge=0, description="untimed runs before them")
    profile_max_seconds: float | None = Field(
        120.0, gt=0, description="time box of the timed runs, s: no further round of 20 runs per model "
        "starts once it is spent (warm-up: a tenth of it); null: always profile_runs")
    threads: int = Field(2, ge=1, le=MAX_THREADS, description="CPU threads for ONNX Runtime")
    env: str | None = Field(
        None, description='closed loop: "package.module:make_env" (Gymnasium-style); null = tabletop')
    env_adapter: str | None = Field(
        None, description='"package.module:adapter": env observation -> frame dict')
    success_key: str | None = Field(
        None, description='the step info key saying success; null: "success", else "is_success"')
    closed_loop_seed: int = Field(
        10_000, description="first episode seed (tabletop demos use seeds below 10000)")
    execute: int = Field(2, ge=1, description="actions of each chunk executed before re-planning")
    max_steps: int = Field(40, ge=1, description="episode step limit (a cap for other envs)")
    control_hz: float | None = Field(None, gt=0, description="robot control rate; default: the dataset's fps")
    trace_episodes: int = Field(
        3, ge=0, description="evaluation episodes plotted as action traces in report.html")


class ExecutorConfig(Section):
    """Where the units of work run: the tuner's variants and the closed loop's episodes (`vlaedge.executor`;
    the CLI's --executor and --address override `kind` and `address`). Latency is never compared across
    machines: every model of one comparison is timed interleaved on one node (docs: guides/cluster.md)."""

    kind: Literal["local", "ray"] = Field(
        "local", description="local: in this process, one unit after another; ray: as Ray tasks on a "
        "cluster (pip install 'vlaedge[ray]')")
    address: str | None = Field(
        None, description='ray: "auto" (the cluster this machine joined with `ray start`), '
        '"ray://HOST:PORT" (Ray Client) or "local" (a Ray instance on this machine only); null: "auto"')
    max_retries: int = Field(
        2, ge=0, le=10, description="ray: attempts after the first for a task whose worker or node was lost")
    cpus_per_task: float = Field(1.0, gt=0, le=256, description="ray: CPUs each task reserves")
    episodes_per_task: int = Field(
        100, ge=1, description="closed-loop episodes per unit, run as one batch; seeds are assigned per unit "
        "before fan-out, so local and ray give equal results for equal values. 100: the shipped recipes' "
        "episodes in one unit per policy (the published closed-loop figures); lower it to fan out finer "
        "(a policy that samples noise, e.g. flow matching, then draws it per unit: other, equally valid "
        "figures)")
    timing_resource: str | None = Field(
        None, description='ray: a custom resource (e.g. "jetson-orin") naming the node that times '
        "latency; null: the node running vlaedge")

    @model_validator(mode="after")
    def _address_form(self):
        a = self.address
        if a is not None and a not in ("auto", "local") and not (a.startswith("ray://") and ":" in a[6:]):
            raise ValueError(f'address {a!r}: use "auto", "local" or "ray://HOST:PORT"')
        if self.kind == "local" and self.timing_resource is not None:
            raise ValueError(f"timing_resource {self.timing_resource!r} needs kind: ray (a local run times "
                             "on this machine)")
        return self


class TargetBudgets(Section):
    """Budgets that depend on the hardware, for one target; they replace the general ones there."""

    max_latency_p99_ms: float | None = Field(None, gt=0, description="p99 latency (ms) on this target")
    min_rate_hz: float | None = Field(None, gt=0, description="inferences/s at the median latency")
    max_memory_mb: float | None = Field(None, gt=0, description="peak RSS added by the model (MB)")


class Budgets(Section):
    """Release budgets, judged by `vlaedge.check.gate`; a missing field is not checked.

    Drift is in % of each action dimension's range (`action_spec.high - low`). `max_success_drop` passes
    only when the candidate's Wilson 95% lower bound is at least the reference's rate minus the drop,
    fails when its upper bound is below that, and is inconclusive (never a pass) in between, below
    `verify.min_episodes` or when the reference succeeds less often than `min_reference_success`.
    `min_rate_hz` is inferences per second at the median latency. `min_speedup` and
    `max_size_ratio` compare the candidate with the FP32 reference exported to ONNX and timed interleaved
    with it (the report's "baseline" section).
    """

    max_drift_mean_pct: float | None = Field(
        None, gt=0, description="mean abs action error, % of action range")
    max_drift_p99_pct: float | None = Field(None, gt=0, description="p99 abs action error, % of action range")
    max_drift_continuous_p99_pct: float | None = Field(
        None, gt=0, description="worst p99 abs error over the continuous (non-gripper) dims, % of range: "
        "any policy's motion dims, whatever their names (the gripper is budgeted as a flip rate). Skipped, "
        "with the reason, for a tokens head when min_token_agreement is set: the token flips set its p99")
    max_drift_per_dim_pct: dict[str, float] = Field(
        {}, description="action dim name -> max mean error, % of range")
    max_drift_per_dim_p99_pct: dict[str, float] = Field(
        {}, description="action dim name -> max p99 error, % of range")
    min_cosine: float | None = Field(
        None, ge=-1, le=1, description="mean cosine similarity of action chunks")
    min_stage_cosine: float | None = Field(
        None, ge=-1, le=1, description="per-stage candidates (stages.json): the lowest mean cosine "
        "similarity of any stage output against the FP32 torch stage fed the same inputs (the report's "
        "per-stage parity; per-stage deployments gate INT8 stages at about 0.995). Skipped for a single "
        "graph")
    min_token_agreement: float | None = Field(
        None, ge=0, le=1, description="discrete heads: share of action tokens that agree")
    max_gripper_flip_rate: float | None = Field(
        None, ge=0, le=1, description="gripper dims: share of open/close decisions that differ")
    max_success_drop: float | None = Field(
        None, ge=0, le=1, description="closed-loop success rate drop, judged on the Wilson bound (see above)")
    min_reference_success: float = Field(
        0.2, ge=0, le=1, description="max_success_drop is inconclusive (never a pass) when the reference's "
        "success rate is below this")
    max_latency_p99_ms: float | None = Field(None, gt=0, description="p99 inference latency (ms)")
    min_rate_hz: float | None = Field(None, gt=0, description="inferences/s at the median latency")
    max_memory_mb: float | None = Field(
        None, gt=0, description="peak RSS added by the model, MB (vlaedge.check.profile)")
    max_file_size_mb: float | None = Field(None, gt=0, description="model file plus external data, MB")
    min_speedup: float | None = Field(
        None, gt=0, description="FP32 median latency / candidate median latency, timed interleaved on the "
        "verify runtime (stable on shared runners, unlike absolute latency)")
    max_size_ratio: float | None = Field(
        None, gt=0, description="candidate file size / FP32 reference ONNX file size")
    targets: dict[str, TargetBudgets] = Field(
        {}, description="target name -> latency/rate/memory budgets there")
    policy_sha256: str | None = Field(
        None, description="the reference checkpoint these budgets are for (prefix accepted)")

    @model_validator(mode="after")
    def _known_targets(self):
        from vlaedge.targets import TARGETS

        for name in self.targets:
            if name not in TARGETS:
                close = difflib.get_close_matches(name, list(TARGETS), n=1)
                guess = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown target {name!r}{guess}; see 'vlaedge targets'")
        return self


class DataConfig(Section):
    """Which dataset feature feeds which model input, overriding the policy's own mapping (its config.json)
    without editing the checkpoint; e.g. `map: {rgb: observation.images.cam_left_wrist}` or on the command
    line `--set data.map.rgb=observation.images.cam_left_wrist`. The key `action` names the dataset's action
    feature. Every mapped feature is checked against the dataset before any stage runs."""

    map: dict[str, str] = Field(
        {}, description="model input name (or `action`) -> dataset feature (`observation.images.cam_high`)")


class LoadConfig(Section):
    """How the checkpoint is loaded (`--dtype` and `--device` on the command line). Half precision halves the
    memory the weights take; a stage that needs FP32 on the CPU (ONNX export and its ONNX Runtime check,
    quantization) casts to float32 there and says so in its summary; pruning needs `float32`. The device is
    where the torch side runs (reference actions, calibration passes, pruning); the ONNX export traces on the
    CPU and ONNX Runtime runs there whatever it says."""

    dtype: Literal["float32", "float16", "bfloat16", "auto"] = Field(
        "float32", description="weights in float32 (as the policy builds them), float16, bfloat16, or auto "
        "(the dtype most of the checkpoint's weights are stored in)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the torch side runs: auto (cuda where torch.cuda.is_available(), else "
        "cpu), cpu, or cuda (refused before any stage where torch finds no CUDA)")


class Recipe(Section):
    """A whole recipe. `target` is required; every other section is optional and skips its stage."""

    target: str = Field(description="a name from `vlaedge targets`")
    description: str = Field("", description="free text: what the recipe is for")
    data: DataConfig | None = Field(None, description="dataset feature -> model input mapping")
    load: LoadConfig | None = Field(None, description="checkpoint loading: the weights' dtype")
    prune: PruneConfig | None = Field(None, description="pruning or 2:4 sparsity")
    quantize: QuantizeConfig | None = Field(None, description="post-training quantization")
    export: ExportConfig | None = Field(None, description="ONNX export")
    engine: EngineConfig | None = Field(None, description="TensorRT engine or build bundle")
    verify: VerifyConfig | None = Field(None, description="drift, closed loop and latency checks")
    budgets: Budgets | None = Field(None, description="release budgets for the gate")
    executor: ExecutorConfig | None = Field(
        None, description="where tune's variants and the closed loop's episodes run (not set: here)")

    @model_validator(mode="after")
    def _budgets_measurable(self):
        b, v = self.budgets, self.verify
        if b is not None and b.max_success_drop is not None and not (v and v.closed_loop_episodes):
            raise ValueError("budgets.max_success_drop needs verify.closed_loop_episodes above 0 "
                             "(at least verify.min_episodes); without a closed loop drop the budget too: "
                             "--set budgets.max_success_drop=null")
        return self

    @model_validator(mode="after")
    def _prune_in_float32(self):
        dtype = self.load.dtype if self.load else "float32"
        if self.prune is not None and dtype in ("float16", "bfloat16"):
            raise ValueError(f"load.dtype {dtype} with prune: pruning scores and recovery-trains in torch in "
                             "float32 on the CPU; use --dtype float32 (or drop the prune section)")
        return self

    @model_validator(mode="after")
    def _fits_target(self):
        from vlaedge.targets import check_recipe_against_target

        check_recipe_against_target(self)
        return self


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # the recipes that ship inside the package


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with vlaedge, by name (the file stem, e.g. ``cpu-int8``)."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_path(name_or_path: str | Path) -> Path:
    """The recipe file for a path or a shipped recipe's name.

    An existing file is taken as given; a bare name (``cpu-int8`` or ``cpu-int8.yaml``, no folder) that is
    not a file here names a shipped recipe (`shipped_recipes`).

    Raises:
        VlaedgeError: neither a file nor a shipped recipe; the message lists the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    what = "does not exist" if path.parent != Path(".") else "is neither a file here nor a shipped recipe"
    close = difflib.get_close_matches(name.replace("_", "-"), list(shipped), n=1, cutoff=0.6)
    if close and path.parent == Path("."):  # a typo of a shipped name: cpu-int9, cpu_int8
        raise VlaedgeError(f"recipe: {path} {what}; did you mean {close[0]}?",
                           f"use {close[0]} (shipped: {', '.join(shipped)}; see 'vlaedge recipes')")
    raise VlaedgeError(
        f"recipe: {path} {what}",
        f"pass a recipe file or a shipped recipe's name ({', '.join(shipped)}; see 'vlaedge recipes')",
    )


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Loads and validates a recipe file.

    Args:
        path: the YAML file, or a shipped recipe's name (`recipe_path`).
        overrides: `section.field=value` strings applied before validation (values parsed as YAML),
            e.g. `["quantize.num_calib_frames=64"]`.

    Returns:
        The validated recipe.

    Raises:
        VlaedgeError: unreadable file, bad YAML, unknown keys, invalid values, or a recipe the target
            cannot run, as `path.to.field: message`.

    Example:
        >>> recipe = load_recipe("cpu-int8", ["quantize.algorithm=entropy"])
    """
    path = recipe_path(path)
    raw = safe_yaml.read(path, "recipe", "'vlaedge recipes' lists the shipped recipes")
    if not isinstance(raw, dict):
        raise VlaedgeError(f"recipe: {path} must be a mapping of sections",
                           f"start from a shipped recipe, e.g. {RECIPES_DIR / 'cpu-int8.yaml'}")
    for item in overrides:
        _apply_override(raw, item)
    where = str(path) + (f" with --set {' --set '.join(overrides)}" if overrides else "")
    return validate_recipe(raw, where[:300])


def load_budgets(path: str | Path) -> Budgets:
    """Loads budgets from a YAML file: the fields at the top level, under a `budgets:` key, or a whole
    recipe (its budgets section is used).

    Raises:
        VlaedgeError: unreadable file, bad YAML, unknown keys (with the closest valid one), invalid values.

    Example:
        >>> load_budgets("budgets.yaml").max_drift_mean_pct
        1.0
    """
    path = Path(path)
    shipped = path.parent == Path(".") and path.name.removesuffix(".yaml") in shipped_recipes()
    if shipped and not path.is_file():
        path = recipe_path(path)  # a shipped recipe's budgets, by name
    raw = safe_yaml.read(path, "budgets", "pass a budgets YAML file or a recipe")
    if isinstance(raw, dict) and "target" in raw:  # a recipe
        budgets = load_recipe(path).budgets
        if budgets is None:
            raise VlaedgeError(f"budgets: recipe {path} has no budgets section",
                               "add a budgets: section (docs: guides/ci-gating.md 'Choosing budgets'), "
                               "or pass a budgets file")
        return budgets
    if isinstance(raw, dict) and set(raw) == {"budgets"}:
        raw = raw["budgets"] or {}
    if not isinstance(raw, dict):
        raise VlaedgeError(f"budgets: {path} must be a mapping of budget names to values",
                           "e.g. max_drift_mean_pct: 1.0")
    try:
        return Budgets.model_validate(raw)
    except ValidationError as e:
        raise VlaedgeError(f"{path}: {format_validation_error(e, Budgets)}",
                           "every budget field, with an example value: "
                           "docs: guides/ci-gating.md 'Choosing budgets'") from e


def validate_recipe(raw: dict, where: str = "recipe") -> Recipe:
    """Validates a recipe given as a dict; errors as `where: path.to.field: message`."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise VlaedgeError(f"{where}: {format_validation_error(e, Recipe)}",
                           "every recipe field and its range: docs: reference/recipes.md") from e
    except VlaedgeError as e:  # a target rule (vlaedge.targets), raised unwrapped through pydantic
        fix = e.hint or "change that value, or use a recipe for another target (vlaedge recipes)"
        raise VlaedgeError(f"{where}: {e.message}", fix) from e


def format_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """The first pydantic error as `path.to.field: message`, listing valid keys for unknown ones.

    An unknown key comes first: a typo (`precison`) also makes the real key look missing.
    """
    errors = error.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        guess = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}: unknown key{guess}; valid keys here: {', '.join(valid)}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {msg} (got {reprlib.repr(err.get('input'))})" if "input" in err and not isinstance(
        err.get("input"), dict) else f"{where}: {msg}"  # reprlib: a huge value is never formatted whole


def _valid_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for key in loc:
        field = model.model_fields.get(key)
        if field is None:
            break
        candidates = [a for a in getattr(field.annotation, "__args__", (field.annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            break
        model = candidates[0]
    return list(model.model_fields)


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise VlaedgeError(f"override: {item!r} is not of the form section.field=value",
                           "e.g. --set quantize.num_calib_frames=64")
    *parents, leaf = key.strip().split(".")
    if parents[:2] == ["data", "map"]:  # the input name is the rest, dots and all (observation.state)
        parents, leaf = ["data", "map"], key.strip().removeprefix("data.map.")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise VlaedgeError(f"override: {key} goes through a non-section value", "check the key path")
    node[leaf] = safe_yaml.parse(value, f"override --set {key}")


REFERENCE_START = "<!-- recipe-reference:start -->"
REFERENCE_END = "<!-- recipe-reference:end -->"
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def recipe_reference() -> str:
    """The recipe reference as Markdown: one table per section, in pipeline order, from the models.

    Returns:
        `### section` headings, each with the section's docstring and a `field | type | default |
        meaning` table; types carry the constraints (`int (>= 1)`), meanings are the `Field` descriptions.

    Example:
        >>> print(recipe_reference())  # docs/reference/recipes.md holds it between the markers
    """
    blocks = []
    for path, model in _sections(Recipe, ""):
        rows = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            cells = (f"`{name}`", _type_cell(field), _default_cell(field), field.description or "")
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        doc = "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(model.__doc__ or "").split("\n\n"))
        blocks.append(f"### {f'`{path}`' if path else 'Top level'}\n\n{doc}\n\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def _sections(model: type[BaseModel], path: str):
    """(dotted path, model) for `model` and every section under it, depth first in field order."""
    yield path, model
    for name, field in model.model_fields.items():
        sub = _section_of(field.annotation)
        if sub is not None:
            key = f"{path}.{name}" if path else name
            yield from _sections(sub, f"{key}.<name>" if get_origin(field.annotation) is dict else key)


def _section_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((s for s in map(_section_of, get_args(annotation)) if s is not None), None)


def _type_name(annotation) -> str:
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if type(None) in args:
        name = " or ".join(_type_name(a) for a in args if a is not type(None))
        return name if name == "section" else f"{name} or null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if get_origin(annotation) in (list, dict):
        return f"{get_origin(annotation).__name__}[{', '.join(map(_type_name, args))}]"
    return getattr(annotation, "__name__", str(annotation))


def _type_cell(field) -> str:
    bounds = [f"{op} {getattr(m, key)}" for m in field.metadata for key, op in _BOUNDS.items()
              if getattr(m, key, None) is not None]
    return _type_name(field.annotation) + (f" ({', '.join(bounds)})" if bounds else "")


def _default_cell(field) -> str:
    if field.is_required():
        return "required"
    if field.default is None and _section_of(field.annotation) is not None:
        return "not set (skipped)"
    return f"`{json.dumps(field.default)}`"


def write_reference(page: Path) -> None:
    """Replaces the block between the recipe-reference markers in `page` with `recipe_reference()`."""
    head, start, rest = page.read_text().partition(REFERENCE_START)
    _, end, tail = rest.partition(REFERENCE_END)
    if not (start and end):
        raise SystemExit(f"{page}: no {REFERENCE_START} ... {REFERENCE_END} block to rewrite")
    page.write_text(f"{head}{REFERENCE_START}\n{recipe_reference()}\n{REFERENCE_END}{tail}")
    print(f"{page}: recipe reference rewritten")


REFERENCE_PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "recipes.md"  # in a checkout

if __name__ == "__main__":
    write_reference(REFERENCE_PAGE)
