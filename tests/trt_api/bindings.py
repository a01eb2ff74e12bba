"""The real TensorRT Python bindings on a machine without TensorRT: install, stub, inspect.

NVIDIA publishes the compiled Python bindings as small wheels of their own (`tensorrt-cu12-bindings`,
`tensorrt-cu13-bindings`, package `tensorrt_bindings`). Their extension module `tensorrt.so` links
against libnvinfer, libnvonnxparser and libnvinfer_plugin but calls into them only when an object is
created (`createInferBuilder_INTERNAL` and a few other C entry points), not at import. So with no-op
stub libraries under those sonames the module imports on a CPU-only machine and every class, enum,
property and pybind11 signature can be read. Nothing can be built, deserialized or run that way: a
stub returns NULL, so never create a TensorRT object (Builder, Runtime, ...) through these bindings.

    target = install_bindings("10.3", Path(".cache/trt-bindings"))
    info = inspect_api(target, ["Builder.build_serialized_network", "BuilderFlag.FP16"])
    info["Builder.build_serialized_network"]["signatures"][0]["params"]

`install_bindings` raises `BindingsUnavailable` (with the reason) when the wheel cannot be fetched
(no network, registry down, wrong Python/platform) or a tool is missing (gcc), so a pytest fixture can
turn it into `pytest.skip(reason)`. The inspection runs in a subprocess because loading the stubs needs
LD_LIBRARY_PATH at process start and must never leak into the test process.

Stdlib only: this file is also the subprocess's entry point (`python bindings.py --probe TARGET`).
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MODULE = "tensorrt_bindings"  # the package both wheels install; JetPack's `tensorrt` is the same module
MARKER = "vlaedge-stubs.json"  # written last: a target folder without it is incomplete


@dataclass(frozen=True)
class Wheel:
    """A pinned bindings wheel on PyPI."""

    dist: str
    version: str
    platform: str  # what ships this TensorRT version

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


# The TensorRT versions vlaedge targets (see vlaedge/targets.py): key -> wheel.
VERSIONS: dict[str, Wheel] = {
    "10.3": Wheel("tensorrt-cu12-bindings", "10.3.0", "JetPack 6.1/6.2 (Jetson Orin)"),
    "10.13": Wheel("tensorrt-cu13-bindings", "10.13.3.9", "JetPack 7 (Jetson Thor)"),
}

# Which library each entry point of tensorrt.so belongs to (TensorRT's headers: NvInfer.h /
# NvInferRuntime.h, NvOnnxParser.h, NvInferPlugin.h). Found with `nm -D --undefined-only tensorrt.so`
# on both wheels (same nine symbols in 10.3.0 and 10.13.3.9). Used to place the derived symbols and,
# where readelf/nm are missing, as the whole list.
KNOWN_OWNERS: dict[str, str] = {
    "createInferBuilder_INTERNAL": "libnvinfer.so.10",
    "createInferRuntime_INTERNAL": "libnvinfer.so.10",
    "createInferRefitter_INTERNAL": "libnvinfer.so.10",
    "getPluginRegistry": "libnvinfer.so.10",
    "getBuilderPluginRegistry": "libnvinfer.so.10",
    "createNvOnnxParser_INTERNAL": "libnvonnxparser.so.10",
    "createNvOnnxParserRefitter_INTERNAL": "libnvonnxparser.so.10",
    "getNvOnnxParserVersion": "libnvonnxparser.so.10",
    "initLibNvInferPlugins": "libnvinfer_plugin.so.10",
}


class BindingsUnavailable(RuntimeError):
    """The bindings cannot be installed or imported here; `str(e)` says why (a skip reason)."""


def resolve(version_key: str) -> Wheel:
    """The wheel for "10.3" / "10.3.0" / "10.13" / "10.13.3.9" (a key or a pinned version)."""
    for key, wheel in VERSIONS.items():
        if version_key in (key, wheel.version):
            return wheel
    raise KeyError(f"unknown TensorRT version {version_key!r}; known: {sorted(VERSIONS)}")


# --------------------------------------------------------------------------------------------------
# Installing


def install_bindings(version_key: str, cache_dir: Path, timeout: float = 180.0) -> Path:
    """Installs the pinned bindings wheel and stub libraries into `cache_dir/<version>` (once).

    Steps: `pip install --no-deps --target` into a temporary folder; derive the sonames and C symbols
    `tensorrt.so` needs from TensorRT (readelf -d / nm -D, minus what this interpreter and the system
    libraries already provide); compile one no-op stub per soname with gcc; import the bindings in a
    subprocess and check `__version__`; write the marker file; move the folder into place. A complete
    folder (marker present, same version) is reused as is.

    Args:
        version_key: a key of `VERSIONS` or its pinned version.
        cache_dir: the cache root, e.g. `<repo>/.cache/trt-bindings`.
        timeout: seconds for pip (the import check has its own short timeout).

    Returns:
        The target folder: `tensorrt_bindings/` and `stubs/` inside.

    Raises:
        BindingsUnavailable: not Linux, gcc missing, pip failed (no network, no wheel for this Python
            or platform), or the stubbed import failed.
    """
    wheel = resolve(version_key)
    cache_dir = Path(cache_dir).resolve()
    target = cache_dir / wheel.version
    if _complete(target, wheel):
        return target
    if not sys.platform.startswith("linux"):
        raise BindingsUnavailable(f"the stub-library trick needs Linux (this is {sys.platform})")
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BindingsUnavailable("no C compiler (gcc) to build the TensorRT stub libraries")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / f".{wheel.version}.lock"):
        if _complete(target, wheel):  # another process finished it while we waited
            return target
        tmp = cache_dir / f".{wheel.version}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _pip_install(wheel, tmp, timeout)
            so = tmp / MODULE / "tensorrt.so"
            if not so.is_file():
                raise BindingsUnavailable(f"{wheel.requirement} has no {MODULE}/tensorrt.so")
            needed, how = needed_stubs(so)
            build_stubs(needed, tmp / "stubs", gcc)
            got = inspect_api(tmp, ["__version__"], timeout=60)["__version__"]
            if got.get("value") != wheel.version:
                raise BindingsUnavailable(f"stubbed import of {wheel.requirement} gave {got}")
            meta = {"dist": wheel.dist, "version": wheel.version, "stubs": needed, "derived_with": how,
                    "python": sys.version.split()[0], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(target: Path, wheel: Wheel) -> bool:
    try:
        meta = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == wheel.version and (target / MODULE / "tensorrt.so").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive file lock (parallel test workers install once)."""
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_install(wheel: Wheel, dest: Path, timeout: float) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-compile",
           "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "20",
           "--target", str(dest), wheel.requirement]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"{e.__class__.__name__}: {e}"
        raise BindingsUnavailable(f"pip could not fetch {wheel.requirement}: {why}") from e
    if run.returncode != 0:
        lines = [ln for ln in (run.stderr + run.stdout).splitlines() if ln.strip()]
        tail = " | ".join(lines[-3:])[-400:]
        raise BindingsUnavailable(f"pip could not fetch {wheel.requirement} (exit {run.returncode}): {tail}")


# --------------------------------------------------------------------------------------------------
# Stub libraries


def needed_stubs(so: Path) -> tuple[dict[str, list[str]], str]:
    """The stub libraries `so` needs: {soname: [C symbols]}, and how the list was found.

    With readelf and nm: the NEEDED sonames that start with "libnv" (TensorRT's; always stubbed, even
    where a real TensorRT is installed, so the result is the same everywhere), and the undefined,
    unversioned, strong symbols that neither this interpreter nor the other NEEDED libraries provide.
    Without the tools: `KNOWN_OWNERS`. Symbols are placed by `KNOWN_OWNERS`, unknown ones by name.

    Raises:
        BindingsUnavailable: TensorRT's symbols are versioned (plain stubs would not satisfy them).
    """
    if not (shutil.which("readelf") and shutil.which("nm")):
        return _group(KNOWN_OWNERS, sorted(set(KNOWN_OWNERS.values()))), "hard-coded (no readelf/nm)"
    dynamic = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    sonames = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    ours = [s for s in sonames if s.startswith("libnv")]
    versions = subprocess.run(["readelf", "-V", str(so)], capture_output=True, text=True).stdout
    if any(f"File: {s}" in versions for s in ours):
        raise BindingsUnavailable(f"{so.name} needs versioned symbols from {ours}: the stubs cannot be plain")
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True,
                               check=True).stdout
    candidates = []
    for line in undefined.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1]:
            candidates.append(parts[1])
    providers = [ctypes.CDLL(None)]  # this interpreter (libpython, libc, libdl)
    for soname in sonames:
        if soname not in ours:
            with contextlib.suppress(OSError):
                providers.append(ctypes.CDLL(soname))
    missing = [s for s in candidates if not any(_has(lib, s) for lib in providers)]
    owners = {s: _owner(s, ours) for s in missing}
    return _group(owners, ours), "readelf -d / nm -D --undefined-only"


def _has(lib: ctypes.CDLL, symbol: str) -> bool:
    try:
        getattr(lib, symbol)
    except AttributeError:
        return False
    return True


def _owner(symbol: str, sonames: list[str]) -> str:
    known = KNOWN_OWNERS.get(symbol)
    if known in sonames:
        return known
    for hint, prefix in (("OnnxParser", "libnvonnxparser"), ("Plugins", "libnvinfer_plugin")):
        if hint in symbol:
            for s in sonames:
                if s.startswith(prefix + "."):
                    return s
    return next((s for s in sonames if s.startswith("libnvinfer.")), sonames[0])


def _group(owners: dict[str, str], sonames: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {s: [] for s in sonames}  # every NEEDED soname gets a library
    for symbol, soname in owners.items():
        grouped.setdefault(soname, []).append(symbol)
    return {s: sorted(v) for s, v in grouped.items()}


def build_stubs(needed: dict[str, list[str]], out_dir: Path, gcc: str = "gcc") -> list[Path]:
    """Compiles one shared library per soname whose symbols are no-op functions returning 0/NULL.

    Returns:
        The libraries, named by their soname (what the dynamic loader looks up on LD_LIBRARY_PATH).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for soname, symbols in needed.items():
        base = soname.split(".so")[0]
        src = out_dir / f"{base}_stub.c"
        body = "".join(f"void *{s}(void) {{ return (void *)0; }}\n" for s in symbols)
        src.write_text(f"/* no-op stand-ins for {soname}: import only, never call */\n{body}")
        lib = out_dir / soname
        cmd = [gcc, "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o", str(lib), str(src)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise BindingsUnavailable(f"gcc failed on the {soname} stub: {run.stderr.strip()[-300:]}")
        built.append(lib)
    return built


# --------------------------------------------------------------------------------------------------
# Inspecting (parent side)


def inspect_api(target: Path, names: list[str], index: bool = False, timeout: float = 60.0) -> dict:
    """Imports the bindings in `target` in a subprocess and describes each dotted API name.

    Args:
        target: a folder from `install_bindings` (holds `tensorrt_bindings/` and `stubs/`).
        names: names relative to the `tensorrt` module: "Builder", "Builder.create_network",
            "Logger.WARNING", "IBuilderConfig.DLA_core", "__version__", "nptype".
        index: also return `"__index__"`: {class name: [its public member names]} for every class.

    Returns:
        {name: description}; a description has "exists" and, when it exists, "kind" ("class", "enum",
        "enum_value", "method", "function", "property", "value"), "doc" (signature lines removed),
        "deprecated" (the deprecation sentence or None) and by kind: "signatures" (class: its
        __init__; method/function: a list of {"text", "params": [{"name", "annotation", "default"}],
        "returns"}), "writable" and "type" (property), "value" (enum_value: int; value: repr or str),
        "mro" (class/enum). A missing name has "missing" (the first absent part) and "suggestions".
        Type names read "tensorrt.X" (the real module prints "tensorrt_bindings.tensorrt.X").

    Raises:
        BindingsUnavailable: the subprocess failed to import the bindings.
    """
    target = Path(target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    stubs = str(target / "stubs")
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = stubs + (os.pathsep + old if old else "")
    request = json.dumps({"names": list(names), "index": index})
    cmd = [sys.executable, "-s", str(Path(__file__).resolve()), "--probe", str(target)]
    try:
        run = subprocess.run(cmd, input=request, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BindingsUnavailable(f"inspecting the bindings in {target} timed out") from e
    if run.returncode != 0:
        raise BindingsUnavailable(
            f"importing {MODULE} from {target} failed (exit {run.returncode}): {run.stderr.strip()[-600:]}"
        )
    return json.loads(run.stdout)


# --------------------------------------------------------------------------------------------------
# Inspecting (subprocess side)

_PREFIX = f"{MODULE}.tensorrt."


def _norm(text: str) -> str:
    return text.replace(_PREFIX, "tensorrt.").replace(f"{MODULE}.", "tensorrt.")


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Splits on `sep` outside brackets and quotes."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def parse_signature(line: str, name: str) -> dict | None:
    """One pybind11 signature line "name(a: T, b: U = d) -> R" -> {"text", "params", "returns"}."""
    line = _norm(line.strip())
    line = re.sub(r"^\d+\.\s+", "", line)
    if not line.startswith(name + "("):
        return None
    depth, end = 0, -1
    for i in range(len(name), len(line)):
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        if depth == 0:
            end = i
            break
    if end < 0 or not line[end + 1 :].lstrip().startswith("->"):
        return None
    params = []
    for part in _split_top(line[len(name) + 1 : end]):
        head, _, default = part.partition(" = ")
        pname, _, annotation = head.partition(":")
        params.append({"name": pname.strip(), "annotation": annotation.strip() or None,
                       "default": default.strip() or None})
    return {"text": line, "params": params, "returns": line[end + 1 :].lstrip()[2:].strip()}


def _pybind_signatures(doc: str, name: str) -> list[dict]:
    sigs = [s for s in (parse_signature(ln, name) for ln in doc.splitlines()) if s]
    return [s for s in sigs if not (len(s["params"]) == 2 and s["params"][0]["name"] == "*args")]


def _strip_signatures(doc: str, name: str) -> str:
    keep = [ln for ln in doc.splitlines()
            if not parse_signature(ln, name) and ln.strip() not in ("Overloaded function.",)]
    return _norm("\n".join(keep).strip())


def _deprecation(doc: str | None) -> str | None:
    """The deprecation sentence of a docstring, or None. A marker inside parentheses is about something
    the text mentions, not the documented name (10.13's MemoryPoolType.WORKSPACE mentions "the
    IAlgorithmSelector interface ([DEPRECATED] Deprecated in TensorRT 10.8 ...)")."""
    if not doc:
        return None
    for m in re.finditer(r"\[DEPRECATED\][^\n]*|Deprecated in TensorRT[^\n]*", doc):
        before = doc[: m.start()]
        if before.count("(") > before.count(")"):
            continue
        return " ".join(m.group(0).split())
    return None


def _ivar(cls: type, attr: str) -> tuple[str | None, str | None]:
    """(type, text) of `:ivar attr:` in a class docstring (pybind properties have no doc of their own)."""
    for klass in cls.__mro__:
        doc = klass.__dict__.get("__doc__") or ""
        m = re.search(rf":ivar {re.escape(attr)}:(.*?)(?=\n\s*:ivar |\Z)", doc, re.S)
        if m:
            text = " ".join(m.group(1).split())
            t = re.match(r":class:`([^`]+)`", text)
            return (t.group(1) if t else None), _norm(text)
    return None, None


def _is_enum_type(obj: object) -> bool:
    return isinstance(obj, type) and hasattr(obj, "__members__") and hasattr(obj, "__entries")


def _describe(module: object, dotted: str) -> dict:
    import inspect

    obj, parent, parts = module, None, dotted.split(".")
    for i, part in enumerate(parts):
        try:
            parent, obj = obj, getattr(obj, part)
        except AttributeError:
            pool = [a for a in dir(obj) if not a.startswith("__")]
            return {"exists": False, "missing": ".".join(parts[: i + 1]),
                    "suggestions": difflib.get_close_matches(part, pool, n=3, cutoff=0.6)}
    last = parts[-1]
    static = inspect.getattr_static(parent, last, None) if parent is not None else None
    if isinstance(static, property):
        ptype, text = _ivar(parent, last) if isinstance(parent, type) else (None, None)
        return {"exists": True, "kind": "property", "writable": static.fset is not None, "type": ptype,
                "doc": text, "deprecated": _deprecation(text)}
    if _is_enum_type(type(obj)) and not isinstance(obj, type):
        entry = type(obj).__entries.get(last) or type(obj).__entries.get(getattr(obj, "name", ""))
        doc = entry[1].strip() if entry else None
        return {"exists": True, "kind": "enum_value", "enum": type(obj).__name__, "value": int(obj),
                "doc": doc, "deprecated": _deprecation(doc)}
    if isinstance(obj, type):
        doc = _norm(obj.__doc__ or "")
        desc = {"exists": True, "kind": "enum" if _is_enum_type(obj) else "class", "doc": doc.strip(),
                "deprecated": _deprecation(doc), "mro": [k.__name__ for k in obj.__mro__]}
        init = obj.__dict__.get("__init__")
        if init is not None and getattr(init, "__doc__", None) and not _is_enum_type(obj):
            desc["signatures"] = _pybind_signatures(init.__doc__, "__init__")
        return desc
    if inspect.isfunction(obj):  # plain Python (e.g. nptype, in the package's __init__.py)
        sig = inspect.signature(obj)
        params = [{"name": p.name, "annotation": None,
                   "default": None if p.default is inspect.Parameter.empty else repr(p.default)}
                  for p in sig.parameters.values()]
        return {"exists": True, "kind": "function", "doc": inspect.getdoc(obj),
                "deprecated": _deprecation(obj.__doc__),
                "signatures": [{"text": f"{last}{sig}", "params": params, "returns": None}]}
    if callable(obj) and isinstance(getattr(obj, "__doc__", None), str):
        kind = "method" if isinstance(parent, type) else "function"
        return {"exists": True, "kind": kind, "signatures": _pybind_signatures(obj.__doc__, last),
                "doc": _strip_signatures(obj.__doc__, last), "deprecated": _deprecation(obj.__doc__)}
    value = obj if isinstance(obj, (str, int, float, bool)) else repr(obj)
    return {"exists": True, "kind": "value", "value": value, "doc": None, "deprecated": None}


def _index(module: object) -> dict[str, list[str]]:
    out = {}
    for name in dir(module):
        obj = getattr(module, name)
        if isinstance(obj, type) and not name.startswith("_"):
            out[name] = sorted(a for a in dir(obj) if not a.startswith("_"))
    return out


def _probe_main(target: str) -> int:
    """Subprocess entry point: JSON request on stdin, JSON answer on stdout."""
    import importlib
    import warnings

    warnings.simplefilter("ignore")
    request = json.loads(sys.stdin.read() or "{}")
    sys.path.insert(0, target)
    module = importlib.import_module(MODULE)
    where = Path(module.__file__).resolve()
    if Path(target).resolve() not in where.parents:
        print(f"{MODULE} imported from {where}, not from {target}", file=sys.stderr)
        return 3
    answer = {name: _describe(module, name) for name in request.get("names", [])}
    if request.get("index"):
        answer["__index__"] = _index(module)
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        sys.exit(_probe_main(sys.argv[2]))
    # `make test-deps`: python tests/trt_api/bindings.py --install 10.3 (one line; exit 1 with the reason)
    # Manual use: python tests/trt_api/bindings.py 10.3 Builder.create_network ...
    root = Path(os.environ.get("VLAEDGE_TRT_BINDINGS_CACHE")
                or Path(__file__).resolve().parents[2] / ".cache" / "trt-bindings")
    install = sys.argv[1:2] == ["--install"]
    args = sys.argv[2:] if install else sys.argv[1:]
    try:
        folder = install_bindings(args[0] if args else "10.3", root)
    except BindingsUnavailable as e:
        print(f"TensorRT bindings unavailable: {e}", file=sys.stderr)
        sys.exit(1)
    if install:
        print(f"TensorRT bindings {resolve(args[0] if args else '10.3').requirement} with stubs in {folder}")
    else:
        print(json.dumps(inspect_api(folder, args[1:] or ["__version__"]), indent=1))
