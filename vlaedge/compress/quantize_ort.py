"""The ONNX Runtime path of `vlaedge.compress.quantize` (cpu target): static QDQ or dynamic quantization
of the exported FP32 ONNX, optionally after graph fusion.

- `mode: static` (default): `quantize_static`, QDQ format, uint8 activations calibrated on the calibration
  split, int8 weights (per-channel by default), MatMul/Gemm/Conv only (measured: ~1.45x faster on CPU for an
  11M-parameter VLA; int8 activations are 2.5x slower). Activation x activation (attention) MatMuls are
  left in FP32 unless `quantize_attention`.
- `mode: dynamic`: `quantize_dynamic`, int8 weights, activations quantized per run from their own range
  (no calibration data used; MatMul/Gemm only). On a 6M-parameter OpenVLA-style policy it was faster and
  far more exact than static QDQ; on the default policy too (benchmarks/results/tune-default.md).
- `reduce_range`: 7-bit weights, decided from the CPU running compress when unset. On an AVX2 CPU without
  an int8 dot product (VNNI/AMX) ONNX Runtime's u8 x s8 kernels (vpmaddubsw) sum pairs of products into
  int16 and saturate; ONNX Runtime's quantization docs recommend reduce_range there. Measured on such a CPU
  (AVX2 only), openvla_style cpu-int8: token agreement 91.7% and mean drift 5.5% of range with 8-bit
  weights, 98.6% and 0.93% with reduce_range; on an AVX512-VNNI CPU 8-bit weights gave 98.8% and 0.71%.
- `optimize_graph`: ONNX Runtime's transformer optimizer first (constant folding, LayerNorm/GELU/SkipLayerNorm
  fusion; node names of MatMuls are kept, so keep patterns still map).

At any size: the FP32 graph is read without its weights; when it keeps them in external data (or is over
`EXTERNAL_FROM_BYTES`) ONNX Runtime reads and writes external data (`use_external_data_format`), so no
protobuf over 2 GB is ever serialized, and the output's weights are in one `model.onnx.data` beside it.
Everything ONNX Runtime writes on the way (the shape-inferred copy, the calibration graph
`augmented_model.onnx`) goes to a temporary folder inside the hidden staging folder beside the output
(`.model.onnx.partial`), removed when quantization ends, fails or is interrupted, and by the next run if
the process was killed. Static quantization calibrates first (ONNX Runtime's calibrator, one run at a
time folded into the ranges / histograms: what `CalibStridedMinMax` does; `CalibMaxIntermediateOutputs`
would not help, and in ONNX Runtime 1.31 it clears the collected runs without folding them in,
onnxruntime issue #18893), writes the ranges to a file and frees the
calibration graph and its session, and only then runs `quantize_static` on those ranges (its calibration
cache): ONNX Runtime's single call holds the model it quantizes, the calibration graph and its session at
once. The quantizer's input and the calibration graph keep their weights in data files (never serialized
as one protobuf in memory). The quantized model is the same as ONNX Runtime's single call writes (checked:
minmax, entropy, percentile and dynamic on a small policy, minmax on the 123 M one). A heartbeat line shows
ONNX Runtime is still working while it builds the calibration graph, calibrates and quantizes.

Measured (issue 23; 123 M-parameter reference policy, 506 MB FP32, self-contained FP32 ONNX, 32-frame
batches of 224 px frames, in a process that also holds the torch policy, 1.07 GB after loading it): peak
RSS 6.9 GB before, 2.6 GB now. ONNX Runtime's calibration graph ends every calibrated tensor in a
ReduceMin / ReduceMax pair whose outputs are graph outputs; in the session's default execution order
those pairs ran after the whole forward, so every calibrated activation of a batch was alive at once
(+5.6 GB over the session at 32 frames; +8.4 GB with the arena on). The calibration session runs in
priority-based order (+0.66 GB at 32 frames; the ranges and the INT8 file byte-identical) and in runs of
`CALIBRATION_RUN_FRAMES` frames (the trained examples' INT8 graphs byte-identical at 32, 8 and 4 frames a
run). What is left at that size is the parsed FP32 graph (onnx reads a self-contained file's weights with
its graph) and the FP32 and INT8 sessions of the smoke run, beside the torch policy.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.artifact import sha256, sigterm_as_exit
from vlaedge.compress.external_data import (
    data_file_name,
    inline_bytes,
    move_into_place,
    release_memory,
    staging_folder,
    write_one_data_file,
)
from vlaedge.compress.quant_report import QuantDecision, QuantizeResult, confirm_onnx, kept_by, plan_onnx
from vlaedge.errors import VlaedgeError
from vlaedge.info import int8_dot_product
from vlaedge.models.base import Policy
from vlaedge.onnx_file import data_locations
from vlaedge.recipe import QuantizeConfig
from vlaedge.targets import Target

ORT_OP_TYPES = ("MatMul", "Gemm", "Conv")  # static mode: op types quantized
# dynamic mode: MatMul/Gemm. ONNX Runtime's defaults also make Conv a ConvInteger and quantize the attention
# MatMuls: on the default policy those defaults ran 1.38x FP32, this (action head kept) 2.42x (2 threads,
# benchmarks/results/tune-default.md; the two differences were not measured apart)
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
_ORT_CALIBRATORS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
EXTERNAL_FROM_BYTES = 1_800_000_000  # from this size on: quantized with external data (protobuf: 2 GB)
# Frames per ONNX Runtime calibration run (a dynamic-batch graph; each calibration batch is split into runs
# of this many frames): its activations grow with the frames of one run, the ranges do not (minmax: the
# min / max over all runs). Measured, SmolVLA-size prefix stage at 384 px: +3.0 GB at 32 frames a run.
CALIBRATION_RUN_FRAMES = 8
# below this many bytes of FP32 weights a calibration batch runs whole, its memory freed once per batch:
# small graphs' activations are small, and splitting them (and collecting after every run) made the default
# policy's calibration 3.4x slower (1.0 s -> 3.4 s) for no memory it needed
SPLIT_RUNS_FROM_BYTES = 16 * 2**20
SMOKE_FRAMES = 4  # frames of the first calibration batch the quantized graph is smoke-run on (NaN/Inf, drift)
# ONNX Runtime's quantizer parses the whole graph into memory, builds its calibration graph from it and runs
# a session on that: quantize peaked at 2.2-2.8x the FP32 bytes at SmolVLA size (benchmarks/results/scale.md)
QUANTIZE_MEMORY_FACTOR = 3.0


def ort_config(config: QuantizeConfig, target: Target) -> QuantizeConfig:
    """Refuses what ONNX Runtime quantization cannot do; an unset algorithm becomes minmax (as
    `vlaedge.targets` does for recipes)."""
    if config.precision != "int8":
        raise VlaedgeError(f"quantize.precision: {config.precision} is not supported on {target.name}: ONNX "
                           "Runtime static quantization is int8 only", "use precision int8")
    if config.algorithm in _ORT_CALIBRATORS:
        return config
    if "algorithm" not in config.model_fields_set:
        return config.model_copy(update={"algorithm": "minmax"})
    raise VlaedgeError(f"quantize.algorithm: {config.algorithm} is a ModelOpt (TensorRT) method; "
                       f"{target.name} calibrates with {', '.join(_ORT_CALIBRATORS)}", "use minmax")


def check_quantize_memory(what: str, size_bytes: int, fix: str) -> None:
    """Refuses, before any work, to quantize a graph of `size_bytes` (FP32 .onnx and its data) when
    `QUANTIZE_MEMORY_FACTOR` times it exceeds the memory available (`/proc/meminfo` MemAvailable, which
    counts the page cache the kernel can drop; nothing is refused where it cannot be read).

    Raises:
        VlaedgeError: naming the graph (`what`), its size, the memory it needs and the memory available,
            with `fix` as the fix line.
    """
    from vlaedge.models.weights import available_memory

    free, need = available_memory(), QUANTIZE_MEMORY_FACTOR * size_bytes
    if free is not None and need > free:
        raise VlaedgeError(f"quantize: {what} is {size_bytes / 1e9:.1f} GB; ONNX Runtime's quantizer holds "
                           f"about {QUANTIZE_MEMORY_FACTOR:g}x a graph in memory ({need / 1e9:.1f} GB), "
                           f"{free / 1e9:.1f} GB is available", fix)


def quantize_onnx(policy: Policy, config: QuantizeConfig, batches: list[dict[str, np.ndarray]],
                  fp32_onnx: Path, out_onnx: Path) -> QuantizeResult:
    """Quantizes the FP32 ONNX as `config` says (mode, per_channel, algorithm, quantize_attention,
    optimize_graph, keep) and reads back what was quantized.

    Raises:
        VlaedgeError: the ONNX takes other inputs than the policy, a keep pattern reaches no node, the
            quantized graph returns NaN/Inf.
    """
    import onnx

    model = onnx.load(str(fp32_onnx), load_external_data=False)  # the graph; weights stay on disk
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if sorted(names) != sorted(s.name for s in policy.input_spec):
        raise VlaedgeError(f"quantize: {fp32_onnx} takes inputs {names}, {policy.name} gives "
                           f"{[s.name for s in policy.input_spec]}", "export the ONNX from this policy")
    notes = []
    if config.optimize_graph:
        with progress.heartbeat("quantize: ONNX Runtime's transformer optimizer"):
            model, fused = _optimized(fp32_onnx)
        notes.append(f"graph fused by ONNX Runtime's transformer optimizer first: {fused}")
    inline_shared_weights(model)
    # unset: decided from this CPU (on without VNNI/AMX; off where the flags cannot be read)
    reduce_range = config.reduce_range if config.reduce_range is not None else int8_dot_product() is False
    if reduce_range:
        notes.append("reduce_range: 7-bit weights, since "
                     + ("the recipe sets quantize.reduce_range" if config.reduce_range else
                        "this CPU has no int8 dot product (AVX512-VNNI / AVX-VNNI / AMX-INT8), where ONNX "
                        "Runtime's u8 x s8 kernels can saturate; set quantize.reduce_range: false for a VNNI "
                        "robot computer"))
    config = config.model_copy(update={"reduce_range": reduce_range})
    dynamic = config.mode == "dynamic"
    op_types = (DYNAMIC_OP_TYPES if dynamic else ORT_OP_TYPES) + (
        ("LayerNormalization",) if config.quantize_layernorm and not dynamic else ())
    decisions, exclude = plan_onnx(model, policy.module, config, op_types)
    _check_keep_reached(config, decisions)
    batches = _fit_batch(model, batches, fp32_onnx)
    large = max(_file_bytes(fp32_onnx), inline_bytes(model)) >= SPLIT_RUNS_FROM_BYTES
    run_frames = CALIBRATION_RUN_FRAMES if large and _dynamic_batch(model) else None
    external = bool(data_locations(model)) or _file_bytes(fp32_onnx) > EXTERNAL_FROM_BYTES or \
        inline_bytes(model) > EXTERNAL_FROM_BYTES
    with sigterm_as_exit(), staging_folder(out_onnx) as staging:
        source = _input_model(model, fp32_onnx, staging)
        del model  # its weights are in `source` now (optimize_graph's output holds them in memory)
        release_memory()
        staged = staging / out_onnx.name
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger(), \
                _temp_folder(staging / "tmp"):
            warnings.simplefilter("ignore")  # ORT prints calibration progress, logs "consider pre-processing"
            _run_ort_quantizer(source, staged, config, batches, op_types, exclude, external, run_frames)
        if external:
            notes.append(_data_note(staged))
        move_into_place(staging, out_onnx)
    quantized = onnx.load(str(out_onnx), load_external_data=False)
    weights = "int8 per-channel" if config.per_channel else "int8 per-tensor"
    if dynamic:
        confirm_dynamic(decisions, quantized, weights)
        notes.append("dynamic: activations are quantized per run from their own range; calibration frames "
                     "were checked but not used")
    else:
        confirm_onnx(decisions, quantized, weights)
    int8 = sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2 for i in quantized.graph.initializer)
    smoke = batches[0] if run_frames is None else {k: v[:SMOKE_FRAMES] for k, v in batches[0].items()}
    drift = _smoke_run(policy, fp32_onnx, out_onnx, smoke)
    algorithm = "dynamic" if dynamic else config.algorithm
    return QuantizeResult(
        "onnxruntime", config.precision, algorithm, decisions, config.num_calib_frames, 0.0,
        output=str(out_onnx), fp32_bytes=_file_bytes(fp32_onnx), output_bytes=_file_bytes(out_onnx),
        int8_weights=int8, output_drift=drift, notes=notes)


def _run_ort_quantizer(source: Path, out: Path, config: QuantizeConfig, batches, op_types, exclude,
                       external: bool, run_frames: int | None = None) -> None:
    """ONNX Runtime's quantizer from the file `source` to `out` (+ `out.name + ".data"` when `external`).

    Static mode calibrates first (`_calibrate`, into a ranges file) and then runs `quantize_static` on those
    ranges (its calibration cache), so ONNX Runtime never holds the model to quantize beside the calibration
    graph and its session (ONNX Runtime's own single call does)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if config.mode == "dynamic":
        with progress.heartbeat("quantize: ONNX Runtime dynamic quantization"):
            quantize_dynamic(str(source), str(out), op_types_to_quantize=list(op_types),
                             per_channel=config.per_channel, reduce_range=bool(config.reduce_range),
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                             use_external_data_format=external)
        return
    ranges = _calibrate(source, config, batches, op_types, run_frames)
    with progress.heartbeat("quantize: ONNX Runtime static quantization (Q/DQ insertion)"):
        quantize_static(
            str(source), str(out), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types), per_channel=config.per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            reduce_range=bool(config.reduce_range), use_external_data_format=external,
            calibrate_method=_method(config), calibration_cache_path=str(ranges))
    release_memory()


def _method(config: QuantizeConfig):
    from onnxruntime.quantization import CalibrationMethod

    return getattr(CalibrationMethod, _ORT_CALIBRATORS[config.algorithm])


def _calibrate(source: Path, config: QuantizeConfig, batches, op_types, run_frames: int | None) -> Path:
    """The activation ranges of `source` on `batches`, as `quantize_static` computes them (its calibrator:
    each `collect_data` call folds its runs into the ranges / histograms), written to a ranges file in the
    temporary folder (ONNX Runtime's calibration cache format); the calibration graph and its session are
    freed before returning.

    `batches` is read in order, one batch at a time (a `StageCalibration` makes them on demand); each is
    run in parts of `run_frames` frames (None: whole), since the calibration graph's activations grow with
    the frames of one run. The ranges do not depend on the split beyond rounding: ONNX Runtime's kernels
    are not batch-invariant (the 123 M policy's minmax ranges, and INT8 file, were byte-identical at 32
    and 4 frames a run, not at 1)."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    folder = Path(tempfile.mkdtemp(prefix="calibration."))
    with progress.heartbeat("quantize: ONNX Runtime calibration graph"):
        # the calibration graph's weights in a data file, which ONNX Runtime's session memory-maps instead
        # of parsing them out of one protobuf
        calibrator = create_calibrator(source, list(op_types), str(folder / "augmented_model.onnx"),
                                       _method(config), use_external_data_format=True)
        calibrator.model = None  # the calibration graph with its weights: saved and in the session now,
        calibrator.infer_session = None  # never read again (collect_data and compute_data use the session)
        release_memory()
        calibrator.infer_session = _calibration_session(calibrator)
    with progress.stage("calibration: batches (ONNX Runtime)", total=len(batches)) as bar, \
            progress.heartbeat("quantize: ONNX Runtime calibration"):
        for index in range(len(batches)):
            for part in parts(batches[index], run_frames):
                calibrator.collect_data(_FeedReader([part]))
                if run_frames is not None:
                    release_memory()  # the run's outputs, folded into the ranges
            bar.advance()
        ranges = calibrator.compute_data()
    del calibrator
    release_memory()
    save_tensors_data(ranges, folder / "ranges.json")
    return folder / "ranges.json"


def parts(feeds: dict[str, np.ndarray], frames: int | None) -> list[dict[str, np.ndarray]]:
    """`feeds` split along the batch axis into runs of at most `frames` frames (None: one run)."""
    rows = len(next(iter(feeds.values())))
    if frames is None or rows <= frames:
        return [feeds]
    return [{k: v[s:s + frames] for k, v in feeds.items()} for s in range(0, rows, frames)]


def _dynamic_batch(model) -> bool:
    """Every graph input's first dimension is symbolic (the batch), so runs of any size are valid."""
    inits = {t.name for t in model.graph.initializer}
    dims = [i.type.tensor_type.shape.dim for i in model.graph.input if i.name not in inits]
    return all(d and not d[0].HasField("dim_value") for d in dims)


def _calibration_session(calibrator):
    """The calibrator's session as ONNX Runtime makes it (no graph optimization), without the CPU memory
    arena, which keeps (and grows, in powers of two) the largest set of activations any run needed."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    return onnxruntime.InferenceSession(calibrator.augmented_model_path, sess_options=options,
                                        providers=calibrator.execution_providers)


def _input_model(model, fp32_onnx: Path, staging: Path) -> Path:
    """`model` (the FP32 graph after our edits) as a file in `staging/input` for ONNX Runtime to read, its
    external data files copied beside it (streamed, not loaded; onnx refuses hard links and symbolic links
    to external data), so the FP32 model's folder gets no file of ONNX Runtime's (it writes a shape-inferred
    copy beside its input) and no name can meet the output's data file."""
    import onnx

    folder = staging / "input"
    folder.mkdir()
    for location in data_locations(model):
        shutil.copyfile(fp32_onnx.parent / location, folder / location)
    source = folder / "fp32.onnx"
    # weights written tensor by tensor into a data file (ONNX Runtime loads them into the model it
    # quantizes): saving them inline would serialize the whole model in memory (+1.9x the FP32 bytes)
    onnx.save_model(model, str(source), save_as_external_data=True, location=data_file_name(source))
    return source


def _data_note(staged: Path) -> str:
    """The output's weights in one data file named after it (ONNX Runtime writes that already; anything
    else is rewritten into it)."""
    from vlaedge.onnx_file import external_data_files

    files = external_data_files(staged, "quantize")
    for file in files:  # onnx creates data files readable by their owner only; outputs follow the umask
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(file, 0o666 & ~mask)
    if [f.name for f in files] == [data_file_name(staged)]:
        name, size, digest = files[0].name, files[0].stat().st_size, sha256(files[0])
    else:
        data = write_one_data_file(staged)
        name, size, digest = (data.name, data.bytes, data.sha256) if data else ("(none)", 0, "")
    return f"weights in external data {name} beside it ({size / 1e6:.1f} MB, sha256 {digest[:16]})"


def _file_bytes(path: Path) -> int:
    """An .onnx's size with its external data files."""
    from vlaedge.onnx_file import external_data_files

    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path, "quantize"))


@contextlib.contextmanager
def _temp_folder(folder: Path) -> Iterator[None]:
    """Python's temporary folder (where ONNX Runtime's quantizer puts its copies and the calibration graph,
    each as large as the model) is `folder` while the block runs: beside the output, not in /tmp (often
    memory) or the working directory; the staging folder that holds it is removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def _optimized(fp32_onnx: Path):
    """The FP32 graph after ONNX Runtime's transformer optimizer (fusion only, no float16), and a short
    description of what it fused (op counts that changed)."""
    from collections import Counter

    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.optimizer import optimize_model

    before = Counter(n.op_type for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node)
    with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        optimized = optimize_model(str(fp32_onnx), model_type="bert", num_heads=0, hidden_size=0).model
        # ONNX's shape inference does not know the fused contrib ops (Gelu, SkipLayerNormalization): without
        # their output types the calibrator records no range for them and quantize_static fails
        optimized = SymbolicShapeInference.infer_shapes(optimized, auto_merge=True)
    after = Counter(n.op_type for n in optimized.graph.node)
    changed = sorted(k for k in set(before) | set(after) if before[k] != after[k])
    return optimized, ", ".join(f"{k} {before[k]}->{after[k]}" for k in changed[:8]) or "nothing"


def confirm_dynamic(decisions: list[QuantDecision], quantized_model, weight_type: str) -> None:
    """Sets each decision from a `quantize_dynamic` graph: a node is quantized when ONNX Runtime replaced
    it by an integer MatMul named after it (`<name>_quant`, or `<name>_MatMul_quant` for a Gemm)."""
    integer = {n.name for n in quantized_model.graph.node
               if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger")}
    for d in decisions:
        actual = f"{d.name}_quant" in integer or f"{d.name}_MatMul_quant" in integer
        if d.quantized and not actual:
            d.reason = "not quantized by ONNX Runtime (unsupported pattern)"
        elif actual:
            d.reason = f"weights {weight_type}, activations dynamic uint8"
        d.quantized = actual


def inline_shared_weights(model) -> int:
    """Makes every weight operand of a MatMul/Gemm/Conv an initializer, in place; returns how many changed.

    The legacy exporter writes a weight used by several calls of one module (the flow head's unrolled
    Euler steps) once, and feeds the later calls through `Identity` nodes; a fixed matrix held in a
    buffer (the keypoint grid) becomes a `Constant` node. ONNX Runtime's QDQ quantizer treats both as
    activations (per-tensor uint8 from calibration, FP32 kept in the file), so we wire consumers to the
    initializer itself and turn such constants into initializers.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    weight_slots = {n.input[1] for n in graph.node if n.op_type in ORT_OP_TYPES and len(n.input) > 1}
    alias, drop = {}, []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
            drop.append(node)
        elif node.op_type == "Constant" and node.output[0] in weight_slots:
            tensor = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
            if tensor is not None and tensor.dtype.kind == "f" and tensor.ndim >= 2:
                graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
                drop.append(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    for node in drop:
        graph.node.remove(node)
    return len(drop)


@contextlib.contextmanager
def _quiet_root_logger():
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(previous)


class _FeedReader:
    """An onnxruntime.quantization.CalibrationDataReader over feed batches (duck-typed: ORT's calibrator
    calls get_next; importing its base class would import onnxruntime with vlaedge.compress.quantize)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _check_keep_reached(config: QuantizeConfig, decisions: list[QuantDecision]) -> None:
    """A keep pattern that matches torch modules but no ONNX node would silently quantize them."""
    for pattern in config.keep:  # an earlier, wider pattern may have claimed the node: match each alone
        if not any(d.module and kept_by(d.module, [pattern]) for d in decisions):
            raise VlaedgeError(f"quantize.keep: pattern {pattern!r} matches modules but no quantizable ONNX "
                               "node (node names could not be mapped to module names)",
                               "export with vlaedge.compress.export (legacy exporter names), "
                               "or drop the pattern")


def _fit_batch(model, batches: list[dict[str, np.ndarray]], path: Path) -> list[dict[str, np.ndarray]]:
    """Re-batches the feeds for an ONNX file exported with a fixed batch size."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.HasField("dim_value") or dim.dim_value == len(next(iter(batches[0].values()))):
        return batches
    size = dim.dim_value
    full = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    total = len(next(iter(full.values())))
    if total % size:
        raise VlaedgeError(f"quantize: {path} has a fixed batch of {size} and {total} calibration frames do "
                           "not divide into it", "export with a dynamic batch (export.dynamic_batch: true)")
    return [{k: v[s:s + size] for k, v in full.items()} for s in range(0, total, size)]


def _smoke_run(policy: Policy, fp32_onnx: Path, out_onnx: Path, feeds: dict[str, np.ndarray]) -> float:
    """Runs both models on one batch; returns the mean abs output difference. Raises if the quantized
    graph does not load or returns non-finite values."""
    from vlaedge.runtimes import open_runtime

    reference = open_runtime("ort-cpu", policy, fp32_onnx).infer(feeds)
    candidate = open_runtime("ort-cpu", policy, out_onnx).infer(feeds)
    diffs = [np.abs(candidate[k].astype(np.float64) - reference[k]) for k in policy.output_names]
    if not all(np.isfinite(c).all() for c in candidate.values()):
        raise VlaedgeError(f"quantize: the quantized model {out_onnx} returns NaN/Inf",
                           "try quantize.algorithm entropy or percentile, or keep the failing layers")
    return float(np.mean([d.mean() for d in diffs]))
