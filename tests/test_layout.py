"""The package layout stays layered: cli -> commands -> pipeline -> wings (compress, check, deploy) -> the
shared parts. Read from the source with an AST walk (lazy imports inside functions count too), so a new
upward import or import circle fails here before it confuses a reader."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlaedge"

# Top-level parts of vlaedge, highest layer first. A module may import its own part and lower layers only.
LAYERS = (
    {"cli", "docs_reference"},  # docs_reference: the generated docs pages, from the typer app and the models
    {"commands"},
    {"pipeline", "tune", "device_check"},  # tune: the variant search, built on the pipeline's helpers
    {"compress", "check", "deploy"},  # the stage wings: never import one another
    {"recipe", "targets", "defaults", "models", "runtimes", "data", "sim"},
    {"artifact", "info", "safe_yaml", "onnx_file", "executor"},  # executor: local or Ray units of work
    {"errors", "progress", ""},  # "" is vlaedge/__init__.py (the version)
)
WINGS = LAYERS[3]


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("vlaedge",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The vlaedge modules `name` imports anywhere in its source (resolved to the deepest existing module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate.startswith("vlaedge") and candidate != name:
                targets.add(candidate)
                break
    return targets


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def rank(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part(module) in layer:
            return i
    raise AssertionError(f"{module}: its part {part(module)!r} is in no layer of tests/test_layout.py LAYERS")


def test_every_module_imports() -> None:
    for name in sorted(module_names()):
        importlib.import_module(name)


def test_no_import_from_a_higher_layer_and_no_wing_imports_another() -> None:
    wrong = []
    for src, targets in graph().items():
        for dst in targets:
            if part(src) == part(dst):
                continue
            if rank(dst) < rank(src):
                wrong.append(f"{src} imports {dst}, a higher layer")
            elif part(src) in WINGS and part(dst) in WINGS:
                wrong.append(f"{src} imports {dst}, another wing")
    assert not wrong, "\n".join(sorted(wrong))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative DFS with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(edges):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(edges[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "d"}, "b": set(), "d": {"d2"}, "d2": {"d"}}, ["d", "d2", "d"]),
    ],
)
def test_find_cycle_finds_circles(edges: dict, expected: list | None) -> None:
    assert find_cycle(edges) == expected


def test_no_private_module_names() -> None:
    private = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("_*.py") if p.name != "__init__.py"]
    assert not private, f"private module names (a plain name inside a wing is private enough): {private}"


def test_each_package_says_what_it_does() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        where = init.relative_to(PACKAGE.parent)
        assert doc and len(doc) > 40, f"{where} has no docstring saying what it does"
