"""Post-training quantization: one verb, `quantize`, two paths chosen by the target's runtime.

- TensorRT targets: ModelOpt PTQ of `policy.module` in place (fake-quant); the export stage writes it as
  explicit Q/DQ ONNX. The config is built from ModelOpt's preset for the precision with three changes
  (measured): LayerNorm quantizers are disabled (the presets enable LayerNorm *input* quantizers, which
  destroyed a trained VLA: 46% token agreement); ModelOpt's default *name* skips (`*vision_tower*`,
  `*lm_head*`, `*proj_out.*`, ...) are removed so a vision tower named like a real VLA's is quantized;
  and the recipe's `keep` patterns are disabled before calibration (so SmoothQuant/AWQ never rescale
  them). Its class skips (nn.Embedding, BatchNorm, LeakyReLU) stay.
- ONNX Runtime (cpu target, `quantize_ort`): `quantize_static` of the exported FP32 ONNX (QDQ, uint8
  activations, int8 per-channel weights, MatMul/Gemm/Conv) or `quantize_dynamic` (`mode: dynamic`: int8
  weights, activations quantized at run time, no calibration), optionally after ONNX Runtime's graph
  fusion (`optimize_graph`). Which is fastest depends on the model: `vlaedge tune` measures it. Keep
  patterns are mapped from module names to node names (see `quant_report.node_modules`); normalisation
  nodes are excluded.

Both paths check the calibration feeds first and report every module / node with why it was or was not
quantized (`QuantizeResult.decisions`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
import warnings
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.compress.quant_report import (
    QuantDecision,
    QuantizeResult,
    modelopt_decisions,
    unmatched_patterns,
)
from vlaedge.compress.quantize_ort import ORT_OP_TYPES, inline_shared_weights, ort_config, quantize_onnx
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.recipe import QuantizeConfig
from vlaedge.targets import Target

__all__ = ["quantize", "check_calibration", "inline_shared_weights", "QuantizeResult", "QuantDecision",
           "ORT_OP_TYPES", "CALIB_BATCH", "one_ulp_nudge"]

CALIB_BATCH = 32  # frames per calibration forward pass
# ModelOpt preset per (precision, algorithm).
_PRESETS = {
    ("int8", "max"): "INT8_DEFAULT_CFG",
    ("int8", "smoothquant"): "INT8_SMOOTHQUANT_CFG",
    ("fp8", "max"): "FP8_DEFAULT_CFG",
    ("int8-weight-only", "max"): "INT8_WEIGHT_ONLY_CFG",
    ("int4-weight-only", "awq"): "INT4_AWQ_CFG",
    ("int4-weight-only", "max"): "INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
}


def quantize(policy: Policy, config: QuantizeConfig, calibration: list[dict[str, np.ndarray]], target: Target,
             fp32_onnx: Path | None = None, out_onnx: Path | None = None) -> QuantizeResult:
    """Quantizes a policy for a target, calibrating on `config.num_calib_frames` frames.

    Args:
        policy: the policy. On the TensorRT path its `module` is quantized in place (fake-quant).
        config: the recipe's quantize section.
        calibration: feed batches (`policy.make_inputs(frames)`), keyed by `policy.input_spec` names.
        target: the deployment target; `target.runtime` picks the path.
        fp32_onnx: ONNX Runtime path: the exported FP32 model to quantize.
        out_onnx: ONNX Runtime path: where to write the quantized model.

    Returns:
        The result, listing every quantized and skipped module (or ONNX node) with the reason.

    Raises:
        VlaedgeError: bad calibration data (NaN/Inf, wrong shapes, too few frames), a precision/algorithm
            pair with no recipe, a `keep` pattern matching no module, an already quantized module, or a
            missing ONNX file.

    Example:
        >>> feeds = [policy.make_inputs(sample_frames(calib_set, 256))]
        >>> result = quantize(policy, QuantizeConfig(precision="int8"), feeds, get_target("agx-orin-64gb"))
        >>> print(result.summary())
    """
    batches = check_calibration(policy, config, calibration)
    module_names = [n for n, _ in policy.module.named_modules()]
    missing = unmatched_patterns(module_names, list(config.keep))
    if missing:
        top = ", ".join(n for n, _ in policy.module.named_children())
        raise VlaedgeError(f"quantize.keep: pattern(s) {', '.join(repr(p) for p in missing)} match no "
                           f"module of {policy.name}",
                           f"patterns are fnmatch on module names; top-level modules: {top}")
    if target.runtime == "tensorrt":
        _refuse_ort_only(config, target)
        import modelopt.torch.quantization  # noqa: F401  (5-9 s once per process: not in `seconds`)

        start = time.perf_counter()
        decisions, notes = _modelopt(policy, config, batches)
        return QuantizeResult("modelopt", config.precision, config.algorithm, decisions,
                              config.num_calib_frames, time.perf_counter() - start, notes=notes)
    if fp32_onnx is None or out_onnx is None or not Path(fp32_onnx).is_file():
        raise VlaedgeError(f"quantize: {target.name} quantizes the exported FP32 ONNX with ONNX Runtime, "
                           f"and fp32_onnx={fp32_onnx} out_onnx={out_onnx}", "export the FP32 model first")
    start = time.perf_counter()
    result = quantize_onnx(policy, ort_config(config, target), batches, Path(fp32_onnx), Path(out_onnx))
    result.seconds = time.perf_counter() - start
    return result


def _refuse_ort_only(config: QuantizeConfig, target: Target) -> None:
    """Settings only the ONNX Runtime path has: an error on a TensorRT target, not a silent no-op."""
    bad = [f"{k}: {getattr(config, k)}" for k, default in (("mode", "static"), ("quantize_attention", False),
                                                           ("optimize_graph", False), ("reduce_range", None))
           if getattr(config, k) != default]
    if bad:
        raise VlaedgeError(f"quantize: {', '.join(bad)} apply to ONNX Runtime (the cpu target) only, "
                           f"{target.name} quantizes with ModelOpt for TensorRT",
                           "remove them from the recipe")


# --- calibration checks -------------------------------------------------------------------------------


def check_calibration(policy: Policy, config: QuantizeConfig,
                      calibration: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Validates calibration feed batches and returns exactly `config.num_calib_frames` frames, re-batched
    by `CALIB_BATCH` and cast to the input dtypes.

    Raises:
        VlaedgeError: a missing input, a shape or dtype the policy does not take, NaN/Inf in a float
            input (naming it and the count), or fewer frames than `config.num_calib_frames`.
    """
    nonfinite: dict[str, int] = {}
    columns: dict[str, list[np.ndarray]] = {s.name: [] for s in policy.input_spec}
    for i, batch in enumerate(calibration):
        missing = [name for name in columns if name not in batch]
        if missing:
            raise VlaedgeError(f"calibration: batch {i} has no {', '.join(missing)}; {policy.name} takes "
                               f"{', '.join(columns)}", "make feeds with policy.make_inputs(frames)")
        sizes = set()
        for spec in policy.input_spec:
            arr = np.asarray(batch[spec.name])
            _check_feed(policy, spec, arr, i)
            if arr.dtype.kind == "f":
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                if bad:
                    nonfinite[spec.name] = nonfinite.get(spec.name, 0) + bad
            sizes.add(arr.shape[0])
            columns[spec.name].append(arr.astype(spec.dtype, copy=False))
        if len(sizes) > 1:
            raise VlaedgeError(f"calibration: batch {i} mixes batch sizes {sorted(sizes)} across inputs",
                               "give every input the same number of frames")
    if nonfinite:
        counts = ", ".join(f"'{name}' has {count} NaN/Inf value(s)" for name, count in nonfinite.items())
        raise VlaedgeError(f"calibration: {counts}",
                           "drop or repair those frames: one NaN makes every scale NaN")
    found = sum(len(c) for c in columns[policy.input_spec[0].name])
    need = config.num_calib_frames
    if found < need:
        raise VlaedgeError(f"calibration: {found} frames found, {config.precision} calibration needs at "
                           f"least {need}", "add episodes or lower quantize.num_calib_frames")
    full = {name: np.concatenate(parts)[:need] for name, parts in columns.items()}
    return [{name: np.ascontiguousarray(a[s:s + CALIB_BATCH]) for name, a in full.items()}
            for s in range(0, need, CALIB_BATCH)]


def _check_feed(policy: Policy, spec, arr: np.ndarray, batch: int) -> None:
    want = ["B" if d == "B" else int(d) for d in spec.shape]
    fits = arr.ndim == len(want) and all(w == "B" or w == g for w, g in zip(want, arr.shape, strict=True))
    if not fits:
        size = f" ({want[-2]}x{want[-1]} images)" if len(want) == 4 and "image" in spec.name else ""
        raise VlaedgeError(f"calibration: '{spec.name}' in batch {batch} has shape {list(arr.shape)}, "
                           f"{policy.name} needs {want}{size}",
                           "make feeds with policy.make_inputs(frames), which resizes and tokenizes")
    if (arr.dtype.kind == "f") != (np.dtype(spec.dtype).kind == "f"):
        raise VlaedgeError(f"calibration: '{spec.name}' in batch {batch} is {arr.dtype}, {policy.name} needs "
                           f"{spec.dtype}", "make feeds with policy.make_inputs(frames)")


# --- ModelOpt (TensorRT targets) ----------------------------------------------------------------------


def _modelopt(policy: Policy, config: QuantizeConfig, batches: list[dict[str, np.ndarray]]):
    import modelopt.torch.quantization as mtq
    import torch

    from vlaedge.models.device import feed_tensors

    if modelopt_quantizers(policy.module):
        raise VlaedgeError(f"quantize: {policy.name} is already quantized (it has ModelOpt quantizers)",
                           "quantize a freshly loaded FP32 policy")
    cfg, removed, class_skips, notes = modelopt_config(config)
    specs, device = policy.input_spec, policy.device

    def forward_loop(model) -> None:  # one batch on the module's device at a time (the policy's device)
        with torch.no_grad():
            for batch in progress.track(batches, "calibration: batches (ModelOpt)"):
                model(*feed_tensors([batch[s.name] for s in specs], device))

    policy.module.eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # "Cannot find transformers package" and friends
        mtq.quantize(policy.module, cfg, forward_loop)
    decisions = modelopt_decisions(policy.module, config, removed, class_skips)
    return decisions, notes


def modelopt_config(config: QuantizeConfig) -> tuple[dict, list[str], dict[str, type], list[str]]:
    """The ModelOpt quantize config for a recipe, from the library's preset (deep-copied).

    Returns:
        (config dict, removed default name-skip patterns, class skips still in force, notes).

    Raises:
        VlaedgeError: no preset for this precision and algorithm.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization import QuantModuleRegistry

    key = (config.precision, config.algorithm)
    if key not in _PRESETS:
        valid = ", ".join(f"{p} + {a}" for p, a in _PRESETS)
        raise VlaedgeError(f"quantize.algorithm: {config.algorithm} does not apply to {config.precision} on "
                           f"ModelOpt", f"valid precision + algorithm pairs: {valid}")
    preset = copy.deepcopy(getattr(mtq, _PRESETS[key]))
    entries, removed, class_skips, notes = [], [], {}, []
    for entry in preset["quant_cfg"]:
        if _is_name_skip(entry):
            removed.append(entry["quantizer_name"])
            continue
        if entry.get("parent_class") and entry.get("enable") is False and "cfg" not in entry:
            class_skips[entry["parent_class"]] = QuantModuleRegistry[entry["parent_class"]]
        entries.append(_with_per_channel(entry, config, notes))
    if not config.quantize_layernorm:
        entries.append({"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False})
    # a module matches `p` when it or an ancestor does; its quantizers are named "<module>.<x>_quantizer"
    entries += [{"quantizer_name": f"{p}.*", "enable": False} for p in config.keep]
    preset["quant_cfg"] = entries
    notes.append(f"ModelOpt preset {_PRESETS[key]}; its default name skips were removed: "
                 f"{', '.join(removed) or 'none'}")
    return preset, removed, class_skips, sorted(set(notes), key=notes.index)


def _is_name_skip(entry: dict) -> bool:
    """A preset entry that disables quantizers by module name (`*vision_tower*`, `*lm_head*`, ...)."""
    name = entry.get("quantizer_name", "")
    return (entry.get("enable") is False and "cfg" not in entry and not entry.get("parent_class")
            and name != "*" and not name.endswith("quantizer"))


def _with_per_channel(entry: dict, config: QuantizeConfig, notes: list[str]) -> dict:
    cfg = entry.get("cfg")
    if config.per_channel or entry.get("quantizer_name") != "*weight_quantizer" or not isinstance(cfg, dict):
        return entry
    if cfg.get("block_sizes"):
        notes.append("per_channel: false does not apply to block-wise int4 weights")
        return entry
    return {**entry, "cfg": {**cfg, "axis": None}}


@contextlib.contextmanager
def one_ulp_nudge(module, seed: int = 0):
    """While the block runs, every enabled ModelOpt input quantizer of `module` sees its input moved by one
    float32 ulp (x * (1 +/- 2^-23), random signs from `seed`): the size of the difference two float
    computations of the same graph have before a quantizer (ONNX Runtime's or TensorRT's kernels against
    torch's). How far that moves the outputs is the fake-quantized module's own sensitivity to float
    rounding: a value that lands on the other side of a rounding boundary moves by a whole quantization
    step, and the next layers' quantizers spread it (at 127 M parameters, random weights: 1.6% relative L2
    on the logits, as much as ONNX Runtime's Q/DQ graph differs from torch; `benchmarks/qdq_gap.py`)."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def nudge(_, args):
        x = args[0]
        signs = torch.randint(0, 2, x.shape, generator=generator).to(x.device, x.dtype) * 2 - 1
        return (x * (1 + signs * 2.0 ** -23), *args[1:])

    from modelopt.torch.quantization.nn import TensorQuantizer

    handles = [m.register_forward_pre_hook(nudge) for name, m in module.named_modules()
               if isinstance(m, TensorQuantizer) and name.endswith("input_quantizer") and m.is_enabled]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def modelopt_quantizers(module) -> int:
    """How many ModelOpt quantizers `module` carries (0 for an unquantized module)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return sum(isinstance(m, TensorQuantizer) for m in module.modules())
