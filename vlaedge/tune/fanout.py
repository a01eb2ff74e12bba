"""The tuner's variants as units of work on an executor (`vlaedge.executor`): each uncached variant is one
unit (quantize, export check, drift on the search and evaluation frames). Locally a unit builds into the
staging folder as it always did. On Ray the tuner's inputs (`Work`: policies, calibration feeds, frames)
and the FP32 export travel once per run as sha256-checked blobs; a worker builds into a folder of its own
and sends the variant's model files back the same way, and they are written into the staging folder here
(no shared file system is assumed). Latency is never measured by a unit of this module: see
`timed_profile`, which runs the one interleaved latency run on a single node."""

from __future__ import annotations

import dataclasses
import glob
import tempfile
from pathlib import Path

from vlaedge.artifact import model_sha256
from vlaedge.errors import VlaedgeError
from vlaedge.executor import NOT_RUN, Blob, Unit
from vlaedge.onnx_file import external_data_files
from vlaedge.tune.build import Measured, build_error, measure_variant, variant_key
from vlaedge.tune.cache import cached, save
from vlaedge.tune.space import Variant

BUILD_ERRORS = (VlaedgeError, ValueError, RuntimeError)  # ONNX Runtime's quantizers raise the last two


def build_variants(executor, work, variants: list[Variant], context: dict, log, errors: list,
                   deadline: float | None = None) -> list[tuple[Measured | None, str]]:
    """Each variant's (row, how) in order: how is "from_cache", "built", "not_built" (its error added to
    `errors`) or "not_explored" (the time box ended before its unit started).

    Raises:
        VlaedgeError: a unit lost on Ray after its retries (naming the variant and the node), inputs that
            cannot be sent to a worker.
    """
    out: list[tuple[Measured | None, str]] = []
    todo = []
    for variant in variants:
        key = variant_key(variant, work.base, context)
        hit = cached(work.previous, work.folder, variant.name, key, work.drift_budgets, log)
        if hit is not None:
            log(f"tune: {variant.name}: cached (drift mean {hit.drift['mean_pct']:.3f}%)")
        else:
            todo.append((len(out), variant, key))
        out.append((hit, "from_cache"))
    if not todo:
        return out
    source, files = (work, None) if executor.kind == "local" else _sendable(work)
    units = [Unit(f"tune: variant {v.name}", build_unit, (source, files, v, key)) for _, v, key in todo]
    results = executor.run(units, deadline, description="tune: variants")
    for (index, variant, _), result in zip(todo, results, strict=True):
        out[index] = _take(work, variant, result, executor.nodes.get(f"tune: variant {variant.name}"), log,
                           errors)
    return out


def build_unit(source, files: Blob | None, variant: Variant, key: str):
    """One variant built and judged for drift: ("built", Measured, its model files as a Blob or None when
    built in place) or ("error", the `build_error` row). `source` is the `Work` (local) or a Blob of it."""
    if isinstance(source, Blob):
        with tempfile.TemporaryDirectory(prefix="vlaedge-tune-") as tmp:
            work = _unpacked(source.load(), files, Path(tmp) / "variants")
            result = _measure(work, variant, key)
            if result[0] == "built":
                onnx = work.folder / f"{variant.name}.onnx"
                blob = Blob.of_files(f"variants/{variant.name}.onnx", work.folder,
                                     [onnx, *external_data_files(onnx)])
                result = ("built", result[1], blob)
            return result
    return _measure(source, variant, key)


def _measure(work, variant: Variant, key: str):
    try:
        return "built", measure_variant(work, variant, key), None
    except BUILD_ERRORS as e:
        for partial in work.folder.glob(f"{glob.escape(variant.name)}.onnx*"):  # nothing that looks built
            partial.unlink()
        return "error", build_error(variant, e)


def _take(work, variant: Variant, result, node: str | None, log, errors: list):
    """A unit's result into the staging folder and the cache; (row, how)."""
    if result is NOT_RUN:
        return None, "not_explored"
    if result[0] == "error":
        errors.append(result[1])
        log(f"tune: {variant.name}: could not be built ({result[1]['error'][:120]})")
        return None, "not_built"
    _, row, blob = result
    if blob is not None:
        blob.unpack(work.folder)
        if model_sha256(work.folder / f"{variant.name}.onnx") != row.model_sha256:
            raise VlaedgeError(f"tune: variant {variant.name} from {node}: its model's sha256 differs from "
                               "the one measured there", "rerun; if it repeats, check that node's disk")
    if not save(work.folder, row):
        log(f"tune: {variant.name}: a measured figure is NaN or infinite; its result is not cached")
    ok = "within" if not row.search_failures else "over"
    where = f", on {node}" if node else ""
    log(f"tune: {variant.name}: drift mean {row.drift['mean_pct']:.3f}% (search "
        f"{row.search_drift['mean_pct']:.3f}%, {ok} the drift budgets), {row.file_bytes / 1e6:.2f} MB, "
        f"{row.seconds:.1f} s{where}")
    return row, "built"


def _sendable(work) -> tuple[Blob, Blob]:
    """The `Work` (without its local paths' meaning) and the FP32 export(s) it quantizes, as blobs."""
    paths = sorted({work.fp32_onnx, work.baseline_onnx})
    files = [f for p in paths for f in (p, *external_data_files(p))]
    light = dataclasses.replace(work, previous=None)
    try:
        blob = Blob.of_object("tune: policy, calibration feeds and frames", light)
    except (AttributeError, TypeError) as e:
        raise VlaedgeError(f"tune: the policy cannot be sent to a Ray worker ({type(e).__name__}: "
                           f"{str(e)[:120]})", "run tune with --executor local") from None
    return blob, Blob.of_files("tune: FP32 export", work.folder, files)


def _unpacked(work, files: Blob, folder: Path):
    """`work` pointed at `folder` on this worker, with the FP32 export(s) written there."""
    folder.mkdir(parents=True)
    files.unpack(folder)
    return dataclasses.replace(work, folder=folder, fp32_onnx=folder / work.fp32_onnx.name,
                               baseline_onnx=folder / work.baseline_onnx.name, previous=None)


def timed_profile(executor, paths: list[Path], runtime: str, policy, runs: int, warmup: int,
                  threads: int | None, max_seconds: float | None = None):
    """The one interleaved latency run of `paths` (the first is FP32) on ONE node: this one, or the node
    with the executor's `timing_resource`; `max_seconds` is the profile's time box. Returns
    (ProfileReport, the node's name).

    Raises:
        VlaedgeError: no node has the resource, or the unit failed there.
    """
    from vlaedge.check.profile import profile

    if executor.timing_resource is None:
        return profile(paths, runtime, None, policy, runs, warmup, threads, max_seconds=max_seconds), \
            executor.node
    root = paths[0].parent
    files = [f for p in paths for f in (p, *external_data_files(p))]
    blob = Blob.of_files("tune: models to time", root, sorted(set(files)))
    unit = Unit(f"tune: latency of {len(paths)} models", profile_unit,
                (blob, [p.name for p in paths], runtime, Blob.of_object("tune: policy", policy), runs, warmup,
                 threads, max_seconds), resources={executor.timing_resource: 1})
    prof = executor.run([unit], description="tune: latency")[0]
    return prof, executor.nodes[unit.name]


def profile_unit(files: Blob, names: list[str], runtime: str, policy: Blob, runs: int, warmup: int,
                 threads: int | None, max_seconds: float | None = None):
    """`vlaedge.check.profile.profile` of the models `names` (unpacked from `files`) on this node."""
    from vlaedge.check.profile import profile

    with tempfile.TemporaryDirectory(prefix="vlaedge-time-") as tmp:
        files.unpack(Path(tmp))
        return profile([Path(tmp) / n for n in names], runtime, None, policy.load(), runs, warmup, threads,
                       max_seconds=max_seconds)
