"""Bad input, one parametrised test per class of failure: code from a checkpoint never runs without
--trust-code; nothing reaches the user as a traceback or exits 1 for a crash; hostile YAML cannot hang the
tool; corrupt weights are refused by name; outputs are never clobbered, left half-written or locked
open. Each asserts the exit code, a single-line message (plus its fix line) and the file system after."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cli_runner import run_cli
from test_python_adapter import SPEC

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "vlaedge" / "recipes" / "cpu-int8.yaml"
DEFAULT = ROOT / "vlaedge" / "assets" / "default_policy"


def assert_refused(code: int, text: str, *needles: str) -> None:
    """Exit 2, no traceback, one user-error line (not "internal error") and at most a fix line, naming
    each needle."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error:", "internal error:"))]
    assert not any(ln.startswith("internal error:") for ln in lines), text
    assert code == 2, text
    assert "Traceback" not in text and len(errors) == 1, text
    fix = lines[lines.index(errors[0]) + 1:]
    assert len(fix) <= 1 and all(ln.startswith("  fix:") for ln in fix), text
    for needle in needles:
        assert needle in errors[0] + " ".join(fix), text


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- 1. code from a checkpoint runs only with --trust-code ------------------------------------------------


@pytest.fixture
def hostile_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A python checkpoint whose factory would create `marker` (as subprocess:call would run a shell)."""
    marker = tmp_path / "ran"
    ckpt = tmp_path / "hostile"
    ckpt.mkdir()
    config = {**SPEC, "factory": "pathlib:Path.touch", "factory_kwargs": {"self": str(marker)}}
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt, marker


@pytest.mark.parametrize("command", [
    ["export", "{ckpt}", "--out", "{out}/m.onnx"],
    ["compress", "{ckpt}", "--recipe", "cpu-int8", "--out", "{out}/run"],
    ["verify", "--checkpoint", "{ckpt}", "--out", "{out}/verify"],
    ["rollout", "{ckpt}", "--episodes", "1"],
])
def test_checkpoint_code_needs_trust_code(command, hostile_checkpoint, tmp_path, capsys, monkeypatch):
    ckpt, marker = hostile_checkpoint
    out = tmp_path / "out"
    args = [a.format(ckpt=ckpt, out=out) for a in command]
    code, text = run_cli(args, capsys, monkeypatch)
    assert_refused(code, text, "pathlib:Path.touch", "--trust-code")
    assert not marker.exists() and not out.exists()


def test_trust_code_runs_the_factory_and_the_manifest_records_it(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "toy"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({**SPEC, "factory": "builtins:dict"}))
    code, text = run_cli(["export", ckpt, "--out", tmp_path / "m.onnx", "--trust-code"], capsys, monkeypatch)
    assert_refused(code, text, "builtins:dict", "not a torch.nn.Module")  # it ran, and was refused
    from vlaedge.models.python import PythonPolicy, PythonPolicySpec

    PythonPolicy(PythonPolicySpec.model_validate(SPEC)).save(tmp_path / "good")
    code, text = run_cli(["compress", tmp_path / "good", "--recipe", "cpu-int8", "--out", tmp_path / "run",
                          "--set", "verify=null", "--set", "budgets=null", "--set", "quantize.keep=[]",
                          "--trust-code"], capsys, monkeypatch)
    assert code == 0, text
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["consent"] == {"trust_code": True, "allow_pickle": False}


STOPPING_FACTORIES = {  # policy.py: what it does -> (the code, the words the error line must carry)
    "sys.exit(0) at import": ("import sys\nsys.exit(0)\n", "importing 'policy.py'", "sys.exit(0)"),
    "SystemExit(3) at import": ("raise SystemExit(3)\n", "importing 'policy.py'", "sys.exit(3)"),
    "exit() at import": ("exit()\n", "importing 'policy.py'", "sys.exit(None)"),
    "KeyboardInterrupt at import": ("raise KeyboardInterrupt\n", "importing 'policy.py'",
                                    "KeyboardInterrupt"),
    "sys.exit(0) when called": ("import sys\ndef build(**kw):\n    sys.exit(0)\n", "factory policy.py:build",
                                "sys.exit(0)"),
    "sys.exit('bye') when called": ("import sys\ndef build(**kw):\n    sys.exit('bye')\n",
                                    "factory policy.py:build", "sys.exit('bye')"),
    "KeyboardInterrupt when called": ("def build(**kw):\n    raise KeyboardInterrupt\n",
                                      "factory policy.py:build", "KeyboardInterrupt"),
}


@pytest.mark.parametrize("case", sorted(STOPPING_FACTORIES))
def test_a_factory_that_exits_or_interrupts_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    """A checkpoint's sys.exit(0) must not make compress exit 0 with nothing written (a CI pass)."""
    code_text, *needles = STOPPING_FACTORIES[case]
    ckpt = tmp_path / "stopper"
    ckpt.mkdir()
    (ckpt / "policy.py").write_text(code_text)
    (ckpt / "config.json").write_text(json.dumps({**SPEC, "factory": "policy.py:build"}))
    out = tmp_path / "run"
    code, text = run_cli(["compress", ckpt, "--recipe", "cpu-int8", "--out", out, "--trust-code"],
                         capsys, monkeypatch)
    assert_refused(code, text, *needles, "never exit or interrupt")
    assert not out.exists() and listing(tmp_path) == ["stopper", "stopper/config.json", "stopper/policy.py"]


# --- 2. no traceback, and never exit 1 for a crash ---------------------------------------------------------


def _reference_config(tmp_path: Path, **changes) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(DEFAULT, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["config"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def _recipe_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    return path


def _truncated_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x04abc")
    return path


BAD_INPUTS = {
    "negative dimension": (lambda t: ["export", _reference_config(t, dim=-128), "--out", t / "m.onnx"],
                           "dim"),
    "absurd chunk": (lambda t: ["export", _reference_config(t, chunk=10**9), "--out", t / "m.onnx"], "chunk"),
    "string dimension": (lambda t: ["export", _reference_config(t, dim="128"), "--out", t / "m.onnx"], "dim"),
    "checkpoint is config.json": (lambda t: ["export", DEFAULT / "config.json", "--out", t / "m.onnx"],
                                  "is a file"),
    "threads 1e20": (lambda t: ["compress", "--recipe", RECIPE, "--set", "verify.threads=1e20",
                                "--out", t / "run"], "verify.threads"),
    "20000 nested [": (lambda t: ["compress", "--recipe", _recipe_file(t, b"[" * 20000), "--out", t / "r"],
                       "nested deeper"),
    "UTF-16 recipe": (lambda t: ["compress", "--recipe", _recipe_file(t, RECIPE.read_text().encode("utf-16")),
                                 "--out", t / "r"], "UTF-16"),
    "binary recipe": (lambda t: ["compress", "--recipe", _recipe_file(t, bytes(range(256)) * 4),
                                 "--out", t / "r"], "not UTF-8"),
    "--set unclosed": (lambda t: ["compress", "--recipe", RECIPE, "--set", "quantize.keep=[unclosed",
                                  "--out", t / "r"], "not valid YAML"),
    "--set python tag": (lambda t: ["compress", "--recipe", RECIPE, "--set",
                                    "quantize.keep=!!python/object/apply:os.system ['true']",
                                    "--out", t / "r"], "not valid YAML"),
    "verify --frames -3": (lambda t: ["verify", "--frames", "-3", "--out", t / "v"], "eval_frames"),
    "estimate truncated onnx": (lambda t: ["estimate", _truncated_onnx(t), "--target", "agx-orin-64gb"],
                                "model.onnx"),
    "engine truncated onnx": (lambda t: ["engine", _truncated_onnx(t), "--target", "agx-orin-64gb",
                                         "--out", t / "e"], "model.onnx"),
    "--out under /proc": (lambda t: ["export", "--out", "/proc/vlaedge-test/m.onnx"], "/proc"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    make, needle = BAD_INPUTS[case]
    code, text = run_cli(make(tmp_path), capsys, monkeypatch)
    assert_refused(code, text, needle)


def _report(tiny_report: Path, tmp_path: Path, mutate) -> Path:
    report = json.loads(tiny_report.read_text())
    mutate(report)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


@pytest.fixture(scope="module")
def tiny_report(tiny_run, tmp_path_factory) -> Path:
    """A real report.json from `vlaedge verify` on the untrained tiny run (schema-complete)."""
    from vlaedge.artifact import resolve_model
    from vlaedge.pipeline import verify_run
    from vlaedge.recipe import VerifyConfig

    out = tmp_path_factory.mktemp("tiny-report") / "verify"
    resolved = resolve_model(tiny_run.onnx, tiny_run.checkpoint, tiny_run.data)
    verify_run(resolved, VerifyConfig(eval_frames=16, profile_runs=5, closed_loop_episodes=0), None, None,
               out, log=lambda _: None)
    return out / "report.json"


MALFORMED = {
    "drift is a string": lambda r: r.__setitem__("drift", "oops"),
    "mean_pct is a string": lambda r: r["drift"].__setitem__("mean_pct", "x"),
    "per_dim missing": lambda r: r["drift"].pop("per_dim"),
    "per_dim empty": lambda r: r["drift"].__setitem__("per_dim", []),
    "dimension without name": lambda r: r["drift"]["per_dim"][0].pop("name"),
    "profile is a number": lambda r: r.__setitem__("profile", 5),
    "profile without models": lambda r: r.__setitem__("profile", {"models": []}),
    "latency p99 missing": lambda r: r["profile"]["models"][0]["latency"].pop("p99_ms"),
    "closed_loop is a list": lambda r: r.__setitem__("closed_loop", [1]),
    "NaN drift": lambda r: r["drift"].__setitem__("mean_pct", float("nan")),
    "negative file size": lambda r: r["candidate"].__setitem__("file_bytes", -1),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_gate_refuses_a_malformed_report_by_field(case, tiny_report, tmp_path, capsys, monkeypatch):
    path = _report(tiny_report, tmp_path, MALFORMED[case])
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("max_drift_mean_pct: 50\nmax_latency_p99_ms: 1000\n")
    args = ["gate", path, "--budgets", budgets, "--out", tmp_path / "gated"]
    code, text = run_cli(args, capsys, monkeypatch)
    assert_refused(code, text, "report:")
    assert not (tmp_path / "gated").exists()


COMMANDS = {  # command line -> the function it reaches, replaced by one that fails unexpectedly
    "compress": (["compress", "--out", "{t}/run"], "vlaedge.pipeline.load_inputs"),
    "export": (["export", "--out", "{t}/m.onnx"], "vlaedge.compress.export.export_onnx"),
    "verify": (["verify", "--out", "{t}/v"], "vlaedge.pipeline.verify_run"),
    "profile": (["profile", "{onnx}", "--out", "{t}/p"], "vlaedge.commands.run_profile"),
    "gate": (["gate", "{report}", "--budgets", str(RECIPE)], "vlaedge.commands.run_gate"),
    "rollout": (["rollout", "--episodes", "1"], "vlaedge.check.verify.closed_loop"),
    "info": (["info"], "vlaedge.info.collect_info"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("debug", [False, True])
def test_no_command_prints_a_traceback_without_debug(name, debug, tiny_run, tiny_report, tmp_path, capsys,
                                                     monkeypatch):
    import importlib

    args, target = COMMANDS[name]
    module, attr = target.rsplit(".", 1)

    def broken(*_, **__):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(importlib.import_module(module), attr, broken)
    args = [a.format(t=tmp_path, onnx=tiny_run.onnx, report=tiny_report) for a in args]
    code, text = run_cli((["--debug"] if debug else []) + args, capsys, monkeypatch)
    assert code == 2, text
    assert "internal error: RuntimeError: simulated bug (rerun with --debug for the traceback)" in text
    assert ("Traceback" in text) == debug


# --- 3. hostile YAML cannot hang the tool ------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize("where", [
    "target: *i\n", "quantize: *i\n", "budgets:\n  max_drift_mean_pct: *i\n",
])
def test_yaml_alias_bomb_is_refused(where, tmp_path, capsys, monkeypatch):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + where)
    for args in (["compress", "--recipe", bomb, "--out", tmp_path / "r"],
                 ["gate", tmp_path / "nowhere", "--budgets", bomb]):
        code, text = run_cli(args, capsys, monkeypatch)
        assert_refused(code, text, "aliases")
    assert listing(tmp_path) == ["bomb.yaml"]


# --- 4. weights that load_state_dict would accept silently -------------------------------------------------


@pytest.mark.parametrize("corruption, needle", [("int32", "is int32, the model's is float32"),
                                                ("nan", "NaN/Inf")])
def test_corrupt_weights_are_refused_by_name(corruption, needle, tmp_path, capsys, monkeypatch):
    import torch
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(DEFAULT, ckpt)
    state = load_file(ckpt / "model.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    if corruption == "int32":
        state[name] = (state[name] * 100).to(torch.int32)
    else:
        state[name] = state[name].clone()
        state[name][0, 0] = float("nan")
    save_file(state, ckpt / "model.safetensors")
    code, text = run_cli(["export", ckpt, "--out", tmp_path / "m.onnx"], capsys, monkeypatch)
    assert_refused(code, text, name, needle)
    assert not (tmp_path / "m.onnx").exists()


# --- 5. outputs: never clobbered, half-written, locked open or created before validation -------------------


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


OUTPUTS = {  # args (with {t} = tmp_path) -> what the message names
    "--out .": (["export", "--out", "{cwd}", "--force"], None),
    "--out . for compress": (["compress", "--out", ".", "--force"], "folder you are in"),
    "--out /": (["compress", "--out", "/", "--force"], "is /"),
    "--out the input checkpoint": (["compress", "{ckpt}", "--out", "{ckpt}", "--force"], "input"),
    "--out inside the checkpoint": (["compress", "{ckpt}", "--out", "{ckpt}/run"], "input"),
    "--out the dataset's parent": (["compress", "--data", "{data}", "--out", "{t}/holder", "--force"],
                                   "input"),
    "--out a fifo": (["compress", "--out", "{fifo}", "--force"], "not a directory"),
    "export --out a fifo": (["export", "--out", "{fifo}", "--force"], "not a regular file"),
    "gate --out the run directory": (["gate", "{run}", "--budgets", str(RECIPE), "--out", "{run}"],
                                     "run directory"),
    "gate --out existing": (["gate", "{run}", "--budgets", str(RECIPE), "--out", "{existing}"],
                            "already exists"),
    "profile --out the run directory": (["profile", "{run}/model.onnx", "--out", "{run}", "--runs", "2"],
                                        "run directory"),
    "profile --out existing": (["profile", "{run}/model.onnx", "--out", "{existing}", "--runs", "2"],
                               "already exists"),
    "verify --out the run directory": (["verify", "{run}", "--out", "{run}", "--force"], "input"),
    "estimate --json a run's report.json": (["estimate", "{run}", "--target", "agx-orin-64gb", "--json",
                                             "{run}/report.json", "--force"], "run directory"),
    "estimate --json a new file in a run": (["estimate", "{run}", "--target", "agx-orin-64gb", "--json",
                                             "{run}/estimate.json"], "run directory"),
    "estimate --json the model": (["estimate", "{run}/model.onnx", "--target", "agx-orin-64gb", "--json",
                                   "{run}/model.onnx", "--force"], "is the input"),
    "estimate --json existing": (["estimate", "{run}", "--target", "agx-orin-64gb", "--json",
                                  "{existing}/keep.txt"], "already exists"),
    "estimate --json a folder": (["estimate", "{run}", "--target", "agx-orin-64gb", "--json", "{existing}",
                                  "--force"], "not a regular file"),
    "estimate --json a fifo": (["estimate", "{run}", "--target", "agx-orin-64gb", "--json", "{fifo}",
                                "--force"], "not a regular file"),
}


def test_estimate_json_writes_a_new_file_and_replaces_one_only_with_force(run_dir, tmp_path, capsys,
                                                                          monkeypatch):
    path = tmp_path / "estimate.json"
    args = ["estimate", run_dir, "--target", "agx-orin-64gb", "--json", path]
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == 0, text
    assert isinstance(json.loads(path.read_text()), dict) and "wrote" in text
    path.write_text("mine")
    code, text = run_cli(args, capsys, monkeypatch)
    assert_refused(code, text, "already exists", "--force")
    assert path.read_text() == "mine"
    code, text = run_cli([*args, "--force"], capsys, monkeypatch)
    assert code == 0 and json.loads(path.read_text()) and listing(tmp_path) == ["estimate.json"]


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory) -> Path:
    """A complete compress output directory with its reports (FP32 export only: fast)."""
    from vlaedge.pipeline import compress
    from vlaedge.recipe import load_recipe

    out = tmp_path_factory.mktemp("run") / "run"
    recipe = load_recipe("cpu-int8", ["quantize=null", "budgets=null", "verify.eval_frames=16",
                                      "verify.profile_runs=5", "verify.closed_loop_episodes=0"])
    compress(recipe, out, tiny_run.checkpoint, tiny_run.data, log=lambda _: None)
    assert (out / "manifest.json").is_file() and (out / "report.json").is_file()
    return out


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_outputs_are_never_clobbered(case, tiny_run, run_dir, tmp_path, capsys, monkeypatch):
    args, needle = OUTPUTS[case]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run.checkpoint, ckpt)
    data = tmp_path / "holder" / "data"
    shutil.copytree(tiny_run.data, data)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    fifo = _fifo(tmp_path)
    monkeypatch.chdir(tmp_path)
    before_run = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    before = listing(tmp_path)
    args = [a.format(t=tmp_path, ckpt=ckpt, data=data, run=run_dir, existing=existing, fifo=fifo,
                     cwd=tmp_path) for a in args]
    code, text = run_cli(args, capsys, monkeypatch)
    assert_refused(code, text, *([needle] if needle else []))
    assert listing(tmp_path) == before and (existing / "keep.txt").read_text() == "mine"
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before_run


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys, monkeypatch):
    from vlaedge.artifact import OutputDir

    with OutputDir(tmp_path / "run"):  # the first run, still working
        code, text = run_cli(["compress", "--out", tmp_path / "run"], capsys, monkeypatch)
        assert_refused(code, text, "another vlaedge run")
    assert listing(tmp_path) == []  # the first run was not committed: nothing, not even its lock, is left


def test_output_folders_refused_or_failed_leave_nothing_and_stale_staging_is_cleaned(tmp_path, capsys,
                                                                                     monkeypatch):
    from vlaedge.artifact import OutputDir

    # a refused run (bad recipe value) creates no folder, not even the missing parents of --out
    args = ["compress", "--out", tmp_path / "a" / "b" / "run", "--set", "quantize.num_calib_frames=0"]
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == 2 and listing(tmp_path) == []
    # a failure after the staging folder exists removes it and the parents it created
    with pytest.raises(RuntimeError), OutputDir(tmp_path / "a" / "b" / "run"):
        raise RuntimeError("boom")
    assert listing(tmp_path) == []
    # a killed run's staging folder is removed by the next run on the same output
    (tmp_path / ".run.partial-dead").mkdir()
    (tmp_path / ".run.partial-dead" / "model.onnx").write_text("half")
    old_umask = os.umask(0o022)
    try:
        with OutputDir(tmp_path / "run") as od:
            (od.path / "x.txt").write_text("x")
            od.record_stage("quantize", 1.0, output=str(od.path / "model.onnx"))
            od.commit()
    finally:
        os.umask(old_umask)
    assert listing(tmp_path) == ["run", "run/manifest.json", "run/x.txt"]
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755  # the user's umask, not mkdtemp's 0700
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert "partial" not in manifest and str(tmp_path / "run" / "model.onnx") in manifest


def test_remote_archive_is_extracted_only_inside_the_destination(tmp_path, monkeypatch):
    import io
    import tarfile

    from vlaedge.deploy import remote
    from vlaedge.errors import VlaedgeError

    def tar_with(name: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        return buf.getvalue()

    class FakeSsh:
        def __init__(self, pulled: bytes):
            self.pulled = pulled

        def run(self, cmd, what, stdin=None, binary=False):
            from types import SimpleNamespace

            return SimpleNamespace(stdout=self.pulled if binary else "", stderr="", returncode=0)

    for pulled in (b"not a tar at all", tar_with("../escape.json"), tar_with("../../escape.json")):
        with pytest.raises(VlaedgeError, match="not a safe tar"):
            remote.pull_profile(FakeSsh(pulled), "dev", "~/run", tmp_path / "out")
    absolute = tmp_path / "absolute.json"  # "data" strips the leading /: it lands inside, never there
    with pytest.raises(VlaedgeError, match="no profile.json"):
        remote.pull_profile(FakeSsh(tar_with(str(absolute))), "dev", "~/run", tmp_path / "out")
    assert listing(tmp_path) == []
    assert remote.pull_profile(FakeSsh(tar_with("profile.json")), "dev", "~/run", tmp_path / "out").is_file()


@pytest.mark.parametrize("args", [
    ["rollout", "--episodes", "-3"], ["train", "--out", "{t}/policy", "--steps", "-1"],
    ["record", "{t}/data", "--episodes", "0"], ["profile", "{t}/m.onnx", "--runs", "0"],
    ["estimate", "{t}/m.onnx", "--target", "agx-orin-64gb", "--batch", "0"],
])
def test_out_of_range_options_are_usage_errors(args, tmp_path, capsys, monkeypatch):
    code, text = run_cli([a.format(t=tmp_path) for a in args], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in text and "Invalid value" in text, text
    assert listing(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["compress", "--checkpoint", "x"], "error: vlaedge compress: No such option: --checkpoint"),
    (["nosuch"], "error: vlaedge: No such command 'nosuch'."),
    (["gate"], "error: vlaedge gate: Missing argument 'report'."),
    (["train", "--steps", "-5"], "error: vlaedge train: Invalid value for '--steps'"),
])
def test_usage_errors_are_one_line(args, message, capsys, monkeypatch):
    code, out = run_cli(args, capsys, monkeypatch)
    lines = out.strip().splitlines()
    assert code == 2 and lines[0].startswith(message) and len(lines) == 2, out
    assert lines[1].startswith("fix: 'vlaedge") and "╭" not in out


def test_onnx_runtime_failing_on_valid_looking_feeds_is_one_line(tmp_path):
    """Token ids beyond the embedding table (a model exported from a policy with another vocabulary) made
    ONNX Runtime's Gather fail inside verify as an internal error; it is a user error naming the cause."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from vlaedge.errors import VlaedgeError
    from vlaedge.models.base import TensorSpec
    from vlaedge.runtimes.ort import OrtRuntime

    table = helper.make_tensor("table", TensorProto.FLOAT, [4, 2], [0.0] * 8)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 3, 2])], [table])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    runtime = OrtRuntime(path, (TensorSpec("ids", ("B", 3), "int64", 0, 9),), ("out",))
    assert runtime.infer({"ids": np.array([[0, 1, 3]], np.int64)})["out"].shape == (1, 3, 2)
    with pytest.raises(VlaedgeError, match=r"ort-cpu: ONNX Runtime failed running the model on the policy's "
                                           r"inputs: .*(indices|out of bounds)") as e:
        runtime.infer({"ids": np.array([[0, 1, 9]], np.int64)})
    assert "same vocabulary" in e.value.hint
