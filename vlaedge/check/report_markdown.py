"""report.md: a Markdown report that reads well as a GitHub step summary (verdict, key figures, budgets,
drift, closed loop, latency, FP32 comparison); report.html embeds it too. Plain text and GitHub tables
only: the verdict is a word (PASS / FAIL), never an emoji or a glyph that needs a font, and no image
(step summaries do not show inline images; report.html has the plots and the filmstrip)."""

from __future__ import annotations

import json
from pathlib import Path

STATUS_MARK = {"pass": "pass", "fail": "**FAIL**", "inconclusive": "**inconclusive**", "skipped": "skipped",
               "not_measurable": "**NOT MEASURABLE**"}
STATUS_LABEL = {"pass": "pass", "fail": "fail", "inconclusive": "inconclusive", "skipped": "skipped",
                "not_measurable": "not measurable"}  # how the CLI, report.md and report.html name a status


def budget_counts(statuses: list[str]) -> str:
    """The budgets' statuses counted, as the CLI summary, report.md and report.html all say it, e.g.
    "6 of 6 budgets met", "5 of 6 budgets met, 1 skipped", "4 of 6 budgets met, 1 fail, 1 not measurable"."""
    if not statuses:
        return "no budgets"
    n = len(statuses)
    text = f"{statuses.count('pass')} of {n} budget{'' if n == 1 else 's'} met"
    others = [f"{statuses.count(s)} {STATUS_LABEL[s]}" for s in STATUS_LABEL if s != "pass" and s in statuses]
    return ", ".join([text, *others])


def verdict(report: dict) -> tuple[str, str]:
    """The verdict word ("PASS", "FAIL" or "NO BUDGETS") and what it means (`budget_counts`, the CLI's
    words), e.g. "5 of 6 budgets met, 1 skipped"; a candidate slower than FP32 is called out whatever the
    gate says."""
    gate = report.get("gate")
    if gate:
        word = "PASS" if gate["passed"] else "FAIL"
        text = budget_counts([c["status"] for c in gate["checks"]])
        if gate.get("not_measurable"):
            text += " (the machine was busy while timing: absolute latency not judged)"
    else:
        word, text = "NO BUDGETS", "nothing judged"
    base = report.get("baseline") or {}
    if base.get("slower"):
        text += f"; WARNING: candidate slower than FP32 ({base['median_speedup']:.2f}x median)"
    return word, text


def title(report: dict) -> str:
    """The verdict line both reports open with, e.g. "vlaedge report: PASS, 5 of 5 budgets met"."""
    return "vlaedge report: {}, {}".format(*verdict(report))


def summary_line(report: dict) -> str:
    """The key figures in one line, e.g. "drift mean 0.52% / p99 1.1% of range over all dims; closed loop
    reference 45/50, candidate 44/50; candidate median 5.2 ms, p99 5.55 ms; 1.45x faster (median)...", or
    "nothing measured"."""
    parts = []
    drift, loop, prof, base = (report.get(k) for k in ("drift", "closed_loop", "profile", "baseline"))
    if drift:
        parts.append(f"drift mean {drift['mean_pct']:.3g}% / p99 {drift['p99_pct']:.3g}% of range "
                     "over all dims")
    if loop:
        r, c = loop["reference"], loop["candidate"]
        parts.append(f"closed loop reference {r['successes']}/{r['episodes']}, candidate "
                     f"{c['successes']}/{c['episodes']}")
    if prof:
        lat = prof["models"][0]["latency"]
        parts.append(f"candidate median {lat['median_ms']:.3g} ms, p99 {lat['p99_ms']:.3g} ms")
    if base:
        parts.append(speed_note(base))
    return "; ".join(parts) or "nothing measured"


def speed_note(baseline: dict) -> str:
    """The candidate vs FP32 in one line, e.g. "1.45x faster (median), p99 1.40x; file 0.27x, params 1.00x";
    a candidate slower than FP32 says so in capitals, whatever any gate says."""
    sizes = f"file {baseline['size_ratio']:.2f}x"
    if baseline.get("parameter_ratio") is not None:
        sizes += f", params {baseline['parameter_ratio']:.2f}x"
    if baseline.get("median_speedup") is None:
        return f"speed not measured; {sizes} of FP32"
    speed = baseline["median_speedup"]
    head = f"SLOWER than FP32: {speed:.2f}x" if baseline.get("slower") else f"{speed:.2f}x faster"
    why = f" (why: {baseline['slower_why']})" if baseline.get("slower") and baseline.get("slower_why") else ""
    return f"{head} (median), p99 {baseline['p99_speedup']:.2f}x{why}; {sizes} of FP32"


def render_markdown(report: dict) -> str:
    """report.md: verdict, budgets table, drift per dimension, closed loop, latency, host."""
    gate, policy, cand = report.get("gate"), report["policy"], report["candidate"]
    lines = [
        f"# {title(report)}",
        "",
        summary_line(report),
        "",
        f"- policy: `{policy.get('name')}` sha256 `{(policy.get('sha256') or '?')[:12]}`"
        + (f", reference run on `{policy['device']}`" if policy.get("device") else ""),
        f"- candidate: `{cand.get('model')}` on `{cand.get('runtime')}`"
        + (f", {cand['file_bytes'] / 1e6:.2f} MB" if cand.get("file_bytes") else ""),
        f"- target: `{report.get('target')}`",
        "",
    ]
    if gate:
        lines += [
            "## Budgets",
            "",
            "| budget | measured | allowed | status | detail |",
            "|---|---|---|---|---|",
        ]
        for c in gate["checks"]:
            lines.append(
                f"| `{c['name']}` | {format_number(c['measured'])} | "
                f"{c['op']} {format_number(c['allowed'])} {c['unit']} | "
                f"{STATUS_MARK[c['status']]} | {c['detail']} |"
            )
        lines.append("")
    lines += _drift_md(report.get("drift"), policy)
    lines += _closed_loop_md(report.get("closed_loop"))
    lines += _profile_md(report.get("profile"))
    lines += baseline_md(report.get("baseline"))
    lines += [f"> {n}" for n in report.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def _drift_md(drift: dict | None, policy: dict) -> list[str]:
    if not drift:
        return []
    lines = [
        f"## Open-loop drift ({drift['frames']} evaluation frames, % of action range)",
        "",
        *([f"Candidate run as: {drift['method']}.", ""] if drift.get("method") else []),
        "| dim | mean | p99 | max | token agreement | gripper flips |",
        "|---|---|---|---|---|---|",
    ]
    for d in drift["per_dim"]:
        lines.append(
            f"| {d['name']} | {d['mean_pct']:.3f} | {d['p99_pct']:.3f} | {d['max_pct']:.3f} | "
            f"{_pct(d['token_agreement'])} | {_pct(d['gripper_flip_rate'])} |"
        )
    lines.append(
        f"| **all** | {drift['mean_pct']:.3f} | {drift['p99_pct']:.3f} | {drift['max_pct']:.3f} | "
        f"{_pct(drift['token_agreement'])} | {_pct(drift['gripper_flip_rate'])} |"
    )
    steps = ", ".join(f"{v:.3f}" for v in drift["step_mean_pct"])
    lines += [
        "",
        f"Chunk cosine similarity: mean {drift['cosine_mean']:.4f}, min {drift['cosine_min']:.4f}. "
        f"Mean error per chunk step: {steps}.",
    ]
    if drift.get("nonfinite"):
        lines.append(f"**{drift['nonfinite']} non-finite candidate action values** (counted as 100% error).")
    if drift.get("stages"):
        lines += ["", f"Per-stage parity on the first {drift.get('stage_parity_frames')} evaluation frames "
                  "(each candidate stage fed the FP32 torch stage's inputs, so errors do not compound; "
                  "cosine per frame, relative L2 over all calls; a loop's stage is called once per step):",
                  "",
                  "| stage | output | stage calls | cosine mean | cosine min | relative L2 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['stage']} | {p['output']} | {p['calls']} | {p['cosine_mean']:.5f} | "
                  f"{p['cosine_min']:.5f} | {p['rel_l2']:.4g} |" for p in drift["stages"]]
    return lines + [""]


def _closed_loop_md(loop: dict | None) -> list[str]:
    if not loop:
        return []
    r, c = loop["reference"], loop["candidate"]
    lo, hi = loop["drop_interval"]
    lines = [
        f"## Closed loop ({loop['env']}, {c['episodes']} episodes each, seeds from {loop['seed']})",
        "",
        f"- reference: {r['successes']}/{r['episodes']} = {r['rate']:.1%} "
        f"(95% CI {r['interval'][0]:.1%}-{r['interval'][1]:.1%})",
        f"- candidate: {c['successes']}/{c['episodes']} = {c['rate']:.1%} "
        f"(95% CI {c['interval'][0]:.1%}-{c['interval'][1]:.1%})",
        f"- drop: {loop['drop']:+.1%} (95% CI {lo:+.1%} to {hi:+.1%})",
    ]
    if loop["status"] == "inconclusive":
        lines.append(f"- **inconclusive**: fewer than min_episodes={loop['min_episodes']} episodes")
    if loop.get("max_steps_note"):
        lines.append(f"- {loop['max_steps_note']}")
    for ep in (loop.get("filmstrip") or {}).get("episodes", []):
        who = {k: "succeeded" if ep[k]["success"] else "failed" for k in ("reference", "candidate")}
        step = ep["diverge_step"]
        lines.append(f"- filmstrip in report.html: episode {ep['episode']} (seed {ep['seed']}, "
                     f"\"{ep['instruction']}\"): reference {who['reference']}, candidate {who['candidate']}; "
                     + (f"actions diverge at step {step}" if step is not None else "actions never diverge"))
    return lines + [""]


def _profile_md(prof: dict | None) -> list[str]:
    if not prof:
        return []
    lines = [
        "## Latency (batch 1)",
        "",
        "| model | runtime | median ms | p90 ms | p99 ms | max ms | inferences/s "
        "| actions/s | peak RSS MB | file MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in prof["models"]:
        lat, rate = m["latency"], m["rate"]
        lines.append(
            f"| `{Path(m['model']).name}` | {m['runtime']} | {lat['median_ms']:.2f} | {lat['p90_ms']:.2f} | "
            f"{lat['p99_ms']:.2f} | {lat['max_ms']:.2f} | {rate['inferences_per_s']:.1f} | "
            f"{rate['actions_per_s']:.1f} | {m['memory']['peak_rss_delta_mb']:.1f} | "
            f"{m['file_bytes'] / 1e6:.2f} |"
        )
    from vlaedge.check.profile import timed_runs

    host = prof.get("host") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (host.get("versions") or {}).items() if v)
    lines += [
        "",
        f"{timed_runs(prof)}; threads {prof['threads'] or 'default'}; "
        f"{host.get('cpu')} ({host.get('cores')} cores), {host.get('os')}; {versions}.",
    ]
    margin = prof["models"][0]["rate"].get("realtime_margin")
    if margin:
        r = prof["models"][0]["rate"]
        lines.append(
            f"A chunk of {r['chunk']} actions lasts {r['chunk'] / r['control_hz'] * 1000:.0f} ms at "
            f"{r['control_hz']:g} Hz: {margin:.1f}x the p99 latency."
        )
    load = prof.get("load")
    if load:
        from vlaedge.check.profile import load_line

        lines += ["", load_line(load).replace("\nwarning: ", "\n\n**warning**: ")]
    for key in ("device", "power"):
        if prof.get(key):
            lines.append(f"{key}: `{json.dumps(prof[key], default=str)}`")
    return lines + [""]


def baseline_md(base: dict | None) -> list[str]:
    """The "Against FP32" section: the candidate's speed, size and parameters relative to the FP32 ONNX."""
    if not base:
        return []
    lines = ["## Against the FP32 reference ONNX", "", f"**{speed_note(base)}**", ""]
    lines += ["| measure | candidate / FP32 | detail |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in baseline_rows(base)]
    if base.get("median_speedup") is not None:
        lines += ["", f"Speedups are FP32 latency / candidate latency, timed interleaved in one run on "
                      f"`{base['runtime']}` (above 1: the candidate is faster)."]
    return lines + [""]


def baseline_rows(base: dict) -> list[tuple[str, str, str]]:
    """(measure, candidate / FP32, detail) rows of the FP32 comparison: speedups (when timed), file size,
    parameters (when counted)."""
    rows = [("file size", f"{base['size_ratio']:.3f}x", f"{base['file_bytes'] / 1e6:.2f} MB FP32")]
    if base.get("parameter_ratio") is not None:
        rows.append(("parameters", f"{base['parameter_ratio']:.3f}x",
                     f"{base['candidate_parameters']:,} vs {base['parameters']:,}"))
    if base.get("median_speedup") is not None:
        rows = [
            ("median speedup", f"{base['median_speedup']:.3f}x", f"FP32 median {base['median_ms']:.3f} ms"),
            ("p99 speedup", f"{base['p99_speedup']:.3f}x", f"FP32 p99 {base['p99_ms']:.3f} ms"),
        ] + rows
    return rows


def format_number(value) -> str:
    """A measured or allowed value for a table cell: 4 significant digits, "n/a" for None."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value) -> str:
    return "" if value is None else f"{value:.2%}"
