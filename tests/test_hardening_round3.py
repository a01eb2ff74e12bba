"""Bad input, round 3 (issue 25): the internal errors still reachable become one `error:` line and its
fix (exit 2); a `decode: tokens` policy without a chunk axis is handled as chunk 1 or refused at load; a
missing optional package names its pip extra; fix lines and docs cite only README headings, docs pages
(and their headings) and files that exist; flags show no `<bool>` in --help; a recipe name typo gets a
"did you mean"; the README's "Your own policy" commands run as written."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli
from test_hardening import assert_refused
from test_python_adapter import SPEC

import vlaedge.info
import vlaedge.runtimes.plan
from vlaedge.errors import VlaedgeError, describe

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
HUGE = 10**20  # ONNX keeps int64 dims: protobuf raised "Value out of range" on this


# --- 1. internal errors that were still reachable ----------------------------------------------------


@pytest.mark.parametrize("option", [
    ["--batch", HUGE], ["--batch", "1e20"], ["--input-shape", f"image={HUGE}x3x32x32"],
])
def test_estimate_refuses_a_batch_or_dimension_out_of_range(option, tiny_run, capsys, monkeypatch):
    args = ["estimate", tiny_run.onnx, "--target", "agx-orin-64gb", *option]
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "internal error" not in text and "Traceback" not in text, text
    assert str(option[1]) in text.splitlines()[0], text  # the line names the value


def test_estimate_refuses_a_huge_dimension_given_as_a_shape_dict(tiny_run):
    from vlaedge.deploy.estimate import estimate

    with pytest.raises(VlaedgeError, match="out of range"):
        estimate(tiny_run.onnx, "agx-orin-64gb", 1, input_shapes={"image": (HUGE, 3, 32, 32)})


def test_device_check_refuses_a_manifest_that_is_a_json_list(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vlaedge.info, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(vlaedge.runtimes.plan, "gpu_compute_capability", lambda: "8.7")
    (tmp_path / "manifest.json").write_text("[1, 2]")
    code, text = run_cli(["device-check", tmp_path], capsys, monkeypatch)
    assert_refused(code, text, "manifest.json is an array", "[1, 2]")


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("inputs", "abc", "inputs is a string"),
    ("outputs", [1], "outputs is an array"),
    ("model", "../../etc/hostname", "model is a string"),
])
def test_gate_refuses_a_manifest_field_of_the_wrong_type(field, value, needle, tmp_path, capsys, monkeypatch):
    from test_gate import make_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(make_report()))
    (run / "manifest.json").write_text(json.dumps({"schema_version": 1, field: value}))
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("max_drift_mean_pct: 3.0\n")
    code, text = run_cli(["gate", run, "--budgets", budgets], capsys, monkeypatch)
    assert_refused(code, text, needle)


def test_a_recipe_asking_for_absurd_threads_is_refused_naming_the_value(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "threads.yaml"
    text = (ROOT / "vlaedge" / "recipes" / "cpu-int8.yaml").read_text()
    recipe.write_text(re.sub(r"threads: \d+", f"threads: {10**9}", text))
    code, out = run_cli(["compress", "--recipe", recipe, "--out", tmp_path / "run"], capsys, monkeypatch)
    assert_refused(code, out, "verify.threads", str(10**9), "docs: reference/recipes.md")
    assert not (tmp_path / "run").exists()
    code, out = run_cli(["verify", "--threads", 10**9, "--out", tmp_path / "v"], capsys, monkeypatch)
    assert code == 2 and "--threads" in out and "internal error" not in out, out


@pytest.mark.parametrize("command", [
    ["compress", "{loop}", "--out", "{tmp}/run"],
    ["export", "{loop}", "--out", "{tmp}/m.onnx"],
    ["tune", "{loop}", "--out", "{tmp}/tune"],
    ["compress", "--data", "{loop}", "--out", "{tmp}/run"],
    ["compress", "--out", "{loop}"],
])
def test_a_symlink_loop_is_one_line(command, tmp_path, capsys, monkeypatch):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    args = [a.format(loop=loop, tmp=tmp_path) for a in command]
    code, text = run_cli(args, capsys, monkeypatch)
    assert_refused(code, text, f"{loop} is a symlink loop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]


# --- 2. a tokens head whose logits have no chunk axis ----------------------------------------------------

TOKENS_MODULE = '''
import torch
from torch import nn


class Tokens(nn.Module):
    """Logits [B, A=3, bins=16]: one action per call, no chunk axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.embed = nn.Embedding(16, 4)
        self.head = nn.Linear(4 * 16 + 4 + 4, 3 * 16)

    def forward(self, rgb, text, proprio):
        x = torch.cat([self.conv(rgb.float() / 255).flatten(1), self.embed(text).mean(1), proprio], 1)
        return self.head(x).view(-1, 3, 16)


def build():
    torch.manual_seed(0)
    return Tokens()
'''


def _tokens_checkpoint(tmp_path: Path, chunk: int) -> Path:
    from vlaedge.models.python import PythonPolicy, PythonPolicySpec

    src = tmp_path / f"src{chunk}"
    src.mkdir()
    (src / "policy.py").write_text(TOKENS_MODULE)
    spec = {**SPEC, "factory": "policy.py:build", "factory_kwargs": {}, "outputs": ["logits"],
            "actions": {**SPEC["actions"], "low": [-1, -1, -1], "high": [1, 1, 1], "chunk": chunk,
                        "decode": "tokens", "normalised": False}}
    return PythonPolicy(PythonPolicySpec.model_validate(spec), root=src).save(tmp_path / f"tokens{chunk}")


def test_tokens_logits_without_a_chunk_axis_are_chunk_1_through_export_and_drift(tmp_path, frames):
    from vlaedge.check.drift import open_loop_drift
    from vlaedge.compress.export import export_onnx
    from vlaedge.models import load_policy
    from vlaedge.recipe import ExportConfig
    from vlaedge.runtimes import open_runtime

    policy = load_policy(_tokens_checkpoint(tmp_path, chunk=1), trust_code=True)
    assert policy.act(frames).shape == (2, 1, 3)
    path = tmp_path / "m.onnx"
    export_onnx(policy, path, ExportConfig())
    report, ref, cand = open_loop_drift(policy, open_runtime("ort-cpu", policy, path), frames)
    assert ref.shape == cand.shape == (2, 1, 3)
    assert report.token_agreement is not None and report.token_agreement > 0.99


def test_tokens_logits_without_a_chunk_axis_are_refused_at_load_when_the_spec_says_chunk_2(
    tmp_path, capsys, monkeypatch
):
    ck = _tokens_checkpoint(tmp_path, chunk=2)
    code, text = run_cli(["compress", ck, "--trust-code", "--out", tmp_path / "run"], capsys, monkeypatch)
    assert_refused(code, text, "chunk=2", "[1, 3, 16]", "'logits'", "actions.chunk")
    assert not (tmp_path / "run").exists()  # refused before any stage


# --- 3. a missing optional package names its extra ------------------------------------------------------


@pytest.mark.parametrize("where", ["import", "factory"])
def test_a_missing_transformers_names_the_hf_extra(where, tmp_path, capsys, monkeypatch):
    ck = tmp_path / "ck"
    ck.mkdir()
    body = ("import transformers\n\ndef build():\n    return None\n" if where == "import" else
            "def build():\n    import transformers\n    return transformers\n")
    (ck / "policy.py").write_text(f"# {where}\n{body}")
    (ck / "config.json").write_text(json.dumps({**SPEC, "factory": "policy.py:build", "factory_kwargs": {}}))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    code, text = run_cli(["export", ck, "--out", tmp_path / "m.onnx", "--trust-code"], capsys, monkeypatch)
    assert_refused(code, text, "transformers", "pip install 'vlaedge[hf]'")


def test_a_missing_optional_package_reaching_the_cli_is_a_user_error():
    code, lines = describe(ModuleNotFoundError("No module named 'torch_pruning'", name="torch_pruning"))
    assert code == 2 and lines[0].startswith("error: ") and lines[1] == "  fix: pip install 'vlaedge[hf]'"
    code, lines = describe(ModuleNotFoundError("No module named 'numpyy'", name="numpyy"))
    assert lines[0].startswith("internal error: ")  # not an optional package of vlaedge: a bug


def test_a_long_message_keeps_its_valid_keys_and_is_cut_at_a_word_saying_how_much():
    keys = ", ".join(f"key_number_{i}" for i in range(40))  # ~600 characters: fits, whole
    code, lines = describe(VlaedgeError(f"budgets: x: unknown key; valid keys here: {keys}", "see the docs"))
    assert code == 2 and lines[0].endswith("key_number_39") and len(lines) == 2
    message = "data: " + "value " * 400  # 2,400 characters quoted in an error
    _, lines = describe(VlaedgeError(message))
    assert lines[0].startswith("error: ") and len(lines[0]) <= len("error: ") + 800
    head, _, tail = lines[0].removeprefix("error: ").partition(" ... [")
    assert head.endswith(" value") and tail == f"{len(message.strip()) - len(head)} more characters: --debug]"


def test_the_extras_named_exist_in_pyproject():
    import tomllib

    from vlaedge.errors import EXTRAS

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for package, extra in EXTRAS.items():
        assert any(dep.replace("-", "_").startswith(package) for dep in extras[extra]), (package, extra)


# --- 4. references to the README, the docs pages and files ---------------------------------------------


def readme_headings(path: Path = README) -> set[str]:
    """Heading texts of README.md (or another Markdown file), outside fenced code blocks."""
    headings, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            headings.add(m.group(1).strip())
    return headings


def package_strings() -> list[tuple[str, str, bool]]:
    """(file, text, is_docstring) of every string literal under vlaedge/ (f-strings as their literal parts,
    implicitly concatenated literals joined)."""
    found = []
    for path in sorted((ROOT / "vlaedge").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        parts_of_fstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                parts_of_fstrings |= {id(v) for v in node.values}
                found.append((str(path.relative_to(ROOT)), text, False))
        for node in ast.walk(tree):
            literal = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if literal and id(node) not in parts_of_fstrings:
                found.append((str(path.relative_to(ROOT)), node.value, id(node) in docs))
    return found


REFERENCE = re.compile(r"""README(?:\.md)?:? ['"]([^'"]+)['"]""")
# a fix line citing the docs site: `docs: guides/ci-gating.md 'Choosing budgets'` (the heading optional)
DOCS_REFERENCE = re.compile(r"""docs: ([\w./-]+\.md)(?: ['"]([^'"]+)['"])?""")


def test_every_readme_reference_in_the_package_names_an_existing_heading():
    headings = readme_headings()
    references = [(f, ref) for f, text, _ in package_strings() for ref in REFERENCE.findall(text)]
    docs = [(f, page, heading) for f, text, _ in package_strings()
            for page, heading in DOCS_REFERENCE.findall(text)]
    assert len(references) + len(docs) >= 5, (references, docs)  # the fix lines that cite a section
    missing = [(f, ref) for f, ref in references if ref not in headings]
    assert not missing, missing
    missing = [(f, page, heading) for f, page, heading in docs if not (DOCS / page).is_file()
               or heading and heading not in readme_headings(DOCS / page)]
    assert not missing, f"docs pages or headings cited that do not exist: {missing}"
    assert {page for _, page, _ in docs} >= {"reference/recipes.md", "guides/ci-gating.md"}, docs
    # a message citing the README names the section (README: 'Heading'), never the bare file
    vague = [(f, text[:80]) for f, text, doc in package_strings() if not doc and " " in text
             and re.search(r"\bREADME(\.md|:)", text) and not REFERENCE.search(text) and "http" not in text]
    assert not vague, vague


def test_no_file_outside_the_repository_is_cited():
    """FACTS.md lives in ../shared (the developers' notes), not in the repository users have."""
    shipped = [README, *DOCS.rglob("*.md"), *(ROOT / "vlaedge").rglob("*.py"),
               *(ROOT / "vlaedge" / "recipes").glob("*.yaml")]
    assert [str(p.relative_to(ROOT)) for p in shipped if re.search(r"\bFACTS\b", p.read_text())] == []


# --- 5. flags show no value placeholder ----------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["compress"], ["gate"], ["record"]])
def test_flags_show_no_bool_placeholder_in_help(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, text = run_cli([*command, "--help"], capsys, monkeypatch)
    assert code == 0 and "--help" in text and "--force" in text or not command, text
    assert "<bool>" not in text, text
    if command == ["compress"]:
        assert "<path>" in text  # options that take a value still show its type


# --- 6. a recipe name typo ------------------------------------------------------------------------------


@pytest.mark.parametrize(("typo", "meant"), [("cpu-int9", "cpu-int8"), ("cpu_int8", "cpu-int8"),
                                             ("orin-int8.yml", "orin-int8")])
def test_a_recipe_name_typo_gets_a_did_you_mean(typo, meant, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(["compress", "--recipe", typo, "--out", tmp_path / "run"], capsys, monkeypatch)
    assert_refused(code, text, f"did you mean {meant}?", typo)
    code, text = run_cli(["compress", "--recipe", "nothing-like-it", "--out", tmp_path / "run"], capsys,
                         monkeypatch)
    assert_refused(code, text, "cpu-int8, cpu-pruned-int8")
    assert "did you mean" not in text


# --- 7. the README's copy-paste commands ----------------------------------------------------------------


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    return text[start: text.index("\n## ", start + 1)]


def readme_commands(section: str) -> list[list[str]]:
    """`vlaedge ...` command lines of a README section: from ```bash blocks and from `code spans`."""
    lines = [ln for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for ln in block.replace("\\\n", " ").splitlines()]  # a line continued with \ is one command
    lines += re.findall(r"`((?:\.venv/bin/)?vlaedge [^`]+)`", section)
    commands = []
    for line in lines:
        line = line.split("#")[0].strip()
        if re.match(r"(\.venv/bin/)?vlaedge ", line):
            commands.append(line.split()[1:])
    return commands


def test_the_own_policy_commands_use_only_real_options_and_files(capsys, monkeypatch):
    """The README's front-page commands, and those of the guide it points to first."""
    section = readme_section("Your own policy")
    commands = readme_commands(section)
    assert len(commands) >= 3, commands
    lerobot = [args for args in commands if args[:2] == ["compress", "path/to/pretrained_model"]]
    assert lerobot and "--trust-code" not in lerobot[0], commands  # a LeRobot folder runs no code of its own
    own_vla = (DOCS / "guides" / "own-vla.md").read_text()
    commands += readme_commands(own_vla.partition("\n## Compress and gate your own checkpoint\n")[2]
                                .partition("\n## ")[0])
    assert len(commands) >= 5, commands
    for args in commands:
        code, helptext = run_cli([args[0], "--help"], capsys, monkeypatch)
        assert code == 0, args
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            assert option in helptext, (args, option)
        python_checkpoint = any((ROOT / a / "policy.py").is_file() for a in args if a.startswith("examples/"))
        if args[0] in ("compress", "rollout", "tune", "verify", "prune", "export") and (
                python_checkpoint or "path/to/checkpoint" in args):
            assert "--trust-code" in args, args  # a python checkpoint refuses to run without it
        for a in args:
            if a.startswith(("examples/", "recipes/")) and not re.fullmatch(r"[A-Z_]+", Path(a).name):
                assert (ROOT / a).exists(), (args, a)
    gate = next(args for args in commands if args[0] == "gate")
    assert (ROOT / gate[gate.index("--budgets") + 1]).is_file()


def test_examples_train_docstring_runs_real_commands(capsys, monkeypatch):
    doc = ast.get_docstring(ast.parse((ROOT / "examples" / "train.py").read_text()))
    commands = [c.split()[1:] for c in re.findall(r"`(vlaedge [^`]+)`", doc)]
    assert commands
    for args in commands:
        code, helptext = run_cli([args[0], "--help"], capsys, monkeypatch)
        assert code == 0 and all(a in helptext for a in args if a.startswith("--")), args


@pytest.mark.slow
def test_the_own_policy_commands_run_on_a_python_checkpoint(tiny_run, tmp_path, capsys, monkeypatch):
    """The section's two commands with a python checkpoint, the test data and a run folder put in for the
    placeholders; compress gets speed-only overrides (fewer frames, no closed loop) appended."""
    from vlaedge.models.python import PythonPolicy, PythonPolicySpec

    spec = {**SPEC, "actions": {**SPEC["actions"], "low": [-1, -1, -1], "high": [1, 1, 1]}}
    ck = PythonPolicy(PythonPolicySpec.model_validate(spec)).save(tmp_path / "ck")
    commands = readme_commands(readme_section("Your own policy"))
    compress = next(args for args in commands if args[:2] == ["compress", "path/to/checkpoint"])
    gate = next(args for args in commands if args[0] == "gate")
    run = tmp_path / "runs" / "orin"
    subs = {"path/to/checkpoint": str(ck), "path/to/lerobot_dataset": str(tiny_run.data),
            "runs/orin": str(run)}
    fast = ["--set", "verify.closed_loop_episodes=0", "--set", "verify.eval_frames=16",
            "--set", "quantize.num_calib_frames=16", "--set", "export.check_frames=8",
            "--set", "verify.profile_runs=5", "--set", "verify.profile_warmup=1",
            "--set", "budgets.max_success_drop=null"]
    code, text = run_cli([subs.get(a, a) for a in compress] + fast, capsys, monkeypatch)
    assert code in (0, 1) and (run / "report.json").is_file(), text  # ran to the gate
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the checkout
    code, text = run_cli([subs.get(a, a) for a in gate], capsys, monkeypatch)
    assert code in (0, 1) and "max_drift_mean_pct" in text and "error:" not in text, text
