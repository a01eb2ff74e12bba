"""Single-graph export (`export_graph`, behind `vlaedge.compress.export.export_onnx`): ONNX with the
adapter's named inputs and outputs, dynamic batch, explicit Q/DQ for quantized models, checked by
`onnx.checker` and numerically against torch in ONNX Runtime. Its tracing, description and check are
shared with the per-stage export (`export_stages`).

What real VLAs contain, and what the export does about it (torch's legacy TorchScript exporter,
`torch.onnx.export(..., dynamo=False)`, the only one that exports ModelOpt's Q/DQ):

- `F.scaled_dot_product_attention(..., enable_gqa=True)` (Hugging Face transformers v5's grouped-query
  attention, e.g. Llama with `num_key_value_heads < num_attention_heads`) has no conversion in torch
  (its opset-14 symbolic raises "not implemented if enable_gqa is True"). During the export a symbolic
  registered for the export opset repeats each key/value head `heads / kv_heads` times (Unsqueeze, Expand,
  Reshape: what `enable_gqa` means, `repeat_interleave` on the head axis) and converts the rest with
  torch's own symbolic; it is unregistered afterwards. transformers' `sdpa` attention therefore exports
  as it is (no switch to `eager` is needed; measured equal to torch within 1e-6 in ONNX Runtime).
- `nn.TransformerEncoderLayer` / `nn.MultiheadAttention` in eval mode take PyTorch's MHA "fast path"
  (`_transformer_encoder_layer_fwd`, `_nested_tensor_from_mask`), which does not export: it is turned
  off with `torch.backends.mha.set_fastpath_enabled(False)` during the export and restored after.
- Loops (a flow-matching head's Euler steps) are unrolled by the tracer: the result's notes say which
  module ran how many times per forward and how many of the graph's nodes its copies are.
- An input the model never reads is dropped by the exporter; it is put back as a graph input nothing
  consumes (so every runtime takes the policy's inputs) and a note names it.
- A graph that only runs at the export batch (a `view(2, -1)` traced into a constant Reshape) is found
  by running it at two other batch sizes (`vlaedge.compress.export_check`) and refused.
- An operator without an ONNX conversion is reported with the module it comes from (read from the
  exporter's graph dump, which is kept off the terminal).

Weights never pass through the exporter's protobuf (`vlaedge.compress.export_weights`): torch writes the
graph with the weights as inputs, and vlaedge streams them into one data file beside the .onnx, named
after it (`model.onnx.data`; `vlaedge.compress.external_data`), tensor by tensor from the module. The
checks run on that layout (ONNX Runtime memory-maps the data file); at the end a graph under protobuf's
2 GB limit gets its weights back inside the .onnx (tensor by tensor) unless `export.external_data` is
`always`. The result (and so the run's manifest) names a remaining data file and its sha256.
`external_data: never` refuses a graph over 2 GB.

Memory (issue 23 asks for a peak of 2.5x the FP32 bytes): the policy's weights (memory-mapped from the
checkpoint) plus about one tensor at a time; before, torch's exporter held the constant-folded weights,
its C++ ModelProto and the serialized bytes at once (+1.5 GB on a 0.51 GB graph), and each later step
parsed the self-contained graph again. Each step that parsed a graph or ran a session gives its memory
back before the next (`release_memory`).

Every step prints within a second or so of starting and every `progress.HEARTBEAT_SECONDS` while it runs
(`progress.heartbeat`). Nothing is left on disk when any of this fails or is interrupted (SIGTERM too):
the export and its checks run in a hidden staging folder beside `path` (removed by the next export of
the same path if the process was killed), and the files are moved into place data first, the .onnx
last, after the old .onnx is removed, so a complete-looking .onnx always has its own data beside it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.artifact import sigterm_as_exit
from vlaedge.compress.export_check import check_batches, loop_notes, module_at, run_in_torch
from vlaedge.compress.export_weights import (
    attach_weights,
    fits_inline,
    inline_weights,
    weights_apart,
    weights_bytes,
)
from vlaedge.compress.external_data import (
    TWO_GB,
    DataFile,
    data_file_name,
    move_into_place,
    release_memory,
    staging_folder,
)
from vlaedge.errors import VlaedgeError, one_line
from vlaedge.models.base import Policy
from vlaedge.recipe import ExportConfig

FP8_MIN_OPSET = 19
EXPORT_BATCH = 2  # dynamic graphs are traced at batch 2 (batch 1 lets the tracer fold size-1 dims away)
SDPA = "aten::scaled_dot_product_attention"
TRACEABLE = ("make the module traceable by torch.jit.trace (tensor inputs and outputs, no Python control "
             "flow on tensor values)")


# A ModelOpt graph's export check passes within this many times the fake-quantized module's own difference
# under a one-ulp nudge of every quantizer input (`ExportCheck.sensitivity_pct`): at 127 M parameters the
# Q/DQ graph on ONNX Runtime was 1.61% (relative L2 of the logits) from torch, the nudge 1.63%.
SENSITIVITY_FACTOR = 2.0


@dataclass
class ExportCheck:
    """ONNX Runtime vs torch on the same feeds: truthy when within tolerance."""

    frames: int
    max_abs: float  # on decoded actions, environment units
    mean_abs: float
    p99_abs: float
    token_agreement: float | None  # discrete heads: fraction of equal argmax tokens
    tolerance: float  # allowed `judged`, % of each action dimension's range
    skipped: str = ""  # why the check did not run
    quantized: bool = False  # torch fake-quant vs ONNX Runtime Q/DQ: rounding ties differ
    method: str = ""  # how ONNX Runtime computed the graph (`vlaedge.runtimes.ort.qdq_label`)
    max_pct: float = 0.0  # |diff| / the dimension's action range, in %
    p99_pct: float = 0.0  # judged for quantized graphs (see `judged`)
    # A ModelOpt graph over the tolerance: p99 % of range between the fake-quantized module and itself with
    # each quantizer's input moved by one float32 ulp (`vlaedge.compress.quantize.one_ulp_nudge`), the
    # difference float rounding alone makes; the graph passes within SENSITIVITY_FACTOR times it.
    sensitivity_pct: float | None = None

    @property
    def judged(self) -> float:
        """% of the action range: the max for FP32 graphs; the p99 for quantized ones, where a rounding tie
        that torch and ONNX Runtime break differently can move a saturated output (a gripper) on a single
        frame."""
        return self.p99_pct if self.quantized else self.max_pct

    @property
    def allowed(self) -> float:
        """The judged figure's bound, % of range: the tolerance, or SENSITIVITY_FACTOR times the module's
        own sensitivity to float rounding when that is larger."""
        return max(self.tolerance, SENSITIVITY_FACTOR * (self.sensitivity_pct or 0.0))

    def __bool__(self) -> bool:
        return bool(self.skipped) or self.judged <= self.allowed

    def _sensitivity(self) -> str:
        if self.sensitivity_pct is None:
            return ""
        return (f"; torch itself moves by {self.sensitivity_pct:.3f}% (p99) when each quantizer's input "
                f"moves by one float32 ulp, so up to {SENSITIVITY_FACTOR:g}x that is rounding, not the "
                "export")

    def line(self, what: str = "ONNX Runtime", judged: bool = True) -> str:
        """The summary line: max / p99 / mean |action diff| in environment units and the judged % of range.
        `judged=False`: an INT8 graph compared with the FP32 module, where the difference is the
        quantization error that the drift budgets judge, not an export fault (no "allowed" figure then)."""
        bound = (f"allowed {self.allowed:.3g}%" if judged else
                 "INT8 against the FP32 module: the quantization error, judged by the drift budgets")
        return (f"{what} vs torch on {self.frames} frames: max |action diff| {self.max_abs:.4f}, p99 "
                f"{self.p99_abs:.4f}, mean {self.mean_abs:.5f} ({'p99' if self.quantized else 'max'} "
                f"{self.judged:.3f}% of range, {bound})"
                + (f"; export check: {self.method}" if self.method else "") + self._sensitivity())

    def refusal(self, what: str = "ONNX Runtime") -> VlaedgeError:
        """The error for a failed check."""
        return VlaedgeError(
            f"export: {what} differs from torch by {self.judged:.3f}% of the action range "
            f"({'p99' if self.quantized else 'max'}; allowed {self.allowed:.3g}%; {self.max_abs:.4g} in "
            f"action units at most{self._sensitivity()})",
            "raise export.max_check_error_pct if this precision is expected to differ, or report a bug")


@dataclass
class ExportResult:
    """What `export_graph` wrote."""

    path: str
    opset: int
    size_bytes: int
    external_data: bool
    inputs: list[str]
    outputs: list[str]
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear nodes
    seconds: float
    check: ExportCheck | None = None
    notes: list[str] = field(default_factory=list)
    nodes: int = 0  # all graph nodes
    data_file: str | None = None  # the external data file beside the .onnx (NAME.onnx.data), if any
    data_sha256: str | None = None
    data_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def finish(self, file: Path, external_data: str) -> None:
        """The checked graph's final layout: the weights of the staged graph `file` back inside it (written
        tensor by tensor) unless the graph is over 2 GB or `external_data` is "always", and this result
        with them (its nodes were counted on the graph alone, before: a self-contained graph parses whole)."""
        if not self.data_file or external_data == "always" or not fits_inline(file, self.data_bytes):
            return
        with progress.heartbeat(f"export: writing the weights into {file.name} (under 2 GB)"):
            inline_weights(file)
        self.size_bytes, self.external_data = file.stat().st_size, False
        self.data_file, self.data_sha256, self.data_bytes = None, None, 0

    def summary(self) -> str:
        from vlaedge.artifact import final_path

        lines = [f"ONNX {final_path(self.path)}: opset {self.opset}, {self.nodes} nodes, "
                 f"{self.size_bytes / 1e6:.1f} MB, {self.qdq_nodes} Q/DQ nodes"]
        if self.data_file:
            lines.append(f"weights in external data {self.data_file} beside it ({self.data_bytes / 1e6:.1f} "
                         f"MB, sha256 {(self.data_sha256 or '?')[:16]}): keep the two files together")
        if self.check and not self.check.skipped:
            lines.append(self.check.line())
        return "\n".join(lines + self.notes)


def export_graph(policy: Policy, path: str | Path, config: ExportConfig | None = None,
                check_feeds: dict[str, np.ndarray] | None = None,
                precision: str | None = None) -> ExportResult:
    """Exports `policy.module` (FP32, or fake-quantized by ModelOpt) to ONNX and checks it.

    A dynamic-batch graph is traced at batch 2 and must match torch at batches 1 and 3 too; a fixed-batch
    one (`export.dynamic_batch: false`) is traced at batch 1 and checked frame by frame.

    Args:
        policy: the policy; its `input_spec` and `output_names` name the graph's inputs and outputs.
        path: the .onnx file to write (external weight data, if any, beside it).
        config: export settings (defaults: opset 17, dynamic batch).
        check_feeds: feeds (e.g. calibration frames) on which ONNX Runtime must match torch.
        precision: the quantized precision, if any ("fp8" raises the opset to 19).

    Returns:
        The export result, with the numerical check and notes (unrolled loops, kept unused inputs).

    Raises:
        VlaedgeError: the model fails in torch at the export batch, an operator has no ONNX conversion
            (named with its module), the graph only runs at the export batch, the graph is invalid, or
            ONNX Runtime disagrees with torch beyond `config.max_check_error_pct` of the action range.
            Nothing is left at `path`.

    Example:
        >>> result = export_graph(policy, "out/model.onnx", check_feeds=policy.example_inputs(8))
    """
    config = config or ExportConfig()
    path = Path(path)
    opset = max(config.opset, FP8_MIN_OPSET) if precision == "fp8" else config.opset
    notes = [f"opset raised to {opset}: FP8 Q/DQ needs >= {FP8_MIN_OPSET}"] if opset != config.opset else []
    start = time.perf_counter()
    batch = EXPORT_BATCH if config.dynamic_batch else 1
    example = policy.example_inputs(batch=batch)
    with progress.heartbeat(f"export: running {policy.name} in torch at batch {batch}"):
        calls = run_in_torch(policy, example, batch, config.dynamic_batch)
    with sigterm_as_exit(), staging_folder(path) as staging:
        staged = staging / path.name
        data = _trace(policy, example, staged, opset, config.dynamic_batch, config.external_data)
        notes += _restore_unused_inputs(policy, staged, config.dynamic_batch)
        notes += loop_notes(policy, calls, staged)
        if config.dynamic_batch:  # (shows its own progress)
            notes.append(check_batches(policy, staged, (1, 3), EXPORT_BATCH, config.max_check_error_pct,
                                       quantized=precision is not None))
        release_memory()  # ONNX Runtime's sessions of the batch check
        check = None
        if check_feeds is not None:
            frames = len(next(iter(check_feeds.values())))
            with progress.heartbeat(f"export: ONNX Runtime vs torch on {frames} frames"):
                check = check_against_torch(policy, staged, check_feeds, config.max_check_error_pct,
                                            precision)
            if not check:
                raise check.refusal()
            release_memory()
        result = _describe(staged, path, opset, policy, start, notes, data)
        result.check = check
        result.finish(staged, config.external_data)
        move_into_place(staging, path)
    result.seconds = time.perf_counter() - start
    return result


def check_against_torch(policy: Policy, model: Path, feeds: dict[str, np.ndarray], tolerance: float,
                        precision: str | None = None, qdq: str | None = None,
                        reference: dict[str, np.ndarray] | None = None) -> ExportCheck:
    """Runs `feeds` through torch and ONNX Runtime CPU and compares decoded actions (and tokens).

    A Q/DQ graph that TensorRT will run is judged by its own arithmetic: ONNX Runtime with Q/DQ fusion off
    ("simulated"), never by ONNX Runtime's CPU INT8 kernels, which saturate on CPUs without VNNI and so
    would judge the CPU (`vlaedge.runtimes.ort`). ONNX Runtime's kernels ("fused") judge the graphs it
    deploys itself (the `cpu` target). The check's `method` names the one used. A graph with a fixed
    batch is run in slices of that batch.

    Args:
        policy: the policy (torch, fake-quantized for a ModelOpt graph) the graph was exported from.
        model: the .onnx file (or a stage plan, stages.json).
        feeds: the frames to compare on.
        tolerance: largest allowed difference, % of each action dimension's range (max for float graphs,
            p99 for quantized ones).
        precision: the ModelOpt precision of a graph exported for TensorRT (None: a float graph, or an
            ONNX Runtime-quantized one).
        qdq: "simulated" or "fused"; None: "simulated" when `precision` is given, else "fused".
        reference: torch's outputs on `feeds` ({output name: (B, ...)}) when the caller has them already
            (the staged check records them with every stage call); None: run here.

    Raises:
        VlaedgeError: ONNX Runtime cannot load or run the graph.
    """
    from vlaedge.runtimes import model_quantization, open_runtime
    from vlaedge.runtimes.ort import ORT_ERRORS

    frames = len(next(iter(feeds.values())))
    qdq = qdq or ("simulated" if precision is not None else "fused")
    try:
        candidate = open_runtime("ort-cpu", policy, model, qdq=qdq, prepack=False)
    except VlaedgeError as e:
        if precision in ("fp8", "int4-weight-only"):  # TensorRT-only custom ops
            return ExportCheck(frames, float("nan"), float("nan"), float("nan"), None, tolerance,
                               skipped=f"ONNX Runtime cannot run this {precision} graph: check on TensorRT")
        raise e
    quantized = precision is not None or model_quantization(model) is not None
    method = candidate.arithmetic if quantized else "ONNX Runtime CPU, float graph"
    step = _fixed_batch(candidate.session) or frames  # a fixed-batch graph (and its model) run in slices
    slices = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, frames, step)]
    try:
        cand_out = _joined([candidate.infer(part) for part in slices])
    except ORT_ERRORS as e:
        raise VlaedgeError(f"export: ONNX Runtime fails on {frames} frames: {one_line(e, 240)}",
                           "re-export the policy (vlaedge export) and report a bug if it persists") from None
    finally:
        candidate.close()
    ref_out = reference if reference is not None else _joined([policy.run_torch(part) for part in slices])
    reference = policy.decode(ref_out)
    diff = np.abs(reference - policy.decode(cand_out))
    pct = diff / policy.check_scale(reference) * 100.0
    agreement = None
    if "action_logits" in ref_out:
        agreement = float(np.mean(ref_out["action_logits"].argmax(-1)
                                  == cand_out["action_logits"].argmax(-1)))
    p99 = float(np.percentile(diff, 99))
    check = ExportCheck(frames, float(diff.max()), float(diff.mean()), p99, agreement, tolerance,
                        quantized=precision is not None, method=method, max_pct=float(pct.max()),
                        p99_pct=float(np.percentile(pct, 99)))
    if not check and precision is not None:
        check.sensitivity_pct = _rounding_sensitivity(policy, slices, reference)
    return check


def _rounding_sensitivity(policy: Policy, slices: list[dict[str, np.ndarray]],
                          reference: np.ndarray) -> float | None:
    """p99 % of range between the fake-quantized module's decoded actions `reference` and the same module
    run with each input quantizer's input moved by one float32 ulp; None without input quantizers."""
    from vlaedge.compress.quantize import one_ulp_nudge

    with one_ulp_nudge(policy.module) as nudged:
        if not nudged:
            return None
        with progress.heartbeat("export: torch with each quantizer's input moved by one ulp"):
            moved = policy.decode(_joined([policy.run_torch(part) for part in slices]))
    pct = np.abs(moved - reference) / policy.check_scale(reference) * 100.0
    return float(np.percentile(pct, 99))


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _trace(policy: Policy, example: dict[str, np.ndarray], file: Path, opset: int, dynamic: bool,
           external_data: str = "auto") -> DataFile | None:
    """`torch.onnx.export` (legacy) with the patches above, its failures turned into one-line errors, the
    weights kept out of the exporter's protobuf (`vlaedge.compress.export_weights`): they go to one data
    file `file.name + ".data"` (returned; None when every tensor is tiny), which the export's checks read
    memory-mapped; `ExportResult.finish` makes the .onnx self-contained at the end unless the graph is over
    2 GB or `external_data` is "always". Always traced on the CPU: a module on a GPU is moved to host
    memory for the trace and back after (`vlaedge.models.device.on_cpu`: moved, never copied, so the
    weights are in one place at a time).

    Raises:
        VlaedgeError: an operator has no ONNX conversion, the export fails, or the graph is over 2 GB and
            `external_data` is "never".
    """
    import onnx
    import torch

    from vlaedge.models.device import on_cpu

    args = tuple(torch.from_numpy(example[s.name]) for s in policy.input_spec)  # CPU: traced on the CPU
    names_in, names_out = [s.name for s in policy.input_spec], list(policy.output_names)
    axes = {n: {0: "batch"} for n in names_in + names_out} if dynamic else None
    policy.module.eval()
    log: list[str] = []
    try:
        with on_cpu(policy.module), weights_apart() as weights:
            with warnings.catch_warnings(), torch.no_grad(), _mha_fastpath_off(), _sdpa_gqa_symbolic(opset), \
                    _captured_stdout(log), progress.heartbeat(
                        f"export: tracing {policy.name} and writing ONNX (torch.onnx.export, opset {opset})"):
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
                torch.onnx.export(policy.module, args, str(file), dynamo=False, opset_version=opset,
                                  input_names=names_in, output_names=names_out, dynamic_axes=axes,
                                  do_constant_folding=True)
            size = weights_bytes(weights) + file.stat().st_size
            if external_data == "never" and size >= TWO_GB:
                raise VlaedgeError(f"export: the graph is {size / 1e9:.2f} GB, over protobuf's 2 GB limit "
                                   "for one .onnx file, and export.external_data is never",
                                   f"set export.external_data: auto (weights in {data_file_name(file)} "
                                   "beside it)")
            with progress.heartbeat(f"export: writing the weights to {data_file_name(file)}"):
                data = attach_weights(file, weights)  # on the CPU still: the tensors are host memory
            weights.clear()  # the exporter's folded tensors (views of the weights, mostly)
        release_memory()
        with progress.heartbeat("export: checking the graph (onnx.checker)"):
            onnx.checker.check_model(str(file))  # by path: external data is checked beside the file
    except torch.onnx.errors.UnsupportedOperatorError as e:
        raise _unsupported(policy, e, "".join(log)) from None
    except (RuntimeError, AssertionError, torch.onnx.errors.OnnxExporterError,
            onnx.checker.ValidationError) as e:  # AssertionError: how torch's symbolics refuse a conversion
        raise VlaedgeError(f"export: ONNX export of {policy.name} failed: {one_line(e, 300)}",
                           TRACEABLE) from None
    return data


def _unsupported(policy: Policy, error: Exception, log: str) -> VlaedgeError:
    """The operator, the module it comes from (the scope of its first node in the exporter's graph dump)
    and, when a later opset converts it, that opset."""
    import torch

    text = str(error)
    op = (re.search(r"operator '([^']+)'", text) or re.search(r"namespace (\S+?)\.", text))
    op_name = op.group(1) if op else text.split(" ")[0]
    where = "the model"
    line = next((ln for ln in log.splitlines() if f"= {op_name}(" in ln), "")
    scope = re.search(r"scope: (\S+)", line)
    if scope:
        levels = scope.group(1).split("/")[1:]  # after the top module: "pkg.Class::name" per level
        module = module_at(policy.module, [level.split("::")[-1] for level in levels])
        if module:
            where = f"module {module} ({type(policy.module.get_submodule(module)).__name__})"
        elif not levels:
            where = f"the forward of {type(policy.module).__name__}"
    source = re.search(r"# (\S+):(\d+)", line)
    if source and not Path(source.group(1)).is_relative_to(Path(torch.__file__).parent):
        where += f", {source.group(1)} line {source.group(2)}"  # the user's code, not torch's own modules
    later = re.search(r"added in version (\d+)", text)
    if later:
        return VlaedgeError(f"export: operator {op_name} (in {where}) needs opset {later.group(1)}",
                            f"set export.opset: {later.group(1)}")
    return VlaedgeError(f"export: operator {op_name} (in {where}) has no ONNX conversion",
                        "rewrite that code with operators ONNX has (e.g. einsum for nn.Bilinear, real and "
                        "imaginary parts instead of complex tensors), or register a conversion with "
                        "torch.onnx.register_custom_op_symbolic")


def _restore_unused_inputs(policy: Policy, file: Path, dynamic: bool) -> list[str]:
    """Puts back the policy inputs the exporter dropped (the model never reads them), in spec order, as
    graph inputs nothing consumes; returns one note per input."""
    import onnx
    from onnx import helper

    model = onnx.load(str(file), load_external_data=False)
    present = {i.name: i for i in model.graph.input}
    dropped = [s for s in policy.input_spec if s.name not in present]
    if not dropped:
        return []
    elem = {"uint8": onnx.TensorProto.UINT8, "int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32,
            "float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}
    inputs = [present.get(s.name) or helper.make_tensor_value_info(
        s.name, elem[s.dtype], [("batch" if dynamic else 1) if d == "B" else d for d in s.shape])
        for s in policy.input_spec]
    extra = [i for i in model.graph.input if i.name not in {s.name for s in policy.input_spec}]
    del model.graph.input[:]
    model.graph.input.extend(inputs + extra)
    onnx.save(model, str(file))
    return [f"input {s.name} is never read by the model: the exporter dropped it; kept as a graph input "
            "that nothing consumes, so runtimes take the policy's inputs unchanged" for s in dropped]


def _fixed_batch(session) -> int | None:
    """The batch size of a graph with a fixed batch (its first input's first dimension), else None."""
    dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return dim if isinstance(dim, int) else None


@contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """PyTorch's fused MHA / encoder-layer kernels off (they do not export), restored after."""
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextmanager
def _sdpa_gqa_symbolic(opset: int) -> Iterator[None]:
    """SDPA's ONNX conversion for `enable_gqa=True` registered at `opset` while the export runs."""
    import torch

    if opset < 14:  # no SDPA conversion at all before opset 14
        yield
        return
    torch.onnx.register_custom_op_symbolic(SDPA, _sdpa_symbolic(), opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(SDPA, opset)


def _sdpa_symbolic():
    """torch's SDPA symbolic, after repeating each key/value head heads/kv_heads times when
    `enable_gqa` (q [..., Hq, L, E], k/v [..., Hkv, S, E] -> [..., Hq, S, E], as `repeat_interleave(Hq //
    Hkv, dim=-3)`, torch's definition of `enable_gqa`)."""
    import torch
    from torch.onnx import symbolic_helper, symbolic_opset14

    def const(g, values):
        return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    def repeat_heads(g, query, kv):
        q_shape, kv_shape = g.op("Shape", query), g.op("Shape", kv)
        q_heads = g.op("Slice", q_shape, const(g, [-3]), const(g, [-2]))
        kv_heads = g.op("Slice", kv_shape, const(g, [-3]), const(g, [-2]))
        lead = g.op("Slice", kv_shape, const(g, [0]), const(g, [-3]))  # [...]
        tail = g.op("Slice", kv_shape, const(g, [-2]), const(g, [2**62]))  # [S, E]
        groups = g.op("Div", q_heads, kv_heads)
        expanded = g.op("Expand", g.op("Unsqueeze", kv, const(g, [-3])),  # [..., Hkv, groups, S, E]
                        g.op("Concat", lead, kv_heads, groups, tail, axis_i=0))
        return g.op("Reshape", expanded, g.op("Concat", lead, q_heads, tail, axis_i=0))

    @symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
    def sdpa(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        if enable_gqa:
            key, value = repeat_heads(g, query, key), repeat_heads(g, query, value)
        return symbolic_opset14.scaled_dot_product_attention(g, query, key, value, attn_mask, dropout_p,
                                                             is_causal, scale, False)

    return sdpa


@contextmanager
def _captured_stdout(log: list[str]) -> Iterator[None]:
    """File descriptor 1 into `log` while the block runs: on a failure the exporter's C++ code prints the
    whole TorchScript graph there, which `_unsupported` reads for the failing node's module."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedded interpreter): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            log.append(sink.read().decode(errors="replace"))


def _describe(staged: Path, path: Path, opset: int, policy: Policy, start: float,
              notes: list[str], data: DataFile | None = None) -> ExportResult:
    import onnx

    from vlaedge.artifact import sha256
    from vlaedge.onnx_file import data_locations

    model = onnx.load(str(staged), load_external_data=False)
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    locations = data_locations(model)
    if data is None and len(locations) == 1:  # written by another step: hashed here
        file = staged.parent / locations[0]
        data = DataFile(locations[0], file.stat().st_size, sha256(file))
    files = [staged, *(staged.parent / loc for loc in locations)]
    return ExportResult(str(path), opset, sum(f.stat().st_size for f in files), bool(locations),
                        [s.name for s in policy.input_spec], list(policy.output_names), qdq,
                        time.perf_counter() - start, notes=notes, nodes=len(model.graph.node),
                        data_file=data.name if data else None, data_sha256=data.sha256 if data else None,
                        data_bytes=data.bytes if data else 0)
