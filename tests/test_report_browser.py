"""report.html in a real browser: headless Chromium opens the pages of small real vlaedge runs and checks
that a person would see them: no console error or page error, no request leaving the page (it works
offline), every section and every plot present, in order, laid out with a non-zero size inside the page,
on top at its centre (nothing covers it), plots not overlapping each other, the verdict word in its
colour, the filmstrip's frames decoded where the closed loop ran, and the plots still laid out in print.

Why Playwright: it drives the system's Chromium (`executable_path`, no browser download, works offline)
through the DevTools protocol, so the test reads each element's laid-out box (getBoundingClientRect), asks
the browser which element is hit at a point (elementFromPoint), waits for images to decode and hears
every console message and uncaught page error. Chromium's own CLI (`--headless --dump-dom`,
`--screenshot`, `--enable-logging=stderr`) gives the DOM, one picture and a log to grep, but no layout
boxes, so "visible" could only be guessed from the markup.

The four reports, built once per module (~20 s on 2 busy cores, most of it the two `verify` runs):
- pass: `vlaedge verify` of the tiny untrained nano policy's ONNX against its own checkpoint (drift,
  latency, the FP32 baseline, action traces), budgets met: exit 0.
- fail: `vlaedge gate` of that run with a 0.01 ms p99 latency budget: exit 1.
- closed-loop: `vlaedge verify` of a copy of the default policy whose weight matrices carry Gaussian
  noise (0.6 of each matrix's std, standing in for a compression that went wrong) on the torch runtime,
  4 tabletop episodes each: the outcomes differ, so the filmstrip shows the first episode that differs.
- empty: a report with no measurements and no budgets (`build_report` + `write_reports`).

Screenshots: a full-page PNG per report, `report-<variant>.png`, kept under $VLAEDGE_TEST_ARTIFACTS
(default `.pytest-artifacts/` at the repo root, gitignored) for a person to look at or CI to upload.

Skips, with the reason, when Chromium is not installed (`chromium` on PATH or /usr/bin/chromium; `make
test-deps` installs Debian's as root with apt).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("VLAEDGE_TEST_ARTIFACTS") or ROOT / ".pytest-artifacts")
CHROMIUM = shutil.which("chromium") or next(
    (p for p in ("/usr/bin/chromium",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (neither `chromium` on PATH nor /usr/bin/chromium): "
    "`make test-deps` installs Debian's chromium when run as root with apt")

VIEWPORT = {"width": 1100, "height": 900}
NOISE = 0.6  # std of the noise added to each weight matrix of the diverging candidate, in its own stds
# (variant, sections in page order, plots before the traces, verdict word, its background colour)
VARIANTS = [
    ("pass", ["verdict", "budgets", "drift", "latency", "baseline", "traces"], ["drift", "chunk", "latency"],
     "PASS", "rgb(30, 142, 62)"),
    ("fail", ["verdict", "budgets", "drift", "latency", "baseline", "traces"], ["drift", "chunk", "latency"],
     "FAIL", "rgb(197, 34, 31)"),
    ("closed-loop", ["verdict", "budgets", "drift", "closed-loop", "traces", "notes"],
     ["drift", "chunk", "success", "filmstrip"], "FAIL", "rgb(197, 34, 31)"),
    ("empty", ["verdict", "budgets", "measurements"], [], "NO BUDGETS", "rgb(128, 134, 139)"),
]

# Every [data-section] and [data-plot] element as the browser laid it out: box in page coordinates,
# computed visibility, whether it is the element hit at its centre once scrolled there, and for plots the
# box of the drawing (the SVG or the filmstrip table) and how many of its images failed to decode.
LAYOUT_JS = """() => {
  const box = el => { if (!el) return null; const r = el.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  const shown = el => { const s = getComputedStyle(el);
    return s.display !== 'none' && s.visibility === 'visible' && parseFloat(s.opacity) > 0; };
  const onTop = el => { el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return hit !== null && el.contains(hit); };
  const item = el => ({key: el.dataset.section || el.dataset.plot, box: box(el), shown: shown(el)});
  const sections = [...document.querySelectorAll('[data-section]')].map(item);
  const plots = [...document.querySelectorAll('[data-plot]')].map(el => ({...item(el),
    drawing: box(el.querySelector('svg, table.film')),
    images: el.querySelectorAll('img').length,
    broken: [...el.querySelectorAll('img')].filter(i => !i.complete || i.naturalWidth === 0).length,
    onTop: onTop(el)}));
  const doc = document.documentElement;
  return {width: doc.scrollWidth, height: doc.scrollHeight, viewport: innerWidth, sections, plots};
}"""


def _vlaedge(*args) -> int:
    """Runs `vlaedge ARGS` in-process (torch and friends are imported once); returns the exit code."""
    from vlaedge.cli import main

    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_info:
        mp.setattr(sys, "argv", ["vlaedge", *map(str, args)])
        main()
    return exit_info.value.code or 0


def _diverging_candidate(path: Path) -> Path:
    """The default policy with Gaussian noise (NOISE x each matrix's std, seed 0) on its weight matrices."""
    import torch

    from vlaedge.defaults import default_checkpoint
    from vlaedge.models import load_policy

    policy = load_policy(default_checkpoint())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.module.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * NOISE)
    policy.save(path)
    return path


@pytest.fixture(scope="module")
def reports(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """variant -> the run directory holding its report.html (see the module docstring)."""
    from vlaedge.check.report import build_report, write_reports

    root = tmp_path_factory.mktemp("browser-reports")
    small = ("target: cpu\nverify:\n  eval_frames: 16\n  profile_runs: 10\n  profile_warmup: 2\n"
             "  trace_episodes: 1\n")
    (root / "pass.yaml").write_text(small + "budgets: {max_drift_mean_pct: 5, max_latency_p99_ms: 10000}\n")
    # fails on any machine: an absolute latency budget timed under load is not measurable (exit 0)
    (root / "fail.yaml").write_text("max_drift_mean_pct: 5\nmin_speedup: 1000\n")
    (root / "loop.yaml").write_text(small + "  closed_loop_episodes: 4\n  min_episodes: 4\n"
                                    "budgets: {max_drift_mean_pct: 5, max_success_drop: 0.1}\n")
    code = _vlaedge("verify", tiny_run.onnx, "-c", tiny_run.checkpoint, "-d", tiny_run.data,
                    "-r", root / "pass.yaml", "-o", root / "pass")
    assert code == 0, "the passing run did not pass"
    assert _vlaedge("gate", root / "pass", "-b", root / "fail.yaml", "-o", root / "fail") == 1
    candidate = _diverging_candidate(root / "noisy-default")
    code = _vlaedge("verify", candidate, "--runtime", "torch", "-d", tiny_run.data, "--no-profile",
                    "-r", root / "loop.yaml", "-o", root / "closed-loop")
    assert code == 1, "the diverging candidate passed its gate"
    write_reports(build_report(tiny_run.policy), root / "empty")
    return {name: root / name for name in ("pass", "fail", "closed-loop", "empty")}


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="no playwright package (the [dev] extra): run make setup")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


def _inside(box: dict, layout: dict) -> bool:
    right, bottom = box["x"] + box["w"], box["y"] + box["h"]
    return (box["w"] > 0 and box["h"] > 0 and box["x"] >= 0 and box["y"] >= 0
            and right <= layout["width"] + 0.5 and bottom <= layout["height"] + 0.5)


def _overlap(a: dict, b: dict) -> bool:
    return (min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]) > 1
            and min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]) > 1)


@pytest.mark.parametrize(("variant", "sections", "plots", "word", "colour"), VARIANTS,
                         ids=[v[0] for v in VARIANTS])
def test_report_html_renders_every_section_and_plot_visibly_in_chromium(
        browser, reports, variant, sections, plots, word, colour):
    from vlaedge.check.report import load_report

    report = load_report(reports[variant])
    page = browser.new_page(viewport=VIEWPORT)
    console, requests = [], []
    page.on("console", lambda m: console.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    url = (reports[variant] / "report.html").as_uri()
    page.goto(url, wait_until="load")
    layout = page.evaluate(LAYOUT_JS)

    assert console == [], f"{variant}: the browser reported {console}"
    assert [u for u in requests if u != url and not u.startswith("data:")] == [], "the page fetched something"
    assert [s["key"] for s in layout["sections"]] == sections
    hidden = [s["key"] for s in layout["sections"] if not (s["shown"] and _inside(s["box"], layout))]
    assert hidden == [], f"{variant}: sections not visibly inside the page: {hidden}"
    assert layout["width"] <= layout["viewport"], "the page scrolls sideways"

    expected = plots + [f"trace-{t['episode']}" for t in report["traces"] if t["reference"]]
    assert [p["key"] for p in layout["plots"]] == expected
    for p in layout["plots"]:
        assert p["shown"] and _inside(p["box"], layout), f"{variant}: plot {p['key']} not visibly in the page"
        assert p["drawing"] and p["drawing"]["w"] > 100 and p["drawing"]["h"] > 50, p
        assert p["onTop"], f"{variant}: something covers the centre of plot {p['key']}"
        assert p["broken"] == 0, f"{variant}: {p['broken']} of {p['images']} frames of {p['key']} not decoded"
    boxes = [p["box"] for p in layout["plots"]]
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "plots overlap"

    verdict = page.locator("header.verdict .word")
    assert verdict.inner_text() == word
    assert verdict.evaluate("el => getComputedStyle(el).backgroundColor") == colour

    strips = [p for p in layout["plots"] if p["key"] == "filmstrip"]
    if variant == "closed-loop":
        assert strips and all(s["images"] >= 4 for s in strips), "the filmstrip shows no frames"
        heading = page.locator("[data-section='closed-loop'] h3").inner_text()
        assert "first episode whose outcome differs" in heading
        assert page.locator("table.film td.diverged").count() >= 1, "the divergence step is not marked"
        assert report["closed_loop"]["reference"]["per_episode"] != report["closed_loop"]["candidate"][
            "per_episode"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"report-{variant}.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page.emulate_media(media="print")
    printed = page.evaluate(LAYOUT_JS)
    assert [p["key"] for p in printed["plots"]] == expected
    assert all(_inside(p["box"], printed) for p in printed["plots"]), "a plot collapses in print"
    assert page.locator("details").evaluate("el => getComputedStyle(el).display") == "none"
    page.close()
