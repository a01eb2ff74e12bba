"""Every TensorRT Python API name vlaedge touches, with how it is touched, and a scanner of the sources.

`USES` is written by hand from reading the modules in `SOURCES` (one entry per function that makes the
call, so one name may appear several times). A test checks it against the real bindings (`bindings.py`); other
tests keep it honest against the code:

- `trt_module_uses()` finds every `trt.X.Y` (attribute chains on the tensorrt module object, under
  any alias, including a function parameter named like the alias): each must be a listed name;
- `attribute_sites()` finds every call `obj.m(...)`, assignment `obj.a = ...` and read `obj.a` in
  those files: each listed call/set/get must occur at its `where` with the listed argument shape.

Names are relative to the `tensorrt` module and use the Python class names, which differ from the C++
ones in places: the engine inspector is `EngineInspector` (C++ IEngineInspector), the parser error is
`ParserError`, the builder is `Builder`, the runtime `Runtime`, the logger `Logger` (an `ILogger`).

Argument types (`args`, `kwargs` values) are what our code passes: "int", "bool", "str", "buffer"
(bytes / IHostMemory), "tuple" (a shape as a tuple of ints), or a tensorrt class or enum name
("Logger", "BuilderFlag", "ILogger.Severity").
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vlaedge"

# The modules that use TensorRT: a short key (used in `Use.where`) -> where it is or was, relative to
# vlaedge/ (vlaedge/ is being reorganized: _trt_build.py became deploy/trt_build.py, engine.py
# deploy/engine.py). engine.py reaches TensorRT only through trt_build and info.tensorrt_version; it is
# scanned so that a direct use added there is caught.
SOURCES: dict[str, tuple[str, ...]] = {
    "trt_build": ("deploy/trt_build.py", "_trt_build.py"),
    "runtimes/trt": ("runtimes/trt.py",),
    "engine": ("deploy/engine.py", "engine.py"),
    "info": ("info.py",),
}


@dataclass(frozen=True)
class Use:
    """One way our code touches one TensorRT name.

    name: dotted, relative to the module ("IBuilderConfig.set_timing_cache", "BuilderFlag.FP16").
    where: "source key:qualname", the key from SOURCES ("trt_build:build_plan").
    how: "call" (a method, function or constructor), "get" / "set" (a property), "value" (an enum
        value or module constant read).
    args: the types of the positional arguments passed; kwargs: (keyword, type) pairs.
    result: what the code does with a call's return value: "checked" (tested for failure: None,
        False), "used" (consumed without a failure test), "ignored".
    dynamic: the name is reached through getattr with a computed attribute (see DYNAMIC).
    """

    name: str
    where: str
    how: str = "call"
    args: tuple[str, ...] = ()
    kwargs: tuple[tuple[str, str], ...] = ()
    result: str = "used"
    dynamic: bool = False
    note: str = ""

    @property
    def file(self) -> str:
        return self.where.split(":")[0]

    @property
    def scope(self) -> str:
        return self.where.split(":", 1)[1]

    @property
    def member(self) -> str:
        return self.name.split(".")[-1]


B, C, D = "trt_build:build_plan", "trt_build:_builder_config", "trt_build:_dla_rejected"
T, L = "trt_build:_use_timing_cache", "trt_build:_layer_information"
R = "runtimes/trt:TrtRuntime"

USES: tuple[Use, ...] = (
    # ---- trt_build: build_plan -----------------------------------------------------------------
    Use("Logger", B, args=("ILogger.Severity",)),
    Use("Logger.WARNING", B, "value"),
    Use("Builder", B, args=("Logger",)),
    Use("__version__", B, "value", note="(major, minor): strong typing from 11, flags note from 10.12"),
    Use("NetworkDefinitionCreationFlag.STRONGLY_TYPED", B, "value", note="1 << int(flag)"),
    Use("Builder.create_network", B, args=("int",)),
    Use("OnnxParser", B, args=("INetworkDefinition", "Logger")),
    Use("OnnxParser.parse_from_file", B, args=("str",), result="checked"),
    Use("OnnxParser.num_errors", B, "get"),
    Use("OnnxParser.get_error", B, args=("int",)),
    Use("ParserError.__str__", B, note="str(parser.get_error(i))"),
    Use("Builder.build_serialized_network", B, args=("INetworkDefinition", "IBuilderConfig"),
        result="checked"),
    Use("IBuilderConfig.get_timing_cache", B, result="checked", note="None-checked before serialize()"),
    Use("ITimingCache.serialize", B, note="bytes(...) of the IHostMemory"),
    # ---- trt_build: _use_timing_cache (issue 17 bug 4) ----------------------------------------------
    Use("IBuilderConfig.create_timing_cache", T, args=("buffer",),
        note="bytes of the bundle's timing.cache (kept across rebuilds by build_engine), or b''"),
    Use("IBuilderConfig.set_timing_cache", T, args=("ITimingCache",), kwargs=(("ignore_mismatch", "bool"),),
        result="checked", note="False: retried with an empty cache, with a note; False again: VlaedgeError"),
    # ---- trt_build: _layer_information (issue 17 bugs 1 and 3) -----------------------------------
    Use("Runtime", L, args=("Logger",)),
    Use("Runtime.deserialize_cuda_engine", L, args=("buffer",), result="checked",
        note="after set_dla_core (Runtime.DLA_core) for a DLA plan"),
    Use("ICudaEngine.create_engine_inspector", L),
    Use("ICudaEngine.create_execution_context", L),
    Use("IExecutionContext.set_input_shape", L, args=("str", "tuple"), result="checked",
        note="the profile's opt shape of every dynamic input"),
    Use("EngineInspector.execution_context", L, "set", args=("IExecutionContext",),
        note="the property is execution_context, not the 10.3 docstring's `context`"),
    Use("EngineInspector.get_engine_information", L, args=("LayerInformationFormat",)),
    Use("LayerInformationFormat.JSON", L, "value"),
    # ---- trt_build: _builder_config ------------------------------------------------------------
    Use("Builder.create_builder_config", C),
    Use("IBuilderConfig.set_memory_pool_limit", C, args=("MemoryPoolType", "int"), result="ignored"),
    Use("MemoryPoolType.WORKSPACE", C, "value"),
    Use("IBuilderConfig.set_flag", C, args=("BuilderFlag",), result="ignored"),
    Use("BuilderFlag.FP16", C, "value", dynamic=True, note="getattr(trt.BuilderFlag, flag.upper())"),
    Use("BuilderFlag.INT8", C, "value", dynamic=True, note="getattr(trt.BuilderFlag, flag.upper())"),
    Use("BuilderFlag.SPARSE_WEIGHTS", C, "value"),
    Use("IBuilderConfig.default_device_type", C, "set", args=("DeviceType",)),
    Use("DeviceType.DLA", C, "value"),
    Use("IBuilderConfig.DLA_core", C, "set", args=("int",)),
    Use("BuilderFlag.PREFER_PRECISION_CONSTRAINTS", C, "value", note="DLA, weakly typed: as trtexec"),
    Use("BuilderFlag.GPU_FALLBACK", C, "value"),
    Use("BuilderFlag.DIRECT_IO", C, "value", note="DLA without GPU fallback: as trtexec"),
    Use("IBuilderConfig.profiling_verbosity", C, "set", args=("ProfilingVerbosity",)),
    Use("ProfilingVerbosity.DETAILED", C, "value"),
    Use("Builder.create_optimization_profile", C),
    Use("IOptimizationProfile.set_shape", C, args=("str", "tuple", "tuple", "tuple"), result="ignored"),
    Use("IBuilderConfig.add_optimization_profile", C, args=("IOptimizationProfile",), result="checked",
        note="-1: VlaedgeError"),
    # ---- trt_build: _dla_rejected --------------------------------------------------------------
    Use("INetworkDefinition.num_layers", D, "get"),
    Use("INetworkDefinition.get_layer", D, args=("int",)),
    Use("ILayer.name", D, "get"),
    Use("IBuilderConfig.can_run_on_DLA", D, args=("ILayer",), result="checked"),
    # ---- runtimes/trt ---------------------------------------------------------------------------------
    Use("__version__", "runtimes/trt:_import_tensorrt", "value", note="importability probe"),
    Use("Runtime.num_DLA_cores", "runtimes/trt:set_dla_core", "get"),
    Use("Runtime.DLA_core", "runtimes/trt:set_dla_core", "set", args=("int",),
        note="the sidecar's dla_core, before deserialize_cuda_engine (issue 17 bug 3)"),
    Use("nptype", "runtimes/trt:numpy_dtype", args=("DataType",),
        note="TypeError for BF16/FP8/INT4/FP4 becomes a VlaedgeError"),
    Use("__version__", f"{R}.__init__", "value", note="check_plan_compatible(plan, trt.__version__)"),
    Use("Logger", f"{R}.__init__", args=("ILogger.Severity",)),
    Use("Logger.WARNING", f"{R}.__init__", "value"),
    Use("Runtime", f"{R}.__init__", args=("Logger",), note="DLA core set by set_dla_core first"),
    Use("Runtime.deserialize_cuda_engine", f"{R}.__init__", args=("buffer",), result="checked"),
    Use("ICudaEngine.num_io_tensors", f"{R}.__init__", "get"),
    Use("ICudaEngine.get_tensor_name", f"{R}.__init__", args=("int",)),
    Use("ICudaEngine.get_tensor_mode", f"{R}.__init__", args=("str",)),
    Use("TensorIOMode.INPUT", f"{R}.__init__", "value"),
    Use("ICudaEngine.get_tensor_dtype", f"{R}.__init__", args=("str",)),
    Use("ICudaEngine.create_execution_context", f"{R}._prepare", note="one context per input-shape set"),
    Use("IExecutionContext.set_input_shape", f"{R}._prepare", args=("str", "tuple"), result="checked"),
    Use("ICudaEngine.get_tensor_shape", f"{R}._prepare", args=("str",), note="in the refusal message"),
    Use("ICudaEngine.num_io_tensors", f"{R}._prepare", "get"),
    Use("ICudaEngine.get_tensor_name", f"{R}._prepare", args=("int",)),
    Use("IExecutionContext.get_tensor_shape", f"{R}._prepare", args=("str",)),
    Use("IExecutionContext.set_tensor_address", f"{R}._prepare", args=("str", "int"), result="checked"),
    Use("IExecutionContext.execute_async_v3", f"{R}._execute", args=("int",), result="checked"),
    Use("IExecutionContext.execute_async_v3", f"{R}._capture", args=("int",), result="checked",
        note="inside torch.cuda.graph capture; False: the graph is dropped (issue 17 bug 2)"),
    # ---- info ---------------------------------------------------------------------------------------
    Use("__version__", "info:tensorrt_version", "value"),
)

# Names reached with getattr(trt.X, <computed>): the values the computation can give, from
# engine.build_settings (flags are ("int8", "fp16") or ("fp16",)), upper-cased in trt_build._builder_config.
DYNAMIC = {"BuilderFlag": ("FP16", "INT8")}

# Calls whose failure signal (False, None, -1) our code drops, with why that is no gap. A test fails when
# a new one appears, and when one listed here is checked after all (so the list is kept current).
KNOWN_UNCHECKED = {
    ("INetworkDefinition.get_layer", D): "not a gap: None only out of range, i < num_layers",
}

# Deprecations the bindings report for names we use, per TensorRT version. A new one fails a test.
KNOWN_DEPRECATED = {
    "10.3": set(),
    "10.13": {
        "BuilderFlag.FP16", "BuilderFlag.INT8",  # 10.12: "Superseded by strong typing." (still work)
        "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",  # 10.12; set for DLA builds only, and Thor has no DLA
        "BuilderFlag.DIRECT_IO",  # 10.7; DLA without GPU fallback only (Orin, TensorRT 10.3)
    },
}

# Attribute names in the scanned files that are TensorRT member names by coincidence, on objects that
# are not TensorRT's (attributes of imported modules and of builtin types are skipped already).
# Used by the reverse check "every TensorRT-looking member in the code is listed".
NOT_TRT = {
    "flags",  # BuildSettings.flags (trt_build._builder_config)
    "dtype",  # torch tensors' .dtype (runtimes/trt)
    "name",  # TensorSpec.name (runtimes/trt); ILayer.name is listed
    "shape",  # numpy arrays' / torch tensors' .shape
    "numpy",  # torch tensors' .numpy() (runtimes/trt); Weights.numpy is TensorRT's
}
BUILTIN_MEMBERS = {m for t in (list, dict, set, str, bytes, tuple, int, float, object) for m in dir(t)}


def unlisted_trt_members(members: set[str], uses: tuple[Use, ...] = USES,
                         files: dict[str, Path] | None = None) -> list[Site]:
    """Sites in the modules that import tensorrt whose member is a public member of a real TensorRT
    class (`members`), that no listed use covers: a TensorRT call added to the code but not to USES.

    Skipped: attributes of imported modules, the tensorrt module included (trt_module_uses covers
    those: trt.BuilderFlag.FP16), np.dtype, importlib.metadata; builtin-type methods (list.append);
    NOT_TRT.
    """
    files = source_files() if files is None else files
    trt_files = {t.file for t in trt_module_uses(files)}
    modules = {key: imported_names(ast.parse(path.read_text())) | {"trt"} for key, path in files.items()}
    out = []
    for s in attribute_sites(files):
        if s.file not in trt_files or s.on_module or s.member not in members:
            continue
        if s.root in modules[s.file] or s.member in BUILTIN_MEMBERS | NOT_TRT:
            continue
        if not any(u.file == s.file and u.scope == s.scope and u.member == s.member for u in uses):
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------------
# Source scanning


def source_files(root: Path | None = None) -> dict[str, Path]:
    """{key: path} for SOURCES, plus {path relative to vlaedge/ without .py: path} for any other vlaedge
    module that imports tensorrt.

    A source is looked for at its known places, then by file name anywhere in vlaedge/ ("trt_build.py"
    or "_trt_build.py", when exactly one matches); one not found is left out (a test reports it).
    """
    root = PACKAGE if root is None else root
    found: dict[str, Path] = {}
    for key, places in SOURCES.items():
        path = next((root / p for p in places if (root / p).is_file()), None)
        if path is None:
            stem = key.split("/")[-1]
            matches = sorted({*root.rglob(f"{stem}.py"), *root.rglob(f"_{stem}.py")})
            path = matches[0] if len(matches) == 1 else None
        if path is not None:
            found[key] = path
    for path in sorted(root.rglob("*.py")):
        if path not in found.values() and _imports_tensorrt(ast.parse(path.read_text())):
            found[str(path.relative_to(root).with_suffix(""))] = path
    return found


def _imports_tensorrt(tree: ast.AST) -> bool:
    return bool(_aliases(tree))


def _aliases(tree: ast.AST) -> set[str]:
    """Names bound to the tensorrt module: `import tensorrt [as x]`, `from x import tensorrt`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "tensorrt" or a.name.startswith("tensorrt."):
                    names.add(a.asname or "tensorrt")
        elif isinstance(node, ast.ImportFrom) and node.module in ("tensorrt_bindings",):
            names.update(a.asname or a.name for a in node.names)
    return names


class _Scopes(ast.NodeVisitor):
    """Walks a module keeping the qualified name of the enclosing class/function."""

    def __init__(self) -> None:
        self.stack: list[str] = []

    @property
    def scope(self) -> str:
        return ".".join(self.stack) or "<module>"

    def _push(self, node: ast.AST) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _push


def _chain(node: ast.AST) -> tuple[str | None, list[str]]:
    """`a.b.c` -> ("a", ["b", "c"]); a chain not rooted at a name -> (None, [...]). A chain through
    `__version__` stops there (what follows is str methods: `trt.__version__.split`)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts = parts[::-1]
    if "__version__" in parts:
        parts = parts[: parts.index("__version__") + 1]
    return (node.id if isinstance(node, ast.Name) else None), parts


def imported_names(tree: ast.AST) -> set[str]:
    """Every name an import statement binds in the module (torch, np, json, ...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


@dataclass(frozen=True)
class TrtName:
    """A `trt.X.Y` found in the source."""

    name: str  # "BuilderFlag.FP16"; "BuilderFlag.*" for getattr(trt.BuilderFlag, <computed>)
    file: str
    line: int
    scope: str


def _module_names(tree: ast.AST) -> set[str]:
    """The names that hold the tensorrt module in a file: its import aliases, and a function
    parameter named `trt` (the module passed in: `_builder_config(trt, ...)`)."""
    return _aliases(tree) | ({"trt"} & _param_names(tree))


class _TrtNames(_Scopes):
    def __init__(self, rel: str, aliases: set[str]) -> None:
        super().__init__()
        self.rel, self.aliases, self.out = rel, aliases, []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        root, parts = _chain(node)
        if root in self.aliases:
            self.out.append(TrtName(".".join(parts), self.rel, node.lineno, self.scope))
            return  # do not descend: the inner chain is a prefix of this one
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Name) and f.id == "getattr" and len(node.args) >= 2:
            root, parts = _chain(node.args[0])
            if root in self.aliases:
                attr = node.args[1]
                last = attr.value if isinstance(attr, ast.Constant) else "*"
                self.out.append(TrtName(".".join([*parts, str(last)]), self.rel, node.lineno, self.scope))
                for extra in node.args[1:]:
                    self.visit(extra)
                return
        self.generic_visit(node)


def _visit_all(visitor_class, files: dict[str, Path] | None) -> list:
    """Runs `visitor_class(rel, module_names)` over each file's AST and concatenates its `out`."""
    files = source_files() if files is None else files
    out: list = []
    for rel, path in files.items():
        tree = ast.parse(path.read_text())
        visitor = visitor_class(rel, _module_names(tree))
        visitor.visit(tree)
        out += visitor.out
    return out


def trt_module_uses(files: dict[str, Path] | None = None) -> list[TrtName]:
    """Every attribute chain on the tensorrt module object in the files (the longest chain only)."""
    return _visit_all(_TrtNames, files)


def _param_names(tree: ast.AST) -> set[str]:
    """Function parameter names."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.update(a.arg for a in node.args.args + node.args.kwonlyargs)
    return names


@dataclass(frozen=True)
class Site:
    """An attribute use on any object: a call `x.m(...)`, an assignment `x.a = ...` or a read `x.a`."""

    member: str
    how: str  # "call", "set", "get"
    file: str
    line: int
    scope: str
    npos: int = 0
    kwargs: tuple[str, ...] = ()
    on_module: bool = False  # the object is the tensorrt module (trt.Builder(...))
    root: str | None = None  # the name the attribute chain starts from ("self", "config", "np")


class _Sites(_Scopes):
    def __init__(self, rel: str, aliases: set[str]) -> None:
        super().__init__()
        self.rel, self.aliases, self.out = rel, aliases, []
        self.seen: set[int] = set()  # attribute nodes already recorded as a call or a set

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute):
            root, parts = _chain(node.func)
            on_module = root in self.aliases and len(parts) == 1
            kws = tuple(sorted(k.arg for k in node.keywords if k.arg))
            self.out.append(Site(node.func.attr, "call", self.rel, node.lineno, self.scope,
                                 len(node.args), kws, on_module, root))
            self.seen.add(id(node.func))
        if isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
            self.out.append(Site("__str__", "call", self.rel, node.lineno, self.scope, 0))
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            if isinstance(t, ast.Attribute):
                self.out.append(Site(t.attr, "set", self.rel, node.lineno, self.scope, 1, root=_chain(t)[0]))
                self.seen.add(id(t))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if id(node) not in self.seen and isinstance(node.ctx, ast.Load):
            self.out.append(Site(node.attr, "get", self.rel, node.lineno, self.scope, root=_chain(node)[0]))
        self.generic_visit(node)


def attribute_sites(files: dict[str, Path] | None = None) -> list[Site]:
    """Every attribute call, assignment and read in the files (calls and sets are not also reads)."""
    return _visit_all(_Sites, files)


def site_matches(use: Use, site: Site) -> bool:
    """Whether a source site is this listed use (same file, scope, member, kind and argument shape)."""
    if site.file != use.file or site.scope != use.scope or site.member != use.member:
        return False
    if use.how == "call":
        return site.how == "call" and site.npos == len(use.args) and site.kwargs == tuple(
            sorted(k for k, _ in use.kwargs))
    return site.how == use.how


# --------------------------------------------------------------------------------------------------
# Checking a use against the real bindings (pure: works on `bindings.inspect_api` descriptions)

_SIMPLE = {
    "int": {"int"},
    "bool": {"bool"},
    "str": {"str"},
    "buffer": {"buffer", "bytes"},
    "tuple": {"tuple", "Dims", "Dims64", "Tuple[int]", "List[int]", "Sequence[int]"},  # Dims from tuple
}


def type_names(uses: tuple[Use, ...] = USES) -> set[str]:
    """The tensorrt class/enum names our arguments have (to be described alongside the uses)."""
    return {t for u in uses for t in (*u.args, *(v for _, v in u.kwargs)) if t not in _SIMPLE}


def accepts(annotation: str | None, ours: str, classes: dict[str, dict]) -> bool:
    """Whether a parameter annotated `annotation` accepts a value of our type `ours`."""
    if annotation is None:  # a plain-Python function (nptype) or an untyped property
        return True
    ann = annotation.removeprefix("tensorrt.")
    if ours in _SIMPLE:
        return ann in _SIMPLE[ours]
    desc = classes.get(ours) or {}
    return ann.split(".")[-1] in desc.get("mro", [])


def check_use(use: Use, desc: dict, classes: dict[str, dict]) -> list[str]:
    """Problems of one use against its real description (empty: it fits).

    Args:
        use: the listed use.
        desc: `inspect_api(...)[use.name]`.
        classes: descriptions of the tensorrt types in `type_names()` (for subclass checks).
    """
    if not desc.get("exists"):
        hint = f"; did you mean {desc.get('suggestions')}" if desc.get("suggestions") else ""
        return [f"{use.name} does not exist (no {desc.get('missing')}){hint}"]
    kind = desc["kind"]
    if use.how == "value":
        return [] if kind in ("enum_value", "value") else [f"{use.name} is a {kind}, read as a value"]
    if use.how in ("get", "set"):
        if kind != "property":
            return [f"{use.name} is a {kind}, not a property"]
        if use.how == "set" and not desc.get("writable"):
            return [f"{use.name} is read-only"]
        if use.how == "set" and desc.get("type") and not accepts(desc["type"], use.args[0], classes):
            return [f"{use.name} holds {desc['type']}, we assign {use.args[0]}"]
        return []
    if kind not in ("class", "method", "function"):
        return [f"{use.name} is a {kind}, called"]
    sigs = desc.get("signatures") or []
    if not sigs:
        return [f"{use.name}: no signature found in its docstring"]
    problems = []
    for sig in sigs:
        why = _misfit(use, sig, classes)
        if not why:
            return []
        problems.append(f"{sig['text']}: {why}")
    return [f"{use.name}({_shape(use)}) fits no overload: " + " | ".join(problems)]


def _shape(use: Use) -> str:
    return ", ".join([*use.args, *(f"{k}={v}" for k, v in use.kwargs)])


def _misfit(use: Use, sig: dict, classes: dict[str, dict]) -> str:
    params = list(sig["params"])
    if params and params[0]["name"] == "self":
        params = params[1:]
    if any(p["name"].startswith("*") for p in params):
        return ""
    if len(use.args) > len(params):
        return f"{len(use.args)} positional arguments, takes {len(params)}"
    for p, ours in zip(params, use.args, strict=False):  # len checked above
        if not accepts(p["annotation"], ours, classes):
            return f"argument {p['name']}: {p['annotation']} does not take {ours}"
    rest = {p["name"]: p for p in params[len(use.args):]}
    for key, ours in use.kwargs:
        if key not in rest:
            return f"no keyword parameter {key!r} (has {list(rest)})"
        if not accepts(rest[key]["annotation"], ours, classes):
            return f"keyword {key}: {rest[key]['annotation']} does not take {ours}"
    given = {k for k, _ in use.kwargs}
    missing = [n for n, p in rest.items() if p["default"] is None and n not in given]
    return f"missing required {missing}" if missing else ""


def failure_signal(desc: dict) -> str | None:
    """How a call reports failure in its return value, from its real signature/doc, or None."""
    for sig in desc.get("signatures") or []:
        if sig.get("returns") == "bool":
            return "returns bool"
    doc = desc.get("doc") or ""
    if "or None" in doc or "or :class:`None`" in doc or "or `None`" in doc:
        return "returns None on failure"
    if "-1 if" in doc:
        return "returns -1 on failure"
    return None
