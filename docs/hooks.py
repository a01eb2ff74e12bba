"""MkDocs hooks (mkdocs.yml `hooks:`): pages that come from files outside docs/, so they cannot drift.

- every `benchmarks/results/*.md` becomes the page `benchmarks/results/NAME.md`, listed in the nav under
  Benchmarks, and `benchmarks/README.md` (the scripts and their commands) becomes `benchmarks/scripts.md`;
- `<!-- benchmarks:results -->` in benchmarks/index.md becomes the list of those pages;
- a guide in `docs/guides/` that the nav does not name is appended to the Guides section under its title,
  so a new guide is never left out of the site.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCRIPTS = ROOT / "benchmarks" / "README.md"


def _title(text: str, fallback: str) -> str:
    m = re.search(r"^# (.+)$", text, re.M)
    return m.group(1).strip() if m else fallback


def _result_pages() -> dict[str, str]:
    """Site path -> Markdown of each benchmark results file (a title added where the file has none)."""
    pages = {}
    for path in sorted(RESULTS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        if not re.match(r"# ", text):
            text = f"# {path.stem}\n\n{text}"
        source = f"*From `benchmarks/results/{path.name}` (written by the script it names).*\n\n"
        head, _, body = text.partition("\n")
        pages[f"benchmarks/results/{path.name}"] = f"{head}\n\n{source}{body.lstrip()}"
    return pages


def _nav_paths(nav) -> set[str]:
    found = set()
    for item in nav if isinstance(nav, list) else [nav]:
        if isinstance(item, dict):
            for value in item.values():
                found |= _nav_paths(value)
        elif isinstance(item, list):
            found |= _nav_paths(item)
        elif isinstance(item, str):
            found.add(item)
    return found


def _section(nav: list, title: str) -> list | None:
    for item in nav:
        if isinstance(item, dict) and title in item and isinstance(item[title], list):
            return item[title]
    return None


def on_config(config):
    nav = config["nav"]
    guides = _section(nav, "Guides")
    named = _nav_paths(nav)
    for path in sorted((Path(config["docs_dir"]) / "guides").glob("*.md")):
        if f"guides/{path.name}" not in named and guides is not None:
            guides.append({_title(path.read_text(encoding="utf-8"), path.stem): f"guides/{path.name}"})
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("Benchmarks") == "benchmarks/index.md":
            results = [{_title(text, path): path} for path, text in _result_pages().items()]
            nav[i] = {"Benchmarks": ["benchmarks/index.md", {"Scripts": "benchmarks/scripts.md"}, *results]}
    return config


def on_files(files, config):
    for path, text in _result_pages().items():
        files.append(File.generated(config, path, content=text))
    scripts = SCRIPTS.read_text(encoding="utf-8").replace("# Benchmarks", "# Benchmark scripts", 1)
    files.append(File.generated(config, "benchmarks/scripts.md", content=scripts))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "benchmarks/index.md":
        return markdown
    items = [f"- [{_title(text, path)}]({path.removeprefix('benchmarks/')}): `{path}`"
             for path, text in _result_pages().items()]
    return markdown.replace("<!-- benchmarks:results -->", "## Results files\n\n" + "\n".join(items))
