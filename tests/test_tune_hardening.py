"""`vlaedge tune` keeps `vlaedge compress`'s discipline (issue 25): outputs that are or lie in an input are
refused, one lock per output, a failed run leaves nothing (and a failed resume the previous result), float
options are finite, the resume cache is validated entry by entry, --force/--quiet/--json mean what they mean
for compress, and nothing within budget writes no recipe (exit 1). The briefly trained test policy on the
6-episode `tiny_run` dataset (few frames to judge) and a one-variant space (dynamic quantization: seconds);
the CLI's quick space is narrowed to that variant."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli
from test_tune import FAST, ROOT

from vlaedge.errors import VlaedgeError

SPACE = {"dynamic-pt": {"mode": "dynamic", "per_channel": False}}  # = CPU_SPACE["dynamic-pt"]
QUICKER = [*FAST, "verify.eval_frames=32", "quantize.num_calib_frames=32", "verify.profile_runs=5"]
SETS = [word for item in QUICKER for word in ("--set", item)]


@pytest.fixture(autouse=True)
def _quick_is_one_variant(monkeypatch):
    """`--space quick` is SPACE (dynamic-pt alone) in these tests."""
    monkeypatch.setattr("vlaedge.tune.space.QUICK", ("dynamic-pt",))


@pytest.fixture(scope="module")
def inputs(trained_checkpoint, tiny_run) -> tuple[Path, Path]:
    """(the trained checkpoint, the tiny dataset)."""
    return trained_checkpoint("chunk"), tiny_run.data


@pytest.fixture(scope="module")
def first(inputs, tmp_path_factory) -> Path:
    """A finished tune folder (resumed by the tests from a copy: see `resume_copy`)."""
    out = tmp_path_factory.mktemp("first") / "tune"
    run_tune(inputs, out, log=lambda _: None)
    return out


def run_tune(inputs: tuple[Path, Path], out: Path, space: dict = SPACE, log=print):
    """`tune` as the CLI runs it (its search frames: the CLI resumes what this wrote)."""
    from vlaedge.recipe import load_recipe
    from vlaedge.tune import tune

    recipe = load_recipe(ROOT / "recipes/cpu-int8.yaml", QUICKER)
    return tune(recipe, out, *inputs, max_minutes=3, space=space, log=log)


def resume_copy(first: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(first, tmp_path / "tune"))


def tune_args(inputs: tuple[Path, Path], *extra) -> list:
    return ["tune", inputs[0], "--data", inputs[1], *SETS, "--space", "quick", *extra]


def snapshot(root: Path) -> dict:
    """Every path under `root` (files with their bytes), to show that nothing was written or removed."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def refused_in_one_line(code: int, text: str, *needles: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "internal error:"))]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error:"), text
    assert "Traceback" not in text and lines[-1].lstrip().startswith("fix:"), text
    assert all(needle in errors[0] for needle in needles), text


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity (which no strict JSON parser accepts)."""
    def bad(token):
        raise ValueError(f"{token} in JSON")
    return json.loads(text, parse_constant=bad)


@pytest.mark.parametrize("case", ["checkpoint", "inside-checkpoint", "run-dir", "recipe-dir", "foreign",
                                  "cwd"])
def test_an_out_that_is_or_holds_an_input_is_refused_before_any_work(case, tmp_path, inputs, capsys,
                                                                      monkeypatch):
    ckpt = Path(shutil.copytree(inputs[0], tmp_path / "ckpt"))
    run = tmp_path / "run"  # a compress run folder: its manifest lists its files with their sha256
    run.mkdir()
    (run / "model.onnx").write_bytes(b"onnx")
    (run / "manifest.json").write_text(json.dumps({"outputs": {"model.onnx": {"sha256": "0" * 64}}}))
    recipes = tmp_path / "d"
    recipes.mkdir()
    shutil.copy(ROOT / "recipes/cpu-int8.yaml", recipes / "recipe.yaml")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a tune output")
    monkeypatch.chdir(tmp_path)
    out, recipe, needle = {
        "checkpoint": (ckpt, [], str(ckpt)), "inside-checkpoint": (ckpt / "tune", [], str(ckpt)),
        "run-dir": (run, [], str(run)),
        "recipe-dir": (recipes, ["--recipe", recipes / "recipe.yaml"], str(recipes)),
        "foreign": (tmp_path / "mine", [], str(tmp_path / "mine")),
        "cwd": (Path("."), [], "folder you are in")}[case]
    before = snapshot(tmp_path)
    args = tune_args((ckpt, inputs[1]), *recipe, "--max-minutes", "0.01", "--out", out)
    code, text = run_cli(args, capsys, monkeypatch)
    refused_in_one_line(code, text, needle)
    assert snapshot(tmp_path) == before


def test_a_second_tune_on_the_same_out_is_refused_while_the_first_holds_its_lock(tmp_path, inputs,
                                                                                 capsys, monkeypatch):
    from vlaedge.artifact import OutputDir

    out = tmp_path / "tune"
    with OutputDir(out, command="tune"):  # what a running tune holds
        code, text = run_cli(tune_args(inputs, "--out", out), capsys, monkeypatch)
    refused_in_one_line(code, text, f"another vlaedge tune is writing {out} (pid {os.getpid()})")
    assert list(tmp_path.iterdir()) == []  # neither run left anything, the lock file included


def test_a_failed_tune_leaves_nothing_and_a_failed_resume_leaves_the_previous_result(
        first, tmp_path, inputs, capsys, monkeypatch):
    import vlaedge.compress.export

    def refuse(*args, **kwargs):
        raise VlaedgeError("export: refused by the test", "nothing to fix")

    monkeypatch.setattr(vlaedge.compress.export, "export_onnx", refuse)
    args = tune_args(inputs, "--out", tmp_path / "a" / "b" / "tune")
    code, text = run_cli(args, capsys, monkeypatch)
    refused_in_one_line(code, text, "refused by the test")
    assert list(tmp_path.iterdir()) == []  # no tune folder, no empty variants/, no parents, no lock
    resume_copy(first, tmp_path)
    before = snapshot(tmp_path)
    args = tune_args(inputs, "--out", tmp_path / "tune")
    code, text = run_cli(args, capsys, monkeypatch)
    refused_in_one_line(code, text, "refused by the test")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_max_minutes_must_be_finite_and_positive(value, tmp_path, inputs, capsys, monkeypatch):
    code, text = run_cli(tune_args(inputs, "--max-minutes", value, "--out",
                                   tmp_path / "t"), capsys, monkeypatch)
    refused_in_one_line(code, text, f"--max-minutes {value}")
    assert "positive time box" in text and list(tmp_path.iterdir()) == []


def _corrupt(entry: dict, name: str) -> str:
    """The text of a cached entry broken the way `name` says."""
    entry = {**entry, "name": name, "model": f"variants/{name}.onnx"}
    if name == "list":
        return json.dumps([entry])
    if name == "not-json":
        return "{\"name\": "
    broken = {"missing-field": lambda e: e.pop("drift"), "extra-field": lambda e: e.update(comment="hi"),
              "wrong-type": lambda e: e.update(file_bytes="12"), "nan-drift": lambda e: e["drift"].update(
                  mean_pct=float("nan")), "inf-seconds": lambda e: e.update(seconds=float("inf")),
              "escape": lambda e: e.update(model="../../etc/hostname"),
              "absolute": lambda e: e.update(model="/etc/hostname"), "truncated-onnx": lambda e: None}
    broken[name](entry)
    return json.dumps(entry)  # NaN and Infinity as Python writes them


BAD = ["list", "not-json", "missing-field", "extra-field", "wrong-type", "nan-drift", "inf-seconds", "escape",
       "absolute", "truncated-onnx"]


def _write_entries(variants: Path, names: list[str]) -> dict:
    """Copies of the valid dynamic-pt entry, named and broken as `names` say; returns the valid entry."""
    entry = json.loads((variants / "dynamic-pt.json").read_text())
    onnx = (variants / "dynamic-pt.onnx").read_bytes()
    for name in names:
        (variants / f"{name}.json").write_text(_corrupt(json.loads(json.dumps(entry)), name))
        (variants / f"{name}.onnx").write_bytes(onnx[: len(onnx) // 2] if name == "truncated-onnx" else onnx)
    return entry


@pytest.mark.parametrize("name", BAD)
def test_an_invalid_cached_entry_is_discarded_with_one_line(name, first, tmp_path):
    from vlaedge.recipe import Budgets
    from vlaedge.tune.cache import cached

    previous = resume_copy(first, tmp_path) / "variants"
    entry = _write_entries(previous, [name])
    (tmp_path / "staging").mkdir()
    lines = []
    assert cached(previous, tmp_path / "staging", name, entry["key"], Budgets(), lines.append) is None
    assert len(lines) == 1 and lines[0].startswith(f"tune: cached variant {name} is invalid ("), lines
    assert lines[0].endswith("; rebuilding it") and list((tmp_path / "staging").iterdir()) == []
    valid = cached(previous, tmp_path / "staging", "dynamic-pt", entry["key"], Budgets(), lines.append)
    assert valid is not None and len(lines) == 1  # the valid entry: reused, linked into the staging folder
    for suffix in (".json", ".onnx"):
        linked = tmp_path / "staging" / f"dynamic-pt{suffix}"
        assert linked.read_bytes() == (previous / f"dynamic-pt{suffix}").read_bytes()


def test_a_resume_rebuilds_invalid_entries_and_writes_strict_json(first, tmp_path, inputs):
    out = resume_copy(first, tmp_path)
    bad = ["list", "nan-drift", "escape", "truncated-onnx"]
    _write_entries(out / "variants", bad)
    lines = []
    result = run_tune(inputs, out, dict.fromkeys(["dynamic-pt", *bad], SPACE["dynamic-pt"]), lines.append)
    for name in bad:
        notes = [line for line in lines if line.startswith(f"tune: cached variant {name} is invalid (")]
        assert len(notes) == 1 and notes[0].endswith("; rebuilding it"), (name, lines)
    assert "tune: dynamic-pt: cached (drift mean" in "\n".join(lines)  # a valid entry is still reused
    assert f"tune: {len(bad) + 1} variants: {len(bad)} built, 1 from cache" in lines
    data = strict_json((out / "tune.json").read_text())
    for row in data["rows"]:
        assert row["model"] == f"variants/{row['name']}.onnx" and (out / row["model"]).stat().st_size > 1000
        assert row["fp32"] or (out / "variants" / f"{row['name']}.json").is_file()  # cached for the next run
    assert {r["name"] for r in data["rows"]} == {"fp32", "dynamic-pt", *bad} and result.chosen is not None


def _cli(args: list, capsys, monkeypatch) -> tuple[int, str, str]:
    """`vlaedge ARGS` in-process: (exit code, stdout, stderr)."""
    from vlaedge.cli import main

    monkeypatch.setattr(sys, "argv", ["vlaedge", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_json_prints_one_object_and_quiet_drops_progress(first, tmp_path, inputs, capsys,
                                                        monkeypatch):
    out = resume_copy(first, tmp_path)
    code, stdout, stderr = _cli(tune_args(inputs, "--json", "--quiet", "--out", out),
                                capsys, monkeypatch)
    summary = strict_json(stdout)  # stdout holds the one object and nothing else
    written = json.loads((out / "tune.json").read_text())
    assert code == 0 and summary["command"] == "tune" and summary["verdict"] == "pass"
    assert summary["chosen"] == written["chosen"] and summary["paths"]["recipe"] == str(out / "recipe.yaml")
    assert summary["variants"] == {"total": 1, "built": 0, "from_cache": 1, "not_built": 0, "not_explored": 0}
    assert "cached" not in stderr and "timing" not in stderr  # no progress lines with --quiet


def test_force_starts_over_instead_of_resuming(first, tmp_path, inputs, capsys, monkeypatch):
    out = resume_copy(first, tmp_path)
    (out / "variants" / "stale.onnx").write_bytes(b"left by an earlier run")
    code, text = run_cli(tune_args(inputs, "--force", "--out", out), capsys, monkeypatch)
    assert code == 0 and "cached" not in text and "tune: 1 variant: 1 built, 0 from cache" in text, text
    assert not (out / "variants" / "stale.onnx").exists() and (out / "recipe.yaml").is_file()


def test_nothing_within_budget_writes_no_recipe_and_exits_1(first, tmp_path, inputs, capsys,
                                                            monkeypatch):
    out = resume_copy(first, tmp_path)
    args = tune_args(inputs, "--set", "budgets.max_file_size_mb=0.000001", "--out", out)
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "Traceback" not in text, text
    assert [line for line in text.splitlines() if line.startswith("gate failed:")] == [
        "gate failed: tune: no variant, FP32 included, is within every budget; every one fails "
        "max_file_size_mb (see the table); no recipe.yaml written"], text
    assert "tune: 1 variant: 0 built, 1 from cache" in text and "reproduce the pick" not in text
    assert not (out / "recipe.yaml").exists() and "Reproduce the pick" not in (out / "tune.md").read_text()
    data = strict_json((out / "tune.json").read_text())
    assert data["chosen"] is None and data["recipe_out"] is None and data["reproduce"] is None
