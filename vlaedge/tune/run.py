"""The tuner's run: inputs -> FP32 export -> variants (cached) -> sensitivity fallback -> one interleaved
latency run (or the estimate for TensorRT targets) -> Pareto front, pick, recipe, reports. The steps are
described in `vlaedge.tune`."""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.artifact import sha256
from vlaedge.data import sample_frames
from vlaedge.defaults import default_checkpoint, default_dataset
from vlaedge.errors import VlaedgeError
from vlaedge.executor import Executor
from vlaedge.pipeline import calibration_feeds, load_inputs, prune_feeds
from vlaedge.recipe import ExportConfig, VerifyConfig
from vlaedge.targets import get_target
from vlaedge.tune.build import (
    Measured,
    drift_only,
    measure_fp32,
)
from vlaedge.tune.fanout import build_variants, timed_profile
from vlaedge.tune.output import TuneOutput
from vlaedge.tune.select import (
    budget_failures,
    chosen_recipe,
    pareto_front,
    pick,
    render_html,
    render_markdown,
)
from vlaedge.tune.space import Variant, declared_space
from vlaedge.tune.work import FrameSet, TuneResult, Work, finite


def tune(recipe, out: str | Path, checkpoint: Path | None = None, data: Path | None = None,
         max_minutes: float = 5.0, space: str | dict = "full", search_frames: int = 128,
         max_fallback: int = 8, recipe_name: str = "recipe", log=print,
         trust_code: bool = False, force: bool = False, protect: tuple[Path, ...] = (),
         executor=None) -> TuneResult:
    """Explores the variant space for a recipe's target and writes the choice into `out`.

    `out` is written as `vlaedge compress` writes its output (`vlaedge.tune.output`): refused before any
    work when it is or touches an input, locked, staged beside it and moved into place when complete; an
    existing tune folder is resumed from its validated cache (`vlaedge.tune.cache`).

    Args:
        recipe: the validated recipe; its quantize section is the base every variant changes, its verify
            section sets frames, seed, threads and runtime, its budgets decide what is acceptable.
        out: the output directory (created; an existing tune folder is resumed and replaced).
        checkpoint: the FP32 policy; default: the embedded default policy.
        data: the episodes; default: the calibration sample.
        max_minutes: time box for building variants (the fallback search included); the latency run and
            the reports come after it.
        space: "full", "quick" or {name: QuantizeConfig fields} (see `vlaedge.tune.space`).
        search_frames: calibration-split frames the search judges drift on.
        max_fallback: most module groups kept in FP32 by the sensitivity search.
        recipe_name: how the recipe is named in the report.
        log: progress lines.
        trust_code: let a `python` checkpoint import and call its factory.
        force: start over: replace an existing `out` (also a folder tune did not write) without reading
            its cache.
        protect: more inputs `out` must not be, contain or lie inside (the CLI passes the recipe file).
        executor: where the variants are built and judged (`vlaedge.executor`); None: here. Latency is
            timed on one node either way (this one, or the executor's `timing_resource` node).

    Returns:
        The `TuneResult` (rows, the pick and why, the written recipe: None when nothing is within budget).

    Raises:
        VlaedgeError: a recipe without a quantize section, a time box that is not a positive number, a
            refused output, another run on it, bad inputs (as `vlaedge compress`); `out` is as it was then.

    Example:
        >>> result = tune(load_recipe("recipes/cpu-int8.yaml"), "runs/tune", max_minutes=5)
        >>> print(result.summary())
    """
    if recipe.quantize is None:
        raise VlaedgeError("tune: the recipe has no quantize section, there is nothing to tune",
                           "start from a quantizing recipe, e.g. --recipe cpu-int8")
    if not math.isfinite(max_minutes) or max_minutes <= 0:
        raise VlaedgeError(f"tune: --max-minutes {max_minutes:g}",
                           "give a finite, positive time box in minutes, e.g. 5")
    started = time.monotonic()
    inputs = (Path(checkpoint) if checkpoint else default_checkpoint(),
              Path(data) if data else default_dataset(), *protect)
    with TuneOutput(out, force, protect=inputs) as staging:
        result = run_tune(recipe, staging, checkpoint, data, max_minutes, space, search_frames, max_fallback,
                          recipe_name, log, started, trust_code, executor or Executor())
        staging.commit()
    return result


def run_tune(recipe, staging: TuneOutput, checkpoint, data, max_minutes, space, search_frames, max_fallback,
             recipe_name, log, started, trust_code: bool = False, executor=None) -> TuneResult:
    """The tuner's steps (see `vlaedge.tune`) into `staging.path`, resuming from `staging.previous`."""
    deadline = started + max_minutes * 60
    executor = executor or Executor()
    work, context, notes = _prepare(recipe, staging, checkpoint, data, search_frames, log, trust_code)
    measured, errors = [measure_fp32(work, work.baseline_onnx)], []
    variants = declared_space(work.target.runtime, recipe.quantize.precision, space)
    built, counts, timed_out = _explore(executor, work, variants, context, deadline, log, errors)
    measured += built
    sensitivity = []
    quantized = [m for m in measured if not m.fp32]
    if quantized and not any(not m.search_failures for m in quantized) and time.monotonic() < deadline:
        seed = min(quantized, key=lambda m: m.search_drift["mean_pct"])
        log(f"tune: no variant keeps the drift budgets on the search frames; ranking module groups of "
            f"{seed.name} by action sensitivity")
        sensitivity, extra = _fallback(executor, work, seed, context, max_fallback, deadline, log, errors)
        measured += extra
    rows = _time_and_judge(executor, work, recipe, measured, log)
    rows += errors
    chosen, reason = pick(rows)
    box = f"time box of {max_minutes:g} min reached: {', '.join(timed_out)} not explored" if timed_out else ""
    if box:
        log(f"tune: {box}")
    reproduce = reproduce_command(staging.final, checkpoint, data, trust_code) if chosen else ""
    return _write(recipe, staging, work, rows, chosen, reason, sensitivity, notes, box, recipe_name,
                  time.monotonic() - started, reproduce, counts)


def _explore(executor, work, variants: list[Variant], context: dict, deadline: float, log, errors: list):
    """Builds (or takes from the cache) each declared variant on the executor until the time box ends; then
    one line says what happened to them. Returns (the built rows, the counts: total, built, from_cache,
    not_built, not_explored, the names not explored)."""
    counts = dict.fromkeys(("built", "from_cache", "not_built", "not_explored"), 0)
    done = build_variants(executor, work, variants, context, log, errors, deadline)
    for _, how in done:
        counts[how] += 1
    counts = {"total": len(variants), **counts}
    log(counts_line(counts))
    missed = [v.name for v, (_, how) in zip(variants, done, strict=True) if how == "not_explored"]
    return [row for row, _ in done if row is not None], counts, missed


def counts_line(counts: dict) -> str:
    """"tune: 9 variants: 5 built, 3 from cache, 1 could not be built, 0 not explored (time box)" (the last
    two only when not 0)."""
    n = counts["total"]
    line = (f"tune: {n} variant{'' if n == 1 else 's'}: {counts['built']} built, "
            f"{counts['from_cache']} from cache")
    if counts["not_built"]:
        line += f", {counts['not_built']} could not be built"
    if counts["not_explored"]:
        line += f", {counts['not_explored']} not explored (time box)"
    return line


def reproduce_command(out: Path, checkpoint, data, trust_code: bool) -> str:
    """The `vlaedge compress` command line that rebuilds the pick from `out/recipe.yaml`: the same
    checkpoint and data as the tune run (none given: the embedded default policy / dataset), into
    `OUT-pick`."""
    words = ["vlaedge", "compress", *([str(checkpoint)] if checkpoint else []), "--recipe",
             str(out / "recipe.yaml"), *(["--data", str(data)] if data else []),
             *(["--trust-code"] if trust_code else []), "--out", f"{out}-pick"]
    return shlex.join(words)


def _prepare(recipe, staging: TuneOutput, checkpoint, data, search_frames: int, log,
             trust_code: bool = False):
    from vlaedge.compress.export import export_onnx

    target = get_target(recipe.target)
    # the recipe's data.map and frame counts
    inputs = load_inputs(checkpoint, data, recipe=recipe, trust_code=trust_code)
    recipe = inputs.recipe  # keep_action_head resolved; keep patterns and budget names checked
    config = recipe.verify or VerifyConfig()
    folder = staging.path / "variants"
    folder.mkdir()
    policy, notes = inputs.policy, []
    if recipe.prune:
        from vlaedge.compress.prune import prune

        log(f"tune: prune ({recipe.prune.method}) once; every variant quantizes the pruned policy")
        feeds, judge = prune_feeds(inputs.policy, inputs.calibration, recipe.prune)
        policy = prune(inputs.policy, recipe.prune, feeds, judge=judge).policy
        notes.append("the recipe prunes: variants quantize the pruned policy, drift and speedup are against "
                     "the unpruned FP32 policy")
    export_cfg = recipe.export or ExportConfig()
    check = calibration_feeds(policy, inputs.calibration, export_cfg.check_frames, seed=1)
    check = {k: np.concatenate([f[k] for f in check]) for k in check[0]}
    fp32 = folder / "fp32.onnx"
    export_onnx(inputs.policy, fp32, export_cfg)  # always: a stale file from another checkpoint would lie
    quant_fp32 = fp32
    if recipe.prune:
        quant_fp32 = folder / "pruned_fp32.onnx"
        export_onnx(policy, quant_fp32, export_cfg, check)
    n_eval = min(config.eval_frames, inputs.evaluation.num_frames)
    n_search = min(search_frames, inputs.calibration.num_frames)
    work = Work(inputs.policy, policy, target, recipe.quantize,
                 calibration_feeds(policy, inputs.calibration, recipe.quantize.num_calib_frames), check,
                 export_cfg, quant_fp32, fp32, folder, config.threads, drift_only(recipe.budgets),
                 FrameSet(inputs.policy, sample_frames(inputs.calibration, n_search, config.seed + 7),
                          config.seed + 7),
                 FrameSet(inputs.policy, sample_frames(inputs.evaluation, n_eval, config.seed), config.seed),
                 config.seed, staging.previous)
    context = {"checkpoint": sha256(inputs.checkpoint), "data": str(inputs.data_path), "eval": n_eval,
               "search": n_search, "seed": config.seed, "target": target.name,
               "export": export_cfg.model_dump(mode="json"),
               "prune": recipe.prune.model_dump(mode="json") if recipe.prune else None}
    log(f"tune: {inputs.policy.name} for {target.name}: search on {n_search} calibration frames, drift on "
        f"{n_eval} evaluation frames")
    return work, context, notes


def _fallback(executor, work, seed: Measured, context, max_fallback: int, deadline: float, log, errors):
    """Rank seed's module groups by search drift when quantized alone (the probes fan out); keep the worst
    in FP32 one by one."""
    groups = seed.quantized_groups
    base = Variant(seed.name, {k: v for k, v in seed.settings.items() if k != "keep"})
    probes = [Variant(f"{seed.name}+only-{g}", base.settings, [o for o in groups if o != g]) for g in groups]
    log(f"tune: sensitivity probes: {len(probes)} module groups, each quantized alone")
    done = build_variants(executor, work, probes, context, log, errors, deadline)
    scores = [(g, row.search_drift["mean_pct"]) for g, (row, _) in zip(groups, done, strict=True)
              if row is not None]
    ranking = sorted(scores, key=lambda s: -s[1])
    found, kept = [], []
    for g, _ in progress.track(ranking[:max_fallback], "tune: fallback variants (groups kept FP32)"):
        if time.monotonic() > deadline:
            break
        kept.append(g)
        variant = Variant(f"{seed.name}+fp32-{len(kept)}", base.settings, list(kept))
        row = build_variants(executor, work, [variant], context, log, errors, deadline)[0][0]
        if row is None:
            continue
        found.append(row)
        if not row.search_failures:
            log(f"tune: drift budgets hold with {len(kept)} module group(s) in FP32: {', '.join(kept)}")
            break
    return ranking, found


def _time_and_judge(executor, work, recipe, measured: list[Measured], log) -> list[dict]:
    """One interleaved latency run of every built model (cpu) or the estimate (TensorRT); then budgets."""
    rows = [m.to_dict() for m in measured if "+only-" not in m.name]  # sensitivity probes are not candidates
    paths = [work.folder.parent / r["model"] for r in rows]
    config = recipe.verify or VerifyConfig()
    load, node = None, None
    if work.target.runtime == "onnxruntime":
        runtime = config.runtime if config.runtime.startswith("ort-") else "ort-cpu"
        where = (f"the node with resource {executor.timing_resource!r}" if executor.timing_resource
                 else executor.node)
        box = f", time box {config.profile_max_seconds:g} s" if config.profile_max_seconds else ""
        log(f"tune: timing {len(paths)} models interleaved on {runtime} on {where} ({config.profile_runs} "
            f"runs each{box}, threads {config.threads or 'default'})")
        prof, node = timed_profile(executor, paths, runtime, work.reference, config.profile_runs,
                                   config.profile_warmup, config.threads, config.profile_max_seconds)
        load = prof.load
        for row, m in zip(rows, prof.models, strict=True):
            row["median_ms"], row["p99_ms"] = m.latency.median_ms, m.latency.p99_ms
    else:
        from vlaedge.deploy.estimate import estimate

        for row, path in zip(rows, paths, strict=True):
            est = estimate(path, work.target, allow_unknown_dims=True)
            row["median_ms"] = row["p99_ms"] = est.latency_ms
    fp32 = rows[0]
    for row in rows:
        row["drift_mean_pct"] = row["drift"]["mean_pct"]
        row["speedup"] = fp32["median_ms"] / row["median_ms"]
        row["size_ratio"] = row["file_bytes"] / fp32["file_bytes"]
        row["parameter_ratio"] = row["parameters"] / fp32["parameters"]
        row["failures"] = budget_failures(row, recipe.budgets, work.target.name)
    front = set(pareto_front(rows))
    for row in rows:
        row["pareto"] = row["name"] in front
    rows[0]["load"], rows[0]["node"] = load, node
    return rows


def _write(recipe, staging: TuneOutput, work, rows, chosen, reason, sensitivity, notes, box, recipe_name,
           seconds, reproduce: str, counts: dict) -> TuneResult:
    """tune.json, tune.md, tune.html and, when a row is within every budget, recipe.yaml, into the staging
    folder; paths in them are the final ones."""
    from vlaedge.check.profile import load_line

    out, folder = staging.final, staging.path
    load, node = rows[0].pop("load", None), rows[0].pop("node", None)
    result = {
        "schema": "vlaedge.tune/1", "verdict": reason, "chosen": chosen["name"] if chosen else None,
        "policy": work.reference.name, "target": work.target.name, "recipe": recipe_name,
        "latency_source": (f"one interleaved ONNX Runtime run (batch 1) on {node}" if work.target.runtime ==
                           "onnxruntime" else
                           f"vlaedge.deploy.estimate roofline for {work.target.name} (no device here)"),
        "eval_frames": work.evaluation.frames, "search_frames": work.search.frames, "variants": counts,
        "rows": rows, "sensitivity": sensitivity, "notes": notes, "seconds": seconds, "load": load,
        "load_line": load_line(load) if load else "", "time_box": box, "timing_node": node,
        "recipe_out": str(out / "recipe.yaml") if chosen else None, "reproduce": reproduce or None,
    }
    if chosen:  # nothing within budget: no recipe that could pass for a pick
        comment = [f"written by vlaedge tune from {recipe_name}: {reason}"]
        if not chosen.get("fp32"):
            comment.append(f"measured: {chosen['speedup']:.2f}x FP32 median, drift mean "
                           f"{chosen['drift']['mean_pct']:.3f}% of range, {chosen['size_ratio']:.2f}x the "
                           "FP32 size")
        chosen_recipe(recipe, chosen, folder / "recipe.yaml", comment)
    text = json.dumps(finite(result), indent=1, default=str, allow_nan=False)  # strict JSON: no NaN
    (folder / "tune.json").write_text(text + "\n")
    (folder / "tune.md").write_text(render_markdown(result))
    budget = recipe.budgets.max_drift_mean_pct if recipe.budgets else None
    (folder / "tune.html").write_text(render_html(result, budget))
    return TuneResult(out, rows, chosen, reason, out / "recipe.yaml" if chosen else None, sensitivity, notes,
                      reproduce, counts)
