"""report.html: a self-contained page with inline SVG plots drawn by hand (no plotting library).

Plots: per-dimension drift bars (mean and p99, with the budget lines), a latency histogram with the p99
budget line, and reference vs candidate action traces on a few evaluation episodes; the FP32 comparison
(latency bars, ratios, load warnings) comes from `report_speed`.
"""

from __future__ import annotations

import html

import numpy as np

from vlaedge.check.report_markdown import render_markdown, title
from vlaedge.check.report_speed import baseline_html

W, H, PAD = 560, 220, 40  # plot size and margin, px
REF, CAND, BUDGET, BAR2 = "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"


def render_html(report: dict) -> str:
    """The whole report.html page for a report dict."""
    gate = report.get("gate") or {}
    budgets = {c["name"]: c["allowed"] for c in gate.get("checks", [])}
    parts = [f"<h1>{_esc(title(report))}</h1>"]
    if gate:
        parts.append(_gate_table(gate))
    if report.get("drift"):
        parts += [
            "<h2>Open-loop drift per dimension (% of action range)</h2>",
            drift_bars(report["drift"], budgets),
        ]
        parts += ["<h2>Error along the action chunk</h2>", _step_plot(report["drift"]["step_mean_pct"])]
    if report.get("profile"):
        lat = report["profile"]["models"][0]["latency"]
        parts += [
            f"<h2>Latency histogram ({lat['runs']} runs)</h2>",
            latency_histogram(lat["samples_ms"], budgets.get("max_latency_p99_ms"), lat["p99_ms"]),
        ]
    parts.append(baseline_html(report))  # vlaedge.check.report_speed: the FP32 comparison
    for trace in report.get("traces") or []:
        parts += [
            f"<h2>Action trace: evaluation episode {trace['episode']} "
            f"<small>({_esc(trace['instruction'])})</small></h2>",
            action_traces(trace, report["policy"]["action_names"]),
        ]
    body = "\n".join(parts)
    md = _esc(render_markdown(report))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlaedge report</title><style>"
        "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        ".pass{background:#e6f4ea}.fail{background:#fce8e6}.inconclusive{background:#fef7e0}"
        "svg{background:#fafafa;border:1px solid #eee;margin:4px}text{font-size:11px}"
        f"</style></head><body>{body}<details><summary>report.md</summary><pre>{md}</pre></details>"
        "</body></html>\n"
    )


def _esc(text) -> str:
    return html.escape(str(text))


def _gate_table(gate: dict) -> str:
    rows = "".join(
        f"<tr class='{c['status']}'><td>{_esc(c['name'])}</td><td>{_fmt(c['measured'])}</td>"
        f"<td>{c['op']} {_fmt(c['allowed'])} {_esc(c['unit'])}</td><td>{c['status']}</td>"
        f"<td>{_esc(c['detail'])}</td></tr>"
        for c in gate["checks"]
    )
    return (
        "<table><tr><th>budget</th><th>measured</th><th>allowed</th><th>status</th><th>detail</th></tr>"
        f"{rows}</table>"
    )


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _svg(inner: str, width: int = W, height: int = H) -> str:
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{inner}</svg>"


def _axes(ymax: float, ylabel: str, width: int = W, height: int = H) -> str:
    """Left and bottom axes with three y ticks from 0 to ymax."""
    out = [
        f"<line x1='{PAD}' y1='{height - PAD}' x2='{width - 10}' y2='{height - PAD}' stroke='#555'/>",
        f"<line x1='{PAD}' y1='10' x2='{PAD}' y2='{height - PAD}' stroke='#555'/>",
        f"<text x='4' y='12'>{_esc(ylabel)}</text>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = height - PAD - frac * (height - PAD - 10)
        out.append(f"<text x='{PAD - 4}' y='{y + 4:.1f}' text-anchor='end'>{ymax * frac:.3g}</text>")
    return "".join(out)


def drift_bars(drift: dict, budgets: dict) -> str:
    """Mean and p99 bars per action dimension, with mean/p99 budget lines where set."""
    dims = drift["per_dim"]
    limits = [budgets.get("max_drift_mean_pct"), budgets.get("max_drift_p99_pct")]
    limits += [budgets.get(f"max_drift_per_dim_pct[{d['name']}]") for d in dims]
    ymax = max([d["p99_pct"] for d in dims] + [v for v in limits if v] + [1e-6]) * 1.15
    scale = (H - PAD - 10) / ymax
    slot = (W - PAD - 20) / max(len(dims), 1)
    out = [_axes(ymax, "% of range")]
    for i, d in enumerate(dims):
        x0 = PAD + 10 + i * slot
        for k, (key, colour) in enumerate((("mean_pct", REF), ("p99_pct", BAR2))):
            h = d[key] * scale
            out.append(
                f"<rect x='{x0 + k * slot * 0.4:.1f}' y='{H - PAD - h:.1f}' width='{slot * 0.35:.1f}' "
                f"height='{h:.1f}' fill='{colour}'><title>{_esc(d['name'])} {key} {d[key]:.4f}</title></rect>"
            )
        out.append(
            f"<text x='{x0 + slot * 0.4:.1f}' y='{H - PAD + 14}' text-anchor='middle'>"
            f"{_esc(d['name'])}</text>"
        )
        per_dim = budgets.get(f"max_drift_per_dim_pct[{d['name']}]")
        if per_dim:
            y = H - PAD - per_dim * scale
            out.append(
                f"<line x1='{x0:.1f}' x2='{x0 + slot * 0.75:.1f}' y1='{y:.1f}' y2='{y:.1f}' "
                f"stroke='{BUDGET}' stroke-width='2'/>"
            )
    for value, label, dash in ((limits[0], "mean budget", "6,3"), (limits[1], "p99 budget", "2,2")):
        if value:
            y = H - PAD - value * scale
            out.append(
                f"<line x1='{PAD}' x2='{W - 10}' y1='{y:.1f}' y2='{y:.1f}' stroke='{BUDGET}' "
                f"stroke-dasharray='{dash}'/><text x='{W - 12}' y='{y - 3:.1f}' text-anchor='end' "
                f"fill='{BUDGET}'>{label} {value:g}%</text>"
            )
    out.append(_legend([("mean", REF), ("p99", BAR2)]))
    return _svg("".join(out))


def _legend(items: list[tuple[str, str]]) -> str:
    out = []
    for i, (label, colour) in enumerate(items):
        x = PAD + 20 + i * 90
        out.append(
            f"<rect x='{x}' y='{H - 14}' width='10' height='10' fill='{colour}'/>"
            f"<text x='{x + 14}' y='{H - 5}'>{_esc(label)}</text>"
        )
    return "".join(out)


def _step_plot(values: list[float]) -> str:
    return _svg(
        _axes(max(values + [1e-6]) * 1.15, "% of range")
        + _polyline(values, max(values + [1e-6]) * 1.15, REF, markers=True)
        + f"<text x='{W // 2}' y='{H - 8}' text-anchor='middle'>chunk step</text>"
    )


def _polyline(
    values,
    ymax: float,
    colour: str,
    ymin: float = 0.0,
    markers: bool = False,
    width: int = W,
    height: int = H,
) -> str:
    n = len(values)
    xs = [PAD + (width - PAD - 20) * (i / max(n - 1, 1)) for i in range(n)]
    ys = [height - PAD - (v - ymin) / (ymax - ymin) * (height - PAD - 10) for v in values]
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    out = f"<polyline points='{pts}' fill='none' stroke='{colour}' stroke-width='1.5'/>"
    if markers:
        out += "".join(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour}'/>" for x, y in zip(xs, ys, strict=True)
        )
    return out


def latency_histogram(samples_ms: list[float], budget_ms: float | None, p99_ms: float, bins: int = 30) -> str:
    """Histogram of the timed runs with the p99 (dashed) and the budget (green) as vertical lines."""
    s = np.asarray(samples_ms, np.float64)
    hi = max(s.max(), budget_ms or 0) * 1.05
    lo = min(s.min(), budget_ms or s.min()) * 0.95
    counts, edges = np.histogram(s, bins=bins, range=(lo, hi))
    ymax = counts.max() * 1.1 or 1
    xscale = (W - PAD - 20) / (hi - lo)
    out = [_axes(float(ymax), "runs")]
    for c, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        h = c / ymax * (H - PAD - 10)
        out.append(
            f"<rect x='{PAD + (left - lo) * xscale:.1f}' y='{H - PAD - h:.1f}' "
            f"width='{max((right - left) * xscale - 1, 1):.1f}' height='{h:.1f}' fill='{REF}'>"
            f"<title>{left:.2f}-{right:.2f} ms: {c}</title></rect>"
        )
    for value, label, colour, dash in ((p99_ms, "p99", CAND, "4,3"), (budget_ms, "budget", BUDGET, "")):
        if value:
            x = PAD + (value - lo) * xscale
            out.append(
                f"<line x1='{x:.1f}' x2='{x:.1f}' y1='10' y2='{H - PAD}' stroke='{colour}' stroke-width='2' "
                f"stroke-dasharray='{dash}'/><text x='{x + 3:.1f}' y='22' fill='{colour}'>"
                f"{label} {value:.2f} ms</text>"
            )
    for frac in (0.0, 0.5, 1.0):
        out.append(
            f"<text x='{PAD + frac * (W - PAD - 20):.1f}' y='{H - PAD + 14}' text-anchor='middle'>"
            f"{lo + frac * (hi - lo):.2f}</text>"
        )
    out.append(f"<text x='{W // 2}' y='{H - 8}' text-anchor='middle'>latency, ms</text>")
    return _svg("".join(out))


def action_traces(trace: dict, names: list[str]) -> str:
    """One small plot per action dimension: reference (blue) and candidate (red) first actions per frame."""
    ref, cand = np.asarray(trace["reference"], np.float64), np.asarray(trace["candidate"], np.float64)
    if ref.size == 0:
        return ""
    w, h = 320, 150
    plots = []
    for a, name in enumerate(names):
        lo = float(min(ref[:, a].min(), np.nanmin(cand[:, a])))
        hi = float(max(ref[:, a].max(), np.nanmax(cand[:, a])))
        if hi - lo < 1e-6:
            lo, hi = lo - 1, hi + 1
        inner = (
            f"<text x='{PAD}' y='12'>{_esc(name)}</text>"
            f"<line x1='{PAD}' y1='{h - PAD}' x2='{w - 10}' y2='{h - PAD}' stroke='#555'/>"
            f"<text x='{PAD - 4}' y='{h - PAD}' text-anchor='end'>{lo:.2g}</text>"
            f"<text x='{PAD - 4}' y='20' text-anchor='end'>{hi:.2g}</text>"
            + _polyline(ref[:, a], hi, REF, lo, width=w, height=h)
            + _polyline(np.nan_to_num(cand[:, a], nan=lo), hi, CAND, lo, width=w, height=h)
            + f"<text x='{w // 2}' y='{h - 8}' text-anchor='middle'>"
            "frame (blue reference, red candidate)</text>"
        )
        plots.append(_svg(inner, w, h))
    return "".join(plots)
