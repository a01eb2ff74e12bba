"""The verify / profile / gate commands behind the CLI: resolve what the user pointed at, call the verb,
write the files. Kept out of cli.py so the CLI stays a thin adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlaedge._resolve import evaluation_split, fingerprint, resolve_model
from vlaedge.errors import VlaedgeError

PROFILE_SCHEMA = "vlaedge.profile/1"


@dataclass
class VerifyRun:
    """What `run_verify` did: the report dict and the gate verdict (None without budgets)."""

    report: dict
    gate: object | None


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
) -> VerifyRun:
    """`vlaedge verify`: loads the reference, the data split and the candidate, verifies, gates (with
    budgets), writes report.json/md/html (+ junit.xml) atomically into `out`."""
    from vlaedge.artifact import OutputDir
    from vlaedge.data import load_dataset
    from vlaedge.defaults import default_checkpoint, default_dataset
    from vlaedge.models import load_policy
    from vlaedge.recipe import VerifyConfig, load_budgets, load_recipe
    from vlaedge.verify import verify

    resolved = resolve_model(model, checkpoint, data)
    config, budget_cfg = VerifyConfig(), None
    if recipe:
        r = load_recipe(recipe)
        config, budget_cfg, target = r.verify or config, r.budgets, target or r.target
    if budgets:
        budget_cfg = load_budgets(budgets)
    overrides = {k: v for k, v in settings.items() if v is not None}
    config = VerifyConfig.model_validate({**config.model_dump(), **overrides})
    if resolved.model is not None and resolved.model.is_dir() and config.runtime != "torch":
        raise VlaedgeError(
            f"verify: {resolved.model} is a checkpoint directory, runtime {config.runtime} needs "
            "an .onnx file",
            "pass --runtime torch, or the exported .onnx file",
        )
    ckpt = resolved.checkpoint or default_checkpoint()
    with OutputDir(out, force) as od:
        policy = load_policy(ckpt, allow_pickle)
        dataset = load_dataset(resolved.data or default_dataset())
        _, evaluation = evaluation_split(dataset, resolved.manifest, 0)
        sha = fingerprint(ckpt)
        od.record_input("checkpoint", ckpt)
        result = verify(policy, resolved.model, evaluation, config, sha, ckpt, target, run_profile, log)
        verdict = None
        if budget_cfg is not None:
            verdict = _gate_report(result.report, budget_cfg, target)
        _write(result.report, od.path)
        od.commit()
    return VerifyRun(result.report, verdict)


def _gate_report(report: dict, budgets, target: str | None):
    from vlaedge.gate import gate

    verdict = gate(report, budgets, target)
    report["gate"] = verdict.to_dict()
    return verdict


def _write(report: dict, folder: Path) -> list[Path]:
    from vlaedge.report import write_reports

    return write_reports(report, folder)


def run_gate(
    report_path: Path,
    budgets_path: Path,
    checkpoint: Path | None = None,
    target: str | None = None,
    profile_json: Path | None = None,
    out: Path | None = None,
):
    """`vlaedge gate`: checks the report belongs to the run/checkpoint, judges it, optionally writes files."""
    from vlaedge.gate import gate
    from vlaedge.recipe import load_budgets
    from vlaedge.report import load_report

    budgets = load_budgets(budgets_path)  # a typo fails before anything else
    report = load_report(report_path)
    folder = report_path if Path(report_path).is_dir() else Path(report_path).parent
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():  # inside a run directory: the report must be that run's
        _check_against_manifest(report, manifest_path)
    if profile_json:
        report["profile"] = load_profile(profile_json)
    verdict = gate(report, budgets, target, fingerprint(checkpoint) if checkpoint else None)
    report["gate"] = verdict.to_dict()
    if out:
        _write(report, Path(out))
    return verdict


def _check_against_manifest(report: dict, manifest_path: Path) -> None:
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise VlaedgeError(
            f"gate: {manifest_path} is not valid JSON ({e})", "re-run the command that wrote it"
        ) from e
    run_sha = manifest.get("inputs", {}).get("checkpoint", {}).get("sha256")
    rep_sha = report["policy"].get("sha256")
    if run_sha and rep_sha and run_sha != rep_sha:
        raise VlaedgeError(
            f"gate: the report is for policy sha256 {rep_sha[:12]}, its run directory "
            f"{manifest_path.parent} was compressed from {run_sha[:12]} (a report from another policy)",
            "re-run 'vlaedge verify' on this run directory",
        )
    model_sha = manifest.get("outputs", {}).get("model.onnx", {}).get("sha256")
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
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VlaedgeError(
            f"profile: cannot read {path} ({e})", "pass the profile.json 'vlaedge profile' wrote"
        ) from e
    if not isinstance(data, dict) or data.get("schema") != PROFILE_SCHEMA or not data.get("models"):
        raise VlaedgeError(
            f"profile: {path} is not a {PROFILE_SCHEMA} document",
            "pass the profile.json 'vlaedge profile' wrote",
        )
    return {k: v for k, v in data.items() if k != "schema"}


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
) -> tuple[Path, str]:
    """`vlaedge profile`: returns (profile.json path, printable table)."""
    if remote:
        from vlaedge.remote import profile_remote

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
    from vlaedge.profile import profile

    resolved = resolve_model(model, checkpoint, data)
    policy, feeds, fps = _policy_feeds(resolved, allow_pickle)
    models = [] if resolved.model is None or resolved.model.is_dir() else [resolved.model]
    if runtime == "torch" and resolved.model is not None and resolved.model.is_dir():
        from vlaedge.models import load_policy

        policy = load_policy(resolved.model, allow_pickle)
    report = profile(
        models + [Path(c) for c in compare], runtime, feeds, policy, runs, warmup, threads, control_hz or fps
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / "profile.json"
    path.write_text(json.dumps({"schema": PROFILE_SCHEMA, **report.to_dict()}, indent=2) + "\n")
    return path, report.table()


def _policy_feeds(resolved, allow_pickle: bool):
    """(policy, batch-1 feeds, fps): from make_inputs on one calibration frame when a checkpoint is known;
    (None, None, None) otherwise (feeds are then synthesized from the graph)."""
    if resolved.checkpoint is None:
        return None, None, None
    from vlaedge.data import load_dataset
    from vlaedge.defaults import DEFAULT_DATASET
    from vlaedge.models import load_policy

    policy = load_policy(resolved.checkpoint, allow_pickle)
    source = resolved.data or (
        DEFAULT_DATASET if (DEFAULT_DATASET / "meta" / "info.json").is_file() else None
    )
    if source is None:
        return policy, policy.example_inputs(1), None
    dataset = load_dataset(source)
    calibration, _ = evaluation_split(dataset, resolved.manifest, 0)
    return policy, policy.make_inputs(calibration.frames([0])), dataset.fps


def verify_into(od, recipe, target: str, inputs, log: Callable[[str], None] = print):
    """`vlaedge compress`'s verify -> profile -> gate stage: the original FP32 policy against the run's
    model.onnx on the evaluation split; writes the reports into the staging directory and records the
    stage in the manifest. Returns the gate verdict (None without budgets)."""
    import time

    from vlaedge.recipe import VerifyConfig
    from vlaedge.verify import verify

    start = time.perf_counter()
    config = recipe.verify or VerifyConfig()
    model = od.path / "model.onnx"
    skipped = _unrunnable_here(recipe, config, inputs.policy, model)
    if skipped:
        log(f"verify: skipped: {skipped}")
        od.record_stage("verify", time.perf_counter() - start, skipped=skipped)
        return None
    sha = od.manifest["inputs"]["checkpoint"]["sha256"]
    result = verify(
        inputs.policy, model, inputs.evaluation, config, sha, inputs.checkpoint, target, True, log
    )
    result.report["candidate"]["model"] = "model.onnx"  # relative: the staging directory is renamed
    for entry in (result.report.get("profile") or {}).get("models", []):
        entry["model"] = "model.onnx"
    verdict = _gate_report(result.report, recipe.budgets, target) if recipe.budgets else None
    _write(result.report, od.path)
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


TENSORRT_ONLY = ("fp8", "int4-weight-only")  # exports ONNX Runtime may not load (TensorRT custom ops)


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
