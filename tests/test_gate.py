"""The gate: each budget against constructed reports, the success-drop rule on the Wilson bound, per-target
budgets, strict budgets files, and exit codes 0/1/2 through `vlaedge verify` / `vlaedge gate`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from vlaedge.check.closedloop import ClosedLoopReport, SuccessRate
from vlaedge.check.drift import action_drift
from vlaedge.check.gate import gate
from vlaedge.check.profile import LatencyStats, ModelProfile, ProfileReport
from vlaedge.check.report import SCHEMA
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import ActionSpec
from vlaedge.recipe import Budgets, load_budgets, load_recipe

SPEC = ActionSpec(("dx", "dy", "gripper"), (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0), (2,), chunk=4)


class _Policy:
    name, action_spec = "reference-chunk", SPEC


def make_report(
    offset=(0.0, 0.0, 0.0),
    loop: tuple | None = None,
    latency_ms: float | None = 5.0,
    logits: bool = False,
    sha: str = "a" * 64,
    target: str | None = "cpu",
) -> dict:
    """A report.json dict: drift of `offset` (env units, range 2), optional closed loop
    ((ref successes, cand successes, episodes, min_episodes)) and a profile with constant latency."""
    from vlaedge.check.report import build_report

    rng = np.random.default_rng(0)
    ref = rng.uniform(-0.5, 0.5, (40, 4, 3)).astype(np.float32)
    ref_logits = cand_logits = None
    if logits:
        ref_logits = rng.normal(size=(40, 4, 3, 8))
        cand_logits = ref_logits.copy()
        cand_logits[:4, :, 0, 0] = 99.0  # about 10% of dim 0 disagrees
    drift = action_drift(ref, ref + np.asarray(offset, np.float32), SPEC, ref_logits, cand_logits)
    closed = None
    if loop:
        r, c, n, m = loop
        closed = ClosedLoopReport(
            "tabletop",
            SuccessRate(r, n, 0, [True] * r + [False] * (n - r)),
            SuccessRate(c, n, 0, [True] * c + [False] * (n - c)),
            m,
            10_000,
        )
    prof = None
    if latency_ms is not None:
        lat = LatencyStats.from_samples([latency_ms] * 20)
        model = ModelProfile(
            "model.onnx",
            "ort-cpu",
            3_000_000,
            lat,
            {"inferences_per_s": 1000 / latency_ms, "actions_per_s": 4000 / latency_ms},
            {"peak_rss_delta_mb": 40.0, "method": "vmhwm"},
        )
        prof = ProfileReport([model], 20, 2, 2, False, {"cpu": "test"})
    return build_report(
        _Policy(), None, "ort-cpu", target, sha, drift=drift, closed_loop=closed, profile=prof
    )


def statuses(result) -> dict:
    return {c.name: c.status for c in result.checks}


def test_drift_budgets_pass_and_fail_with_measured_and_allowed():
    report = make_report(offset=(0.01, 0.0, 0.06))  # 0.5% dx, 3% gripper -> overall mean 1.1667%
    result = gate(
        report,
        Budgets(
            max_drift_mean_pct=2.0, max_drift_p99_pct=2.5, max_drift_per_dim_pct={"dx": 1.0, "gripper": 1.0}
        ),
    )
    assert statuses(result) == {
        "max_drift_mean_pct": "pass",
        "max_drift_p99_pct": "fail",
        "max_drift_per_dim_pct[dx]": "pass",
        "max_drift_per_dim_pct[gripper]": "fail",
    }
    assert not result and len(result.failures) == 2
    p99 = next(c for c in result.checks if c.name == "max_drift_p99_pct")
    assert p99.measured == pytest.approx(3.0, rel=1e-3) and p99.allowed == 2.5
    assert "worst dim gripper" in p99.detail and "over budget: gripper" in p99.detail
    assert "max_drift_per_dim_pct[gripper] fail" in result.failure_line()


def test_token_agreement_gripper_flips_and_cosine_budgets():
    report = make_report(offset=(0.0, 0.0, -0.6), logits=True)  # gripper pushed below the midpoint often
    result = gate(report, Budgets(min_token_agreement=0.99, max_gripper_flip_rate=0.05, min_cosine=0.5))
    s = statuses(result)
    assert s["min_token_agreement"] == "fail" and s["max_gripper_flip_rate"] == "fail"
    agreement = next(c for c in result.checks if c.name == "min_token_agreement")
    assert (
        agreement.measured == pytest.approx(report["drift"]["token_agreement"])
        and 0.9 < agreement.measured < 0.99
    )
    assert agreement.op == ">=" and "dx" in agreement.detail
    no_tokens = gate(make_report(), Budgets(min_token_agreement=0.99))
    assert statuses(no_tokens) == {"min_token_agreement": "skipped"} and no_tokens  # skipped is not a failure


def test_a_tokens_head_p99_is_judged_by_token_agreement_when_that_budget_is_set():
    report = make_report(logits=True)  # decoded actions equal; 10% of dim 0's tokens disagree
    report["drift"]["per_dim"][0]["p99_pct"] = 49.6  # what openvla_style measured: the flips' size
    both = gate(report, Budgets(max_drift_continuous_p99_pct=20.0, min_token_agreement=0.8))
    assert statuses(both) == {"max_drift_continuous_p99_pct": "skipped", "min_token_agreement": "pass"}
    p99 = next(c for c in both.checks if c.name == "max_drift_continuous_p99_pct")
    assert "judged by min_token_agreement" in p99.detail and "dx p99 49.6%" in p99.detail
    # without a token budget the p99 still applies: nothing goes unjudged
    alone = gate(report, Budgets(max_drift_continuous_p99_pct=20.0))
    assert statuses(alone) == {"max_drift_continuous_p99_pct": "fail"} and not alone
    # a continuous head keeps its p99 budget whatever min_token_agreement says
    continuous = make_report(offset=(0.5, 0.0, 0.0))  # dx off by 25% of range
    judged = gate(continuous, Budgets(max_drift_continuous_p99_pct=20.0, min_token_agreement=0.98))
    assert statuses(judged) == {"max_drift_continuous_p99_pct": "fail", "min_token_agreement": "skipped"}


@pytest.mark.parametrize(
    ("loop", "expected"),
    [
        ((90, 89, 200, 50), "pass"),  # 45% vs 44.5%: candidate lower bound 37.8% >= 45% - 10%
        ((180, 120, 200, 50), "fail"),  # 90% vs 60%: candidate upper bound 66.5% < 90% - 10%
        ((180, 165, 200, 50), "inconclusive"),  # 82.5% (95% CI 76.6%-87.1%) straddles 80%
        ((20, 20, 20, 50), "inconclusive"),  # perfect, but below min_episodes: never a pass
    ],
)
def test_success_drop_is_judged_on_the_wilson_bound(loop, expected):
    result = gate(make_report(loop=loop), Budgets(max_success_drop=0.10))
    (check,) = result.checks
    assert check.status == expected, check.detail
    assert check.measured == pytest.approx((loop[0] - loop[1]) / loop[2]) and check.allowed == 0.10
    assert bool(result) == (expected == "pass")


def test_per_target_budgets_replace_the_general_ones_for_that_target():
    budgets = Budgets(
        max_latency_p99_ms=10, targets={"agx-orin-64gb": {"max_latency_p99_ms": 4, "min_rate_hz": 300}}
    )
    assert gate(make_report(latency_ms=5, target="cpu"), budgets)
    on_orin = gate(make_report(latency_ms=5, target="agx-orin-64gb"), budgets)
    assert statuses(on_orin) == {"max_latency_p99_ms": "fail", "min_rate_hz": "fail"}
    assert "target agx-orin-64gb" in on_orin.checks[0].detail
    assert gate(make_report(latency_ms=5, target="cpu"), budgets, target="agx-orin-64gb").failures


def test_memory_and_file_size_budgets():
    result = gate(make_report(), Budgets(max_memory_mb=30, max_file_size_mb=5))
    assert statuses(result) == {"max_memory_mb": "fail", "max_file_size_mb": "pass"}


def test_missing_measurements_unknown_dims_and_foreign_reports_cannot_run():
    with pytest.raises(VlaedgeError, match="max_latency_p99_ms needs the report's profile"):
        gate(make_report(latency_ms=None), Budgets(max_latency_p99_ms=5))
    with pytest.raises(VlaedgeError, match="max_success_drop needs the report's closed_loop"):
        gate(make_report(), Budgets(max_success_drop=0.1))
    with pytest.raises(VlaedgeError, match="'dz'.*dx, dy, gripper"):
        gate(make_report(), Budgets(max_drift_per_dim_pct={"dz": 1.0}))
    with pytest.raises(VlaedgeError, match="another policy"):
        gate(make_report(sha="b" * 64), Budgets(policy_sha256="aaaa"))
    assert gate(make_report(sha="a" * 64), Budgets(policy_sha256="aaaa", max_drift_mean_pct=1))


def test_budgets_file_is_strict_with_suggestions(tmp_path):
    good = tmp_path / "b.yaml"
    good.write_text("budgets:\n  max_drift_mean_pct: 1.0\n  targets:\n    cpu: {max_latency_p99_ms: 20}\n")
    assert load_budgets(good).targets["cpu"].max_latency_p99_ms == 20
    flat = tmp_path / "flat.yaml"
    flat.write_text("max_drift_p99_pct: 5\n")
    assert load_budgets(flat).max_drift_p99_pct == 5
    typo = tmp_path / "typo.yaml"
    typo.write_text("max_drift_mena_pct: 1.0\n")
    with pytest.raises(VlaedgeError, match="did you mean 'max_drift_mean_pct'"):
        load_budgets(typo)
    bad_target = tmp_path / "t.yaml"
    bad_target.write_text("targets:\n  orin-nano:\n    max_latency_p99_ms: 5\n")
    with pytest.raises(VlaedgeError, match="unknown target 'orin-nano'"):
        load_budgets(bad_target)
    nested = tmp_path / "n.yaml"
    nested.write_text("targets:\n  cpu:\n    max_latncy_p99_ms: 5\n")
    with pytest.raises(VlaedgeError, match="did you mean 'max_latency_p99_ms'"):
        load_budgets(nested)
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "cpu-int8.yaml"
    assert load_budgets(recipe) == load_recipe(recipe).budgets  # a recipe's budgets section


def test_a_recipe_with_a_success_budget_but_no_closed_loop_is_refused_at_load():
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "cpu-int8.yaml"
    with pytest.raises(VlaedgeError, match="max_success_drop needs verify.closed_loop_episodes"):
        load_recipe(recipe, ["budgets.max_success_drop=0.05", "verify.closed_loop_episodes=0"])
    recipe = load_recipe(recipe, ["budgets.max_success_drop=0.05", "verify.closed_loop_episodes=100"])
    assert recipe.budgets.max_success_drop == 0.05


# --- exit codes through the CLI -------------------------------------------------------------------------


def _broken_onnx(src, dst, gripper_offset: float):
    """The exported model plus `gripper_offset` on the gripper action: a deliberately broken candidate."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    for node in model.graph.node:
        node.output[:] = ["actions_raw" if o == "actions" else o for o in node.output]
    model.graph.initializer.append(
        helper.make_tensor("offset", TensorProto.FLOAT, [3], [0.0, 0.0, gripper_offset])
    )
    model.graph.node.append(helper.make_node("Add", ["actions_raw", "offset"], ["actions"]))
    onnx.save(model, str(dst))
    return dst


@pytest.fixture
def budgets_file(tmp_path):
    path = tmp_path / "budgets.yaml"
    path.write_text(
        "max_drift_mean_pct: 1.0\nmax_drift_per_dim_pct: {gripper: 1.0}\nmax_latency_p99_ms: 500\n"
    )
    return path


def run_verify(tiny_run, model, out, capsys, monkeypatch, *options) -> tuple[int, str]:
    """`vlaedge verify MODEL` against the tiny run's checkpoint and data, into `out`."""
    args = ["verify", model, "--checkpoint", tiny_run.checkpoint, "--data", tiny_run.data, "--out", out]
    return run_cli([*args, *options], capsys, monkeypatch)


def test_verify_and_gate_exit_0_on_a_faithful_candidate(
    tiny_run, tmp_path, budgets_file, capsys, monkeypatch
):
    out = tmp_path / "v"
    options = ["--budgets", budgets_file, "--frames", 16, "--runs", 10, "--threads", 1]
    code, text = run_verify(tiny_run, tiny_run.onnx, out, capsys, monkeypatch, *options)
    assert code == 0, text
    assert {"report.json", "report.md", "report.html", "junit.xml", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == SCHEMA and report["gate"]["passed"] and report["drift"]["frames"] == 16
    code, text = run_cli(
        ["gate", out / "report.json", "--budgets", budgets_file, "--checkpoint", tiny_run.checkpoint],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "gate: PASS" in text
    # the FP32 reference was exported from the checkpoint and timed interleaved with the candidate
    base = report["baseline"]
    assert len(report["profile"]["models"]) == 2 and base["interleaved"]
    assert base["median_speedup"] == pytest.approx(
        report["profile"]["models"][1]["latency"]["median_ms"] / report["profile"]["models"][0]["latency"][
            "median_ms"])
    assert base["parameter_ratio"] == 1.0 and base["size_ratio"] == pytest.approx(1.0, abs=0.01)
    assert "(temporary)" in base["model"] and "vs FP32:" in text
    assert report["profile"]["load"]["cores"] >= 1 and "warnings" in report["profile"]["load"]


def with_baseline(report: dict, fp32_ms: float, size_ratio: float = 0.25) -> dict:
    """`report` with a "baseline" section: the FP32 model at `fp32_ms` vs the candidate's latency."""
    cand = report["profile"]["models"][0]["latency"]
    report["baseline"] = {
        "model": "model_fp32.onnx", "runtime": "ort-cpu", "file_bytes": 12_000_000, "parameters": 1000,
        "candidate_parameters": 1000, "size_ratio": size_ratio, "parameter_ratio": 1.0,
        "median_ms": fp32_ms, "p99_ms": fp32_ms * 1.1, "median_speedup": fp32_ms / cand["median_ms"],
        "p99_speedup": fp32_ms * 1.1 / cand["p99_ms"], "slower": fp32_ms < cand["median_ms"],
        "interleaved": True,
    }
    return report


def test_speedup_and_size_ratio_budgets_judge_the_fp32_baseline():
    budgets = Budgets(min_speedup=1.2, max_size_ratio=0.3)
    faster = gate(with_baseline(make_report(latency_ms=5.0), fp32_ms=7.5), budgets)  # 1.5x
    assert statuses(faster) == {"min_speedup": "pass", "max_size_ratio": "pass"}
    check = faster.checks[0]
    assert check.measured == pytest.approx(1.5) and check.op == ">=" and "p99 1.650x" in check.detail
    slow = gate(with_baseline(make_report(latency_ms=5.0), fp32_ms=5.5, size_ratio=0.5), budgets)  # 1.1x
    assert statuses(slow) == {"min_speedup": "fail", "max_size_ratio": "fail"}
    assert "min_speedup fail: measured 1.1 x, allowed >= 1.2" in slow.failure_line()
    with pytest.raises(VlaedgeError, match="needs the report's baseline section"):
        gate(make_report(), Budgets(min_speedup=1.0))
    untimed = with_baseline(make_report(), fp32_ms=5.0)
    untimed["baseline"]["median_speedup"] = None
    with pytest.raises(VlaedgeError, match="FP32 baseline timed"):
        gate(untimed, Budgets(min_speedup=1.0))


def test_a_candidate_slower_than_fp32_is_called_out_even_when_the_gate_passes():
    result = gate(with_baseline(make_report(latency_ms=5.0), fp32_ms=4.9), Budgets(max_latency_p99_ms=50))
    head = result.summary().splitlines()[0]
    assert result.passed and head.startswith("gate: PASS") and "SLOWER than FP32: 0.98x" in head
    faster = gate(with_baseline(make_report(latency_ms=5.0), fp32_ms=10.0), Budgets(max_latency_p99_ms=50))
    assert "2.00x faster" in faster.summary().splitlines()[0] and "SLOWER" not in faster.summary()


def test_a_slower_candidate_says_why_from_the_causes_that_hold_here():
    from vlaedge.check.verify import slower_reasons

    no_vnni_small = slower_reasons(0.97, "ort-cpu", None, int8_dot=False)
    assert "no int8 dot-product instruction" in no_vnni_small and "0.97 ms per FP32 step" in no_vnni_small
    vnni_large = slower_reasons(40.0, "ort-cpu", {"busy_others_share": 0.62}, int8_dot=True)
    assert "VNNI" not in vnni_large and "too small" not in vnni_large and "62%" in vnni_large
    assert "none of the known causes" in slower_reasons(40.0, "ort-cpu", None, int8_dot=True)
    trt = slower_reasons(40.0, "ort-cpu", None, int8_dot=False, tensorrt_graph=True)
    assert "TensorRT" in trt and "on the device" in trt and "dot-product" not in trt
    report = with_baseline(make_report(latency_ms=5.0), fp32_ms=0.9)
    report["baseline"]["slower_why"] = slower_reasons(0.9, "ort-cpu", None, int8_dot=False)
    head = gate(report, Budgets(max_drift_mean_pct=5)).summary().splitlines()[0]
    assert "SLOWER than FP32" in head and "(why: this CPU has no int8 dot-product" in head


# The load a LoadProbe records (vlaedge.check.host): busy = other processes used 62% of the CPU while timing.
BUSY = {"loadavg_1m_before": 3.9, "loadavg_1m_after": 4.1, "cores": 2, "busy_others_share": 0.62,
        "steal_share": 0.0, "window_s": 1.5, "warnings": []}
QUIET = {**BUSY, "loadavg_1m_before": 0.3, "loadavg_1m_after": 0.4, "busy_others_share": 0.02}
TIMING = Budgets(max_drift_mean_pct=5, max_latency_p99_ms=50, min_rate_hz=20, min_speedup=0.5)


def timed_report(latency_ms: float, load: dict) -> dict:
    """A report whose candidate and FP32 both took `latency_ms`, timed under `load`."""
    report = with_baseline(make_report(latency_ms=latency_ms), fp32_ms=latency_ms)
    report["profile"]["load"] = dict(load)
    return report


@pytest.mark.parametrize("latency_ms, quiet_status", [(5.0, "pass"), (80.0, "fail")])
def test_absolute_timing_is_not_measurable_on_a_busy_machine_and_judged_on_a_quiet_one(
    latency_ms, quiet_status
):
    quiet = gate(timed_report(latency_ms, QUIET), TIMING)
    assert statuses(quiet) == {"max_drift_mean_pct": "pass", "max_latency_p99_ms": quiet_status,
                               "min_rate_hz": quiet_status, "min_speedup": "pass"}
    assert bool(quiet) == (quiet_status == "pass") and quiet.to_dict()["not_measurable"] == []
    busy = gate(timed_report(latency_ms, BUSY), TIMING)
    # the same milliseconds on a busy machine: neither pass nor fail; the ratio is still judged
    assert statuses(busy) == {"max_drift_mean_pct": "pass", "max_latency_p99_ms": "not_measurable",
                              "min_rate_hz": "not_measurable", "min_speedup": "pass"}
    assert busy.passed and not busy.failures
    assert busy.to_dict()["not_measurable"] == ["max_latency_p99_ms", "min_rate_hz"]
    lines = busy.summary().splitlines()
    assert lines[0].startswith("gate: PASS (2 of 4 budgets met, 2 not measurable)")
    latency = next(line for line in lines if "max_latency_p99_ms" in line)
    assert latency.lstrip().startswith("not measurable") and "other processes used 62% of the CPU" in latency


def test_a_not_measurable_latency_exits_0_and_every_report_shows_the_state(tmp_path, capsys, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(timed_report(80.0, BUSY)))
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("max_drift_mean_pct: 5\nmax_latency_p99_ms: 50\n")
    code, text = run_cli(["gate", path, "--budgets", budgets, "--out", tmp_path / "g"], capsys, monkeypatch)
    assert code == 0, text
    head = "1 of 2 budgets met, 1 not measurable"
    assert f"gate: PASS ({head})" in text and "not measurable max_latency_p99_ms" in " ".join(text.split())
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    assert report["gate"]["passed"] and report["gate"]["not_measurable"] == ["max_latency_p99_ms"]
    by_name = {c["name"]: c["status"] for c in report["gate"]["checks"]}
    assert by_name["max_latency_p99_ms"] == "not_measurable"
    suite = ET.parse(tmp_path / "g" / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "0", "1")
    case = next(c for c in suite.findall("testcase") if c.get("name") == "max_latency_p99_ms")
    skipped = case.find("skipped")
    assert case.find("failure") is None and skipped.get("type") == "NotMeasurable"
    assert skipped.get("message").startswith("not measurable: measured 80 ms, allowed <= 50 ms")
    md = (tmp_path / "g" / "report.md").read_text()
    assert md.startswith(f"# vlaedge report: PASS, {head} (the machine was busy while timing")  # CLI's words
    assert "| `max_latency_p99_ms` | 80 | <= 50 ms | **NOT MEASURABLE** |" in md
    assert f"PASS</span> {head}" in (tmp_path / "g" / "report.html").read_text()
    code, text = run_cli(["gate", path, "--budgets", budgets, "--json"], capsys, monkeypatch)
    summary = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]  # stdout; the summary went to stderr
    assert code == 0 and summary["verdict"] == "pass" and summary["not_measurable"] == ["max_latency_p99_ms"]
    # the same report timed on a quiet machine: judged, and 80 ms > 50 ms is a violation (exit 1)
    path.write_text(json.dumps(timed_report(80.0, QUIET)))
    code, text = run_cli(["gate", path, "--budgets", budgets], capsys, monkeypatch)
    assert code == 1 and "max_latency_p99_ms fail: measured 80 ms" in text and "not measurable" not in text


def test_report_md_and_html_count_the_budgets_as_the_cli_does():
    from vlaedge.check.report_html import render_html
    from vlaedge.check.report_markdown import render_markdown

    report = make_report(offset=(0.01, 0.0, 0.0))  # continuous head: token agreement does not apply
    result = gate(report, Budgets(max_drift_mean_pct=5, min_token_agreement=0.98))
    report["gate"] = result.to_dict()
    assert result.summary().startswith("gate: PASS (1 of 2 budgets met, 1 skipped)")
    assert render_markdown(report).startswith("# vlaedge report: PASS, 1 of 2 budgets met, 1 skipped\n")
    assert "PASS</span> 1 of 2 budgets met, 1 skipped</h1>" in render_html(report)


def test_a_broken_candidate_exits_1_naming_the_failing_dimension(
    tiny_run, tmp_path, budgets_file, capsys, monkeypatch
):
    broken = _broken_onnx(tiny_run.onnx, tmp_path / "broken.onnx", 0.3)
    out = tmp_path / "v"
    budgets_file.write_text("max_drift_mean_pct: 10.0\nmax_drift_per_dim_pct: {dx: 1.0, gripper: 1.0}\n")
    options = ["--budgets", budgets_file, "--frames", 16, "--no-profile"]
    code, text = run_verify(tiny_run, broken, out, capsys, monkeypatch, *options)
    assert code == 1, text
    assert "gate failed" in text and "max_drift_per_dim_pct[gripper] fail" in text and "Traceback" not in text
    assert "max_drift_per_dim_pct[dx] fail" not in text  # only the broken dimension is named
    assert (out / "junit.xml").is_file() and (
        out / "report.html"
    ).is_file()  # reports written even on failure
    code, text = run_cli(["gate", out, "--budgets", budgets_file], capsys, monkeypatch)
    assert code == 1 and "gripper" in text


def test_gate_cannot_run_exits_2_in_one_line(tiny_run, tmp_path, budgets_file, capsys, monkeypatch):
    from vlaedge.models.reference import ReferencePolicy

    out = tmp_path / "v"
    code, _ = run_verify(tiny_run, tiny_run.onnx, out, capsys, monkeypatch, "--frames", 8, "--no-profile")
    assert code == 0
    other = ReferencePolicy.build("nano", "chunk", image_size=32).save(tmp_path / "other")
    typo = tmp_path / "typo.yaml"
    typo.write_text("max_drift_mean_pct: 1\nmin_token_agrement: 0.9\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "vlaedge.report/0"}))
    cases = [
        (["gate", out, "--budgets", budgets_file, "--checkpoint", other], "another policy"),
        (["gate", out, "--budgets", typo], "did you mean 'min_token_agreement'"),
        (["gate", bad_json, "--budgets", budgets_file], "not valid JSON"),
        (["gate", old, "--budgets", budgets_file], "schema 'vlaedge.report/0'"),
        (["gate", out, "--budgets", budgets_file.parent / "missing.yaml"], "does not exist"),
    ]
    for args, needle in cases:
        code, text = run_cli(args, capsys, monkeypatch)
        assert code == 2, (args, text)
        assert needle in text and "Traceback" not in text
        assert text.startswith("error: ") and len(text.strip().splitlines()) == 2  # message + fix
    # the report has no profile: a latency budget cannot be judged
    latency = tmp_path / "lat.yaml"
    latency.write_text("max_latency_p99_ms: 10\n")
    code, text = run_cli(["gate", out, "--budgets", latency], capsys, monkeypatch)
    assert code == 2 and "needs the report's profile" in text


def test_gate_refuses_a_report_copied_into_another_run_directory(
    tiny_run, tmp_path, budgets_file, capsys, monkeypatch
):
    out = tmp_path / "v"
    run_verify(tiny_run, tiny_run.onnx, out, capsys, monkeypatch, "--frames", 8, "--no-profile")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["inputs"]["checkpoint"]["sha256"] = "f" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, text = run_cli(["gate", out, "--budgets", budgets_file], capsys, monkeypatch)
    assert code == 2 and "another policy" in text
