"""report.html sections for speed: the candidate against the FP32 reference ONNX (latency bars, ratios,
machine load) and, for `vlaedge tune` reports, the Pareto front plot (drift vs latency, point size by file
size). Inline SVG, no plotting library, like `report_html`."""

from __future__ import annotations

import html

from vlaedge.check.report_markdown import speed_note

W, H, PAD = 560, 240, 48  # plot size and margin, px
FP32, CAND, FRONT, OTHER, BUDGET = "#1f77b4", "#d62728", "#d62728", "#999999", "#2ca02c"


def baseline_html(report: dict) -> str:
    """The "Against FP32" section: the speed line, median/p99 bars of FP32 and candidate, load warnings."""
    base = report.get("baseline")
    if not base:
        return ""
    parts = ["<h2>Against the FP32 reference ONNX</h2>", f"<p><b>{_esc(speed_note(base))}</b></p>"]
    prof = report.get("profile") or {}
    if base.get("median_speedup") is not None and len(prof.get("models", [])) > 1:
        cand, ref = prof["models"][0]["latency"], prof["models"][1]["latency"]
        parts.append(_latency_bars(ref, cand))
    for warning in (prof.get("load") or {}).get("warnings", []):
        parts.append(f"<p class='fail'>warning: {_esc(warning)}</p>")
    return "\n".join(parts)


def _latency_bars(ref: dict, cand: dict) -> str:
    rows = [("FP32 median", ref["median_ms"], FP32), ("candidate median", cand["median_ms"], CAND),
            ("FP32 p99", ref["p99_ms"], FP32), ("candidate p99", cand["p99_ms"], CAND)]
    top = max(v for _, v, _ in rows) * 1.1
    height, bar = 24 * len(rows) + 20, 16
    out = []
    for i, (label, value, colour) in enumerate(rows):
        y = 10 + 24 * i
        width = (W - 200) * value / top
        out.append(f"<text x='118' y='{y + 12}' text-anchor='end'>{_esc(label)}</text>"
                   f"<rect x='124' y='{y}' width='{width:.1f}' height='{bar}' fill='{colour}'/>"
                   f"<text x='{128 + width:.1f}' y='{y + 12}'>{value:.3f} ms</text>")
    return _svg("".join(out), W, height)


def pareto_svg(variants: list[dict], drift_key: str, drift_budget: float | None) -> str:
    """Drift (y) against median latency (x) of every measured variant; the Pareto front joined in red,
    dominated variants grey, the FP32 reference blue, point area growing with the file size, and the drift
    budget as a green line.

    Args:
        variants: dicts with name, median_ms, file_bytes, pareto (bool), `drift_key`, and fp32 (bool).
        drift_key: the drift figure plotted, e.g. "drift_mean_pct".
        drift_budget: the budget on that figure, or None.
    """
    points = [v for v in variants if v.get("median_ms") is not None and v.get(drift_key) is not None]
    if not points:
        return ""
    xs = [v["median_ms"] for v in points]
    ys = [v[drift_key] for v in points] + ([drift_budget] if drift_budget else [])
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05
    y1 = max(ys + [1e-6]) * 1.15
    biggest = max(v["file_bytes"] for v in points) or 1

    def px(v: dict) -> tuple[float, float]:
        x = PAD + (W - PAD - 20) * (v["median_ms"] - x0) / max(x1 - x0, 1e-9)
        return x, H - PAD - (H - PAD - 10) * v[drift_key] / y1

    out = [f"<line x1='{PAD}' y1='{H - PAD}' x2='{W - 10}' y2='{H - PAD}' stroke='#555'/>",
           f"<line x1='{PAD}' y1='10' x2='{PAD}' y2='{H - PAD}' stroke='#555'/>",
           f"<text x='4' y='12'>{_esc(drift_key)}</text>",
           f"<text x='{W // 2}' y='{H - 8}' text-anchor='middle'>median latency (ms)</text>",
           f"<text x='{PAD}' y='{H - PAD + 14}'>{x0:.3g}</text>",
           f"<text x='{W - 10}' y='{H - PAD + 14}' text-anchor='end'>{x1:.3g}</text>",
           f"<text x='{PAD - 4}' y='14' text-anchor='end'>{y1:.3g}</text>"]
    if drift_budget:
        y = H - PAD - (H - PAD - 10) * drift_budget / y1
        out.append(f"<line x1='{PAD}' y1='{y:.1f}' x2='{W - 10}' y2='{y:.1f}' stroke='{BUDGET}' "
                   "stroke-dasharray='4'/>")
    front = sorted((v for v in points if v.get("pareto")), key=lambda v: v["median_ms"])
    if len(front) > 1:
        pts = " ".join(f"{px(v)[0]:.1f},{px(v)[1]:.1f}" for v in front)
        out.append(f"<polyline points='{pts}' fill='none' stroke='{FRONT}' stroke-width='1'/>")
    for v in points:
        x, y = px(v)
        colour = FP32 if v.get("fp32") else FRONT if v.get("pareto") else OTHER
        r = 3 + 5 * (v["file_bytes"] / biggest) ** 0.5
        out.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r:.1f}' fill='{colour}' fill-opacity='0.7'>"
                   f"<title>{_esc(v['name'])}</title></circle>"
                   f"<text x='{x + r + 2:.1f}' y='{y - 2:.1f}'>{_esc(v['name'])}</text>")
    return _svg("".join(out))


def _svg(inner: str, width: int = W, height: int = H) -> str:
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{inner}</svg>"


def _esc(text) -> str:
    return html.escape(str(text))
