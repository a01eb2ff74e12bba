"""The generated parts of the documentation site (docs/reference/), so they cannot drift from the code.

Each block sits in a docs page between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers, with
hand-written text around it: every command and option of the typer app (`vlaedge.cli`), every recipe field
(`vlaedge.recipe.recipe_reference`), the exit codes and what each failure prints (`vlaedge.errors.describe`)
and the report.json / profile.json fields `gate` validates (`vlaedge.check.report_schema`).

`python -m vlaedge.docs_reference` rewrites the blocks (`make docs` runs it before building the site);
`--check` only says which are stale (exit 1). tests/test_docs.py fails when a committed block differs.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent  # the checkout: docs/ is not part of the installed package


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


# --- commands and options ------------------------------------------------------------------------------


def cli_reference() -> str:
    """Every command of the `vlaedge` app with its usage and a table of its arguments and options, in
    the order `vlaedge --help` lists them, as their --help shows them (typer's help records)."""
    import click
    import typer

    from vlaedge.cli import app

    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="vlaedge")
    blocks = ["## Global options\n\nGiven before the command: `vlaedge [--debug] [--quiet] COMMAND ...`.\n\n"
              + _param_table(group, ctx)]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        usage = command.get_usage(sub).removeprefix("Usage: ").strip()
        doc = "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(command.help or "").split("\n\n"))
        table = _param_table(command, sub)
        blocks.append(f"## `vlaedge {name}`\n\n{doc}\n\n```text\n{usage}\n```\n\n{table}")
    return "\n\n".join(blocks)


def _param_table(command, ctx) -> str:
    rows = ["| argument / option | meaning | default, range |", "| --- | --- | --- |"]
    for param in command.get_params(ctx):
        if param.name == "help":
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        name, text = record
        meaning, _, extra = text.rpartition("  [") if text.endswith("]") and "  [" in text else (text, "", "")
        rows.append(f"| `{_cell(name)}` | {_cell(meaning)} | {_cell(extra.removesuffix(']'))} |")
    return "\n".join(rows) if len(rows) > 2 else "No arguments or options."


# --- exit codes ----------------------------------------------------------------------------------------


def exit_codes_reference() -> str:
    """What each way a command can end prints and exits with, rendered by the CLI's one error boundary
    (`vlaedge.errors.describe`) on example exceptions; then the optional packages and their extras."""
    from vlaedge.check.gate import Check, GateResult
    from vlaedge.errors import EXTRAS, GateFailed, VlaedgeError, describe

    missing = ModuleNotFoundError("No module named 'transformers'", name="transformers")
    cases = [
        ("a user error (`VlaedgeError`): bad input or a missing file, with its fix",
         VlaedgeError("checkpoint: /x/model.safetensors is truncated (12 of 4096 bytes)",
                      "re-download it or train one with 'vlaedge train'")),
        ("a budget violated or a check inconclusive (`GateFailed`)", GateFailed(GateResult(
            [Check("max_drift_mean_pct", "fail", 17.0, 3.0, "<=", "% of range")], "cpu").failure_line())),
        ("an optional package is missing (an `ImportError` naming it)", missing),
        ("the environment refused (`OSError`: a full disk, a read-only folder)",
         OSError(28, "No space left on device", "/x/runs/demo")),
        ("anything else: a bug in vlaedge (`--debug` shows the traceback)",
         ZeroDivisionError("division by zero")),
    ]
    rows = ["| how the command ended | exit code | what it prints (stderr) |", "| --- | --- | --- |",
            "| done, every budget met (or none given) | 0 | the results |"]
    for what, exc in cases:
        code, lines = describe(exc)
        rows.append(f"| {what} | {code} | {'<br>'.join(f'`{_cell(line)}`' for line in lines)} |")
    extras = ["| missing package | fix line |", "| --- | --- |"]
    extras += [f"| `{package}` | `pip install 'vlaedge[{extra}]'` |" for package, extra in EXTRAS.items()]
    return ("Generated from `vlaedge.errors.describe` on example errors (the messages are examples; the "
            "lines' form is the code's):\n\n" + "\n".join(rows)
            + "\n\nOptional packages and the extra that installs each (`vlaedge.errors.EXTRAS`):\n\n"
            + "\n".join(extras))


# --- report schemas ------------------------------------------------------------------------------------


def schema_reference() -> str:
    """The fields of report.json and profile.json that `gate` validates, one table per part, from the
    pydantic models in `vlaedge.check.report_schema`."""
    from vlaedge.check import report_schema
    from vlaedge.check.report import SCHEMA
    from vlaedge.commands import PROFILE_SCHEMA

    doc = " ".join(inspect.cleandoc(report_schema.__doc__ or "").split())
    blocks = [f"{doc}\n\nreport.json: `\"schema\": \"{SCHEMA}\"`; profile.json: "
              f"`\"schema\": \"{PROFILE_SCHEMA}\"`, its other fields as report.json's `profile`."]
    for model in _models(report_schema.Report):
        rows = ["| field | type | required / default | range |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            default = "required" if field.is_required() else f"`{json.dumps(field.default)}`"
            rows.append(f"| `{field.alias or name}` | {_schema_type(field.annotation)} | {default} | "
                        f"{_bounds(field)} |")
        what = " ".join(inspect.cleandoc(model.__doc__ or "").split()) if model.__doc__ else ""
        title = "report.json (top level)" if model is report_schema.Report else model.__name__
        blocks.append(f"### {title}\n\n" + (f"{what}\n\n" if what else "") + "\n".join(rows))
    return "\n\n".join(blocks)


def _models(model: type[BaseModel], seen: list | None = None) -> list[type[BaseModel]]:
    """`model` and every model its fields use, depth first in field order, each once."""
    seen = [] if seen is None else seen
    if model not in seen:
        seen.append(model)
        for field in model.model_fields.values():
            for sub in _submodels(field.annotation):
                _models(sub, seen)
    return seen


def _submodels(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _submodels(arg)]


def _schema_type(annotation) -> str:
    args, origin = get_args(annotation), get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        kinds = [_schema_type(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_schema_type(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "at least"}
    found = [f"{op} {getattr(m, key)}" for m in field.metadata for key, op in ops.items()
             if getattr(m, key, None) is not None]
    return ", ".join("length " + b if b.startswith("at least") else b for b in found)


# --- the blocks and where they live ----------------------------------------------------------------------


def _recipe_block() -> str:
    from vlaedge.recipe import recipe_reference

    return recipe_reference()


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {  # marker name -> (page under docs/, generator)
    "cli-reference": ("reference/cli.md", cli_reference),
    "recipe-reference": ("reference/recipes.md", _recipe_block),
    "exit-codes": ("reference/exit-codes.md", exit_codes_reference),
    "report-schemas": ("reference/report-schemas.md", schema_reference),
}


def render(text: str, name: str, content: str, where: str = "page") -> str:
    """`text` with the block between `<!-- name:start -->` and `<!-- name:end -->` replaced by `content`.

    Raises:
        SystemExit: `text` lacks the markers.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not (found_start and found_end):
        raise SystemExit(f"{where}: no {start} ... {end} block to rewrite")
    return f"{head}{start}\n{content}\n{end}{tail}"


def stale(docs: Path = ROOT / "docs") -> list[str]:
    """The pages (relative to `docs`) whose generated block differs from the generator's output."""
    out = []
    for name, (page, generate) in BLOCKS.items():
        text = (docs / page).read_text(encoding="utf-8")
        if render(text, name, generate(), str(docs / page)) != text:
            out.append(page)
    return out


def write(docs: Path = ROOT / "docs") -> list[str]:
    """Rewrites every generated block under `docs`; returns the pages that changed."""
    changed = []
    for name, (page, generate) in BLOCKS.items():
        path = docs / page
        text = path.read_text(encoding="utf-8")
        new = render(text, name, generate(), str(path))
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def main(argv: list[str]) -> int:
    docs = ROOT / "docs"
    if not docs.is_dir():
        raise SystemExit(f"{docs}: not found (run this from a checkout of vlaedge)")
    if "--check" in argv:
        pages = stale(docs)
        print("\n".join(f"docs/{p}: out of date; run python -m vlaedge.docs_reference" for p in pages)
              or "docs: generated blocks are up to date")
        return 1 if pages else 0
    changed = write(docs)
    print(f"docs: rewrote {', '.join(changed)}" if changed else "docs: generated blocks are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
