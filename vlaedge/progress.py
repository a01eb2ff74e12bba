"""Progress of the long stages, on stderr: a rich bar on a terminal, plain periodic lines in CI logs.

Two ways in, both safe to nest (an inner stage shares the outer bar's live display):

    from vlaedge import progress

    for episode in progress.track(episodes, "closed loop: episodes"):
        ...

    with progress.stage("calibration: batches", total=len(batches)) as bar:
        for batch in batches:
            ...
            bar.advance()

A stage that ends within `SHOW_AFTER_SECONDS` shows nothing. On a terminal (stderr is a TTY) a longer
stage is a rich progress bar with counts, elapsed time and time left, redrawn as work advances (no
refresh thread competes with timed runs), removed when the stage ends; an outermost stage then leaves
one line `description: N/T done in Xs` (a nested one, such as one episode's steps, leaves nothing).
When stderr is not a terminal (a CI log, a pipe) a stage prints a plain line at every 10 % of its
total or every 5 s, whichever comes first, and an outermost stage one line when it ends. With
`progress.quiet = True` (the CLI's `--quiet`) nothing is printed. Nothing ever goes to stdout, which
`--json` keeps for its one object.

A long single call that cannot report progress (torch.onnx.export, ONNX Runtime's quantizer) runs inside
`heartbeat`: once it has run `SHOW_AFTER_SECONDS` a line says what started, then a daemon thread prints
`description: still running, N s` every `HEARTBEAT_SECONDS`, and a closing line gives the time:

    with progress.heartbeat("export: tracing the model (torch.onnx.export)"):
        torch.onnx.export(...)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

quiet = False  # the CLI sets this from --quiet: no progress output at all
PLAIN_EVERY_FRACTION = 0.10  # plain mode: a line at every 10 % of the total...
PLAIN_EVERY_SECONDS = 5.0  # ...or after 5 s without one, whichever comes first
SHOW_AFTER_SECONDS = 1.0  # a stage shorter than this shows nothing (no flicker, no log noise)
REDRAW_SECONDS = 0.1  # the rich bar is redrawn on advance at most this often (no refresh thread)
HEARTBEAT_SECONDS = 30.0  # `heartbeat`: a "still running" line this often during one long call

_live: dict[str, Any] = {"progress": None, "depth": 0}  # the one rich display shared by nested stages
_open = [0]  # stages running now; a nested stage (an episode's steps) ends without a closing line


class Stage:
    """A running stage: call `advance(n)` after each n items of work.

    Attributes:
        description: what is being counted, e.g. ``"drift: evaluation frames"``.
        total: how many items the stage has (None when unknown).
        completed: items done so far.
    """

    def __init__(self, description: str, total: int | None, stream: TextIO | None, bar: Any = None):
        self.description = description
        self.total = total
        self.completed = 0
        self._stream = stream  # plain mode: where lines go; None when quiet or drawn by rich
        self._bar = bar  # rich mode: (Progress, task id)
        self._start = self._last_line = self._last_draw = time.monotonic()
        self._next_fraction = PLAIN_EVERY_FRACTION
        self._shown = False  # shown once the stage has run SHOW_AFTER_SECONDS

    def advance(self, n: int = 1) -> None:
        """Marks `n` more items done (n >= 0) and redraws the bar or prints a due plain line."""
        self.completed += n
        now = time.monotonic()
        self._shown = self._shown or now - self._start >= SHOW_AFTER_SECONDS
        if not self._shown:
            return
        if self._bar is not None and now - self._last_draw >= REDRAW_SECONDS:
            self._last_draw = now
            progress, task = self._bar
            progress.update(task, completed=self.completed, visible=True)
            progress.refresh()
        elif self._stream is not None:
            self._plain_line(now)

    def _plain_line(self, now: float) -> None:
        fraction = self.completed / self.total if self.total else None
        if fraction is not None and fraction >= 1.0:
            return  # the closing line says it
        due_fraction = fraction is not None and fraction >= self._next_fraction
        if not due_fraction and now - self._last_line < PLAIN_EVERY_SECONDS:
            return
        if fraction is not None:
            while self._next_fraction <= fraction:
                self._next_fraction += PLAIN_EVERY_FRACTION
        self._last_line = now
        elapsed = now - self._start
        if fraction:
            left = elapsed * (1 - fraction) / fraction
            text = (f"{self.description}: {self.completed}/{self.total} ({100 * fraction:.0f}%), "
                    f"{elapsed:.0f}s elapsed, about {left:.0f}s left")
        else:
            text = f"{self.description}: {self.completed} done, {elapsed:.0f}s elapsed"
        print(text, file=self._stream, flush=True)

    def _finish(self, closing_line: bool) -> None:
        elapsed = time.monotonic() - self._start
        count = f"{self.completed}/{self.total}" if self.total is not None else str(self.completed)
        line = f"{self.description}: {count} done in {elapsed:.1f}s"
        closing_line = closing_line and (self._shown or elapsed >= SHOW_AFTER_SECONDS)
        if self._bar is not None:
            progress, task = self._bar
            progress.remove_task(task)
            if closing_line:
                progress.console.print(line, markup=False, highlight=False)
        elif self._stream is not None and closing_line:
            print(line, file=self._stream, flush=True)


@contextmanager
def stage(description: str, total: int | None) -> Iterator[Stage]:
    """Shows the progress of one stage while the `with` block runs.

    Args:
        description: what is counted, stage first, e.g. ``"calibration: batches"``.
        total: number of items the block will `advance` by in all; None when unknown (a count without
            a percentage or time left).

    Yields:
        A `Stage`; call `.advance(n=1)` as items complete.

    Example:
        >>> with stage("profile: runs", total=3) as bar:
        ...     for _ in range(3):
        ...         bar.advance()
    """
    if quiet:
        yield Stage(description, total, None)
        return
    stream = sys.stderr
    outermost = _open[0] == 0
    _open[0] += 1
    try:
        if not _is_terminal(stream):
            running = Stage(description, total, stream)
            yield running
            running._finish(outermost)
            return
        with _rich_display(stream) as progress:
            task = progress.add_task(description, total=total, visible=False)
            running = Stage(description, total, None, (progress, task))
            try:
                yield running
            except BaseException:
                progress.remove_task(task)  # a failed stage leaves no bar behind and claims nothing done
                raise
            running._finish(outermost)
    finally:
        _open[0] -= 1


def track(iterable: Iterable, description: str, total: int | None = None) -> Iterator:
    """Yields the items of `iterable` while showing how many have been consumed.

    Args:
        iterable: the work items (e.g. episodes, batches).
        description: what is counted, stage first, e.g. ``"closed loop: episodes"``.
        total: number of items; defaults to `len(iterable)` when it has one, else unknown.

    Yields:
        The items of `iterable`, unchanged.

    Example:
        >>> [x for x in track(range(3), "demo: items")]
        [0, 1, 2]
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with stage(description, total) as running:
        for item in iterable:
            yield item
            running.advance()


@contextmanager
def heartbeat(description: str, every: float | None = None) -> Iterator[None]:
    """Shows that one long call without progress of its own is still running, from a daemon thread.

    Nothing for a call shorter than `SHOW_AFTER_SECONDS` or with `quiet`; else `description ...` then,
    every `every` seconds, `description: still running, N s`, and `description: done in Xs` at the end
    (`failed after Xs` when it raises). Lines go above a rich bar when one is shown, else to stderr.

    Args:
        description: what runs, stage first, e.g. ``"export: tracing the model (torch.onnx.export)"``.
        every: seconds between lines; default `HEARTBEAT_SECONDS`.

    Example:
        >>> with heartbeat("quantize: ONNX Runtime static quantization"):
        ...     quantize_static(...)
    """
    if quiet:
        yield
        return
    stream, every = sys.stderr, HEARTBEAT_SECONDS if every is None else every
    start, done, shown = time.monotonic(), threading.Event(), threading.Event()

    def beat() -> None:
        if done.wait(SHOW_AFTER_SECONDS):
            return
        shown.set()
        _say(stream, f"{description} ...")
        while not done.wait(every):
            _say(stream, f"{description}: still running, {time.monotonic() - start:.0f} s")

    thread = threading.Thread(target=beat, name="vlaedge-heartbeat", daemon=True)
    thread.start()
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        done.set()
        thread.join()
        if shown.is_set():
            _say(stream, f"{description}: {outcome} {time.monotonic() - start:.1f}s")


def _say(stream: TextIO, line: str) -> None:
    """One line to the shared rich display when a bar is shown (so it is not garbled), else to `stream`."""
    live = _live["progress"]
    if live is not None:
        live.console.print(line, markup=False, highlight=False)
    else:
        print(line, file=stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def _rich_display(stream: TextIO) -> Iterator[Any]:
    """The shared rich Progress: started by the outermost stage, reused by nested ones."""
    if _live["progress"] is None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=stream, force_terminal=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
        # print() to stdout goes above the bar when stdout is this terminal too; a piped stdout is left alone
        _live["progress"] = Progress(*columns, console=console, transient=True, auto_refresh=False,
                                     redirect_stdout=_is_terminal(sys.stdout))
        _live["progress"].start()
    _live["depth"] += 1
    try:
        yield _live["progress"]
    finally:
        _live["depth"] -= 1
        if _live["depth"] == 0:
            _live["progress"].stop()
            _live["progress"] = None
