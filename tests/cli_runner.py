"""`run_cli`: the tests' one way to run the `vlaedge` command in-process."""

from __future__ import annotations

import sys

import pytest


def run_cli(args: list, capsys, monkeypatch) -> tuple[int, str]:
    """Runs `vlaedge ARGS` in-process; returns (exit code, stdout + stderr)."""
    from vlaedge.cli import main

    monkeypatch.setattr(sys, "argv", ["vlaedge", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out + out.err
