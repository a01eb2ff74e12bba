"""The documentation (issue 27): README.md and the docs/ site stay true to the code.

- the generated reference pages (commands, recipe fields, exit codes, report schemas) equal what
  `python -m vlaedge.docs_reference` writes now, so a new option that was not regenerated fails here with
  the fix "run make docs";
- the site builds in strict mode (MkDocs: a broken link, anchor or missing page fails it) into a temporary
  folder, and every page and benchmark result is in it;
- every link in README.md and the pages resolves to a file in the checkout and, with `#anchor`, a heading;
- every shell command in README.md and the pages (```bash blocks, YAML `run:` lines, `vlaedge ...` code
  spans) names a real command and real options of the typer app (parsed by its own parser), and real
  `make` targets, scripts and shipped files; those that run on the built-in default in seconds are run
  here (RUN), each other one matches a NOT_RUN rule that says why not and which test runs it instead.

Seconds in all (two site builds and a dozen in-process commands), no network.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli

from vlaedge import docs_reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SCRIPTS = ROOT / "benchmarks" / "README.md"  # in the site as benchmarks/scripts.md (docs/hooks.py)
PAGES = [README, *sorted(DOCS.rglob("*.md")), SCRIPTS]
needs_mkdocs = pytest.mark.skipif(find_spec("mkdocs") is None or find_spec("material") is None,
                                  reason="mkdocs / mkdocs-material not installed: pip install -e '.[docs]'")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- 1. the generated reference pages are current ------------------------------------------------------


def test_the_generated_reference_pages_are_current():
    stale = docs_reference.stale()
    assert not stale, f"docs/{', docs/'.join(stale)}: generated from the code but out of date: run make docs"


def test_a_command_added_to_the_app_makes_the_commands_page_stale():
    """The check above can fail: a command (its option) the page has not seen yet is noticed."""
    from vlaedge.cli import app

    before = list(app.registered_commands)

    def probe(level: int = 3) -> None:
        """A command that exists only in this test."""

    app.command("docs-probe")(probe)
    try:
        page = docs_reference.cli_reference()
        assert "## `vlaedge docs-probe`" in page and "`--level <int>`" in page, page[-500:]
        assert "reference/cli.md" in docs_reference.stale()
    finally:
        app.registered_commands[:] = before
    assert "docs-probe" not in docs_reference.cli_reference()


# --- 2. the site builds in strict mode -------------------------------------------------------------------


def build_site(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@needs_mkdocs
def test_the_site_builds_in_strict_mode_with_every_page(tmp_path):
    site = tmp_path / "site"
    done = build_site(ROOT / "mkdocs.yml", site)
    assert done.returncode == 0, f"make docs fails:\n{done.stderr[-4000:]}"
    missing = [rel(p) for p in DOCS.rglob("*.md")
               if not (site / p.relative_to(DOCS).with_suffix("") / "index.html").is_file()
               and not (site / p.relative_to(DOCS).parent / "index.html").is_file()]
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    missing += [rel(p) for p in results
                if not (site / "benchmarks" / "results" / p.stem / "index.html").is_file()]
    assert results and not missing, f"pages not in the site: {missing}"
    assert (site / "benchmarks" / "scripts" / "index.html").is_file()
    assert (site / "reference" / "cli" / "index.html").read_text().count("vlaedge compress") >= 1


@needs_mkdocs
def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    """The same build on a copy of docs/ with one link to a page that does not exist fails, naming it."""
    shutil.copytree(DOCS, tmp_path / "docs")
    config = (ROOT / "mkdocs.yml").read_text().replace("  - docs/hooks.py", f"  - {DOCS / 'hooks.py'}")
    (tmp_path / "mkdocs.yml").write_text(config)
    page = tmp_path / "docs" / "getting-started.md"
    page.write_text(page.read_text() + "\nSee [the old page](guides/no-such-guide.md).\n")
    done = build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-guide.md" in done.stderr, done.stderr[-4000:]


def test_the_architecture_pages_layer_table_is_test_layouts():
    """docs/architecture.md's Layers table names the parts `tests/test_layout.py` LAYERS ranks, in order."""
    from test_layout import LAYERS

    text = (DOCS / "architecture.md").read_text().partition("\n## Layers\n")[2].partition("\n## ")[0]
    rows = [re.findall(r"`([^`]+)`", row) for row in re.findall(r"^\| \d[^|]*\|([^\n]*)\|$", text, re.M)]
    page = [{"" if name == "vlaedge/__init__.py" else name for name in row} for row in rows]
    assert page == list(LAYERS), f"docs/architecture.md 'Layers' differs from tests/test_layout.py: {page}"


# --- 3. every link resolves ------------------------------------------------------------------------------


FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n.*?^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """The Markdown outside fenced code blocks and code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def headings(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.M)]


def heading_text(heading: str) -> str:
    """A heading as it renders: link texts, code spans' text, no emphasis or attribute list."""
    heading = re.sub(r"\s*\{[^}]*\}\s*$", "", heading)
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return heading.replace("`", "").replace("**", "").replace("*", "")


def site_slug(heading: str) -> str:
    """Python-Markdown's toc slugify, which MkDocs uses."""
    value = unicodedata.normalize("NFKD", heading_text(heading)).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def github_slug(heading: str) -> str:
    """GitHub's anchors, where the README and its links to docs/*.md are read."""
    value = re.sub(r"[^\w\- ]", "", heading_text(heading).strip().lower())
    return value.replace(" ", "-")


def anchors(path: Path, slug) -> set[str]:
    found: set[str] = set()
    for heading in headings(path.read_text()):
        base, n = slug(heading), 1
        name = base
        while name in found:  # repeated headings get _1, _2 (site) or -1, -2 (GitHub)
            name = f"{base}{'-' if slug is github_slug else '_'}{n}"
            n += 1
        found.add(name)
    ids = re.findall(r"\{#([\w-]+)\}|<a (?:id|name)=\"([\w-]+)\"", path.read_text())
    return found | {a or b for a, b in ids}


def target_file(page: Path, target: str) -> Path:
    """The file a relative link names; a site page that docs/hooks.py makes maps to its source."""
    path = (page.parent / target).resolve() if target else page
    if page.is_relative_to(DOCS) and path.is_relative_to(DOCS / "benchmarks"):
        inner = path.relative_to(DOCS / "benchmarks")
        if inner == Path("scripts.md"):
            return SCRIPTS
        if inner.parts[:1] == ("results",):
            return ROOT / "benchmarks" / inner
    return path


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_link_resolves_to_a_file_and_heading(page):
    slug = site_slug if page.is_relative_to(DOCS) else github_slug
    broken = []
    for link in links(page):
        target, _, anchor = link.partition("#")
        path = target_file(page, target)
        if not path.exists() or not path.resolve().is_relative_to(ROOT):
            broken.append(f"{link}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path, slug):
            broken.append(f"{link}: no heading with the anchor #{anchor} in {rel(path)}")
    assert not broken, f"{rel(page)}: broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_links_and_anchors():
    """The parser finds links (not those in code), and a wrong anchor or file is reported."""
    readme = links(README)
    assert any(t.startswith("docs/guides/lerobot.md") for t in readme), readme
    assert "docs/reference/cli.md" in readme and not any("`" in t for t in readme)
    assert "in-ci-github-actions" in anchors(DOCS / "guides" / "ci-gating.md", github_slug)
    assert site_slug("Dataset features -> model inputs") == "dataset-features-model-inputs"
    assert github_slug("Dataset features -> model inputs") == "dataset-features---model-inputs"
    assert "no-such-heading" not in anchors(DOCS / "guides" / "ci-gating.md", site_slug)
    assert not target_file(DOCS / "index.md", "guides/no-such-guide.md").exists()


# --- 4. every shell command is real ----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    page: str
    line: str  # as written, whitespace collapsed, comment dropped
    span: bool  # a `code span` in prose: may name an option without its value

    @property
    def words(self) -> list[str]:
        return shlex.split(self.line)


SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
VLAEDGE = re.compile(r"^(?:\S*/)?vlaedge$")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def simple_commands(line: str) -> list[str]:
    """A shell line as its simple commands (split at && || ; |), comments and env assignments dropped."""
    line = re.sub(r"(^|\s)#.*$", "", line).strip().removeprefix("$ ")
    parts = []
    for part in re.split(r"\s*(?:&&|\|\||;)\s*", line):
        words = part.split()
        while words and ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        if words:
            parts.append(" ".join(words))
    return parts


def yaml_runs(node) -> list[str]:
    """The `run:` values of a YAML document (a workflow or a fragment of its steps), depth first."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "run" and isinstance(v, str)] + [
            r for k, v in node.items() if k != "run" for r in yaml_runs(v)]
    return [r for v in node for r in yaml_runs(v)] if isinstance(node, list) else []


def shell_commands(page: Path) -> list[Command]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        head, _, body = match.group(0).partition("\n")
        lang = (head.strip("`~ ").split() or [""])[0]
        body = body.rsplit("\n", 1)[0].replace("\\\n", " ")
        if lang in SHELL_LANGS:  # an unlabelled block may be a file tree: only its command lines
            lines = [ln for ln in body.splitlines()
                     if lang or re.match(r"(?:\S*/)?(vlaedge|python3?|make) ", ln)]
        elif lang in ("yaml", "yml"):  # a CI workflow's steps: each `run:` (folded or literal) line
            lines = [ln for run in yaml_runs(yaml.safe_load(body)) for ln in run.splitlines()]
        else:
            continue
        # `vlaedge prune | quantize | export ...` lists commands: one line, not a pipe
        found += [Command(rel(page), part, span=False) for line in lines for part in simple_commands(line)]
    spans = re.findall(r"`([^`]+)`", FENCE.sub("", text))
    found += [Command(rel(page), " ".join(s.split()), span=True) for s in spans
              if re.match(r"(?:\S*/)?vlaedge\s", s)]
    return found


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in shell_commands(page)]


@functools.cache
def app_command():
    """The typer app as its click group (built once: building it takes ~30 ms)."""
    import typer

    from vlaedge.cli import app

    return typer.main.get_command(app)


def vlaedge_parse(words: list[str], span: bool) -> str:
    """Checks `vlaedge ARGS` with the app's own parser; returns the command's name ('' for a synopsis
    that names no single command).

    Placeholders are fine where a value goes (RUN_DIR, path/to/x, <n>); `...` ends a synopsis; `a | b`
    lists commands; `[--debug]` is an optional global flag."""
    from typer._click.core import Context
    from typer._click.exceptions import BadOptionUsage

    args = [w.strip("[]") for w in words[1:]]
    args = args[:args.index("...")] if "..." in args else args
    group = app_command()
    gctx = Context(group, info_name="vlaedge")
    _, rest, _ = group.make_parser(gctx).parse_args(list(args))  # global options, then the command
    names = group.list_commands(gctx)
    if not rest:
        return ""
    if "|" in rest:  # a list of commands
        listed = [w for w in rest if w != "|"]
        assert all(n in names for n in listed), f"not commands: {set(listed) - set(names)}"
        return ""
    if re.fullmatch(r"[A-Z_]+", rest[0]):  # vlaedge COMMAND --help
        return ""
    assert rest[0] in names, f"no command {rest[0]!r} (commands: {', '.join(names)})"
    command = group.get_command(gctx, rest[0])
    ctx = Context(command, info_name=rest[0], parent=gctx)
    try:
        opts, extra, _ = command.make_parser(ctx).parse_args(list(rest[1:]))
    except BadOptionUsage:  # an option named without its value: fine in prose
        if not span:
            raise
        return rest[0]
    assert not extra, f"vlaedge {rest[0]} takes no more arguments than these: {extra}"
    for param in command.params:
        value = opts.get(param.name)
        annotation = param.type_descriptor.annotation
        if value is None or annotation is Path or isinstance(value, bool) or placeholder(str(value)):
            continue
        param.process_value(ctx, value)  # raises BadParameter on a value of the wrong kind
    if opts.get("overrides") and not span:
        check_overrides(opts["overrides"], opts.get("recipe"))
    for word in rest[1:]:
        shipped = word.startswith(("examples/", "calibration/", "vlaedge/assets/", "benchmarks/", "tests/"))
        if shipped and not any(placeholder(part) for part in Path(word).parts):
            assert (ROOT / word).exists(), f"{word}: not in the checkout"
    return rest[0]


def check_overrides(overrides: list[str], recipe: str | None) -> None:
    """`--set key=value` items applied to the command's recipe (a shipped one or a file in the checkout;
    else cpu-int8) the way the CLI applies them: a renamed recipe field or a value out of range raises."""
    from vlaedge.recipe import load_recipe, shipped_recipes

    items = [item for item in overrides if not any(placeholder(w) for w in re.split(r"[.=]", item))]
    known = recipe in shipped_recipes() or recipe is not None and (ROOT / recipe).is_file()
    load_recipe(recipe if known else "cpu-int8", items)


def placeholder(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z_0-9]*(\|.*)?|<[^>]+>|N", word))


MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
# the first word of commands of the shell, the set-up and other tools (Ray's CLI), which are not run here
OTHER_SHELL = {"cd", ".", "source", "pip", "cp", "ssh", "export", "cat", "true", "ray"}


def check_shell(command: Command) -> str:
    """Checks one simple command; returns the vlaedge command's name, or 'make', 'python', 'shell'."""
    words = command.words
    first = words[0]
    if VLAEDGE.match(first):
        return vlaedge_parse(words, command.span)
    if first == "make":
        assert set(words[1:]) <= MAKE_TARGETS, f"no make target {set(words[1:]) - MAKE_TARGETS}"
        return "make"
    if re.match(r"^(?:\S*/)?python3?$", first) and len(words) > 1:
        if words[1] == "-m":
            assert find_spec(words[2]) is not None, f"no module {words[2]}"
        elif words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), f"no script {words[1]}"
        return "python"
    assert first in OTHER_SHELL, f"{first}: a command this test does not know (add it to OTHER_SHELL)"
    return "shell"


def test_every_shell_command_names_real_commands_options_and_files():
    commands = all_commands()
    assert len(commands) >= 60, len(commands)
    bad = []
    for command in commands:
        try:
            check_shell(command)
        except Exception as e:  # noqa: BLE001 (collected: every bad line is reported at once)
            bad.append(f"{command.page}: {command.line}\n    {type(e).__name__}: {e}")
    assert not bad, "commands in the docs that the CLI does not take:\n" + "\n".join(bad)


@pytest.mark.parametrize(("line", "error"), [
    ("vlaedge compres --recipe cpu-int8", "no command 'compres'"),
    ("vlaedge compress --recipes cpu-int8", "No such option: --recipes"),
    ("vlaedge compress --recipe", "requires an argument"),
    ("vlaedge rollout --episodes many", "valid integer"),
    ("vlaedge data a b", "no more arguments"),
    ("vlaedge estimate model.onnx --target", "requires an argument"),
    ("make docz", "no make target"),
    ("python benchmarks/no_such.py", "no script"),
    ("vlaedge compress examples/no_such_example --trust-code", "not in the checkout"),
    ("vlaedge compress --recipe cpu-int8 --set verify.closed_loop_episode=0", "verify.closed_loop_episode"),
    ("vlaedge compress --recipe orin-int8 --set load.device=gpu", "load.device"),
])
def test_the_command_check_refuses_what_the_cli_would(line, error):
    with pytest.raises(Exception, match=re.escape(error)):
        check_shell(Command("test", line, span=False))


def test_a_code_span_may_name_an_option_without_its_value():
    assert check_shell(Command("test", "vlaedge gate --profile", span=True)) == "gate"
    with pytest.raises(Exception, match="No such option"):
        check_shell(Command("test", "vlaedge gate --profiles", span=True))


# --- 5. the commands that run in seconds are run; the others say why not --------------------------------

SAMPLE = "vlaedge/assets/calibration/tabletop"  # the sample dataset that ships in the package
DEFAULT = "vlaedge/assets/default_policy"  # the built-in default policy's checkpoint
# a command line (regex on the whole line) -> (placeholders put in, exit code): run here, in-process, in a
# temporary folder; TINY_ONNX is an exported untrained nano policy (tests/conftest.py `tiny_run`)
RUN: dict[str, tuple[dict[str, str], int]] = {
    r"(?:\S*/)?vlaedge (info|targets|recipes)": ({}, 0),
    r"(?:\S*/)?vlaedge( [a-z][\w-]*)? --help": ({}, 0),
    r"vlaedge data path/to/lerobot_dataset( -c path/to/(checkpoint|pretrained_model))?": (  # the default's
        {"path/to/lerobot_dataset": SAMPLE, "path/to/checkpoint": DEFAULT,
         "path/to/pretrained_model": DEFAULT}, 0),
    r"vlaedge record runs/tabletop --episodes 60 --seed 0": ({}, 0),
    r"vlaedge estimate model\.onnx --target [\w-]+": ({"model.onnx": "TINY_ONNX"}, 0),
    r"vlaedge (compress|verify|quantize|prune)( --\w+ \S+)* --device cuda( --\w+ \S+)*": ({}, 2),  # refused
}
# the vlaedge command's name (or what check_shell returns), or "re:" and a regex on the whole line ->
# why it is not run here, and which test runs it instead; the first that matches counts
NOT_RUN: list[tuple[str, str]] = [
    ("re:vlaedge data path/to/lerobot_dataset -c ckpt --map .*",
     "needs a dataset with a wrist camera: tests/test_data_mapping.py maps cameras"),
    ("make", "make demo / test / setup: the set-up and minutes of work; the targets are checked to exist, "
             "and what they run is the suite (tests/test_default_policy.py runs the demo's compress)"),
    ("python", "benchmark and set-up scripts: minutes each (their results are in benchmarks/results/)"),
    ("shell", "the shell, pip and Ray's own CLI: the set-up, not vlaedge (tests/test_wheel.py installs the "
              "wheel)"),
    ("", "a synopsis listing commands: each command it names is checked to exist"),
    ("compress", "minutes of compress on a real policy: tests/test_compress.py, tests/test_default_policy.py "
                 "(the demo's cpu-int8 on the default), tests/test_lerobot_compress.py"),
    ("tune", "minutes of tuning: tests/test_tune.py"),
    ("train", "minutes of training: tests/test_train.py"),
    ("rollout", "needs a trained checkpoint and 100 episodes: tests/test_sim.py, "
                "tests/test_default_policy.py"),
    ("verify", "needs a compress output: tests/test_verify.py, tests/test_closedloop_pusht.py"),
    ("profile", "needs a compress output (or a Jetson over SSH): tests/test_profile.py, "
                "tests/test_remote.py"),
    ("gate", "needs a compress output: tests/test_gate.py; the README's own-policy gate runs in "
             "tests/test_hardening_round3.py"),
    ("engine", "needs TensorRT and a GPU: tests/test_engine.py (the on-device bundle)"),
    ("device-check", "runs on the Jetson: tests/test_device_check.py"),
    ("estimate", "needs the page's own exported model or run folder: tests/test_estimate.py"),
    ("prune", "a stage of compress: tests/test_prune.py"),
    ("quantize", "a stage of compress: tests/test_quantize.py"),
    ("export", "a stage of compress: tests/test_export_models.py"),
    ("data", "needs the page's own dataset: tests/test_data.py"),
    ("record", "records episodes: tests/test_sim.py"),
]


def run_plan(command: Command) -> tuple[dict[str, str], int] | None:
    return next((plan for pattern, plan in RUN.items() if re.fullmatch(pattern, command.line)), None)


def classify(command: Command) -> tuple[str, object]:
    """('run', (placeholders put in, exit code)) or ('not run', why), after checking the command."""
    kind = check_shell(command)
    plan = run_plan(command)
    if plan is not None:
        return "run", plan
    for key, why in NOT_RUN:
        if key == kind or key.startswith("re:") and re.fullmatch(key[3:], command.line):
            return "not run", why
    raise AssertionError(f"{command.page}: {command.line}: neither run here (RUN) nor marked why not "
                         "(NOT_RUN)")


def test_every_command_is_run_here_or_says_why_not():
    plans = [classify(c) for c in all_commands()]
    assert sum(kind == "run" for kind, _ in plans) >= 8, plans
    for why in {why for kind, why in plans if kind == "not run"}:
        for cited in re.findall(r"tests/test_\w+\.py", str(why)):
            assert (ROOT / cited).is_file(), f"NOT_RUN cites {cited}, which does not exist"


def test_a_command_neither_run_nor_marked_fails(monkeypatch):
    command = Command("test", "vlaedge tune --recipe cpu-int8 --out runs/tune", span=False)
    assert classify(command)[0] == "not run"
    monkeypatch.setattr(sys.modules[__name__], "NOT_RUN", [(k, w) for k, w in NOT_RUN if k != "tune"])
    with pytest.raises(AssertionError, match="neither run here"):
        classify(command)


def commands_to_run() -> list[Command]:
    seen, out = set(), []
    for command in all_commands():
        if command.line not in seen and run_plan(command) is not None:  # checked in the test
            seen.add(command.line)
            out.append(command)
    return out


@pytest.mark.parametrize("command", commands_to_run(), ids=lambda c: c.line)
def test_the_commands_that_run_on_the_default_in_seconds_run(command, request, tmp_path, capsys, monkeypatch):
    _, (subs, expected) = classify(command)
    if expected == 2 and "--device cuda" in command.line:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a GPU is present: the command would run, not be refused")
    put = {"TINY_ONNX": lambda: str(request.getfixturevalue("tiny_run").onnx)}
    args = [subs.get(w, w) for w in command.words[1:]]
    args = [put[a]() if a in put else str(ROOT / a) if a in (SAMPLE, DEFAULT) else a for a in args]
    monkeypatch.chdir(tmp_path)  # outputs (runs/...) land in the temporary folder
    monkeypatch.setenv("COLUMNS", "120")
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == expected, f"{command.page}: {command.line}: exit {code}\n{text[-3000:]}"
    assert text.strip() and "Traceback" not in text and "internal error" not in text, text
    if expected == 2:
        assert sum(line.startswith("error:") for line in text.splitlines()) == 1, text
        assert not list(tmp_path.iterdir()), "a refused command left files"


def every_command() -> list[str]:
    import typer
    from typer._click.core import Context

    from vlaedge.cli import app

    group = typer.main.get_command(app)
    return group.list_commands(Context(group, info_name="vlaedge"))


@pytest.mark.parametrize("name", every_command())
def test_vlaedge_command_help_runs_for_every_command(name, capsys, monkeypatch):
    """`vlaedge COMMAND --help` (docs/reference/cli.md) for each COMMAND."""
    monkeypatch.setenv("COLUMNS", "120")
    code, text = run_cli([name, "--help"], capsys, monkeypatch)
    assert code == 0 and f"vlaedge {name}" in text and "--help" in text, text


# --- 6. the README stays a front page ----------------------------------------------------------------------


def test_the_readme_is_a_front_page_that_links_every_guide():
    """Under ~200 lines, with the sections a newcomer looks for, and a link to every guide of the site."""
    text = README.read_text()
    lines = len(text.splitlines())
    assert lines <= 200, f"README.md has {lines} lines: move the detail into docs/"
    sections = set(headings(text))
    assert {"Two commands", "Your own policy", "Running on a cluster", "Documentation"} <= sections, sections
    assert any(s.startswith("A 60-second tour") for s in sections), sections
    assert any(s.startswith("Status") for s in sections), sections
    linked = {target_file(README, link.partition("#")[0]) for link in links(README)}
    unlinked = [rel(p) for p in sorted((DOCS / "guides").glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"guides the README does not link: {unlinked}"
