"""Reading YAML that a user hands us (recipes, budgets, `--set` values), bounded and validated.

PyYAML's safe loader already refuses `!!python/...` tags; on top of it a file is capped in size, must be
UTF-8 text, and may nest at most `MAX_DEPTH` levels and use at most `MAX_ALIASES` aliases (a "billion
laughs" alias bomb expands exponentially, and formatting its value in an error message would hang).
Every failure is a one-line `VlaedgeError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vlaedge.errors import VlaedgeError, one_line

MAX_BYTES = 1 << 20  # a recipe is a few kB
MAX_DEPTH = 64  # nesting of mappings and sequences
MAX_ALIASES = 64  # `*anchor` references


class _TooComplex(yaml.YAMLError):
    """Raised by the loader when the document passes a bound."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting depth and aliases while composing the document."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _TooComplex(f"more than {MAX_ALIASES} aliases (*anchor references)")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooComplex(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse(text: str, where: str) -> Any:
    """The value of a YAML document (None when empty).

    Args:
        text: the document.
        where: what to name in errors, e.g. ``"recipe: recipes/x.yaml"`` or ``"--set quantize.keep"``.

    Raises:
        VlaedgeError: invalid YAML, an unsafe tag, too deep or too many aliases.
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _TooComplex as e:
        raise VlaedgeError(f"{where} is too complex: {e}", "write the values out plainly") from None
    except yaml.YAMLError as e:
        raise VlaedgeError(f"{where} is not valid YAML ({one_line(e, 200)})",
                           "fix the syntax; tags such as !!python/... are never accepted") from None
    finally:
        loader.dispose()


def read(path: Path, what: str, missing_hint: str) -> Any:
    """The parsed YAML file at `path` ({} when empty).

    Raises:
        VlaedgeError: missing, not a regular file, larger than `MAX_BYTES`, not UTF-8 text, or as `parse`.
    """
    if not path.is_file():
        raise VlaedgeError(f"{what}: {path} does not exist", missing_hint)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise VlaedgeError(f"{what}: {path} is {size} bytes, more than a recipe ever needs ({MAX_BYTES})",
                           "pass the YAML file itself")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise VlaedgeError(f"{what}: {path} is UTF-16 text", "save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 1]
        raise VlaedgeError(f"{what}: {path} is not UTF-8 text (byte {e.start} is {bad!r})",
                           "pass the YAML file itself, saved as UTF-8") from None
    if "\x00" in text:
        raise VlaedgeError(f"{what}: {path} holds NUL bytes: it is not a text file",
                           "pass the YAML file itself")
    return parse(text, f"{what}: {path}") or {}
