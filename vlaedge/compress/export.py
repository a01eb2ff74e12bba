"""Export: ONNX with the adapter's named inputs and outputs, dynamic batch, explicit Q/DQ for
quantized models, checked by `onnx.checker` and numerically against torch in ONNX Runtime."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.recipe import ExportConfig

TWO_GB = 2**31
FP8_MIN_OPSET = 19


@dataclass
class ExportCheck:
    """ONNX Runtime vs torch on the same feeds: truthy when within tolerance."""

    frames: int
    max_abs: float  # on decoded actions, environment units
    mean_abs: float
    p99_abs: float  # judged for quantized graphs (see `judged`)
    token_agreement: float | None  # discrete heads: fraction of equal argmax tokens
    tolerance: float
    skipped: str = ""  # why the check did not run
    quantized: bool = False  # torch fake-quant vs ONNX Runtime Q/DQ: rounding ties differ

    @property
    def judged(self) -> float:
        """The max for FP32 graphs; the p99 for quantized ones, where a rounding tie that torch and ONNX
        Runtime break differently can move a saturated output (a gripper) on a single frame."""
        return self.p99_abs if self.quantized else self.max_abs

    def __bool__(self) -> bool:
        return bool(self.skipped) or self.judged <= self.tolerance


@dataclass
class ExportResult:
    """What `export_onnx` wrote."""

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

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        from vlaedge.artifact import final_path

        lines = [f"ONNX {final_path(self.path)}: opset {self.opset}, {self.size_bytes / 1e6:.1f} MB, "
                 f"{self.qdq_nodes} Q/DQ nodes"]
        if self.check and not self.check.skipped:
            lines.append(f"ONNX Runtime vs torch on {self.check.frames} frames: max |action diff| "
                         f"{self.check.max_abs:.4f}, p99 {self.check.p99_abs:.4f}, "
                         f"mean {self.check.mean_abs:.5f}")
        return "\n".join(lines + self.notes)


def export_onnx(policy: Policy, path: str | Path, config: ExportConfig | None = None,
                check_feeds: dict[str, np.ndarray] | None = None,
                precision: str | None = None) -> ExportResult:
    """Exports `policy.module` (FP32, or fake-quantized by ModelOpt) to ONNX and checks it.

    Args:
        policy: the policy; its `input_spec` and `output_names` name the graph's inputs and outputs.
        path: the .onnx file to write (written under a temporary name, renamed when complete).
        config: export settings (defaults: opset 17, dynamic batch).
        check_feeds: feeds (e.g. calibration frames) on which ONNX Runtime must match torch.
        precision: the quantized precision, if any ("fp8" raises the opset to 19).

    Returns:
        The export result, with the numerical check.

    Raises:
        VlaedgeError: the exporter failed, the graph is invalid, or ONNX Runtime disagrees with torch
            beyond `config.max_check_error`.

    Example:
        >>> result = export_onnx(policy, "out/model.onnx", check_feeds=policy.example_inputs(8))
    """
    import onnx
    import torch

    config = config or ExportConfig()
    path = Path(path)
    opset = max(config.opset, FP8_MIN_OPSET) if precision == "fp8" else config.opset
    notes = [f"opset raised to {opset}: FP8 Q/DQ needs >= {FP8_MIN_OPSET}"] if opset != config.opset else []
    start = time.perf_counter()
    example = policy.example_inputs(batch=2)
    args = tuple(torch.from_numpy(example[s.name]) for s in policy.input_spec)
    names_in, names_out = [s.name for s in policy.input_spec], list(policy.output_names)
    axes = {n: {0: "batch"} for n in names_in + names_out} if config.dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    policy.module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(policy.module, args, str(tmp), dynamo=False, opset_version=opset,
                              input_names=names_in, output_names=names_out, dynamic_axes=axes,
                              do_constant_folding=True)
        onnx.checker.check_model(str(tmp))
    except (RuntimeError, torch.onnx.errors.OnnxExporterError, onnx.checker.ValidationError) as e:
        _remove(tmp)
        raise VlaedgeError(f"export: ONNX export of {policy.name} failed: {str(e).splitlines()[0][:300]}",
                           "check the opset (export.opset) and that the model is traceable") from e
    _replace(tmp, path)
    result = _describe(path, opset, names_in, names_out, start, notes)
    if check_feeds is not None:
        result.check = check_against_torch(policy, path, check_feeds, config.max_check_error, precision)
        if not result.check:
            raise VlaedgeError(
                f"export: ONNX Runtime differs from torch by {result.check.judged:.4f} in actions "
                f"({'p99' if result.check.quantized else 'max'}; allowed {config.max_check_error})",
                "raise export.max_check_error if this precision is expected to differ, or report a bug")
    result.seconds = time.perf_counter() - start
    return result


def check_against_torch(policy: Policy, model: Path, feeds: dict[str, np.ndarray], tolerance: float,
                        precision: str | None = None) -> ExportCheck:
    """Runs `feeds` through torch and ONNX Runtime CPU and compares decoded actions (and tokens)."""
    from vlaedge.runtimes import open_runtime

    frames = len(next(iter(feeds.values())))
    try:
        candidate = open_runtime("ort-cpu", policy, model)
    except VlaedgeError as e:
        if precision in ("fp8", "int4-weight-only"):  # TensorRT-only custom ops
            return ExportCheck(frames, float("nan"), float("nan"), float("nan"), None, tolerance,
                               skipped=f"ONNX Runtime cannot run this {precision} graph: check on TensorRT")
        raise e
    ref_out, cand_out = policy.run_torch(feeds), candidate.infer(feeds)
    diff = np.abs(policy.decode(ref_out) - policy.decode(cand_out))
    agreement = None
    if policy.logits_output:
        agreement = float(np.mean(ref_out[policy.logits_output].argmax(-1)
                                  == cand_out[policy.logits_output].argmax(-1)))
    p99 = float(np.percentile(diff, 99))
    return ExportCheck(frames, float(diff.max()), float(diff.mean()), p99, agreement, tolerance,
                       quantized=precision is not None)


def _describe(path: Path, opset: int, names_in, names_out, start: float, notes: list[str]) -> ExportResult:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    external = any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    size = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file() and (
        f == path or (external and f.suffix in (".data", "") and f.name.startswith(path.stem))))
    return ExportResult(str(path), opset, size, external, names_in, names_out, qdq,
                        time.perf_counter() - start, notes=notes)


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


def _remove(tmp: Path) -> None:
    if tmp.exists():
        tmp.unlink()
