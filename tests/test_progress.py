"""vlaedge.progress: a rich bar with counts, elapsed time and time left when stderr is a terminal, plain
lines at every 10 % (or every 5 s with no total) when it is not, nothing for short stages or with
--quiet, and never a byte on stdout (which --json keeps for its one object).

Plain-mode timings run on a fake clock (`progress.time` replaced), so the lines are exact."""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest
from cli_runner import run_cli

from vlaedge import progress
from vlaedge.defaults import DEFAULT_DATASET

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    """`time.monotonic` that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture(autouse=True)
def loud(monkeypatch):
    monkeypatch.setattr(progress, "quiet", False)


def _plain_run(monkeypatch, clock, total, items, seconds_per_item) -> list[str]:
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    with progress.stage("demo: items", total=total) as bar:
        for _ in range(items):
            clock.now += seconds_per_item
            bar.advance()
    return log.getvalue().splitlines()


def test_a_bar_on_a_terminal_shows_counts_elapsed_and_time_left_then_one_closing_line(monkeypatch, capsys):
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    with progress.stage("demo: items", total=5) as bar:
        for _ in range(5):
            time.sleep(0.02)  # rich estimates the speed from the times of the updates
            bar.advance()
    text = ANSI.sub("", screen.getvalue())
    frames = [f.strip() for f in re.split(r"[\r\n]", text) if f.strip()]
    bars = [f for f in frames if "━" in f]
    assert [re.search(r" (\d)/5 ", f).group(1) for f in bars[:5]] == ["1", "2", "3", "4", "5"]
    assert all(re.search(r"\d:\d\d:\d\d left (\d:\d\d:\d\d|-:--:--)$", f) for f in bars), bars
    assert any(re.search(r"left \d:\d\d:\d\d$", f) for f in bars[1:]), "no time left once the speed is known"
    assert any(re.fullmatch(r"demo: items: 5/5 done in 0\.\ds", f) for f in frames), frames
    assert "\x1b[?25h" in screen.getvalue(), "the cursor is given back when the bar ends"
    assert capsys.readouterr().out == ""


def test_a_failed_stage_on_a_terminal_claims_nothing_done(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)
    with pytest.raises(RuntimeError), progress.stage("demo: items", total=3) as bar:
        bar.advance()
        raise RuntimeError("broken")
    assert "done in" not in ANSI.sub("", screen.getvalue())
    assert progress._live["progress"] is None, "the display is stopped"


def test_plain_lines_at_every_tenth_with_counts_and_time_left_when_stderr_is_not_a_terminal(
        monkeypatch, clock, capsys):
    lines = _plain_run(monkeypatch, clock, total=20, items=20, seconds_per_item=0.5)
    assert len(lines) == 10  # 10 %, 20 %, ..., 90 %, then the closing line
    assert lines[0] == "demo: items: 2/20 (10%), 1s elapsed, about 9s left"
    assert lines[4] == "demo: items: 10/20 (50%), 5s elapsed, about 5s left"
    assert lines[8] == "demo: items: 18/20 (90%), 9s elapsed, about 1s left"
    assert lines[9] == "demo: items: 20/20 done in 10.0s"
    assert capsys.readouterr().out == ""


def test_plain_lines_every_5_seconds_when_the_total_is_unknown(monkeypatch, clock):
    lines = _plain_run(monkeypatch, clock, total=None, items=10, seconds_per_item=2.0)
    assert lines == ["demo: items: 3 done, 6s elapsed", "demo: items: 6 done, 12s elapsed",
                     "demo: items: 9 done, 18s elapsed", "demo: items: 10 done in 20.0s"]


def test_a_stage_shorter_than_a_second_prints_nothing(monkeypatch, clock):
    assert _plain_run(monkeypatch, clock, total=10, items=10, seconds_per_item=0.05) == []
    assert _plain_run(monkeypatch, clock, total=10, items=10, seconds_per_item=0.2) != []


def test_quiet_prints_nothing_on_a_terminal_or_in_a_log_and_still_yields_every_item(monkeypatch, clock):
    monkeypatch.setattr(progress, "quiet", True)
    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)
    for stream in (Terminal(), io.StringIO()):
        monkeypatch.setattr("sys.stderr", stream)
        seen = []
        for item in progress.track(range(30), "demo: items"):
            clock.now += 1.0
            seen.append(item)
        assert seen == list(range(30)) and stream.getvalue() == ""


def test_a_nested_stage_shows_its_progress_but_only_the_outer_one_closes(monkeypatch, clock):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    for _ in progress.track(["a", "b"], "demo: episodes"):
        for _ in progress.track(range(4), "demo: steps"):
            clock.now += 1.0
    lines = log.getvalue().splitlines()
    assert "demo: steps: 1/4 (25%), 1s elapsed, about 3s left" in lines
    assert [line for line in lines if "done in" in line] == ["demo: episodes: 2/2 done in 8.0s"]


def test_the_cli_prints_progress_lines_and_none_with_quiet(monkeypatch, capsys):
    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)  # reading the sample dataset takes < 1 s
    code, text = run_cli(["data", DEFAULT_DATASET], capsys, monkeypatch)
    assert code == 0 and re.search(r"^dataset: reading tabletop/data files: 1/1 done in", text, re.M)
    code, quiet = run_cli(["--quiet", "data", DEFAULT_DATASET], capsys, monkeypatch)
    assert code == 0 and "dataset: reading" not in quiet and "episodes" in quiet
