"""The verify / profile / gate commands behind the CLI: resolve what the user pointed at (an .onnx, a run
directory, a checkpoint), call one verb, write its files. They string no stages together (that is
`vlaedge.pipeline`); kept out of cli.py so the CLI stays a thin adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from vlaedge.artifact import (
    OutputDir,
    check_model_files,
    check_output,
    read_manifest,
    resolve_model,
    resolve_path,
    sha256,
)
from vlaedge.errors import VlaedgeError

PROFILE_SCHEMA = "vlaedge.profile/1"


def run_verify(
    model: Path | None,
    checkpoint: Path | None,
    data: Path | None,
    out: Path,
    recipe: Path | None,
    budgets: Path | None,
    settings: dict,
    run_profile: bool = True,
    target: str | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    log: Callable[[str], None] = print,
    trust_code: bool = False,
    device: str | None = None,
):
    """`vlaedge verify`: settles the verify settings (recipe, budgets file, command-line overrides) and
    runs `vlaedge.pipeline.verify_run`, which writes report.json/md/html (+ junit.xml) into `out`. The
    reference runs on `device` (`--device`), else the recipe's `load.device`, else "auto".

    Returns:
        A `vlaedge.pipeline.VerifyRun` (the report dict and the gate verdict, None without budgets).
    """
    from pydantic import ValidationError

    from vlaedge.pipeline import verify_run
    from vlaedge.recipe import VerifyConfig, format_validation_error, load_budgets, load_recipe

    resolved = resolve_model(model, checkpoint, data)
    config, budget_cfg = VerifyConfig(), None
    if recipe:
        r = load_recipe(recipe)
        config, budget_cfg, target = r.verify or config, r.budgets, target or r.target
        device = device or (r.load.device if r.load else None)
    if budgets:
        budget_cfg = load_budgets(budgets)
    overrides = {k: v for k, v in settings.items() if v is not None}
    try:
        config = VerifyConfig.model_validate({**config.model_dump(), **overrides})
    except ValidationError as e:
        raise VlaedgeError(f"verify: {format_validation_error(e, VerifyConfig)}",
                           "see 'vlaedge verify --help' for the valid range") from None
    if resolved.model is not None and resolved.model.is_dir() and config.runtime != "torch":
        raise VlaedgeError(
            f"verify: {resolved.model} is a checkpoint directory, runtime {config.runtime} needs "
            "an .onnx file",
            "pass --runtime torch, or the exported .onnx file",
        )
    return verify_run(resolved, config, budget_cfg, target, out, force, allow_pickle, run_profile, log,
                      trust_code, device or "auto")


def executor_config(recipe: Path | None, kind: str | None, address: str | None):
    """The `executor:` section for `vlaedge verify`: the recipe's (if any), with --executor / --address
    over it (--address alone implies ray); None: local.

    Raises:
        VlaedgeError: an unknown kind or a malformed address (`path: message`, as the recipe's).
    """
    from pydantic import ValidationError

    from vlaedge.recipe import ExecutorConfig, format_validation_error, load_recipe

    section = load_recipe(recipe).executor if recipe else None
    if kind is None and address is None:
        return section
    fields = {**(section.model_dump() if section else {}), "kind": kind or ("ray" if address else None)}
    fields.update({"address": address} if address else {})
    try:
        return ExecutorConfig.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise VlaedgeError(f"executor: {format_validation_error(e, ExecutorConfig)}",
                           "use --executor local|ray and --address auto|local|ray://HOST:PORT") from None


def run_gate(
    report_path: Path,
    budgets_path: Path,
    checkpoint: Path | None = None,
    target: str | None = None,
    profile_json: Path | None = None,
    out: Path | None = None,
    force: bool = False,
):
    """`vlaedge gate`: checks the report belongs to the run/checkpoint, judges it, optionally writes files."""
    from vlaedge.check.gate import gate
    from vlaedge.check.report import load_report
    from vlaedge.recipe import load_budgets

    budgets = load_budgets(budgets_path)  # a typo fails before anything else
    report_file = Path(report_path) / "report.json" if Path(report_path).is_dir() else Path(report_path)
    if out:
        refuse_run_directory(Path(out), "gate")
        check_output(Path(out), force, protect=(report_file,))
    report = load_report(report_path)
    folder = report_path if Path(report_path).is_dir() else Path(report_path).parent
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():  # inside a run directory: the report must be that run's
        _check_against_manifest(report, manifest_path)
    if profile_json:
        report["profile"] = load_profile(profile_json)
    verdict = gate(report, budgets, target, sha256(checkpoint) if checkpoint else None)
    report["gate"] = verdict.to_dict()
    if out:
        from vlaedge.check.report import write_reports

        with OutputDir(out, force, protect=(report_file,)) as od:
            write_reports(report, od.path)
            od.commit()
    return verdict


def _check_against_manifest(report: dict, manifest_path: Path) -> None:
    manifest = read_manifest(manifest_path.parent)  # valid JSON of the manifest's shape, or one line
    run_sha = manifest.get("inputs", {}).get("checkpoint", {}).get("sha256")
    rep_sha = report["policy"].get("sha256")
    if run_sha and rep_sha and run_sha != rep_sha:
        raise VlaedgeError(
            f"gate: the report is for policy sha256 {rep_sha[:12]}, its run directory "
            f"{manifest_path.parent} was compressed from {run_sha[:12]} (a report from another policy)",
            "re-run 'vlaedge verify' on this run directory",
        )
    check_model_files(manifest_path.parent, manifest)  # the .onnx and its data file are still the run's
    entry = manifest.get("outputs", {}).get("model.onnx", {})
    model_sha = entry.get("model_sha256") or entry.get("sha256")  # with external data: .onnx + data
    cand_sha = report["candidate"].get("sha256")
    if model_sha and cand_sha and model_sha != cand_sha:
        raise VlaedgeError(
            f"gate: the report measured a model with sha256 {cand_sha[:12]}, the run's model.onnx "
            f"is {model_sha[:12]}",
            "re-run 'vlaedge verify' on this run directory",
        )


def load_profile(path: Path) -> dict:
    """Reads a profile.json written by `vlaedge profile` (locally or pulled from a device)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        raise VlaedgeError(
            f"profile: cannot read {path} ({e})", "pass the profile.json 'vlaedge profile' wrote"
        ) from e
    if not isinstance(data, dict) or data.get("schema") != PROFILE_SCHEMA or not data.get("models"):
        raise VlaedgeError(
            f"profile: {path} is not a {PROFILE_SCHEMA} document",
            "pass the profile.json 'vlaedge profile' wrote",
        )
    from vlaedge.check.report_schema import Profile, validate

    return validate({k: v for k, v in data.items() if k != "schema"}, Profile, f"profile: {path}")


def run_profile(
    model: Path,
    checkpoint: Path | None,
    runtime: str,
    runs: int,
    warmup: int,
    threads: int | None,
    compare: list[Path],
    out: Path,
    remote: str | None = None,
    data: Path | None = None,
    control_hz: float | None = None,
    allow_pickle: bool = False,
    force: bool = False,
    trust_code: bool = False,
) -> tuple[Path, str]:
    """`vlaedge profile`: returns (profile.json path, printable table)."""
    refuse_run_directory(Path(out), "profile")
    check_output(Path(out), force, protect=tuple(Path(m) for m in [model, *compare] if Path(m).is_file()))
    if remote:
        from vlaedge.deploy.remote import profile_remote

        path = profile_remote(
            host=remote,
            model=Path(model),  # as given: remote also takes a run directory or an engine bundle
            runtime=runtime,
            runs=runs,
            warmup=warmup,
            threads=threads,
            out=Path(out),
        )
        return Path(path), ""
    from vlaedge.check.profile import profile

    resolved = resolve_model(model, checkpoint, data)
    policy, feeds, fps = _policy_feeds(resolved, allow_pickle, trust_code)
    models = [] if resolved.model is None or resolved.model.is_dir() else [resolved.model]
    if runtime == "torch" and resolved.model is not None and resolved.model.is_dir():
        from vlaedge.models import load_policy

        policy = load_policy(resolved.model, allow_pickle, trust_code)
    report = profile(
        models + [Path(c) for c in compare], runtime, feeds, policy, runs, warmup, threads, control_hz or fps
    )
    with OutputDir(out, force) as od:
        (od.path / "profile.json").write_text(
            json.dumps({"schema": PROFILE_SCHEMA, **report.to_dict()}, indent=2, allow_nan=False) + "\n")
        od.commit()
    return Path(out) / "profile.json", report.table()


def refuse_run_directory(out: Path, command: str) -> None:
    """`out` must not be a folder whose manifest.json lists files: rewriting them breaks their sha256.

    Raises:
        VlaedgeError: `out` holds a manifest.json.
    """
    if (out / "manifest.json").is_file():
        raise VlaedgeError(
            f"{command}: {out} is a run directory; its manifest.json lists files with their sha256, "
            "which writing there would invalidate",
            f"write to a folder of its own, e.g. --out {out / command}")


def check_output_file(path: Path, force: bool, option: str, inputs: tuple[Path, ...] = ()) -> None:
    """Refuses a file an option would write, before any work: the file rules `check_output` applies to
    output folders.

    Raises:
        VlaedgeError: `path` is a folder, a symlink or not a regular file; it is one of `inputs`; its folder
            is a run directory (its manifest.json lists files with their sha256); it exists without `force`.
    """
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise VlaedgeError(f"{option}: {path} exists and is not a regular file",
                           f"choose another {option} path")
    if not path.parent.is_dir():
        raise VlaedgeError(f"{option}: folder {path.parent} does not exist",
                           f"create it first, or choose another {option} path")
    if any(resolve_path(path, option) == resolve_path(item, "input") for item in inputs):
        raise VlaedgeError(f"{option}: {path} is the input; writing there would replace it",
                           f"choose another {option} path")
    if (path.parent / "manifest.json").is_file():
        raise VlaedgeError(f"{option}: {path.parent} is a run directory; its manifest.json lists files with "
                           "their sha256, which writing there would invalidate",
                           f"write it outside the run directory, e.g. {option} "
                           f"{path.parent.name}-{path.name}")
    if path.exists() and not force:
        raise VlaedgeError(f"{option}: {path} already exists",
                           "pass --force to replace it, or choose another path")


def write_output_file(path: Path, text: str) -> None:
    """Writes `text` to `path` whole or not at all (a staged file moved into place)."""
    import os

    staged = path.with_name(f".{path.name}.partial")
    try:
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def _policy_feeds(resolved, allow_pickle: bool, trust_code: bool = False):
    """(policy, batch-1 feeds, fps): from make_inputs on one calibration frame when a checkpoint is known;
    (None, None, None) otherwise (feeds are then synthesized from the graph)."""
    if resolved.reference("profile") is None:
        return None, None, None
    from vlaedge.data import load_dataset, split_as_recorded
    from vlaedge.defaults import DEFAULT_DATASET
    from vlaedge.models import load_policy

    policy = load_policy(resolved.checkpoint, allow_pickle, trust_code)
    source = resolved.data or (
        DEFAULT_DATASET if (DEFAULT_DATASET / "meta" / "info.json").is_file() else None
    )
    if source is None:
        return policy, policy.example_inputs(1), None
    dataset = load_dataset(source)
    calibration, _ = split_as_recorded(dataset, (resolved.manifest or {}).get("split"))
    return policy, policy.make_inputs(calibration.frames([0])), dataset.fps


def json_summary(command: str, report: dict | None, verdict, out: Path) -> str:
    """The one JSON object `--json` prints on stdout for `compress`, `verify` and `gate`.

    Args:
        command: "compress", "verify" or "gate".
        report: the report.json dict (None when the run measured nothing).
        verdict: the `GateResult`, or None without budgets.
        out: the output directory (or, for `gate` without --out, the report's path).

    Returns:
        JSON text of {command, verdict ("pass" | "fail" | "no budgets"), passed (bool or null), failed
        (names of violated or inconclusive budgets), not_measurable (absolute timing budgets not judged: the
        machine was busy while timing), drift_mean_pct, drift_p99_pct (% of action range),
        success_reference, success_candidate, success_drop (closed loop, fractions), latency_median_ms,
        latency_p99_ms (the candidate), median_speedup, p99_speedup, size_ratio (against FP32), paths
        {out, report_json, report_md, report_html, junit_xml, model}}; a figure not measured is null.
    """
    report = report or {}
    gate = verdict.to_dict() if verdict is not None else None
    drift, loop = report.get("drift") or {}, report.get("closed_loop") or {}
    latency = ((report.get("profile") or {}).get("models") or [{}])[0].get("latency") or {}
    base = report.get("baseline") or {}
    folder = out if out.is_dir() or not out.suffix else out.parent
    names = ("report.json", "report.md", "report.html", "junit.xml")
    files = {name.replace(".", "_"): folder / name for name in names}
    paths = {"out": str(folder)} | {k: str(p) if p.is_file() else None for k, p in files.items()}
    paths["model"] = (report.get("candidate") or {}).get("model")
    summary = {
        "command": command,
        "verdict": "no budgets" if gate is None else "pass" if gate["passed"] else "fail",
        "passed": None if gate is None else gate["passed"],
        "failed": [c["name"] for c in (gate or {}).get("checks", [])
                   if c["status"] in ("fail", "inconclusive")],
        "not_measurable": [] if gate is None else gate["not_measurable"],
        "drift_mean_pct": drift.get("mean_pct"),
        "drift_p99_pct": drift.get("p99_pct"),
        "success_reference": (loop.get("reference") or {}).get("rate"),
        "success_candidate": (loop.get("candidate") or {}).get("rate"),
        "success_drop": loop.get("drop"),
        "latency_median_ms": latency.get("median_ms"),
        "latency_p99_ms": latency.get("p99_ms"),
        "median_speedup": base.get("median_speedup"),
        "p99_speedup": base.get("p99_speedup"),
        "size_ratio": base.get("size_ratio"),
        "paths": paths,
    }
    return json.dumps(summary, allow_nan=False)


def graph_path(model: Path) -> Path:
    """What `engine` and `estimate` read from MODEL: an .onnx or a stages.json as given; a run folder's model
    (its manifest's: model.onnx, or stages.json for per-stage graphs); another folder's model.onnx."""
    model = Path(model)
    if not model.is_dir():
        return model
    resolved = resolve_model(model)
    return resolved.model if resolved.manifest is not None else model / "model.onnx"


def run_engine_plan(plan: Path, recipe, target: str | None, out: Path | None):
    """`vlaedge engine` on a stage plan (issue 23): one engine bundle per stage, `build_stage_engines`.
    The precision is the recipe's, else the plan's (its stages' precisions; FP32 stages build without it)."""
    from vlaedge.deploy.stage_plan import build_stage_engines
    from vlaedge.models.stages import read_plan_file
    from vlaedge.recipe import EngineConfig

    quantized = [g.precision for g in read_plan_file(plan).graphs if g.precision != "fp32"]
    precision = recipe.quantize.precision if recipe and recipe.quantize else (quantized or [None])[0]
    config = (recipe.engine if recipe else None) or EngineConfig()
    return build_stage_engines(plan, config, target or recipe.target, precision, out or plan.parent)


def run_estimate_plan(plan: Path, target: str, batch: int, precision: str, input_shapes: list[str],
                      allow_unknown_dims: bool) -> tuple[dict, str]:
    """`vlaedge estimate` on a stage plan (issue 23): (the `estimate_plan` dict, its table)."""
    from vlaedge.deploy.stage_plan import estimate_plan, plan_table

    priced = estimate_plan(plan, target, batch, precision, allow_unknown_dims, input_shapes)
    return priced, plan_table(priced)
