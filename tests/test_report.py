"""Reports: the report.json schema, junit.xml validity and counts, report.md, report.html's inline SVG
plots (matplotlib), and `vlaedge compress` writing them into its output directory (exit 1 on a violated
budget). tests/test_report_browser.py opens the pages in headless Chromium."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_gate import make_report, run_cli, with_baseline

from vlaedge.check.gate import gate
from vlaedge.check.report import FILES, SCHEMA, load_report, render_junit, write_reports
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import Budgets

ROOT = Path(__file__).resolve().parent.parent


def gated(report: dict, budgets: Budgets) -> dict:
    report["gate"] = gate(report, budgets).to_dict()
    return report


def test_report_json_has_the_versioned_schema_and_round_trips(tmp_path):
    report = gated(make_report(offset=(0.01, 0, 0), loop=(50, 48, 60, 50)), Budgets(max_drift_mean_pct=1))
    write_reports(report, tmp_path)
    loaded = load_report(tmp_path)
    assert loaded["schema"] == SCHEMA == "vlaedge.report/1"
    assert {
        "schema",
        "created",
        "vlaedge",
        "target",
        "policy",
        "candidate",
        "data",
        "drift",
        "closed_loop",
        "profile",
        "baseline",
        "traces",
        "gate",
        "notes",
    } == set(loaded)
    assert (
        loaded["policy"]["action_names"] == ["dx", "dy", "gripper"] and loaded["policy"]["sha256"] == "a" * 64
    )
    assert loaded["drift"]["per_dim"][0]["mean_pct"] == pytest.approx(0.5, rel=1e-3)
    assert (
        loaded["closed_loop"]["candidate"]["interval"][0]
        < 0.8
        < loaded["closed_loop"]["candidate"]["interval"][1]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)


def test_malformed_reports_are_refused(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"schema": SCHEMA, "policy": {}}))
    with pytest.raises(VlaedgeError, match="malformed"):
        load_report(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps([1, 2]))
    with pytest.raises(VlaedgeError, match="no 'schema'"):
        load_report(tmp_path / "b.json")


def test_junit_xml_parses_with_correct_counts_and_carries_measured_vs_allowed():
    report = gated(
        make_report(offset=(0.0, 0.0, 0.06), loop=(20, 20, 20, 50)),
        Budgets(
            max_drift_mean_pct=5,
            max_drift_per_dim_pct={"gripper": 1.0},
            min_token_agreement=0.9,
            max_success_drop=0.1,
            max_latency_p99_ms=100,
        ),
    )
    root = ET.fromstring(render_junit(report))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert root.tag == "testsuites" and len(cases) == 5
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == (
        "5",
        "2",
        "1",
        "0",
    )
    assert root.get("failures") == "2"
    by_name = {c.get("name"): c for c in cases}
    failure = by_name["max_drift_per_dim_pct[gripper]"].find("failure")
    assert failure.get("type") == "BudgetViolated"
    assert re.search(r"measured 3 % of range, allowed <= 1 % of range", failure.get("message"))
    assert by_name["max_success_drop"].find("failure").get("type") == "Inconclusive"
    assert by_name["min_token_agreement"].find("skipped") is not None
    assert by_name["max_drift_mean_pct"].find("failure") is None


def test_markdown_is_a_step_summary_with_the_verdict_and_tables():
    report = gated(make_report(offset=(0.0, 0.0, 0.06)), Budgets(max_drift_per_dim_pct={"gripper": 1.0}))
    from vlaedge.check.report import render_markdown

    md = render_markdown(report)
    assert md.startswith("# vlaedge report: FAIL, 0 of 1 budget met, 1 fail\n\ndrift mean 1% / p99 3% of "
                         "range over all dims;")
    assert "| `max_drift_per_dim_pct[gripper]` | 3 | <= 1 % of range | **FAIL** |" in md
    assert "| gripper | 3.000 | 3.000 | 3.000 |" in md and "## Latency (batch 1)" in md
    ok = render_markdown(gated(make_report(), Budgets(max_drift_mean_pct=1, max_latency_p99_ms=10)))
    assert ok.startswith("# vlaedge report: PASS, 2 of 2 budgets met")
    assert md.isascii() and ok.isascii(), "no emoji or other glyph that needs a font"


def test_html_has_well_formed_inline_svg_plots_with_budget_lines():
    report = gated(
        make_report(offset=(0.01, 0.0, 0.02), loop=(45, 40, 50, 20)),
        Budgets(max_drift_mean_pct=2, max_drift_p99_pct=3, max_latency_p99_ms=8),
    )
    report["traces"] = [
        {
            "episode": 3,
            "instruction": "pick <the> red block",
            "reference": [[0.1, 0.2, -1.0]] * 5,
            "candidate": [[0.12, 0.2, -1.0]] * 5,
        }
    ]
    from vlaedge.check.report_html import render_html

    page = render_html(report)
    figures = dict(re.findall(r"<figure data-plot='([\w-]+)'>(<svg .*?</svg>)", page, flags=re.S))
    assert list(figures) == ["drift", "chunk", "success", "latency", "trace-3"]
    for svg in figures.values():
        ET.fromstring(svg)  # well-formed XML
    # matplotlib draws text as paths and keeps each string as a comment next to it
    assert "<!-- mean budget 2% -->" in figures["drift"] and "<!-- p99 budget 3% -->" in figures["drift"]
    assert "<!-- p99 budget 8 ms -->" in figures["latency"]
    assert "<!-- candidate p99 5.00 ms -->" in figures["latency"]
    assert "<!-- 45/50 -->" in figures["success"] and "<!-- gripper -->" in figures["trace-3"]
    assert "pick &lt;the&gt; red block" in page
    # the verdict in words and colour first, then the budgets table, then the sections
    keys = ("verdict", "budgets", "drift", "closed-loop", "latency")
    order = [page.index(f"data-section='{k}'") for k in keys]
    assert order == sorted(order) and "<span class='word'>PASS</span>" in page
    ids = re.findall(r'id="(f\d+p[0-9a-f]{10})"', page)
    assert ids and len(ids) == len(set(ids)), "clip-path ids are unique on the page"


def test_every_report_shows_the_fp32_baseline_and_calls_out_a_slower_candidate(tmp_path):
    report = with_baseline(make_report(latency_ms=5.0), fp32_ms=4.0)  # the candidate is 0.8x FP32
    report["profile"]["load"] = {"loadavg_1m_before": 3.5, "loadavg_1m_after": 3.0, "cores": 2,
                                 "busy_others_share": 0.4, "steal_share": 0.0, "window_s": 1.0,
                                 "warnings": ["other processes used 40% of the CPU time while timing"]}
    report = gated(report, Budgets(max_drift_mean_pct=100))  # the gate passes
    report["profile"]["models"].append(report["profile"]["models"][0] | {"model": "model_fp32.onnx"})
    write_reports(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    first = md.splitlines()[0]
    assert first.endswith("PASS, 1 of 1 budget met; WARNING: candidate slower than FP32 (0.80x median)")
    assert "## Against the FP32 reference ONNX" in md and "| median speedup | 0.800x |" in md
    assert "| file size | 0.250x |" in md and "other processes 40%" in md and "**warning**" in md
    page = (tmp_path / "report.html").read_text()
    assert "SLOWER than FP32: 0.80x" in page and "FP32 median" in page and "warning: other processes" in page
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["fp32.median_speedup"] == "0.8000" and props["fp32.slower"] == "true"
    assert props["fp32.size_ratio"] == "0.2500" and props["load.busy_others_share"] == "0.4"


@pytest.mark.slow
def test_compress_writes_reports_before_commit_and_exits_1_on_a_violated_budget(
    tmp_path, trained_checkpoint, capsys, monkeypatch
):
    fast = [
        "--set",
        "quantize.num_calib_frames=64",
        "--set",
        "export.check_frames=8",
        "--set",
        "verify.eval_frames=48",
        "--set",
        "verify.profile_runs=20",
        "--set",
        "verify.profile_warmup=2",
        "--set",
        "verify.trace_episodes=1",
    ]
    out = tmp_path / "run"
    code, text = run_cli(
        [
            "compress",
            trained_checkpoint("chunk"),
            "--recipe",
            ROOT / "recipes/cpu-int8.yaml",
            "--out",
            out,
            *fast,
            "--set",
            "budgets.max_drift_mean_pct=0.0001",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 1, text
    assert "gate failed" in text and "max_drift_mean_pct fail" in text
    manifest = json.loads((out / "manifest.json").read_text())  # the output is complete despite exit 1
    assert set(FILES) <= set(manifest["outputs"])
    # the briefly trained test policy scores 0 closed loop: below min_reference_success, the success-drop
    # check says nothing and is inconclusive, never a pass
    assert manifest["gate"] == {"passed": False, "failed": ["max_drift_mean_pct", "max_success_drop"]}
    report = load_report(out)
    assert report["policy"]["sha256"] == manifest["inputs"]["checkpoint"]["sha256"]
    assert report["candidate"]["sha256"] == manifest["outputs"]["model.onnx"]["sha256"]
    assert report["data"]["evaluation_episodes"] == manifest["split"]["evaluation_episodes"]
    assert report["drift"]["frames"] == 48 and report["profile"]["models"][0]["latency"]["runs"] == 20
    # the run's own FP32 export is the baseline, timed interleaved with model.onnx
    base = report["baseline"]
    assert base["model"] == "model_fp32.onnx" and report["profile"]["models"][1]["model"] == "model_fp32.onnx"
    assert base["size_ratio"] < 0.5 and base["parameter_ratio"] == pytest.approx(1.0, abs=0.01)
    assert base["median_speedup"] > 0 and "vs FP32:" in text
    # the same report judged by the recipe's own budgets through `vlaedge gate`, from the run directory
    code, text = run_cli(["gate", out, "--budgets", ROOT / "recipes/cpu-int8.yaml"], capsys, monkeypatch)
    assert code in (0, 1) and "max_drift_mean_pct" in text and "min_speedup" in text
