"""Building and measuring one tuner variant: quantize (exactly as `vlaedge compress` would, from the same
FP32 export and calibration frames), then its action drift against the FP32 policy on the calibration
split's search frames and on the evaluation split. Each variant's result is cached as JSON next to its
model, keyed by everything that decides it, so a rerun on the same output directory resumes (the cache and
how a resume validates it: `vlaedge.tune.cache`)."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlaedge.artifact import model_sha256
from vlaedge.check.gate import gate
from vlaedge.check.profile import model_file_bytes, model_parameter_count
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import Budgets, QuantizeConfig
from vlaedge.tune.space import Variant

DRIFT_BUDGETS = ("max_drift_mean_pct", "max_drift_p99_pct", "max_drift_per_dim_pct",
                 "max_drift_per_dim_p99_pct", "min_cosine", "min_stage_cosine", "min_token_agreement",
                 "max_gripper_flip_rate")


@dataclass
class Measured:
    """A built variant's figures (latency is added by the tuner's one interleaved run)."""

    name: str
    settings: dict  # QuantizeConfig fields set (see `Variant.config_update`)
    fallback: list[str]
    model: str  # the .onnx file, relative to the tuner's output directory
    file_bytes: int
    parameters: int
    search_drift: dict  # drift on the calibration split's search frames (DriftReport.to_dict subset)
    drift: dict  # drift on the evaluation split
    drift_failures: list[str]  # drift budgets violated on the evaluation split
    search_failures: list[str]  # drift budgets violated on the search frames
    quantized_groups: list[str] = field(default_factory=list)
    seconds: float = 0.0
    key: str = ""
    fp32: bool = False
    model_sha256: str = ""  # of the model and its external data (`artifact.model_sha256`): checked on resume

    def to_dict(self) -> dict:
        return asdict(self)


def drift_only(budgets: Budgets | None) -> Budgets:
    """The drift budgets of `budgets` (the ones a variant is searched against before timing)."""
    if budgets is None:
        return Budgets()
    return Budgets(**{k: getattr(budgets, k) for k in DRIFT_BUDGETS})


def judge_drift(drift: dict, budgets: Budgets) -> list[str]:
    """The drift budgets a drift dict (`DriftReport.to_dict`) violates, as "name measured (allowed)"."""
    failures = gate({"drift": drift, "policy": {}, "target": None}, budgets).failures
    return [f"{c.name} {c.measured:.4g} (allowed {c.op} {c.allowed:.4g})" for c in failures]


def variant_key(variant: Variant, base: QuantizeConfig, context: dict) -> str:
    """Hash of everything that decides a variant's model and drift (settings, checkpoint, data, frames)."""
    config = base.model_copy(update=variant.config_update(base.keep)).model_dump(mode="json")
    blob = json.dumps({"config": config, **context}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def quantize_variant(work, variant: Variant, out_onnx: Path):
    """Quantizes the policy as the variant says; returns (QuantizeResult, torch student or None)."""
    from vlaedge.compress.quantize import quantize

    config = work.base.model_copy(update=variant.config_update(work.base.keep))
    config = QuantizeConfig.model_validate(config.model_dump())  # validate the combination
    if work.target.runtime == "onnxruntime":
        return quantize(work.policy, config, work.calib_feeds, work.target, fp32_onnx=work.fp32_onnx,
                        out_onnx=out_onnx), None
    from vlaedge.compress.export import export_onnx

    student = copy.deepcopy(work.policy)
    result = quantize(student, config, work.calib_feeds, work.target)
    export_onnx(student, out_onnx, work.export_cfg, work.check_feeds, precision=config.precision)
    return result, student


def measure_variant(work, variant: Variant, key: str) -> Measured:
    """Builds a variant into work.folder and measures its drift; raises VlaedgeError if it cannot be built."""
    from vlaedge.tune.space import quantized_groups

    start = time.perf_counter()
    out_onnx = work.folder / f"{variant.name}.onnx"
    result, student = quantize_variant(work, variant, out_onnx)
    runtime = _runtime(work, out_onnx, student)
    search, evaluation = work.drift(runtime)
    runtime.close()
    return Measured(
        variant.name, variant.config_update(work.base.keep), list(variant.fallback),
        str(out_onnx.relative_to(work.folder.parent)), model_file_bytes(out_onnx),
        model_parameter_count(out_onnx), _drift_dict(search), _drift_dict(evaluation),
        judge_drift(_drift_dict(evaluation), work.drift_budgets),
        judge_drift(_drift_dict(search), work.drift_budgets), quantized_groups(result.decisions),
        time.perf_counter() - start, key, model_sha256=model_sha256(out_onnx))


def measure_fp32(work, onnx_path: Path) -> Measured:
    """The FP32 reference export as a row of the table (its drift is the export's own, ~0)."""
    from vlaedge.runtimes import open_runtime

    runtime = open_runtime("ort-cpu", work.reference, onnx_path, work.threads)
    search, evaluation = work.drift(runtime)
    runtime.close()
    return Measured("fp32", {}, [], str(onnx_path.relative_to(work.folder.parent)),
                    model_file_bytes(onnx_path), model_parameter_count(onnx_path), _drift_dict(search),
                    _drift_dict(evaluation), judge_drift(_drift_dict(evaluation), work.drift_budgets),
                    [], [], 0.0, "", True)


def _runtime(work, onnx_path: Path, student):
    """ONNX Runtime for a cpu-target variant; the fake-quantized torch student for TensorRT targets (what
    TensorRT computes, up to kernel rounding; FP8 graphs do not load in ONNX Runtime)."""
    from vlaedge.runtimes import open_runtime

    if student is None:
        return open_runtime("ort-cpu", work.reference, onnx_path, work.threads)
    from vlaedge.runtimes.torch import TorchRuntime

    return TorchRuntime(student, work.threads)


def _drift_dict(drift) -> dict:
    return drift.to_dict()


def build_error(variant: Variant, error: Exception) -> dict:
    """A variant that could not be built, for the table (it is never picked)."""
    message = error.message if isinstance(error, VlaedgeError) else f"{type(error).__name__}: {error}"
    return {"name": variant.name, "settings": variant.settings, "error": message[:300]}
