"""User-facing errors and the exit-code contract.

Exit codes: 0 done (every budget met), 1 a budget was violated or a check was inconclusive
(`GateFailed`), 2 the command could not run. A `VlaedgeError` is a problem with the user's input or
environment: the CLI prints its message and fix without a traceback. An `OSError` that reaches the CLI
(a full disk, a read-only folder, a path that cannot be written) is the environment's too. Anything
else is a bug in vlaedge: one line says so, and `--debug` (or VLAEDGE_DEBUG=1) shows the traceback.
`describe` turns any of them into the exit code and the lines to print.
"""

from __future__ import annotations

import re

MAX_LINE = 800  # characters of one printed message: a list of valid keys fits, a quoted value never floods
# optional packages -> the extra that installs them (pyproject.toml [project.optional-dependencies])
EXTRAS = {"transformers": "hf", "torch_pruning": "hf",
          "tokenizers": "tokenizers", "sentencepiece": "tokenizers", "ray": "ray"}


class VlaedgeError(Exception):
    """A user error: what is wrong, and how to fix it.

    Args:
        message: what is wrong, quoting the offending value, e.g.
            ``"checkpoint: /x/model.safetensors is truncated (12 of 4096 bytes)"``.
        hint: how to fix it, e.g. ``"re-download it or train one with 'vlaedge train'"``.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)

    def __reduce__(self):  # message and hint survive a trip through pickle (a Ray worker's error)
        return type(self), (self.message, self.hint)


class GateFailed(Exception):
    """A budget was violated: the gate ran fine and said no (exit code 1)."""

    exit_code = 1


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """`text` on one line (whitespace runs collapsed). Longer than `limit` characters, it is cut at the last
    space before the limit and says how much is left out, e.g. ``"... [412 more characters: --debug]"``
    (the traceback `--debug` prints holds the whole message)."""
    flat = re.sub(r"\s+", " ", str(text)).strip()
    if len(flat) <= limit:
        return flat
    head = flat[: limit - 40]
    head = head[: head.rfind(" ")] if " " in head else head
    return f"{head.rstrip(',;:')} ... [{len(flat) - len(head)} more characters: --debug]"


def missing_extra(exc: BaseException) -> str | None:
    """The pip command installing the optional package whose absence raised `exc` (an ImportError naming
    it), e.g. ``pip install 'vlaedge[hf]'`` for transformers; None for anything else."""
    name = (getattr(exc, "name", None) or "").partition(".")[0] if isinstance(exc, ImportError) else ""
    extra = EXTRAS.get(name)
    return f"pip install 'vlaedge[{extra}]'" if extra else None


def describe(exc: BaseException) -> tuple[int, list[str]]:
    """The exit code and the lines the CLI prints for the exception that ended a command.

    Returns:
        (2, ["error: ...", "  fix: ..."]) for a `VlaedgeError`, an `OSError` or a missing optional
        package (`missing_extra`), (1, ["gate failed: ..."])
        for `GateFailed`, and (2, ["internal error: Type: message (rerun with --debug ...)"]) otherwise.
    """
    if isinstance(exc, VlaedgeError):
        return exc.exit_code, [f"error: {one_line(exc.message)}"] + ([f"  fix: {one_line(exc.hint)}"]
                                                                     if exc.hint else [])
    if isinstance(exc, GateFailed):
        return exc.exit_code, [f"gate failed: {one_line(exc)}"]
    if missing_extra(exc):  # an optional package (vlaedge[hf], ...) is not installed
        return 2, [f"error: {one_line(exc)} (an optional package vlaedge needs here)",
                   f"  fix: {missing_extra(exc)}"]
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return 2, [f"error: {one_line(exc.strerror or exc)}{where}",
                   "  fix: check that the path exists and is writable, and that the disk has free space"]
    return 2, [f"internal error: {type(exc).__name__}: {one_line(exc, 200)} "
               "(rerun with --debug for the traceback)"]
