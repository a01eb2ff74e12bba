"""The gate: a report (vlaedge.report/1) judged against budgets -> a verdict per budget and an exit code.

Exit codes (through `vlaedge.cli.main`): 0 every budget met (or skipped, or not measurable), 1 a budget
violated or inconclusive (`GateFailed`), 2 the gate could not run (`VlaedgeError`): a report from another
policy, a malformed report, a budgets file with a typo, a budget whose measurement the report lacks, a
per-dimension budget naming a dimension the policy does not have.

Statuses: "pass", "fail", "inconclusive" (the closed-loop check below `verify.min_episodes` episodes, or
a success interval that straddles the budget: never a pass), "skipped" (the budget does not apply to
this policy: token agreement on a continuous head, gripper flips without gripper dims), "not_measurable"
(an absolute timing budget, `max_latency_p99_ms` or `min_rate_hz`, on a profile timed while the machine
was busy: the report's profile "load" has a warning, `vlaedge.check.host.load_warnings`; other processes'
share or steal above its threshold, or a load average above the core count. Those milliseconds say how
busy the runner was, not how fast the candidate is: neither a pass nor a fail, exit 0 with the state
shown, so that two runs on a loaded machine give the same verdict. Ratios timed interleaved in the same
window, `min_speedup`, are judged as usual).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vlaedge.check.host import load_warnings
from vlaedge.check.report_markdown import STATUS_LABEL, budget_counts, speed_note
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import Budgets

PASSING = ("pass", "skipped", "not_measurable")
ABSOLUTE_TIMING = ("max_latency_p99_ms", "min_rate_hz")  # milliseconds a busy machine inflates


@dataclass
class Check:
    """One budget: what was measured against what was allowed."""

    name: str  # the budget's key, e.g. "max_drift_mean_pct" or "max_drift_per_dim_pct[gripper]"
    status: str  # pass / fail / inconclusive / skipped / not_measurable
    measured: float | None
    allowed: float | None
    op: str  # "<=" or ">=": how measured must compare with allowed
    unit: str
    detail: str = ""


@dataclass
class GateResult:
    """The verdict: truthy when every budget passed (or did not apply)."""

    checks: list[Check]
    target: str | None
    baseline: dict | None = None  # the report's FP32 comparison, called out in the summary line

    @property
    def passed(self) -> bool:
        return all(c.status in PASSING for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status not in PASSING]

    @property
    def not_measurable(self) -> list[Check]:
        """Absolute timing budgets not judged: the machine was busy while timing."""
        return [c for c in self.checks if c.status == "not_measurable"]

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        head = budget_counts([c.status for c in self.checks])
        lines = [f"gate: {'PASS' if self.passed else 'FAIL'} ({head})"]
        if self.baseline:  # a candidate slower than FP32 is called out whatever the budgets say
            lines[0] += f"; vs FP32: {speed_note(self.baseline)}"
        for c in self.checks:
            unit = f" {c.unit}" if c.unit else ""
            measured, allowed = _figures(c.measured, c.allowed)
            lines.append(
                f"  {STATUS_LABEL[c.status]:<14} {c.name}: measured {measured}{unit}, "
                f"allowed {c.op} {allowed}{unit}" + (f" ({c.detail})" if c.detail else "")
            )
        return "\n".join(lines)

    def failure_line(self) -> str:
        """One line naming every budget that did not pass, for the exit-1 message."""
        lines = []
        for c in self.failures:
            measured, allowed = _figures(c.measured, c.allowed)
            lines.append(f"{c.name} {c.status}: measured {measured}{' ' + c.unit if c.unit else ''}, "
                         f"allowed {c.op} {allowed}")
        return "; ".join(lines)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "failed": len(self.failures),
            "not_measurable": [c.name for c in self.not_measurable],  # absolute timing on a busy machine
            "target": self.target,
            "checks": [asdict(c) for c in self.checks],
        }


def gate(
    report: dict, budgets: Budgets, target: str | None = None, policy_sha256: str | None = None
) -> GateResult:
    """Judges a report against budgets.

    Args:
        report: a loaded report.json (`vlaedge.check.report.load_report`).
        budgets: the budgets (`vlaedge.recipe.load_budgets`, or a recipe's `budgets`).
        target: the target whose `budgets.targets` entry applies; default: the report's target.
        policy_sha256: the fingerprint the report must carry (e.g. of the run's checkpoint).

    Returns:
        The `GateResult`, one `Check` per budget set.

    Raises:
        VlaedgeError: the report is from another policy, or lacks a measurement a budget needs, or a
            per-dimension budget names an unknown dimension.

    Example:
        >>> result = gate(load_report("runs/cpu-int8"), load_budgets("budgets.yaml"))
        >>> sys.exit(0 if result else 1)
    """
    _check_fingerprint(report, budgets.policy_sha256, "the budgets' policy_sha256")
    _check_fingerprint(report, policy_sha256, "the given checkpoint")
    target = target or report.get("target")
    checks = _drift_checks(report, budgets) + _closed_loop_checks(report, budgets)
    checks += _profile_checks(report, budgets, target) + _baseline_checks(report, budgets)
    return GateResult(checks, target, report.get("baseline"))


def _check_fingerprint(report: dict, expected: str | None, what: str) -> None:
    if not expected:
        return
    actual = report["policy"].get("sha256") or ""
    if not actual or not actual.startswith(expected):
        raise VlaedgeError(
            f"gate: the report is for policy sha256 {actual[:12] or '(none)'}, {what} is "
            f"{expected[:12]} (a report from another policy)",
            "verify this policy's candidate, or use the budgets written for the report's policy",
        )


def _need(report: dict, section: str, budget: str) -> dict:
    value = report.get(section)
    if not value:
        hint = {
            "drift": "run 'vlaedge verify'",
            "closed_loop": "run 'vlaedge verify --episodes N' (a policy that is not tabletop-shaped needs "
                           "its env as verify.env: docs: guides/closed-loop.md)",
            "profile": "run 'vlaedge verify' without --no-profile, or pass --profile profile.json",
            "baseline": "verify an .onnx candidate on an ONNX Runtime runtime (the FP32 reference is "
            "exported and timed with it)",
        }[section]
        raise VlaedgeError(
            f"gate: budget {budget} needs the report's {section} section, which is empty",
            f"{hint}, or remove the budget",
        )
    return value


def _limit(name: str, measured: float, allowed: float, op: str, unit: str, detail: str = "") -> Check:
    ok = measured <= allowed if op == "<=" else measured >= allowed
    return Check(name, "pass" if ok else "fail", float(measured), float(allowed), op, unit, detail)


def _stage_cosine_check(drift: dict, allowed: float) -> Check:
    """min_stage_cosine: the worst stage output's mean cosine (the report's per-stage parity)."""
    stages = drift.get("stages") or []
    if not stages and drift.get("stage_parity_frames") is None:
        return Check("min_stage_cosine", "skipped", None, allowed, ">=", "",
                     "a single-graph candidate: no per-stage parity")
    if not stages:
        raise VlaedgeError("gate: budget min_stage_cosine needs the per-stage parity, which this per-stage "
                           "candidate's report did not measure (verify.stage_parity_frames was 0, or the "
                           "reference is in half precision)",
                           "verify again with verify.stage_parity_frames above 0, or remove the budget")
    worst = min(stages, key=lambda p: p["cosine_mean"])
    detail = f"worst stage {worst['stage']} ({worst['output']}), min over frames {worst['cosine_min']:.4f}"
    return _limit("min_stage_cosine", worst["cosine_mean"], allowed, ">=", "", detail)


def _drift_checks(report: dict, b: Budgets) -> list[Check]:
    checks = []
    for key, field, unit in (
        ("max_drift_mean_pct", "mean_pct", "% of range"),
        ("max_drift_p99_pct", "p99_pct", "% of range"),
    ):
        allowed = getattr(b, key)
        if allowed is not None:
            drift = _need(report, "drift", key)
            worst = max(drift["per_dim"], key=lambda d, f=field: d[f])
            detail = f"worst dim {worst['name']} {worst[field]:.3f}%"
            if drift[field] > allowed:
                bad = [d["name"] for d in drift["per_dim"] if d[field] > allowed]
                detail += f"; over budget: {', '.join(bad) or 'overall only'}"
            checks.append(_limit(key, drift[field], allowed, "<=", unit, detail))
    if b.max_drift_continuous_p99_pct is not None:
        drift = _need(report, "drift", "max_drift_continuous_p99_pct")
        grippers = set((report.get("policy") or {}).get("gripper_dims") or [])
        motion = [d for k, d in enumerate(drift["per_dim"]) if k not in grippers]
        worst = max(motion, key=lambda d: d["p99_pct"]) if motion else None
        if not motion:
            checks.append(Check("max_drift_continuous_p99_pct", "skipped", None,
                                b.max_drift_continuous_p99_pct, "<=", "% of range", "every dim is a gripper"))
        elif drift.get("token_agreement") is not None and b.min_token_agreement is not None:
            # A tokens head moves a dim by whole bins: its p99 is the size of the rare token flips
            # (a 1% flip rate can put the p99 anywhere up to the full range), which min_token_agreement
            # budgets directly; the mean budget still sees how far the flips move the actions.
            checks.append(Check("max_drift_continuous_p99_pct", "skipped", None,
                                b.max_drift_continuous_p99_pct, "<=", "% of range",
                                f"tokens head: judged by min_token_agreement (worst dim {worst['name']} p99 "
                                f"{worst['p99_pct']:.1f}%, set by the token flips)"))
        else:
            allowed = b.max_drift_continuous_p99_pct
            checks.append(_limit("max_drift_continuous_p99_pct", worst["p99_pct"], allowed, "<=",
                                 "% of range", f"worst dim {worst['name']}"))
    for key, field in (("max_drift_per_dim_pct", "mean_pct"), ("max_drift_per_dim_p99_pct", "p99_pct")):
        limits = getattr(b, key)
        if not limits:
            continue
        drift = _need(report, "drift", key)
        dims = {d["name"]: d for d in drift["per_dim"]}
        for name, allowed in limits.items():
            if name not in dims:
                raise VlaedgeError(
                    f"budgets: {key} names dimension {name!r}, the policy's action dims are "
                    f"{', '.join(dims)}",
                    "use the policy's action dimension names",
                )
            checks.append(_limit(f"{key}[{name}]", dims[name][field], allowed, "<=", "% of range"))
    if b.min_cosine is not None:
        drift = _need(report, "drift", "min_cosine")
        checks.append(
            _limit(
                "min_cosine",
                drift["cosine_mean"],
                b.min_cosine,
                ">=",
                "",
                f"worst frame {drift['cosine_min']:.4f}",
            )
        )
    if b.min_stage_cosine is not None:
        checks.append(_stage_cosine_check(_need(report, "drift", "min_stage_cosine"), b.min_stage_cosine))
    for key, field, why in (
        ("min_token_agreement", "token_agreement", "not a tokens head"),
        ("max_gripper_flip_rate", "gripper_flip_rate", "the policy has no gripper dims"),
    ):
        allowed = getattr(b, key)
        if allowed is None:
            continue
        drift = _need(report, "drift", key)
        if drift[field] is None:
            checks.append(
                Check(key, "skipped", None, allowed, ">=" if key.startswith("min") else "<=", "", why)
            )
            continue
        per_dim = [f"{d['name']} {d[field]:.2%}" for d in drift["per_dim"] if d[field] is not None]
        checks.append(
            _limit(
                key, drift[field], allowed, ">=" if key.startswith("min") else "<=", "", ", ".join(per_dim)
            )
        )
    return checks


def _closed_loop_checks(report: dict, b: Budgets) -> list[Check]:
    if b.max_success_drop is None:
        return []
    loop = _need(report, "closed_loop", "max_success_drop")
    ref, cand = loop["reference"], loop["candidate"]
    threshold = ref["rate"] - b.max_success_drop
    lo, hi = cand["interval"]
    drop = ref["rate"] - cand["rate"]
    base = (
        f"reference {ref['successes']}/{ref['episodes']}, candidate {cand['successes']}/{cand['episodes']} "
        f"(95% CI {lo:.1%}-{hi:.1%}) vs threshold {threshold:.1%}"
    )
    floor = b.min_reference_success
    capped = loop.get("max_steps_note") or ""
    if cand["episodes"] < loop["min_episodes"]:
        status, why = "inconclusive", f"{cand['episodes']} episodes < min_episodes {loop['min_episodes']}"
    elif ref["rate"] < floor:
        status, why = "inconclusive", (
            f"the reference succeeds in {ref['rate']:.0%}, below min_reference_success {floor:.0%}: a drop "
            "from there says nothing; check the env, adapter and max_steps"
            + (f"; {capped}" if capped else "")
        )
    elif lo >= threshold:
        status, why = "pass", "candidate lower bound >= reference rate - max drop"
    elif hi < threshold:
        status, why = "fail", "candidate upper bound < reference rate - max drop"
    else:
        status, why = "inconclusive", "the candidate's interval straddles the threshold: run more episodes"
    return [Check("max_success_drop", status, drop, b.max_success_drop, "<=", "", f"{why}; {base}")]


def _profile_checks(report: dict, b: Budgets, target: str | None) -> list[Check]:
    own = b.targets.get(target) if target else None
    checks = []
    busy = None
    for key in ("max_latency_p99_ms", "min_rate_hz", "max_memory_mb"):
        allowed = getattr(own, key, None) if own and getattr(own, key, None) is not None else getattr(b, key)
        if allowed is None:
            continue
        profile = _need(report, "profile", key)
        model = profile["models"][0]
        if busy is None:
            busy = load_warnings(profile.get("load") or {})
        where = f"{model['runtime']}" + (f", target {target}" if own else "")
        if key == "max_latency_p99_ms":
            lat = model["latency"]
            measured, op, unit, detail = lat["p99_ms"], "<=", "ms", f"median {lat['median_ms']:.2f} ms"
        elif key == "min_rate_hz":
            rate = model["rate"]
            measured, op, unit = rate["inferences_per_s"], ">=", "Hz"
            detail = f"inferences/s at the median latency, {rate['actions_per_s']:.0f} actions/s"
        else:
            mem = model["memory"]
            measured, op, unit = mem["peak_rss_delta_mb"], "<=", "MB"
            detail = f"peak RSS added ({mem['method']})"
        check = _limit(key, measured, allowed, op, unit, f"{detail}, {where}")
        if busy and key in ABSOLUTE_TIMING:
            check.status = "not_measurable"
            check.detail += (f"; not judged, the machine was busy while timing ({'; '.join(busy)}); "
                             "re-run on a quiet machine, or budget min_speedup (timed interleaved)")
        checks.append(check)
    if b.max_file_size_mb is not None:
        size = report["candidate"].get("file_bytes")
        if size is None and report.get("profile"):
            size = report["profile"]["models"][0]["file_bytes"]
        if size is None:
            raise VlaedgeError(
                "gate: budget max_file_size_mb needs the candidate's file size, the report has none",
                "verify an exported model file, or remove the budget",
            )
        checks.append(
            _limit(
                "max_file_size_mb",
                size / 1e6,
                b.max_file_size_mb,
                "<=",
                "MB",
                "model file plus external data",
            )
        )
    return checks


def _baseline_checks(report: dict, b: Budgets) -> list[Check]:
    checks = []
    if b.min_speedup is not None:
        base = _need(report, "baseline", "min_speedup")
        if base.get("median_speedup") is None:
            raise VlaedgeError("gate: budget min_speedup needs the FP32 baseline timed, the report has none",
                               "run 'vlaedge verify' without --no-profile, or remove the budget")
        detail = (f"p99 {base['p99_speedup']:.3f}x; FP32 median {base['median_ms']:.3f} ms, "
                  f"interleaved on {base['runtime']}")
        checks.append(_limit("min_speedup", base["median_speedup"], b.min_speedup, ">=", "x", detail))
    if b.max_size_ratio is not None:
        base = _need(report, "baseline", "max_size_ratio")
        detail = f"FP32 {base['file_bytes'] / 1e6:.2f} MB"
        checks.append(_limit("max_size_ratio", base["size_ratio"], b.max_size_ratio, "<=", "x", detail))
    return checks


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _figures(measured, allowed) -> tuple[str, str]:
    """Measured and allowed with 4 significant digits, more where 4 would round the budget the user wrote
    (0.99999, not 1) or make a different measurement look equal to it (0.99995 against 0.99999)."""
    if measured is None or allowed is None:
        return _fmt(measured), _fmt(allowed)
    for d in range(4, 9):
        m, a = f"{measured:.{d}g}", f"{allowed:.{d}g}"
        if float(a) == float(f"{allowed:.8g}") and (m != a or measured == allowed):
            return m, a
    return f"{measured:.8g}", f"{allowed:.8g}"
