"""Reports: report.json (versioned schema), report.md (a GitHub step summary), junit.xml (one test case
per budget) and report.html (inline SVG plots, no plotting library); the Markdown and HTML renderers live in
`report_markdown` and `report_html`.

report.json schema "vlaedge.report/1" (top-level keys; sections absent from a run are null):
  schema, created, vlaedge           version stamp
  target                             deployment target name (selects per-target budgets) or null
  policy     {name, checkpoint, sha256, action_names, action_low, action_high, gripper_dims, chunk}
  candidate  {model, runtime, sha256, file_bytes}
  data       {source, evaluation_episodes, frames, fps}
  drift      `vlaedge.check.drift.DriftReport` as a dict
  closed_loop `vlaedge.check.closedloop.ClosedLoopReport` as a dict
  profile    `vlaedge.check.profile.ProfileReport` as a dict (models[0] is the candidate, models[1] the
             FP32 reference ONNX when it was timed with it); "load" is the machine's load while timing
  baseline   the candidate vs the FP32 reference ONNX (`vlaedge.check.verify.baseline_comparison`):
             median/p99 speedup, size_ratio, parameter_ratio, slower; null when not compared
  traces     [{episode, instruction, reference [[A]...], candidate [[A]...]}] first action per frame
  gate       `vlaedge.check.gate.GateResult` as a dict, or null when no budgets were given: passed, failed
             (count), not_measurable (names of absolute timing budgets not judged: the machine was busy
             while timing), target, checks [{name, status (pass, fail, inconclusive, skipped,
             not_measurable), measured, allowed, op, unit, detail}]
  notes      [str]
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from vlaedge.check.report_html import render_html
from vlaedge.check.report_markdown import format_number, render_markdown
from vlaedge.errors import VlaedgeError

SCHEMA = "vlaedge.report/1"
FILES = ("report.json", "report.md", "report.html", "junit.xml")
REQUIRED = ("schema", "policy", "candidate", "drift", "closed_loop", "profile", "gate")


def build_report(
    policy,
    candidate_model=None,
    runtime: str = "torch",
    target: str | None = None,
    policy_sha256: str | None = None,
    checkpoint=None,
    evaluation=None,
    frames: int = 0,
    drift=None,
    closed_loop=None,
    profile=None,
    traces=None,
    notes=(),
    baseline=None,
) -> dict:
    """Assembles the report.json dict from the measurements (any of which may be None)."""
    from vlaedge import __version__
    from vlaedge.artifact import model_sha256

    spec = policy.action_spec
    device = getattr(policy, "device", None)  # where the torch reference ran ("cpu", "cuda:0")
    model = Path(candidate_model) if candidate_model else None
    file_bytes = None
    if model is not None and model.is_file():
        from vlaedge.check.profile import model_file_bytes

        file_bytes = model_file_bytes(model)
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "vlaedge": __version__,
        "target": target,
        "policy": {
            "name": policy.name,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "sha256": policy_sha256,
            "action_names": list(spec.names),
            "action_low": list(spec.low),
            "action_high": list(spec.high),
            "gripper_dims": list(spec.gripper_dims),
            "chunk": spec.chunk,
            "device": str(device) if device is not None else None,
        },
        "candidate": {
            "model": str(model) if model else None,
            "runtime": runtime,
            "sha256": model_sha256(model) if model is not None and model.exists() else None,  # + its data
            "file_bytes": file_bytes,
        },
        "data": None
        if evaluation is None
        else {
            "source": evaluation.source,
            "evaluation_episodes": evaluation.episode_indices,
            "frames": frames,
            "fps": evaluation.fps,
        },
        "drift": drift.to_dict() if drift is not None else None,
        "closed_loop": closed_loop.to_dict() if closed_loop is not None else None,
        "profile": profile.to_dict() if profile is not None else None,
        "baseline": baseline,
        "traces": traces or [],
        "gate": None,
        "notes": list(notes),
    }


def load_report(path: str | Path) -> dict:
    """Reads and checks a report.json (or a directory holding one).

    Raises:
        VlaedgeError: missing file, invalid JSON, or not a vlaedge.report/1 document.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise VlaedgeError(
            f"report: {path} does not exist", "run 'vlaedge verify' or 'vlaedge compress' first"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise VlaedgeError(
            f"report: {path} is not valid JSON ({e})", "re-run the command that wrote it"
        ) from e
    if not isinstance(report, dict) or "schema" not in report:
        raise VlaedgeError(
            f"report: {path} has no 'schema' field (not a vlaedge report)",
            "pass the report.json written by 'vlaedge verify' or 'vlaedge compress'",
        )
    if report["schema"] != SCHEMA:
        raise VlaedgeError(
            f"report: {path} has schema {report['schema']!r}, this vlaedge reads {SCHEMA!r}",
            "re-run 'vlaedge verify' with this version",
        )
    missing = [k for k in REQUIRED if k not in report]
    if missing or not isinstance(report["policy"], dict) or not isinstance(report["candidate"], dict):
        raise VlaedgeError(
            f"report: {path} is malformed (missing or invalid: {', '.join(missing) or 'policy'})",
            "re-run the command that wrote it",
        )
    from vlaedge.check.report_schema import Report, validate

    return validate(report, Report, f"report: {path}")


def write_reports(report: dict, out: str | Path) -> list[Path]:
    """Writes report.json, report.md, report.html and (when the report has a gate) junit.xml into `out`.

    Returns:
        The written paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    texts = {
        "report.json": json.dumps(report, indent=2, allow_nan=False, default=_jsonable) + "\n",
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    if report.get("gate"):
        texts["junit.xml"] = render_junit(report)
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def render_junit(report: dict) -> str:
    """junit.xml: one test case per budget; failures carry measured vs allowed. A budget that did not apply
    is a skipped test case, and so is one not measurable (an absolute timing budget on a busy machine), its
    `skipped` element typed "NotMeasurable" with a message saying why."""
    gate = report["gate"]
    checks = gate["checks"]
    failures = sum(c["status"] in ("fail", "inconclusive") for c in checks)
    skipped = sum(c["status"] in ("skipped", "not_measurable") for c in checks)
    counts = {"tests": str(len(checks)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", name="vlaedge", **counts)
    suite = ET.SubElement(root, "testsuite", name="vlaedge.gate", time="0", **counts)
    properties = _junit_properties(report)
    if properties:
        props = ET.SubElement(suite, "properties")
        for name, value in properties.items():
            ET.SubElement(props, "property", name=name, value=value)
    for c in checks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"vlaedge.gate.{report['policy'].get('name')}",
            name=c["name"],
            time="0",
        )
        text = (
            f"measured {format_number(c['measured'])} {c['unit']}, "
            f"allowed {c['op']} {format_number(c['allowed'])} {c['unit']}"
        )
        if c["status"] in ("fail", "inconclusive"):
            kind = "BudgetViolated" if c["status"] == "fail" else "Inconclusive"
            failure = ET.SubElement(case, "failure", message=f"{text}: {c['detail']}", type=kind)
            failure.text = f"{c['name']}: {text}\n{c['detail']}"
        elif c["status"] == "skipped":
            ET.SubElement(case, "skipped", message=c["detail"])
        elif c["status"] == "not_measurable":  # neither pass nor fail: JUnit's skipped, saying why
            message = f"not measurable: {text}: {c['detail']}"
            ET.SubElement(case, "skipped", type="NotMeasurable", message=message)
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _junit_properties(report: dict) -> dict[str, str]:
    """The FP32 comparison and the machine load as JUnit suite properties (CI dashboards chart them)."""
    out = {}
    for key in ("median_speedup", "p99_speedup", "size_ratio", "parameter_ratio", "slower"):
        value = (report.get("baseline") or {}).get(key)
        if value is not None:
            out[f"fp32.{key}"] = f"{value:.4f}" if isinstance(value, float) else str(value).lower()
    load = (report.get("profile") or {}).get("load") or {}
    for key in ("loadavg_1m_before", "busy_others_share", "steal_share"):
        if load.get(key) is not None:
            out[f"load.{key}"] = str(load[key])
    return out
