"""Choosing among measured variants: the Pareto front (drift vs latency vs size), the pick (the fastest
variant within every budget), the reproducing recipe, and tune.md / tune.html."""

from __future__ import annotations

from pathlib import Path

import yaml

from vlaedge.check.plots import pareto_plot
from vlaedge.recipe import Budgets, Recipe

OBJECTIVES = ("drift_mean_pct", "median_ms", "file_bytes")  # all minimised


def pareto_front(rows: list[dict], objectives: tuple[str, ...] = OBJECTIVES) -> list[str]:
    """Names of the rows no other row dominates (at most as bad on every objective, better on one).

    Rows missing an objective (not built, not timed) are left out.
    """
    points = [r for r in rows if all(r.get(k) is not None for k in objectives)]
    front = []
    for r in points:
        dominated = any(all(o[k] <= r[k] for k in objectives) and any(o[k] < r[k] for k in objectives)
                        for o in points if o is not r)
        if not dominated:
            front.append(r["name"])
    return front


def budget_failures(row: dict, budgets: Budgets | None, target: str | None) -> list[str]:
    """Every budget a measured row violates: its drift failures plus the latency, size and FP32-relative
    budgets judged on the tuner's interleaved run (closed-loop budgets are left to `vlaedge compress`)."""
    fails = list(row.get("drift_failures", []))
    if budgets is None:
        return fails
    own = budgets.targets.get(target) if target else None

    def limit(key: str):
        value = getattr(own, key, None) if own is not None else None
        return value if value is not None else getattr(budgets, key)

    checks = [
        ("max_latency_p99_ms", row.get("p99_ms"), "<="),
        ("min_rate_hz", 1000.0 / row["median_ms"] if row.get("median_ms") else None, ">="),
        ("max_file_size_mb", row["file_bytes"] / 1e6, "<="),
        ("min_speedup", row.get("speedup"), ">="),
        ("max_size_ratio", row.get("size_ratio"), "<="),
    ]
    for key, measured, op in checks:
        allowed = limit(key) if key in ("max_latency_p99_ms", "min_rate_hz") else getattr(budgets, key)
        if allowed is None or measured is None:
            continue
        if (measured > allowed) if op == "<=" else (measured < allowed):
            fails.append(f"{key} {measured:.4g} (allowed {op} {allowed:.4g})")
    return fails


def pick(rows: list[dict]) -> tuple[dict | None, str]:
    """The fastest row within every budget (FP32 included), and one line saying why.

    Returns:
        (the chosen row, or None when nothing is within budget; the reason line).
    """
    ok = [r for r in rows if r.get("median_ms") is not None and not r.get("failures")]
    fp32 = next((r for r in rows if r.get("fp32")), None)
    quantized_ok = [r for r in ok if not r.get("fp32")]
    if not ok:
        timed = [r for r in rows if r.get("median_ms") is not None]
        common = set.intersection(*[{f.split()[0] for f in r["failures"]} for r in timed]) if timed else set()
        shared = f"; every one fails {', '.join(sorted(common))}" if common else ""
        return None, f"no variant, FP32 included, is within every budget{shared} (see the table)"
    best = min(ok, key=lambda r: r["median_ms"])
    if best.get("fp32"):
        faster = [r["name"] for r in rows if not r.get("fp32") and r.get("speedup") and r["speedup"] > 1]
        if not quantized_ok:
            why = "no quantized variant is within the budgets"
        else:
            fastest = min(quantized_ok, key=lambda r: r["median_ms"])
            why = (f"the fastest quantized variant within the budgets, {fastest['name']}, runs at "
                   f"{fastest['speedup']:.2f}x FP32 median")
        over = f"; faster but over budget: {', '.join(faster)}" if faster else ""
        return best, f"none is faster than FP32 within the budgets: {why}{over}"
    detail = f"{best['speedup']:.2f}x FP32 median" if fp32 else "fastest"
    return best, f"{best['name']}: the fastest within every budget ({detail})"


def chosen_recipe(recipe: Recipe, row: dict, path: Path, comment: list[str]) -> Path:
    """Writes a plain recipe reproducing the chosen row with `vlaedge compress` (FP32: no quantize
    section). Only for a row within every budget: with none, `vlaedge tune` writes no recipe."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    if row.get("fp32"):
        data.pop("quantize", None)
    else:
        data["quantize"] = {**data["quantize"], **row["settings"]}
    data["description"] = f"tuned by vlaedge tune: {row['name']}"
    header = "".join(f"# {line}\n" for line in comment)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def _fmt(value, spec: str = ".3f") -> str:
    return "" if value is None else format(value, spec)


def table_md(rows: list[dict], chosen: str | None) -> list[str]:
    """The variants table (Markdown), fastest first; front members and the pick marked."""
    lines = ["| variant | median ms | p99 ms | speedup | drift mean % | drift p99 % | search drift % | "
             "file MB | size | params | Pareto | within budgets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.get("median_ms") is None, r.get("median_ms") or 0)):
        if r.get("error"):
            lines.append(f"| {r['name']} | | | | | | | | | | | not built: {r['error']} |")
            continue
        name = f"**{r['name']}** (pick)" if r["name"] == chosen else r["name"]
        status = "yes" if not r.get("failures") else "no: " + "; ".join(r["failures"])
        lines.append(
            f"| {name} | {_fmt(r.get('median_ms'))} | {_fmt(r.get('p99_ms'))} | "
            f"{_fmt(r.get('speedup'), '.2f')}x "
            f"| {_fmt(r['drift']['mean_pct'])} | {_fmt(r['drift']['p99_pct'])} | "
            f"{_fmt(r['search_drift']['mean_pct'])} | {r['file_bytes'] / 1e6:.2f} | "
            f"{_fmt(r.get('size_ratio'), '.2f')}x | {_fmt(r.get('parameter_ratio'), '.2f')}x | "
            f"{'yes' if r.get('pareto') else ''} | {status} |")
    return lines


def render_markdown(result: dict) -> str:
    """tune.md: the verdict, the variants table, the sensitivity ranking and the run's settings."""
    lines = [f"# vlaedge tune: {result['verdict']}", "",
             f"- policy `{result['policy']}`, target `{result['target']}`, recipe `{result['recipe']}`",
             f"- latency: {result['latency_source']}; drift on {result['eval_frames']} evaluation frames "
             f"(search on {result['search_frames']} calibration frames)",
             f"- {len(result['rows'])} variants in {result['seconds']:.0f} s"
             + (f"; {result['time_box']}" if result.get("time_box") else ""), ""]
    lines += table_md(result["rows"], result.get("chosen"))
    if result.get("sensitivity"):
        lines += ["", "## Action sensitivity (one module group quantized alone, mean drift % on the search "
                  "frames)", "", "| module group | drift mean % |", "|---|---|"]
        lines += [f"| `{g}` | {d:.4f} |" for g, d in result["sensitivity"]]
    if result.get("load"):
        lines += ["", result["load_line"].replace("machine load:", "Machine load during the latency run:", 1)]
    if result.get("reproduce"):
        lines += ["", f"Reproduce the pick: `{result['reproduce']}`", ""]
    else:
        lines += ["", "No recipe.yaml was written: nothing, FP32 included, is within every budget.", ""]
    return "\n".join(lines)


def render_html(result: dict, drift_budget: float | None) -> str:
    """tune.html: the Pareto plot (drift vs latency, point area by size) above the Markdown report."""
    import html

    svg = pareto_plot(result["rows"], "drift_mean_pct", drift_budget)
    md = html.escape(render_markdown(result))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vlaedge tune</title>"
            "<style>svg{max-width:100%;height:auto}</style></head>"
            f"<body style='font-family:sans-serif;max-width:1100px;margin:2em auto'>"
            f"<h1>{html.escape(result['verdict'])}</h1><h2>Pareto front: drift vs median latency</h2>{svg}"
            f"<p>red: on the front (no variant is better on drift, latency and size at once); grey: "
            "dominated; blue: FP32; area: file size; green: the drift budget.</p>"
            f"<pre>{md}</pre></body></html>\n")
