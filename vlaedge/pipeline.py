"""The pipeline: the only module that strings stages together.

`compress` runs a recipe: load -> split -> prune -> quantize -> export (-> engine, verify, profile, gate)
into an output directory that appears only when complete. `verify_run` is the verify command's chain
(load the reference and the evaluation split -> verify -> gate -> reports). The stages themselves live in
the wings below: `vlaedge.compress` (prune, quantize, export), `vlaedge.deploy` (engine) and
`vlaedge.check` (verify, profile, gate, report); nothing below imports this module.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaedge.artifact import OutputDir, Resolved, sha256
from vlaedge.check.drift import action_drift
from vlaedge.check.report import write_reports
from vlaedge.data import (
    EVAL_FRACTION,
    EpisodeDataset,
    load_dataset,
    sample_frames,
    split_as_recorded,
    split_episodes,
)
from vlaedge.data.summary import check_counts
from vlaedge.defaults import default_checkpoint, default_dataset
from vlaedge.errors import VlaedgeError
from vlaedge.models import Policy, load_policy
from vlaedge.models.device import device_record, resolve_device
from vlaedge.models.preprocess import DataBinding, bind_data
from vlaedge.recipe import Budgets, ExportConfig, PruneConfig, Recipe, VerifyConfig
from vlaedge.targets import get_target

CALIBRATION_BATCH = 32
TENSORRT_ONLY = ("fp8", "int4-weight-only")  # exports ONNX Runtime may not load (TensorRT custom ops)


@dataclass
class Inputs:
    """What every stage works from: the FP32 reference policy and the episode split."""

    policy: Policy
    checkpoint: Path
    dataset: EpisodeDataset
    calibration: EpisodeDataset
    evaluation: EpisodeDataset
    data_path: Path
    binding: DataBinding | None = None  # which dataset feature feeds which input (printed, in the manifest)
    recipe: Recipe | None = None  # the recipe fitted to the policy (`fit_recipe`): what the stages run


@dataclass
class CompressResult:
    """What `compress` produced: truthy when every stage ran (a gate verdict is separate)."""

    out: Path
    manifest: dict
    summaries: list[str] = field(default_factory=list)
    gate: object | None = None  # vlaedge.check.gate.GateResult when the recipe has budgets (falsy: violated)

    def __bool__(self) -> bool:
        return True


def load_inputs(checkpoint: Path | None, data: Path | None, allow_pickle: bool = False,
                seed: int = 0, recipe: Recipe | None = None, trust_code: bool = False,
                device: str = "cpu") -> Inputs:
    """Loads the policy (default: the embedded one; its module on `device`, `vlaedge.models.device`) and
    the dataset (default: the calibration sample in the package), split by episode into calibration and
    evaluation halves, and checks them against each other and the recipe before any stage runs: the
    features the policy reads (with the recipe's ``data.map``), their shapes, dims and statistics
    (`bind_data`), the frames the recipe's stages need (`check_counts`), and a closed-loop env's action
    and observation spaces (`check_env`, no episode)."""
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    data = Path(data) if data else default_dataset()
    dtype = recipe.load.dtype if recipe and recipe.load else "float32"
    policy = load_policy(checkpoint, allow_pickle, trust_code, dtype, device)
    dataset = load_dataset(data)
    binding = bind_data(policy, dataset, recipe.data.map if recipe and recipe.data else None)
    calibration, evaluation = split_episodes(dataset, EVAL_FRACTION, seed)
    if recipe is not None:
        needs = {"export.check_frames": (recipe.export or ExportConfig()).check_frames}
        if recipe.quantize:
            needs["quantize.num_calib_frames"] = recipe.quantize.num_calib_frames
        if recipe.prune:
            needs["prune.num_frames"] = recipe.prune.num_frames
            if recipe.prune.max_drift_mean_pct is not None:
                room = calibration.num_frames - HELD_OUT_FRAMES
                lower = f"--set prune.num_frames={room}, " if room >= 8 else ""
                needs["prune.max_drift_mean_pct"] = (
                    recipe.prune.num_frames + HELD_OUT_FRAMES,
                    f"its {HELD_OUT_FRAMES} held-out frames come on top of prune.num_frames: {lower}add "
                    "episodes, or --set prune.max_drift_mean_pct=null")
        check_counts(dataset, calibration, needs)
        loop = recipe.verify
        recipe = fit_recipe(recipe, policy)
        if loop is not None and loop.closed_loop_episodes:
            from vlaedge.check.closedloop import check_env

            check_env(loop.env, loop.env_adapter, policy)
    return Inputs(policy, checkpoint, dataset, calibration, evaluation, data, binding, recipe)


def fit_recipe(recipe: Recipe, policy: Policy) -> Recipe:
    """The recipe checked against the policy before any stage runs, with `quantize.keep_action_head`
    resolved into `quantize.keep` (the adapter's declared action head, else its last layer with weights)
    and, for a policy exported per stage on the cpu target, its denoise loop's stage quantized dynamically
    unless the recipe sets `quantize.mode` (`vlaedge.compress.quantize_stages.loop_stage_default`).

    Raises:
        VlaedgeError: a `quantize.keep` pattern that matches no module of the policy, or a per-dimension
            budget naming an action dimension the policy does not have.
    """
    from vlaedge.compress.quant_report import unmatched_patterns

    q = recipe.quantize
    if q is not None:
        names = [n for n, _ in policy.module.named_modules() if n]
        missing = unmatched_patterns(names, list(q.keep))
        if missing:
            top = ", ".join(n for n, _ in policy.module.named_children())
            raise VlaedgeError(f"quantize.keep: pattern(s) {', '.join(repr(p) for p in missing)} match no "
                               f"module of {policy.name} (top-level modules: {top[:200]})",
                               "patterns are fnmatch on module names (e.g. 'vision.*'); to keep the action "
                               "head on any policy use quantize.keep_action_head: true")
        from vlaedge.compress.quantize_stages import (  # per-stage graphs (issue 23)
            check_stage_overrides,
            loop_stage_default,
        )

        per_stage, runtime = recipe.export is None or recipe.export.stages is not False, \
            get_target(recipe.target).runtime
        check_stage_overrides(policy, q, per_stage, runtime)
        if per_stage and runtime == "onnxruntime":  # the denoise loop's stage: dynamic (see its docstring)
            q = loop_stage_default(policy, q)
            recipe = recipe.model_copy(update={"quantize": q})
        if q.keep_action_head:
            head, _ = policy.action_head_modules()
            recipe = recipe.model_copy(update={"quantize": q.model_copy(
                update={"keep": list(q.keep) + [p for p in head if p not in q.keep]})})
    b = recipe.budgets
    if b is not None:
        dims = policy.action_spec.names
        for key in ("max_drift_per_dim_pct", "max_drift_per_dim_p99_pct"):
            unknown = [name for name in getattr(b, key) if name not in dims]
            if unknown:
                raise VlaedgeError(f"budgets: {key} names dimension(s) {', '.join(map(repr, unknown))}; "
                                   f"{policy.name}'s action dims are {', '.join(dims)}",
                                   "use the policy's action dimension names, or max_drift_continuous_p99_pct "
                                   "for every motion dim whatever its name")
    return recipe


def calibration_feeds(policy: Policy, calibration: EpisodeDataset, n: int, seed: int = 0) -> list[dict]:
    """`n` frames of the calibration split as model feeds, in batches of 32.

    Raises:
        VlaedgeError: fewer than `n` frames in the split.
    """
    if calibration.num_frames < n:
        raise VlaedgeError(
            f"calibration: {calibration.num_frames} frames in the calibration split, the recipe needs {n}",
            "add episodes to the dataset or lower quantize.num_calib_frames / prune.num_frames")
    frames = sample_frames(calibration, n, seed)
    feeds = []
    for start in range(0, n, CALIBRATION_BATCH):
        batch = {k: v[start:start + CALIBRATION_BATCH] for k, v in frames.items()}
        feeds.append(policy.make_inputs(batch, seed=seed + start))
    return feeds


HELD_OUT_FRAMES = 128  # drift-bounded pruning judges each attempt on this many frames


@dataclass
class HeldOutDrift:
    """The `DriftJudge` of drift-bounded pruning: a pruned policy's open-loop action drift from `teacher`
    (both run in torch) on held-out feed batches, by `vlaedge.check.drift.action_drift`.

    Attributes:
        teacher: the unpruned policy.
        feeds: batches of feeds keyed by input name, each array `(B, ...)`; none of them among the frames
            pruning ranked and recovered on.
    """

    teacher: Policy
    feeds: list[dict[str, np.ndarray]]

    @property
    def frames(self) -> int:
        return sum(len(next(iter(batch.values()))) for batch in self.feeds)

    def __call__(self, student: Policy) -> tuple[float, float | None]:
        """(mean drift in % of action range, token agreement in [0, 1] or None without action logits)."""
        teacher, refs, cands, ref_logits, cand_logits = self.teacher, [], [], [], []
        for batch in self.feeds:
            r, c = teacher.run_torch(batch), student.run_torch(batch)
            refs.append(teacher.decode(r))
            cands.append(student.decode(c))
            if teacher.logits_output:
                ref_logits.append(r[teacher.logits_output])
                cand_logits.append(c[teacher.logits_output])
        logits = (np.concatenate(ref_logits), np.concatenate(cand_logits)) if ref_logits else (None, None)
        drift = action_drift(np.concatenate(refs), np.concatenate(cands), teacher.action_spec, *logits)
        return drift.mean_pct, drift.token_agreement


def prune_feeds(policy: Policy, calibration: EpisodeDataset,
                config: PruneConfig) -> tuple[list, HeldOutDrift | None]:
    """Calibration feeds for `prune`: `config.num_frames` frames to rank and recover on, and, for
    drift-bounded pruning (`max_drift_mean_pct`), the judge of its attempts on `HELD_OUT_FRAMES` other
    frames of the split.

    Raises:
        VlaedgeError: the calibration split holds fewer frames than that.
    """
    if config.max_drift_mean_pct is None:
        return calibration_feeds(policy, calibration, config.num_frames), None
    n = config.num_frames
    if calibration.num_frames < n + HELD_OUT_FRAMES:
        raise VlaedgeError(
            f"calibration: {calibration.num_frames} frames in the calibration split, drift-bounded pruning "
            f"needs {n + HELD_OUT_FRAMES} (prune.num_frames={n} + {HELD_OUT_FRAMES} held out)",
            f"add episodes to the dataset, lower prune.num_frames (to at most "
            f"{max(calibration.num_frames - HELD_OUT_FRAMES, 0)}), or set prune.max_drift_mean_pct: null")
    feeds = calibration_feeds(policy, calibration, n + HELD_OUT_FRAMES)
    frames = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    held_out = [{k: v[n:] for k, v in frames.items()}]
    return [{k: v[:n] for k, v in frames.items()}], HeldOutDrift(policy, held_out)


def compress(recipe: Recipe, out: str | Path, checkpoint: Path | None = None, data: Path | None = None,
             force: bool = False, allow_pickle: bool = False, log=print,
             trust_code: bool = False) -> CompressResult:
    """Runs the recipe's stages on a policy and writes the output directory atomically.

    Args:
        recipe: the validated recipe (see `load_recipe`).
        out: the output directory; refused if it exists unless `force`.
        checkpoint: the policy; default: the embedded default policy.
        data: the episodes (LeRobot v3 or .npz); default: the repository's calibration/ sample.
        force: replace an existing output directory.
        allow_pickle: accept pickle weights.
        log: where one-line progress messages go.
        trust_code: let a `python` checkpoint import and call its factory (recorded in the manifest).

    Returns:
        The output directory and its manifest.

    Raises:
        VlaedgeError: any bad input (`load.device: cuda` without CUDA: before anything is read); nothing is
            left at `out` then.

    Example:
        >>> compress(load_recipe("recipes/cpu-int8.yaml"), "runs/cpu-int8", force=True)
    """
    target = get_target(recipe.target)
    requested = recipe.load.device if recipe.load else "auto"
    device = resolve_device(requested)  # the torch side's device: the stages run there (manifest "device")
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    data = Path(data) if data else default_dataset()
    with OutputDir(out, force, protect=(checkpoint, data)) as od:
        if device != "cpu":
            log(f"device: the torch side runs on {device} (the ONNX export traces on the CPU)")
        inputs = load_inputs(checkpoint, data, allow_pickle, recipe=recipe, trust_code=trust_code,
                             device=device)
        given, recipe = recipe, inputs.recipe
        for line in inputs.binding.lines():
            log(line)
        od.record_input("checkpoint", inputs.checkpoint)
        od.record_input("data", inputs.data_path)
        od.manifest["data"] = inputs.binding.to_dict()
        od.manifest["device"] = device_record(requested, device)
        od.manifest.update(recipe=given.model_dump(mode="json"), target=target.name, versions=_versions(),
                           consent={"trust_code": trust_code, "allow_pickle": allow_pickle},
                           split={"calibration_episodes": inputs.calibration.episode_indices,
                                  "evaluation_episodes": inputs.evaluation.episode_indices,
                                  "eval_fraction": EVAL_FRACTION})
        summaries = []
        policy = inputs.policy
        if recipe.prune:
            policy = _run_prune(od, recipe, inputs, summaries, log)
        _run_quantize_and_export(od, recipe, target, inputs, policy, summaries, log)
        if recipe.engine:
            _run_engine(od, recipe, target, summaries, log)
        verdict = None
        if recipe.verify or recipe.budgets:  # reports are written before commit, so the manifest lists them
            verdict = _run_verify(od, recipe, target.name, inputs, log)
        od.commit()
    return CompressResult(Path(out), od.manifest, summaries, verdict)


def _run_engine(od: OutputDir, recipe: Recipe, target, summaries: list[str], log) -> None:
    """The on-device build bundle always; a TensorRT plan too where TensorRT and a GPU are present."""
    from vlaedge.deploy.engine import build_engine

    start = time.perf_counter()
    build = build_engine
    if od.manifest.get("model") == "stages.json":  # per-stage graphs (issue 23): one engine per stage
        from vlaedge.deploy.stage_plan import build_stage_engines as build
    result = build(od.path / od.manifest.get("model", "model.onnx"), recipe.engine, target,
                   recipe.quantize.precision if recipe.quantize else None, od.path)
    od.record_stage("engine", time.perf_counter() - start, **_details(result))
    summaries.append(result.summary())
    log(result.summary())


def _run_prune(od: OutputDir, recipe: Recipe, inputs: Inputs, summaries: list[str], log) -> Policy:
    from vlaedge.compress.prune import prune

    log(f"prune: {recipe.prune.method} on {recipe.prune.num_frames} calibration frames")
    start = time.perf_counter()
    feeds, judge = prune_feeds(inputs.policy, inputs.calibration, recipe.prune)
    result = prune(inputs.policy, recipe.prune, feeds, judge=judge)
    result.policy.save(od.path / "pruned")
    od.record_stage("prune", time.perf_counter() - start, **_details(result))
    summaries.append(result.summary())
    log(result.summary())
    return result.policy


def _run_quantize_and_export(od: OutputDir, recipe: Recipe, target, inputs: Inputs, policy: Policy,
                             summaries: list[str], log) -> None:
    from vlaedge.compress.export import export_onnx

    export_cfg = recipe.export or ExportConfig()
    q = recipe.quantize
    _record_load(od, policy, summaries, log)
    check = calibration_feeds(policy, inputs.calibration, export_cfg.check_frames, seed=1)
    check = {k: np.concatenate([f[k] for f in check]) for k in check[0]}
    start = time.perf_counter()
    fp32 = export_onnx(policy, od.path / ("model_fp32.onnx" if q else "model.onnx"), export_cfg, check)
    od.record_stage("export_fp32", time.perf_counter() - start, **_details(fp32))
    log(fp32.summary())
    staged = Path(fp32.path).suffix == ".json"  # per-stage graphs (issue 23): stages.json + stages/
    if staged:
        od.manifest["model"] = "stages.json"
    if not q:
        return
    from vlaedge.compress.quantize import quantize

    log(f"quantize: {q.precision} ({q.algorithm}) on {q.num_calib_frames} calibration frames "
        f"for {target.name}")
    start = time.perf_counter()
    feeds = calibration_feeds(policy, inputs.calibration, q.num_calib_frames)
    final = od.path / "model.onnx"
    if staged and target.runtime != "onnxruntime":  # ModelOpt: the modules of FP32 stages kept (issue 23)
        from vlaedge.compress.quantize_stages import modelopt_stage_config

        q = modelopt_stage_config(policy, q, feeds[0])
    if target.runtime == "onnxruntime" and staged:  # per-stage graphs (issue 23)
        _quantize_stages(od, q, target, inputs.policy if not recipe.prune else policy, policy, feeds, check,
                         export_cfg, summaries, log, start)
        return
    if target.runtime == "onnxruntime":
        result = quantize(policy, q, feeds, target, fp32_onnx=od.path / "model_fp32.onnx", out_onnx=final)
        od.record_stage("quantize", time.perf_counter() - start, **_details(result))
        from vlaedge.compress.export import check_against_torch

        exported = check_against_torch(inputs.policy if not recipe.prune else policy, final, check,
                                       export_cfg.max_check_error_pct)
        od.record_stage("export", 0.0, check=exported.__dict__)
    else:
        reference = policy is inputs.policy  # verify needs its FP32 module again: reloaded below
        result = quantize(policy, q, feeds, target)  # ModelOpt, in place: never two copies of the policy
        od.record_stage("quantize", time.perf_counter() - start, **_details(result))
        start = time.perf_counter()
        exported = export_onnx(policy, final, export_cfg, check, precision=q.precision)
        od.record_stage("export", time.perf_counter() - start, **_details(exported))
        log(exported.summary())
        if reference:
            _reload_reference(od, inputs)
    summaries.append(result.summary())
    log(result.summary())


def _quantize_stages(od: OutputDir, q, target, reference: Policy, policy: Policy, feeds: list, check: dict,
                     export_cfg: ExportConfig, summaries: list[str], log, start: float) -> None:
    """cpu target, staged policy (issue 23): each stage of stages_fp32.json quantized into stages.json,
    then checked per stage and end to end against torch."""
    from vlaedge.compress.export_stages import check_staged
    from vlaedge.compress.quantize_stages import quantize_stages
    from vlaedge.models.stages import StageParity

    result = quantize_stages(policy, q, feeds, target, od.path / "stages_fp32.json", od.path / "model.onnx")
    od.record_stage("quantize", time.perf_counter() - start, **_details(result))
    exported, parity = check_staged(reference, od.path / "stages.json", check, export_cfg.max_check_error_pct)
    od.record_stage("export", 0.0, check=exported.__dict__, parity=parity)
    lines = [result.summary()] + [StageParity(**p).line() for p in parity] + [
        exported.line("ONNX Runtime INT8 (staged)", judged=False)]
    summaries.append("\n".join(lines))
    log("\n".join(lines))


def _record_load(od: OutputDir, policy: Policy, summaries: list[str], log) -> None:
    """Records the load dtype in the manifest. A half-precision policy (`load.dtype`) is cast to float32
    here, said in the summary: the export check runs the graph in ONNX Runtime on the CPU and quantization
    calibrates in FP32."""
    from vlaedge.models.weights import ensure_float32, module_dtype

    od.manifest["load"] = {"dtype": module_dtype(policy.module)}
    note = ensure_float32(policy, "export", "the export check runs ONNX Runtime on the CPU in FP32, and "
                          "quantization calibrates in FP32")
    if note:
        od.manifest["load"]["cast"] = note
        summaries.append(note)
        log(note)


def _reload_reference(od: OutputDir, inputs: Inputs) -> None:
    """Gives the FP32 reference its weights back after ModelOpt quantized its module in place: the
    quantized module is dropped first, then the checkpoint is loaded again (memory-mapped: cheap), so two
    copies of the policy never coexist."""
    import gc

    inputs.policy.module = None
    gc.collect()
    consent = od.manifest.get("consent", {})
    fresh = load_policy(inputs.checkpoint, consent.get("allow_pickle", False),
                        consent.get("trust_code", False), device=od.manifest["device"]["torch"])
    inputs.policy.module = fresh.module


def _run_verify(od: OutputDir, recipe: Recipe, target: str, inputs: Inputs, log) -> object | None:
    """`vlaedge compress`'s verify -> profile -> gate stage: the original FP32 policy against the run's
    model.onnx on the evaluation split; writes the reports into the staging directory and records the
    stage in the manifest. Returns the gate verdict (None without budgets)."""
    from vlaedge.check.verify import verify

    start = time.perf_counter()
    config = recipe.verify or VerifyConfig()
    name = od.manifest.get("model", "model.onnx")  # stages.json for per-stage graphs (issue 23)
    model = od.path / name
    skipped = _unrunnable_here(recipe, config, inputs.policy, model)
    if skipped:
        log(f"verify: skipped: {skipped}")
        od.record_stage("verify", time.perf_counter() - start, skipped=skipped)
        return None
    sha = od.manifest["inputs"]["checkpoint"]["sha256"]
    fp32_name = "stages_fp32.json" if name == "stages.json" else "model_fp32.onnx"
    own_fp32 = od.path / fp32_name if recipe.quantize and not recipe.prune else None
    with tempfile.TemporaryDirectory(prefix="vlaedge-fp32-") as tmp:
        baseline = fp32_baseline(inputs.policy, model, config, own_fp32, Path(tmp), log)
        result = verify(inputs.policy, model, inputs.evaluation, config, sha, inputs.checkpoint, target, True,
                        log, baseline)
    result.report["candidate"]["model"] = name  # relative: the staging directory is renamed
    names = [name, fp32_name if baseline == own_fp32 else f"{Path(baseline or 'x').name} (temporary)"]
    for entry, name in zip((result.report.get("profile") or {}).get("models", []), names, strict=False):
        entry["model"] = name
    if result.report.get("baseline"):
        result.report["baseline"]["model"] = names[1]
    result.report = od.final_paths(result.report)  # no staging-folder path survives the rename
    verdict = gate_into(result.report, recipe.budgets, target) if recipe.budgets else None
    write_reports(result.report, od.path)
    drift = result.drift
    details = {
        "frames": drift.frames,
        "drift_mean_pct": drift.mean_pct,
        "drift_p99_pct": drift.p99_pct,
        "reports": ["report.json", "report.md", "report.html"]
        + (["junit.xml"] if verdict is not None else []),
    }
    if result.profile is not None:
        details["latency_p99_ms"] = result.profile.models[0].latency.p99_ms
    od.record_stage("verify", time.perf_counter() - start, **details)
    if verdict is not None:
        od.manifest["gate"] = {"passed": verdict.passed, "failed": [c.name for c in verdict.failures]}
    return verdict


def _unrunnable_here(recipe, config, policy, model: Path) -> str | None:
    """Why the candidate cannot be verified here (a TensorRT-only graph on ONNX Runtime), or None."""
    from vlaedge.runtimes import open_runtime

    precision = recipe.quantize.precision if recipe.quantize else None
    if precision not in TENSORRT_ONLY or not config.runtime.startswith("ort-"):
        return None
    try:
        open_runtime(config.runtime, policy, model, 1).close()
    except VlaedgeError as e:
        return (
            f"{config.runtime} cannot run this {precision} graph ({e.message[:120]}); verify the engine on "
            "the device: vlaedge verify RUN_DIR --runtime ort-trt"
        )
    return None


def _details(result) -> dict:
    """A stage result's dict for the manifest, without the `seconds` that record_stage takes itself."""
    return {k: v for k, v in result.to_dict().items() if k != "seconds"}


def _versions() -> dict:
    from vlaedge.info import collect_info

    info = collect_info()
    return {k: info[k] for k in ("vlaedge", "python", "torch", "onnx", "onnxruntime", "modelopt", "tensorrt")}


@dataclass
class VerifyRun:
    """What `verify_run` did: the report dict and the gate verdict (None without budgets)."""

    report: dict
    gate: object | None  # vlaedge.check.gate.GateResult (falsy: a budget violated)


def verify_run(resolved: Resolved, config: VerifyConfig, budgets: Budgets | None, target: str | None,
               out: str | Path, force: bool = False, allow_pickle: bool = False, run_profile: bool = True,
               log=print, trust_code: bool = False, device: str = "auto") -> VerifyRun:
    """The verify command's chain: the FP32 reference and the evaluation split (the run's recorded one when
    `resolved` came from a run directory) -> `vlaedge.check.verify.verify` -> gate (with budgets) ->
    report.json/md/html (+ junit.xml), written atomically into `out`.

    Args:
        resolved: the candidate and its run's manifest (`vlaedge.artifact.resolve_model`).
        config: verify settings (frames, runtime, closed loop, profile).
        budgets: judged when given.
        target: deployment target name (selects per-target budgets), or None.
        out: the output directory; refused if it exists unless `force`.
        device: where the reference (and a torch candidate) runs: auto, cpu or cuda
            (`vlaedge.models.device`); recorded in report.json's policy section.

    Raises:
        VlaedgeError: any bad input (`device="cuda"` without CUDA: before anything is read); nothing is
            left at `out` then.
    """
    from vlaedge.check.verify import verify

    device = resolve_device(device)
    config = recorded_env(config, resolved.manifest or {}, log)
    ckpt = resolved.reference("verify") or default_checkpoint()
    data = resolved.data or default_dataset()
    with OutputDir(out, force, protect=(ckpt, data, resolved.model)) as od:
        policy = load_policy(ckpt, allow_pickle, trust_code, device=device)
        dataset = load_dataset(data)
        bind_data(policy, dataset, ((resolved.manifest or {}).get("data") or {}).get("map"))
        _, evaluation = split_as_recorded(dataset, (resolved.manifest or {}).get("split"))
        od.record_input("checkpoint", ckpt)
        manifest = resolved.manifest or {}
        own_fp32 = None
        if resolved.model is not None and manifest and not (manifest.get("recipe") or {}).get("prune"):
            own_fp32 = Path(resolved.model).with_name("model_fp32.onnx")  # the run's own FP32 export
        with tempfile.TemporaryDirectory(prefix="vlaedge-fp32-") as tmp:
            baseline = fp32_baseline(policy, resolved.model, config, own_fp32, Path(tmp), log)
            result = verify(policy, resolved.model, evaluation, config, sha256(ckpt), ckpt, target,
                            run_profile, log, baseline, trust_code=trust_code)
        if baseline is not None and baseline != own_fp32:  # the temporary export is gone: say what it was
            label = f"FP32 export of {ckpt} (temporary)"
            result.report["baseline"]["model"] = label
            if result.report.get("profile"):
                result.report["profile"]["models"][1]["model"] = label
        verdict = gate_into(result.report, budgets, target) if budgets is not None else None
        write_reports(result.report, od.path)
        od.commit()
    return VerifyRun(result.report, verdict)


ENV_SETTINGS = ("env", "env_adapter", "success_key", "max_steps", "execute")


def recorded_env(config: VerifyConfig, manifest: dict, log=print) -> VerifyConfig:
    """`config` with the closed-loop env settings the run recorded (manifest `recipe.verify`) filled in when
    `config` names no env: `env`, `env_adapter`, `success_key`, and `max_steps`/`execute` where `config` has
    the defaults. A `config` naming its own env keeps all of its settings."""
    recorded = ((manifest.get("recipe") or {}).get("verify")) or {}
    if config.env is not None or not recorded.get("env"):
        return config
    fields = VerifyConfig.model_fields
    update = {k: recorded[k] for k in ENV_SETTINGS
              if recorded.get(k) is not None and getattr(config, k) == fields[k].default}
    log(f"verify: closed-loop env from the run's manifest: {recorded['env']}"
        + "".join(f", {k}={update[k]}" for k in ENV_SETTINGS[1:] if k in update))
    return VerifyConfig.model_validate({**config.model_dump(), **update})


def fp32_baseline(policy: Policy, model: Path | None, config: VerifyConfig, own: Path | None, tmp: Path,
                  log=print) -> Path | None:
    """The FP32 reference ONNX a candidate is timed against: the run's own `model_fp32.onnx` (`own`, when it
    exists) or the reference policy exported into `tmp`; None when there is nothing to compare (no .onnx
    candidate, or a runtime that is not ONNX Runtime)."""
    if model is None or Path(model).suffix not in (".onnx", ".json") or not config.runtime.startswith("ort-"):
        return None
    if own is not None and own.is_file():
        return own
    from vlaedge.compress.export import export_onnx

    log("verify: exporting the FP32 reference to ONNX, to time the candidate against it")
    return Path(export_onnx(policy, tmp / "reference_fp32.onnx").path)


def gate_into(report: dict, budgets: Budgets, target: str | None):
    """Judges `report` against `budgets` and records the verdict in its ``gate`` section."""
    from vlaedge.check.gate import gate

    verdict = gate(report, budgets, target)
    report["gate"] = verdict.to_dict()
    return verdict
