"""`vlaedge tune`: the Pareto front and the pick on constructed rows; on the briefly trained test policy with
a tiny variant space: budgets respected, the written recipe reproduces the pick's drift through `vlaedge
compress`, the sensitivity fallback brings a too-tight drift budget back in, and a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlaedge.recipe import Budgets, load_recipe
from vlaedge.tune.select import budget_failures, pareto_front, pick
from vlaedge.tune.space import declared_space, module_group

ROOT = Path(__file__).resolve().parent.parent
FAST = ["quantize.num_calib_frames=64", "export.check_frames=8", "verify.eval_frames=64",
        "verify.profile_runs=20", "verify.profile_warmup=2", "verify.closed_loop_episodes=0",
        "verify.trace_episodes=1", "budgets.max_success_drop=null", "budgets.min_speedup=null"]
SPACE = {"static-pc": {"mode": "static", "per_channel": True, "algorithm": "minmax"},
         "dynamic-pt": {"mode": "dynamic", "per_channel": False}}


def row(name, drift, ms, size, fp32=False, failures=()):
    return {"name": name, "drift_mean_pct": drift, "median_ms": ms, "file_bytes": size, "fp32": fp32,
            "failures": list(failures), "speedup": None}


def test_pareto_front_keeps_exactly_the_non_dominated_rows():
    rows = [row("fp32", 0.0, 10.0, 400), row("a", 0.5, 6.0, 100), row("b", 0.6, 7.0, 100),  # b: a beats it
            row("c", 0.4, 8.0, 100), row("d", 0.5, 6.0, 120),  # d: same as a but bigger -> dominated
            row("e", 2.0, 5.0, 130), {"name": "broken", "error": "x"}]
    assert pareto_front(rows) == ["fp32", "a", "c", "e"]
    assert pareto_front([row("x", 1, 1, 1), row("y", 1, 1, 1)]) == ["x", "y"]  # ties dominate nobody


def test_pick_is_the_fastest_within_budgets_and_says_when_fp32_is_fastest():
    rows = [row("fp32", 0.0, 10.0, 400, fp32=True), row("fast-but-drifts", 5.0, 4.0, 100, failures=["x"]),
            row("ok-slow", 0.5, 8.0, 100), row("ok-fast", 0.6, 6.0, 100)]
    for r in rows:
        r["speedup"] = 10.0 / r["median_ms"]
    chosen, reason = pick(rows)
    assert chosen["name"] == "ok-fast" and "1.67x FP32" in reason
    slower = [rows[0], rows[1], row("ok-but-slower", 0.5, 11.0, 100)]
    slower[2]["speedup"] = 10 / 11
    chosen, reason = pick(slower)
    assert chosen["fp32"] and reason.startswith("none is faster than FP32 within the budgets")
    assert "ok-but-slower, runs at 0.91x FP32 median" in reason
    assert "faster but over budget: fast-but-drifts" in reason
    nothing, reason = pick([row("fp32", 0, 10, 4, True, ["max_latency_p99_ms 10 (allowed <= 5)"])])
    assert nothing is None and "every one fails max_latency_p99_ms" in reason


def test_budget_failures_judge_latency_size_and_fp32_ratios():
    r = row("a", 0.5, 5.0, 2_000_000) | {"p99_ms": 9.0, "speedup": 1.1, "size_ratio": 0.5,
                                          "drift_failures": ["max_drift_mean_pct 3 (allowed <= 1)"]}
    budgets = Budgets(max_latency_p99_ms=8, min_speedup=1.2, max_size_ratio=0.6, max_file_size_mb=3)
    fails = budget_failures(r, budgets, "cpu")
    assert [f.split()[0] for f in fails] == ["max_drift_mean_pct", "max_latency_p99_ms", "min_speedup"]


def test_the_declared_space_and_module_groups():
    assert [v.name for v in declared_space("onnxruntime", "int8", "quick")] == [
        "static-pc-minmax", "static-pt-minmax", "dynamic-pt"]
    assert [v.name for v in declared_space("tensorrt", "int8")] == ["modelopt-max", "modelopt-smoothquant"]
    assert [v.name for v in declared_space("tensorrt", "fp8")] == ["modelopt-max"]
    assert module_group("vision_tower.blocks.0.attn.q_proj") == "vision_tower.blocks.0"
    assert module_group("film") == "film" and module_group("state_proj.2") == "state_proj.2"


@pytest.fixture(scope="module")
def tuned(trained_checkpoint, tmp_path_factory):
    from vlaedge.tune import tune

    out = tmp_path_factory.mktemp("tune") / "run"
    recipe = load_recipe(ROOT / "recipes/cpu-int8.yaml", FAST)
    lines = []
    result = tune(recipe, out, trained_checkpoint("chunk"), max_minutes=3, space=SPACE, search_frames=48,
                  log=lines.append)
    return result, recipe, out, lines


def test_tune_picks_the_fastest_variant_within_every_budget(tuned, trained_checkpoint):
    result, recipe, out, lines = tuned
    trained = trained_checkpoint("chunk")
    assert {p.name for p in out.iterdir()} >= {"tune.json", "tune.md", "tune.html", "recipe.yaml", "variants"}
    data = json.loads((out / "tune.json").read_text())
    names = [r["name"] for r in data["rows"]]
    assert names[0] == "fp32" and set(names) == {"fp32", *SPACE}
    built = [r for r in data["rows"] if "error" not in r]
    assert [r["name"] for r in built if r["pareto"]] == pareto_front(built)
    ok = [r for r in built if not r["failures"]]
    assert result and result.chosen["name"] == min(ok, key=lambda r: r["median_ms"])["name"]
    assert all(r["drift"]["mean_pct"] <= recipe.budgets.max_drift_mean_pct for r in ok)
    assert any("timing 3 models interleaved" in line for line in lines)
    assert "<svg" in (out / "tune.html").read_text() and "| variant |" in (out / "tune.md").read_text()
    # the printed command rebuilds the pick from this checkpoint, not the embedded default policy
    command = f"vlaedge compress {trained} --recipe {out / 'recipe.yaml'} --out {out}-pick"
    assert result.reproduce == command and f"Reproduce the pick: `{command}`" in (out / "tune.md").read_text()


def test_the_written_recipe_reproduces_the_picked_variant_with_compress(tuned, trained_checkpoint, tmp_path):
    from vlaedge.pipeline import compress

    result, _, out, _ = tuned
    written = yaml.safe_load((out / "recipe.yaml").read_text())
    chosen = result.chosen
    if chosen["fp32"]:
        assert "quantize" not in written
    else:
        assert {k: written["quantize"][k] for k in chosen["settings"]} == chosen["settings"]
    run = compress(load_recipe(out / "recipe.yaml", FAST[2:]), tmp_path / "c", trained_checkpoint("chunk"),
                   log=lambda _: None)
    report = json.loads((run.out / "report.json").read_text())
    assert report["drift"]["mean_pct"] == pytest.approx(chosen["drift"]["mean_pct"], abs=0.02)
    assert report["drift"]["frames"] == chosen["drift"]["frames"]


def test_sensitivity_fallback_brings_a_tight_drift_budget_back_and_a_rerun_resumes(tuned, trained_checkpoint):
    from vlaedge.tune import tune

    first, _, out, _ = tuned
    static = next(r for r in first.rows if r["name"] == "static-pc")
    # drift on this policy is far from additive over modules (each group quantized alone moves the actions
    # by 65-100% of what quantizing all does), so a budget just under the full variant's is what the
    # greedy fallback can meet before every group is FP32 (where it holds trivially)
    tight = static["search_drift"]["mean_pct"] * 0.9
    recipe = load_recipe(ROOT / "recipes/cpu-int8.yaml", [*FAST, f"budgets.max_drift_mean_pct={tight}"])
    lines = []
    result = tune(recipe, out, trained_checkpoint("chunk"), max_minutes=3,
                  space={"static-pc": SPACE["static-pc"]}, search_frames=48, max_fallback=20,
                  log=lines.append)
    assert any(line == "tune: static-pc: cached (drift mean " + f"{static['drift']['mean_pct']:.3f}%)"
               for line in lines), lines  # the earlier run's variant was reused
    assert result.sensitivity and result.sensitivity == sorted(result.sensitivity, key=lambda s: -s[1])
    fallback = [r for r in result.rows if "+fp32-" in r["name"]]
    assert fallback and fallback[-1]["fallback"] == [g for g, _ in result.sensitivity[: len(fallback)]]
    held = [r for r in fallback if not r["search_failures"]]
    assert held, "keeping the most sensitive groups in FP32 should bring the drift under the budget"
    ok = [r for r in result.rows if "error" not in r and not r["failures"]]
    if not held[0]["drift_failures"]:  # on the evaluation split too: then a candidate, and the pick is the
        assert held[0] in ok  # fastest of those within budgets (a later fallback may time faster)
    assert result.chosen["name"] == min(ok, key=lambda r: r["median_ms"])["name"]
    assert static["name"] in [r["name"] for r in result.rows] and next(
        r for r in result.rows if r["name"] == "static-pc")["failures"]  # over the tight budget now


def test_tune_command_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from cli_runner import run_cli

    cases = [(["tune", "--space", "bad", "--out", tmp_path / "a"], "is not a variant space"),
             (["tune", "--recipe", "orin-int8", "--set", "quantize=null", "--out", tmp_path / "b"],
              "no quantize section"),
             (["tune", "--max-minutes", "0", "--out", tmp_path / "c"], "positive time box")]
    for args, needle in cases:
        code, text = run_cli(args, capsys, monkeypatch)
        assert code == 2 and needle in text and "Traceback" not in text, (args, text)


def test_with_a_pruning_recipe_speedups_are_against_the_unpruned_fp32(trained_checkpoint, tmp_path):
    from vlaedge.tune import tune

    recipe = load_recipe(ROOT / "recipes/cpu-pruned-int8.yaml",
                         [*FAST, "prune.num_frames=32", "prune.recover.steps=2",
                          "prune.max_drift_mean_pct=null"])
    result = tune(recipe, tmp_path / "run", trained_checkpoint("chunk"), max_minutes=3,
                  space={"dynamic-pt": SPACE["dynamic-pt"]}, search_frames=48, log=lambda _: None)
    fp32, variant = result.rows[0], next(r for r in result.rows if r["name"] == "dynamic-pt")
    assert fp32["model"].endswith("variants/fp32.onnx") and fp32["drift"]["mean_pct"] < 1e-3
    assert variant["parameter_ratio"] < 0.8  # the pruned, quantized policy against the unpruned FP32
    assert variant["speedup"] == pytest.approx(fp32["median_ms"] / variant["median_ms"])
    assert any("against the unpruned FP32 policy" in n for n in result.notes)
