"""report.html: one self-contained page (inline SVG plots, inline PNG frames, no script, no web font).

Order: the verdict in words on a coloured band (PASS / FAIL / NO BUDGETS), a one-line summary of the key
figures, the budgets table, then one section each for open-loop drift (per-dimension bars, error along
the chunk), the closed loop (success rates with intervals, the rollout filmstrip), latency (candidate and
FP32 distributions on one axis), the FP32 comparison, action traces, notes and the Markdown report. A
section is absent when the report has no such measurement. Plots come from `vlaedge.check.plots`
(matplotlib); every section is a `<section data-section=...>` and every plot a `<figure data-plot=...>`,
which the browser test checks for visibility.
"""

from __future__ import annotations

import html

from vlaedge.check import plots
from vlaedge.check.profile import timed_runs
from vlaedge.check.report_markdown import (
    STATUS_LABEL,
    baseline_rows,
    format_number,
    render_markdown,
    speed_note,
    summary_line,
    title,
    verdict,
)

FILM_COLUMNS = 12  # frames per filmstrip row
CSS = """
body{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif;max-width:980px;margin:1.5em auto;padding:0 12px;
 color:#202124;line-height:1.4}
h1{font-size:1.5em;margin:0}h2{font-size:1.2em;margin:1.4em 0 .5em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1em 0 .3em}
.verdict{padding:12px 16px;border-radius:6px;border-left:8px solid}
.verdict.pass{background:#e6f4ea;border-color:#1e8e3e}.verdict.fail{background:#fce8e6;border-color:#c5221f}
.verdict.none{background:#f1f3f4;border-color:#80868b}.verdict p{margin:.3em 0 0}
.word{font-weight:bold;padding:1px 8px;border-radius:4px;color:#fff}
.pass .word,.word.pass{background:#1e8e3e}.fail .word,.word.fail{background:#c5221f}
.none .word,.word.skipped{background:#80868b}.word.inconclusive,.word.not_measurable{background:#b06000}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;
 text-align:left;vertical-align:top}th{background:#f8f9fa}
tr.fail td{background:#fce8e6}tr.inconclusive td,tr.not_measurable td{background:#fef7e0}
figure{margin:.6em 0;break-inside:avoid}figure svg{width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#5f6368}
.warning{background:#fef7e0;border-left:4px solid #b06000;padding:4px 8px}
table.film td,table.film th{padding:2px;text-align:center;font-size:11px;border-color:#e0e0e0}
table.film th.who{text-align:right;padding-right:6px;white-space:nowrap}
table.film img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;display:block}
table.film .diverged{outline:3px solid #c5221f;outline-offset:-3px}
.film-block{break-inside:avoid;margin-bottom:1em}
pre{white-space:pre-wrap;font-size:12px;background:#f8f9fa;padding:8px}
@media print{body{max-width:none;margin:0}details{display:none}}
"""


def render_html(report: dict) -> str:
    """The whole report.html page for a report.json dict (any measurement may be missing).

    Args:
        report: a "vlaedge.report/1" dict (`vlaedge.check.report.build_report`, gate filled in or None).

    Returns:
        The page as text, UTF-8, self-contained (works offline, no script).
    """
    gate = report.get("gate") or {}
    budgets = {c["name"]: c["allowed"] for c in gate.get("checks", [])}
    parts = [_verdict(report)]
    parts.append(_section("budgets", "Budgets", _budget_table(gate) if gate else
                          "<p>No budgets were given, so nothing was judged: pass --budgets or a recipe with "
                          "a budgets section.</p>"))
    measured = [report.get(k) for k in ("drift", "closed_loop", "profile", "baseline")]
    if not any(measured) and not report.get("traces"):
        parts.append(_section("measurements", "Measurements", "<p>This report holds no measurements (no "
                              "drift, closed loop or latency): run 'vlaedge verify' to measure them.</p>"))
    if report.get("drift"):
        parts.append(_section("drift", "Open-loop drift", _drift(report["drift"], budgets)))
    if report.get("closed_loop"):
        parts.append(_section("closed-loop", "Closed loop", _closed_loop(report["closed_loop"])))
    if report.get("profile"):
        parts.append(_section("latency", "Latency", _latency(report["profile"], budgets)))
    if report.get("baseline"):
        parts.append(_section("baseline", "Against the FP32 reference ONNX", _baseline(report)))
    if report.get("traces"):
        parts.append(_section("traces", "Action traces", _traces(report)))
    if report.get("notes"):
        parts.append(_section("notes", "Notes", "".join(f"<p>{_esc(n)}</p>" for n in report["notes"])))
    body = "\n".join(parts)
    md = _esc(render_markdown(report))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_esc(title(report))}</title><style>{CSS}</style></head><body>\n{body}\n"
            f"<details><summary>report.md</summary><pre>{md}</pre></details></body></html>\n")


def _esc(text) -> str:
    return html.escape(str(text))


def _section(key: str, heading: str, inner: str) -> str:
    return f"<section data-section='{key}'><h2>{_esc(heading)}</h2>\n{inner}\n</section>"


def _figure(key: str, svg: str, caption: str) -> str:
    return f"<figure data-plot='{key}'>{svg}<figcaption>{_esc(caption)}</figcaption></figure>"


def _verdict(report: dict) -> str:
    gate = report.get("gate")
    kind = "none" if not gate else "pass" if gate["passed"] else "fail"
    word, text = verdict(report)
    policy, cand = report["policy"], report["candidate"]
    facts = (f"policy {policy.get('name')} (sha256 {(policy.get('sha256') or '?')[:12]}), candidate "
             f"{cand.get('model') or 'the reference itself'} on {cand.get('runtime')}, target "
             f"{report.get('target') or 'none'}")
    return (f"<header class='verdict {kind}' data-section='verdict'><h1><span class='word'>{word}</span> "
            f"{_esc(text)}</h1>"
            f"<p>{_esc(summary_line(report))}</p><p><small>{_esc(facts)}</small></p></header>")


def _budget_table(gate: dict) -> str:
    rows = "".join(
        f"<tr class='{c['status']}'><td><code>{_esc(c['name'])}</code></td><td>{format_number(c['measured'])}"
        f"</td><td>{_esc(c['op'])} {format_number(c['allowed'])} {_esc(c['unit'])}</td>"
        f"<td><span class='word {c['status']}'>{_esc(STATUS_LABEL[c['status']].upper())}</span></td>"
        f"<td>{_esc(c['detail'])}</td></tr>"
        for c in gate["checks"]
    )
    return ("<table><tr><th>budget</th><th>measured</th><th>allowed</th><th>status</th><th>detail</th></tr>"
            f"{rows}</table>")


def _drift(drift: dict, budgets: dict) -> str:
    dims = drift["per_dim"]
    lines = {"mean": budgets.get("max_drift_mean_pct"), "p99": budgets.get("max_drift_p99_pct")}
    lines |= {d["name"]: budgets.get(f"max_drift_per_dim_pct[{d['name']}]") for d in dims}
    names = [d["name"] for d in dims]
    svg = plots.drift_plot(names, [d["mean_pct"] for d in dims], [d["p99_pct"] for d in dims], lines)
    out = [f"<p>{drift['frames']} evaluation frames, reference and candidate on the same inputs and noise: "
           f"mean {drift['mean_pct']:.3f}%, p99 {drift['p99_pct']:.3f}%, max {drift['max_pct']:.3f}% of the "
           f"action range; chunk cosine similarity mean {drift['cosine_mean']:.4f}.</p>",
           _figure("drift", svg, "Absolute error per action dimension, % of that dimension's range "
                   "(budgets in green)."),
           _figure("chunk", plots.chunk_error_plot(drift["step_mean_pct"]),
                   "Mean error at each step of the predicted action chunk.")]
    if drift.get("nonfinite"):
        out.append(f"<p class='warning'>{drift['nonfinite']} non-finite candidate action values "
                   "(counted as 100% error).</p>")
    if drift.get("stages"):
        rows = "".join(f"<tr><td>{_esc(p['stage'])}</td><td>{_esc(p['output'])}</td><td>{p['calls']}</td>"
                       f"<td>{p['cosine_mean']:.5f}</td><td>{p['cosine_min']:.5f}</td>"
                       f"<td>{p['rel_l2']:.4g}</td></tr>"
                       for p in drift["stages"])
        out.append(f"<p>Per-stage parity on the first {drift.get('stage_parity_frames')} evaluation frames: "
                   "each candidate stage fed the FP32 torch stage's inputs (errors do not compound).</p>"
                   "<table><tr><th>stage</th><th>output</th><th>stage calls</th>"
                   f"<th>cosine mean</th><th>cosine min</th><th>relative L2</th></tr>{rows}</table>")
    return "\n".join(out)


def _closed_loop(loop: dict) -> str:
    r, c = loop["reference"], loop["candidate"]
    lo, hi = loop["drop_interval"]
    out = [f"<p>{_esc(loop['env'])}, {c['episodes']} episodes each on the same seeds from {loop['seed']}: "
           f"success drop {loop['drop']:+.1%} (95% CI {lo:+.1%} to {hi:+.1%}).</p>",
           _figure("success", plots.success_plot(r, c), "Episodes succeeded, with Wilson 95% intervals.")]
    if loop["status"] == "inconclusive":
        out.append(f"<p class='warning'>Inconclusive: fewer than min_episodes={loop['min_episodes']} "
                   "episodes.</p>")
    if loop.get("max_steps_note"):
        out.append(f"<p>{_esc(loop['max_steps_note'])}</p>")
    strip = loop.get("filmstrip")
    if strip:
        out.append(f"<h3>Rollout filmstrip ({_esc(strip['reason'])})</h3>")
        out += [_film_episode(ep, strip["diverge_fraction"]) for ep in strip["episodes"]]
    return "\n".join(out)


def _film_episode(ep: dict, fraction: float) -> str:
    """Reference above candidate, frames aligned by step; the first frame at or after the divergence
    step is outlined in red."""
    def outcome(side: dict) -> str:
        return (f"succeeded in {side['steps']} steps" if side["success"]
                else f"failed after {side['steps']} steps")

    step = ep["diverge_step"]
    where = (f"actions first differ by more than {fraction:.0%} of the action range at step {step}"
             if step is not None else f"actions stay within {fraction:.0%} of the action range on every step")
    head = (f"<p><b>Episode {ep['episode']}</b> (seed {ep['seed']}): &quot;{_esc(ep['instruction'])}"
            f"&quot;. Reference {outcome(ep['reference'])}, candidate {outcome(ep['candidate'])}; "
            f"{_esc(where)}.</p>")
    frames = {who: {f["step"]: f["png"] for f in ep[who]["frames"]} for who in ("reference", "candidate")}
    steps = sorted(set(frames["reference"]) | set(frames["candidate"]))
    marked = next((s for s in steps if step is not None and s >= step), None)
    blocks = []
    for k in range(0, len(steps), FILM_COLUMNS):
        cols = steps[k:k + FILM_COLUMNS]
        rows = ["<tr><th class='who'>step</th>" + "".join(
            f"<th>{s}{' diverged' if s == marked else ''}</th>" for s in cols) + "</tr>"]
        for who in ("reference", "candidate"):
            cells = "".join(
                f"<td class='{'diverged' if s == marked else ''}'><img alt='{who} step {s}' "
                f"src='data:image/png;base64,{frames[who][s]}'></td>" if s in frames[who] else "<td></td>"
                for s in cols)
            rows.append(f"<tr><th class='who'>{who}</th>{cells}</tr>")
        blocks.append(f"<table class='film'>{''.join(rows)}</table>")
    return f"<div class='film-block' data-plot='filmstrip'>{head}{''.join(blocks)}</div>"


def _latency(prof: dict, budgets: dict) -> str:
    cand = prof["models"][0]
    ref = prof["models"][1] if len(prof["models"]) > 1 else None
    svg = plots.latency_plot(cand["latency"]["samples_ms"], ref["latency"]["samples_ms"] if ref else None,
                             budgets.get("max_latency_p99_ms"))
    rows = "".join(
        f"<tr><td><code>{_esc(m['model'])}</code></td><td>{_esc(m['runtime'])}</td>"
        f"<td>{m['latency']['median_ms']:.3f}</td><td>{m['latency']['p99_ms']:.3f}</td>"
        f"<td>{m['rate']['inferences_per_s']:.1f}</td><td>{m['memory']['peak_rss_delta_mb']:.1f}</td></tr>"
        for m in prof["models"])
    out = [_figure("latency", svg, f"{timed_runs(prof)}, each model, batch 1."),
           "<table><tr><th>model</th><th>runtime</th><th>median ms</th><th>p99 ms</th><th>inferences/s</th>"
           f"<th>peak RSS MB</th></tr>{rows}</table>"]
    for warning in (prof.get("load") or {}).get("warnings", []):
        out.append(f"<p class='warning'>warning: {_esc(warning)}</p>")
    return "\n".join(out)


def _baseline(report: dict) -> str:
    base = report["baseline"]
    cls = " class='warning'" if base.get("slower") else ""
    table = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{_esc(c)}</td></tr>" for a, b, c in baseline_rows(base))
    return (f"<p{cls}><b>{_esc(speed_note(base))}</b></p><table><tr><th>measure</th>"
            f"<th>candidate / FP32</th><th>detail</th></tr>{table}</table>")


def _traces(report: dict) -> str:
    names = report["policy"]["action_names"]
    return "\n".join(
        _figure(f"trace-{t['episode']}", plots.action_trace_plot(names, t["reference"], t["candidate"]),
                f"Evaluation episode {t['episode']} ({t['instruction']}): first action of each chunk, "
                "reference solid blue, candidate dashed red.")
        for t in report["traces"] if t["reference"])
