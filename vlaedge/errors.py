"""User-facing errors.

A `VlaedgeError` is a problem with the user's input or environment: the CLI prints its one-line message
(and hint) without a traceback and exits 2. Anything else is a bug in vlaedge and keeps its traceback.
"""

from __future__ import annotations


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


class GateFailed(Exception):
    """A budget was violated: the gate ran fine and said no (exit code 1)."""

    exit_code = 1
