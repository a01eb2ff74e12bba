"""The plots of report.html, drawn with matplotlib and returned as inline SVG (the page stays one file).

Each function takes plain report.json values and returns an `<svg>` element as text. Figures use the Agg
renderer's object API (no pyplot, no global backend switch), constrained layout (matplotlib's solver that
keeps tick labels, axis titles and legends from overlapping) and text drawn as paths, so the page looks the
same without any font installed and prints sharply. Colours: reference blue, candidate red, budgets green.
"""

from __future__ import annotations

import io
import itertools
import re

import numpy as np

REF, CAND, P99, BUDGET = "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"
WIDTH_IN = 7.0  # figure width, inches (the page is 980 px wide; the SVG scales to fit)
_FIGURES = itertools.count(1)  # numbers each figure's clip-path ids, unique on the page
STYLE = {"svg.fonttype": "path", "svg.hashsalt": "vlaedge", "font.size": 9, "axes.titlesize": 10,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}


def drift_plot(names: list[str], mean_pct: list[float], p99_pct: list[float],
               budgets: dict[str, float | None]) -> str:
    """Open-loop drift per action dimension: mean and p99 bars, with the budgets as lines.

    Args:
        names: action dimension names, length A.
        mean_pct: mean absolute error per dimension, % of the dimension's range, length A.
        p99_pct: 99th percentile of the same, length A.
        budgets: "mean" and "p99" (whole-policy budgets, % of range, drawn across the plot) and each
            dimension name (per-dimension budget, drawn over its bars); None or missing: not drawn.

    Returns:
        The `<svg>` element.
    """
    fig, ax = _figure(2.8)
    x = np.arange(len(names))
    ax.bar(x - 0.2, mean_pct, 0.4, color=REF, label="mean")
    ax.bar(x + 0.2, p99_pct, 0.4, color=P99, label="p99")
    for key, dash in (("mean", "--"), ("p99", ":")):
        if budgets.get(key):
            ax.axhline(budgets[key], color=BUDGET, linestyle=dash, linewidth=1.5,
                       label=f"{key} budget {budgets[key]:g}%")
    per_dim = [(i, budgets[n]) for i, n in enumerate(names) if budgets.get(n)]
    for k, (i, value) in enumerate(per_dim):
        ax.hlines(value, i - 0.45, i + 0.45, color=BUDGET, linewidth=2.5,
                  label="per-dimension budget" if k == 0 else None)
    ax.set_xticks(x, names, rotation=30 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylabel("error, % of action range")
    ax.set_ylim(0, _top(list(mean_pct) + list(p99_pct) + [v for v in budgets.values() if v]))
    _legend(ax)
    return _svg(fig)


def chunk_error_plot(step_mean_pct: list[float]) -> str:
    """Mean error at each step of the predicted action chunk (later steps usually drift more).

    Args:
        step_mean_pct: mean error at chunk step 0..T-1, % of action range, length T.
    """
    fig, ax = _figure(2.4)
    steps = np.arange(len(step_mean_pct))
    ax.plot(steps, step_mean_pct, marker="o", color=REF)
    ax.set_xlabel("step in the action chunk")
    ax.set_ylabel("mean error, % of range")
    ax.set_ylim(0, _top(step_mean_pct))
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _svg(fig)


def latency_plot(candidate_ms: list[float], reference_ms: list[float] | None = None,
                 budget_p99_ms: float | None = None) -> str:
    """Latency distributions of the candidate and (when timed) the FP32 reference on one axis, with
    each one's p99 as a dashed line and the p99 budget as a solid green line.

    Args:
        candidate_ms: every timed run of the candidate, ms.
        reference_ms: every timed run of the FP32 reference ONNX, ms, or None.
        budget_p99_ms: the `max_latency_p99_ms` budget, or None.
    """
    fig, ax = _figure(2.6)
    series = [("candidate", np.asarray(candidate_ms, np.float64), CAND)]
    if reference_ms:
        series.insert(0, ("FP32 reference", np.asarray(reference_ms, np.float64), REF))
    lo = min(float(s.min()) for _, s, _ in series)
    hi = max([float(s.max()) for _, s, _ in series] + [budget_p99_ms or 0.0])
    span = max(hi - lo, 1e-3 * max(hi, 1e-3))
    edges = np.linspace(lo - 0.02 * span, hi + 0.02 * span, 41)
    for label, samples, colour in series:
        p99 = float(np.percentile(samples, 99))
        ax.hist(samples, bins=edges, color=colour, alpha=0.45, label=f"{label} ({len(samples)} runs)")
        ax.axvline(p99, color=colour, linestyle="--", linewidth=1.2, label=f"{label} p99 {p99:.2f} ms")
    if budget_p99_ms:
        ax.axvline(budget_p99_ms, color=BUDGET, linewidth=2, label=f"p99 budget {budget_p99_ms:g} ms")
    ax.set_xlabel("latency per inference, ms (batch 1)")
    ax.set_ylabel("runs")
    ax.yaxis.get_major_locator().set_params(integer=True)
    _legend(ax)
    return _svg(fig)


def action_trace_plot(names: list[str], reference: list[list[float]], candidate: list[list[float]]) -> str:
    """Reference and candidate along one evaluation episode: the first action of each predicted chunk,
    one panel per action dimension.

    Args:
        names: action dimension names, length A.
        reference: [F][A] reference actions per frame, environment units.
        candidate: [F][A] candidate actions on the same frames (NaN where non-finite).
    """
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    cols = min(len(names), 4)
    rows = -(-len(names) // cols)
    fig, axes = _figure(1.9 * rows, rows, cols)
    flat = np.atleast_1d(axes).ravel()
    for a, ax in enumerate(flat):
        if a >= len(names):
            ax.set_visible(False)
            continue
        ax.plot(ref[:, a], color=REF, linewidth=1.4, label="reference")
        ax.plot(cand[:, a], color=CAND, linewidth=1.1, linestyle="--", label="candidate")
        ax.set_title(names[a])
        if a // cols == rows - 1 or a + cols >= len(names):
            ax.set_xlabel("frame")
    fig.legend(*flat[0].get_legend_handles_labels(), loc="outside upper right", ncols=2, frameon=False)
    return _svg(fig)


def success_plot(reference: dict, candidate: dict) -> str:
    """Closed-loop success rates of reference and candidate with their Wilson 95% intervals.

    Args:
        reference: the report's closed_loop.reference ({successes, episodes, rate, interval}).
        candidate: the same for the candidate.
    """
    fig, ax = _figure(1.6)
    for y, (r, colour) in enumerate(((candidate, CAND), (reference, REF))):
        lo, hi = r["interval"]
        ax.barh(y, 100 * r["rate"], color=colour, alpha=0.8, height=0.55)
        # clipped at 0: a 100/100 Wilson upper bound can round to just below the rate (0.9999999999999999)
        below, above = max(0.0, r["rate"] - lo), max(0.0, hi - r["rate"])
        ax.errorbar(100 * r["rate"], y, xerr=[[100 * below], [100 * above]], color="#333", capsize=4,
                    linewidth=1)
        ax.annotate(f"{r['successes']}/{r['episodes']}", (100 * hi, y), xytext=(6, 0),
                    textcoords="offset points", va="center")
    ax.set_yticks([0, 1], ["candidate", "reference"])
    ax.set_xlim(0, 112)
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    ax.set_xlabel("episodes succeeded, % (bars: 95% Wilson interval)")
    return _svg(fig)


def pareto_plot(variants: list[dict], drift_key: str, drift_budget: float | None) -> str:
    """Drift against median latency of every measured variant of `vlaedge tune`: the Pareto front joined
    in red, dominated variants grey, the FP32 reference blue, point area growing with the file size, the
    drift budget as a green line; each point labelled with its name. "" when no variant has both figures.

    Args:
        variants: dicts with name, median_ms, file_bytes, pareto (bool), fp32 (bool) and `drift_key`.
        drift_key: the drift figure plotted, e.g. "drift_mean_pct" (% of range).
        drift_budget: the budget on that figure, or None.
    """
    points = [v for v in variants if v.get("median_ms") is not None and v.get(drift_key) is not None]
    if not points:
        return ""
    fig, ax = _figure(3.6)
    biggest = max(v["file_bytes"] for v in points) or 1
    front = sorted((v for v in points if v.get("pareto")), key=lambda v: v["median_ms"])
    if len(front) > 1:
        ax.plot([v["median_ms"] for v in front], [v[drift_key] for v in front], color=CAND, linewidth=1,
                label="Pareto front")
    for v in points:
        colour = REF if v.get("fp32") else CAND if v.get("pareto") else "#999999"
        ax.scatter(v["median_ms"], v[drift_key], s=30 + 170 * v["file_bytes"] / biggest, color=colour,
                   alpha=0.7, edgecolors="none")
        ax.annotate(v["name"], (v["median_ms"], v[drift_key]), xytext=(5, 4), textcoords="offset points",
                    fontsize=8)
    if drift_budget:
        ax.axhline(drift_budget, color=BUDGET, linestyle="--", label=f"drift budget {drift_budget:g}")
    ax.set_xlabel("median latency, ms")
    ax.set_ylabel(drift_key.replace("_", " "))
    ax.set_ylim(0, _top([v[drift_key] for v in points] + [drift_budget or 0]))
    if ax.get_legend_handles_labels()[1]:
        _legend(ax)
    return _svg(fig)


def _figure(height_in: float, rows: int = 1, cols: int = 1):
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=rows * cols == 1)
    return fig, axes


def _top(values: list[float]) -> float:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return max(finite + [1e-6]) * 1.18


def _legend(ax) -> None:
    """The legend above the axes, in columns, placed by the layout solver: it never hides a bar or a line
    and never runs off the figure."""
    handles, labels = ax.get_legend_handles_labels()
    ax.figure.legend(handles, labels, loc="outside upper left", ncols=min(len(labels), 3), frameon=False)


def _svg(fig) -> str:
    """The figure as an `<svg>` element (no XML prolog), scaled by CSS, ids unique on the page."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    buf = io.StringIO()
    with rc_context(STYLE):
        FigureCanvasSVG(fig).print_svg(buf)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'<metadata>.*?</metadata>\s*', "", text, flags=re.S)
    n = next(_FIGURES)  # clip-path ids repeat between figures of equal size: make each figure's own
    return re.sub(r'\b(id="|url\(#|href="#)(p[0-9a-f]{10})', rf"\g<1>f{n}\g<2>", text)
