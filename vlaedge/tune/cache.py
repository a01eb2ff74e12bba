"""The tuner's resume cache: each built variant's result as `variants/NAME.json` beside its model, keyed by
everything that decides it (`build.variant_key`).

A rerun on the same output directory reads the previous run's entries and trusts none of them: an entry is
reused only when it is a `Measured` object (every field, no other, each of its type), every number in it
is finite, its model is `variants/NAME.onnx` of that folder (a plain file, its external data beside it) and
the model's sha256 is the one recorded when it was built. An entry that fails any of these is discarded
with one line (`tune: cached variant NAME is invalid (why); rebuilding it`) and the variant is rebuilt; an
entry whose key differs (other settings, checkpoint, data or frames) is rebuilt without a word. A reused
entry's files are hard-linked (or copied) into the new run's staging folder, so the previous output
directory is never written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import types
import typing
from dataclasses import is_dataclass
from pathlib import Path

from vlaedge.artifact import model_sha256
from vlaedge.check.drift import DriftReport
from vlaedge.errors import VlaedgeError
from vlaedge.tune.build import Measured, judge_drift

DRIFT_FIELDS = ("search_drift", "drift")  # Measured fields that hold a DriftReport.to_dict()


def cached(previous: Path | None, folder: Path, name: str, key: str, budgets, log) -> Measured | None:
    """The previous run's result of variant `name`, linked into `folder`, when it is valid and its key
    matches; else None (the caller rebuilds it). Its budget verdicts are judged again against `budgets`.

    Args:
        previous: the previous run's `variants/` folder (None: nothing to resume, e.g. --force).
        folder: this run's `variants/` folder (staging).
        name: the variant.
        key: `variant_key` of the variant now.
        budgets: the drift budgets now.
        log: where the line about an invalid entry goes.
    """
    if previous is None or not (previous / f"{name}.json").is_file():
        return None
    try:
        data = _load(previous / f"{name}.json")
        if data["key"] != key:
            return None
        files = _model_files(previous, data)
    except _Invalid as e:
        log(f"tune: cached variant {name} is invalid ({e}); rebuilding it")
        return None
    for file in [*files, previous / f"{name}.json"]:  # the entry travels too: the next run resumes it
        _link(file, folder / file.name)
    measured = Measured(**data)
    measured.drift_failures = judge_drift(measured.drift, budgets)  # the budgets may have changed
    measured.search_failures = judge_drift(measured.search_drift, budgets)
    return measured


def save(folder: Path, measured: Measured) -> bool:
    """Writes `measured` as `folder/NAME.json` (whole or not at all). A result with a NaN or infinite figure
    is not cached (a rerun builds it again): returns False then."""
    data = measured.to_dict()
    if _non_finite(data):
        return False
    tmp = folder / f".{measured.name}.json.partial"
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    tmp.replace(folder / f"{measured.name}.json")
    return True


class _Invalid(Exception):
    """Why a cached entry cannot be reused (printed in the rebuilding line)."""


def _load(path: Path) -> dict:
    """The entry at `path`, checked against `Measured`'s fields and types (and DriftReport's for drift)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Invalid(f"{path.name} is not readable JSON: {e}") from None
    problem = _mismatch(data, Measured, "entry")
    if problem is None and data["name"] != path.stem:
        problem = f"its name is {data['name']!r}"
    if problem is None:
        problem = _non_finite(data)
    if problem:
        raise _Invalid(problem)
    return data


def _mismatch(value, hint, where: str) -> str | None:
    """What in `value` does not match the type `hint` (a dataclass: a dict of exactly its fields), or None."""
    if is_dataclass(hint):
        if not isinstance(value, dict):
            return f"{where} is a {type(value).__name__}, not an object"
        fields = typing.get_type_hints(hint)
        for label, names in (("missing", set(fields) - set(value)), ("unknown", set(value) - set(fields))):
            if names:
                return f"{where} has {label} field(s) {', '.join(sorted(names))}"
        for field, field_hint in fields.items():
            if field in DRIFT_FIELDS and hint is Measured:
                field_hint = DriftReport
            inner = field if where == "entry" else f"{where}.{field}"
            problem = _mismatch(value[field], field_hint, inner)
            if problem:
                return problem
        return None
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_mismatch(value, arm, where) for arm in args]
        return None if None in problems else problems[0]
    if origin is list and isinstance(value, list) and args:
        return next((p for i, v in enumerate(value) if (p := _mismatch(v, args[0], f"{where}[{i}]"))), None)
    if _is(value, origin):
        return None
    expected = getattr(origin, "__name__", str(origin))
    return f"{where} is {json.dumps(value)[:40]}, not {'null' if origin is type(None) else expected}"


def _is(value, kind) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _non_finite(value, where: str = "entry") -> str | None:
    """The first NaN or infinite number in `value` (nested dicts and lists), as "where is nan", or None."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        bad = isinstance(value, float) and not math.isfinite(value)
        return f"{where} is {value}" if bad else None
    for k, v in items:
        problem = _non_finite(v, f"{k}" if where == "entry" else f"{where}.{k}")
        if problem:
            return problem
    return None


def _model_files(previous: Path, data: dict) -> list[Path]:
    """The entry's model and its external data files, when the model is `variants/NAME.onnx` of the previous
    folder, a plain file with its data beside it, and its sha256 is the recorded one."""
    expected = f"{previous.name}/{data['name']}.onnx"
    if data["model"] != expected:
        raise _Invalid(f"its model {data['model']!r} is not {expected} inside the tune folder")
    model = previous / f"{data['name']}.onnx"
    if model.is_symlink() or not model.is_file():
        raise _Invalid(f"{model} is missing or not a plain file")
    try:
        digest = model_sha256(model)
    except (OSError, VlaedgeError) as e:
        raise _Invalid(f"{model} cannot be read: {getattr(e, 'message', e)}") from None
    if digest != data["model_sha256"]:
        raise _Invalid(f"{model.name} changed since it was built (sha256 {digest[:12]}, the entry says "
                       f"{data['model_sha256'][:12]})")
    from vlaedge.onnx_file import external_data_files

    files = [model, *external_data_files(model, "tune")]  # present: model_sha256 hashed them
    if any(f.parent.resolve() != previous.resolve() or f.is_symlink() for f in files):
        raise _Invalid(f"{model.name} keeps its weights outside {previous}")
    return files


def _link(source: Path, target: Path) -> None:
    """`target` is `source` (a hard link, or a copy where links are not possible); `source` is not written."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
