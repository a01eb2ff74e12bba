"""vlaedge's TensorRT calls against the REAL TensorRT Python bindings (issue 17), in the default suite.

For TensorRT 10.3.0 (JetPack 6.1/6.2, Orin) and 10.13.3.9 (JetPack 7, Thor) the pinned bindings wheel is
installed into .cache/trt-bindings/ with gcc-built no-op stub libraries (tests/trt_api/bindings.py; `make
test-deps` does it ahead), then every use in tests/trt_api/used_api.USES must exist there and take the
arguments we pass, and every TensorRT-looking name in our sources must be listed in USES (AST scans), so
new TensorRT code is covered without anyone remembering to list it. Nothing is built or run: this checks
the API surface only. The bindings tests skip, with the reason, where the wheels cannot be fetched (no
network), gcc is missing or the platform is not Linux; the source-scan tests always run.
VLAEDGE_TRT_BINDINGS_CACHE moves the cache. The findings behind it: tests/trt_api/FINDINGS.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trt_api import bindings, used_api
from trt_api.used_api import USES

CACHE = Path(os.environ.get("VLAEDGE_TRT_BINDINGS_CACHE")
             or Path(__file__).resolve().parents[1] / ".cache" / "trt-bindings")
VERSIONS = sorted(bindings.VERSIONS, key=lambda k: tuple(map(int, k.split("."))))
SELF_TEST_NAMES = ("IEngineInspector.get_engine_information", "Runtime.num_DLA_cores")


@pytest.fixture(scope="module", params=VERSIONS)
def api(request):
    """(version key, {name: description} for every used name and argument type, plus "__index__")."""
    try:
        target = bindings.install_bindings(request.param, CACHE)
        names = sorted({u.name for u in USES} | used_api.type_names(USES) | set(SELF_TEST_NAMES))
        return request.param, bindings.inspect_api(target, names, index=True)
    except bindings.BindingsUnavailable as e:
        pytest.skip(f"TensorRT {request.param} bindings unavailable: {e}")


def _classes(desc: dict) -> dict[str, dict]:
    return {t: desc[t] for t in used_api.type_names(USES)}


# ---- against the real bindings ------------------------------------------------------------------------


def test_bindings_are_the_pinned_version(api):
    key, desc = api
    assert desc["__version__"]["value"] == bindings.VERSIONS[key].version


def test_argument_types_exist(api):
    key, desc = api
    types = used_api.type_names(USES)
    missing = {t: desc[t].get("suggestions") for t in types if not desc[t]["exists"]}
    assert not missing, f"TensorRT {key}: argument types missing: {missing}"


def test_every_used_name_exists_and_fits(api):
    """Each listed name exists, is the kind we use it as, and its real signature takes our arguments."""
    key, desc = api
    classes = _classes(desc)
    problems = [f"{u.where}: {p}" for u in USES for p in used_api.check_use(u, desc[u.name], classes)]
    assert not problems, f"TensorRT {key}:\n" + "\n".join(problems)


def test_checker_catches_misfits(api):
    """check_use is not vacuous: wrong keyword, missing argument, wrong type, C++ class name, setting
    a read-only property and calling a property each give a problem."""
    key, desc = api
    classes = _classes(desc)
    bad = [
        used_api.Use("IBuilderConfig.set_timing_cache", "x:y", args=("ITimingCache",),
                     kwargs=(("ignore_mismatches", "bool"),)),
        used_api.Use("IExecutionContext.execute_async_v3", "x:y"),
        used_api.Use("IBuilderConfig.set_flag", "x:y", args=("int",)),
        used_api.Use("Builder", "x:y", args=("str",)),
        used_api.Use("IEngineInspector.get_engine_information", "x:y", args=("LayerInformationFormat",)),
        used_api.Use("Runtime.num_DLA_cores", "x:y", "set", args=("int",)),
        used_api.Use("ICudaEngine.num_io_tensors", "x:y", args=()),
    ]
    for use in bad:
        assert used_api.check_use(use, desc[use.name], classes), f"TensorRT {key}: {use} not caught"
    suggestion = desc["IEngineInspector.get_engine_information"]["suggestions"]
    assert "EngineInspector" in suggestion


def test_scanner_catches_unlisted_code(api, tmp_path):
    """The source scans are not vacuous: on a module with an unlisted trt name and an unlisted
    TensorRT method call, both reverse checks report them."""
    _, desc = api
    mod = tmp_path / "fake.py"
    mod.write_text(
        "import tensorrt as trt\n"
        "def build(config, context, stream):\n"
        "    config.set_flag(trt.BuilderFlag.BF16)\n"
        "    context.execute_v2([])\n"
    )
    files = {"fake": mod}
    assert [t.name for t in used_api.trt_module_uses(files)] == ["BuilderFlag.BF16"]
    members = {m for ms in desc["__index__"].values() for m in ms}
    found = {s.member for s in used_api.unlisted_trt_members(members, files=files)}
    assert found == {"set_flag", "execute_v2"}


def test_dynamic_names_cover_every_computed_value(api):
    key, desc = api
    for enum, values in used_api.DYNAMIC.items():
        listed = {u.member for u in USES if u.dynamic and u.name.startswith(enum + ".")}
        assert listed == set(values), f"{enum}: list {sorted(listed)}, the code can ask for {values}"
        for v in values:
            assert desc[f"{enum}.{v}"]["exists"], f"TensorRT {key} has no {enum}.{v}"


def test_no_new_deprecations(api):
    """The deprecated names we use are the known ones (KNOWN_DEPRECATED), no more, no fewer."""
    key, desc = api
    found = {u.name: desc[u.name]["deprecated"] for u in USES if desc[u.name].get("deprecated")}
    assert set(found) == used_api.KNOWN_DEPRECATED[key], f"TensorRT {key} deprecations: {found}"


def test_failure_results_are_checked_or_known(api):
    """A call that reports failure in its return value (False / None / -1) is checked, or is a known
    gap in KNOWN_UNCHECKED; a known gap that has been fixed must leave that list."""
    key, desc = api
    unchecked = {}
    for u in USES:
        if u.how == "call" and u.result != "checked":
            signal = used_api.failure_signal(desc[u.name])
            if signal:
                unchecked[(u.name, u.where)] = signal
    new = {k: v for k, v in unchecked.items() if k not in used_api.KNOWN_UNCHECKED}
    assert not new, f"TensorRT {key}: failure results dropped, not in KNOWN_UNCHECKED: {new}"
    fixed = sorted(set(used_api.KNOWN_UNCHECKED) - set(unchecked))
    assert not fixed, f"TensorRT {key}: KNOWN_UNCHECKED entries no longer unchecked: {fixed}"


def test_source_uses_of_tensorrt_members_are_listed(api):
    """Any call / assignment / read, in the modules importing tensorrt, of a name that is a member of a
    real TensorRT class is a listed use (or a known coincidence in used_api.NOT_TRT)."""
    key, desc = api
    members = {m for ms in desc["__index__"].values() for m in ms}
    unlisted = [f"{s.file}:{s.line} ({s.scope}) {s.root}.{s.member} [{s.how}]"
                for s in used_api.unlisted_trt_members(members)]
    assert not unlisted, f"TensorRT {key} members used but not in used_api.USES:\n" + "\n".join(unlisted)


# ---- the list against our code (no bindings needed) ----------------------------------------------------


def test_sources_found():
    files = used_api.source_files()
    assert set(used_api.SOURCES) <= set(files), f"moved or removed: {set(used_api.SOURCES) - set(files)}"


def test_every_trt_module_name_in_source_is_listed():
    listed = {(u.name, u.file) for u in USES}
    problems = []
    for t in used_api.trt_module_uses():
        if t.name.endswith(".*"):
            enum = t.name[:-2]
            values = used_api.DYNAMIC.get(enum, ())
            ok = bool(values) and all((f"{enum}.{v}", t.file) in listed for v in values)
        else:
            ok = (t.name, t.file) in listed
        if not ok:
            problems.append(f"{t.file}:{t.line} ({t.scope}) trt.{t.name}")
    assert not problems, "tensorrt names used but not in used_api.USES:\n" + "\n".join(problems)


def test_every_listed_use_is_in_the_source():
    """Each listed call/get/set occurs at its `where` with the listed argument shape (the list is
    derived from the code, not from memory); each listed value is a `trt.X.Y` there."""
    sites = used_api.attribute_sites()
    names = {(t.name, t.file, t.scope) for t in used_api.trt_module_uses()}
    stale = []
    for u in USES:
        if u.how == "value":
            ok = u.dynamic or (u.name, u.file, u.scope) in names
        else:
            ok = any(used_api.site_matches(u, s) for s in sites)
        if not ok:
            stale.append(f"{u.where}: {u.how} {u.name}({used_api._shape(u)})")
    assert not stale, "listed in used_api.USES but not found so in the code:\n" + "\n".join(stale)
