"""Open-loop drift: how far a candidate's actions are from the FP32 reference's on the same inputs.

Both models see identical feeds (the policy's `make_inputs` on evaluation frames, with the same seed, so a
flow head gets the same `noise`). Errors are measured after `decode`, in the environment's units, and
expressed as a percentage of each action dimension's range (`action_spec.high - action_spec.low`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vlaedge import progress
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import BATCH, ActionSpec, Policy
from vlaedge.models.stages import ParityAccumulator, record_torch
from vlaedge.models.weights import module_dtype
from vlaedge.runtimes.base import Runtime
from vlaedge.runtimes.staged import StagedRuntime

BATCH_SIZE = 32  # frames per inference call


@dataclass
class DimDrift:
    """Drift of one action dimension, in % of its range (except the agreement and flip fractions)."""

    name: str
    mean_pct: float  # mean abs error
    p99_pct: float  # 99th percentile abs error
    max_pct: float  # largest abs error
    token_agreement: float | None = None  # tokens head: share of equal argmax bins
    gripper_flip_rate: float | None = None  # gripper dims: share of open/close decisions that differ


@dataclass
class DriftReport:
    """Reference vs candidate actions on the same inputs.

    Truthy when every candidate action is finite and, if `tolerance_pct` is set, no dimension's mean
    error exceeds it. Budgets are judged by `vlaedge.check.gate`, not here.
    """

    frames: int  # evaluation frames compared
    chunk: int  # actions per inference (T)
    mean_pct: float  # over all frames, chunk steps and dimensions
    p99_pct: float
    max_pct: float
    cosine_mean: float  # cosine similarity of whole action chunks (centred on the range midpoint)
    cosine_min: float
    per_dim: list[DimDrift]
    step_mean_pct: list[float]  # mean error at each chunk step t = 0 .. T-1 (error growth along the chunk)
    token_agreement: float | None = None  # tokens head only
    gripper_flip_rate: float | None = None  # over all gripper dims; None without gripper dims
    nonfinite: int = 0  # candidate action values that were NaN/inf (counted as 100% error)
    tolerance_pct: float | None = None
    worst: dict = field(default_factory=dict)  # {"dim": name, "mean_pct": ...} of the worst dimension
    # How the candidate computed a quantized graph (`vlaedge.runtimes.ort.qdq_label`): "Q/DQ simulated
    # (fusion off), as TensorRT computes" for a graph TensorRT runs; None for a float candidate or torch.
    method: str | None = None
    # A per-stage candidate (stages.json): each stage output against the FP32 torch stage on torch's stage
    # inputs (`vlaedge.models.stages.StageParity` dicts: stage, output, calls, cosine_mean, cosine_min,
    # rel_l2); empty for a single graph.
    stages: list[dict] = field(default_factory=list)
    # Frames the per-stage parity was measured on: None for a single-graph candidate, 0 for a per-stage
    # one whose parity was not measured (verify.stage_parity_frames 0, or a half-precision reference).
    stage_parity_frames: int | None = None

    def __bool__(self) -> bool:
        if self.nonfinite:
            return False
        return self.tolerance_pct is None or max(d.mean_pct for d in self.per_dim) <= self.tolerance_pct

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        text = (
            f"drift on {self.frames} frames: mean {self.mean_pct:.3f}% / p99 {self.p99_pct:.3f}% / "
            f"max {self.max_pct:.3f}% of range over all dims, worst dim {self.worst.get('dim')} "
            f"({self.worst.get('mean_pct', 0):.3f}%), cosine {self.cosine_mean:.4f}"
        )
        if self.token_agreement is not None:
            text += f", token agreement {self.token_agreement:.2%}"
        if self.gripper_flip_rate is not None:
            text += f", gripper flips {self.gripper_flip_rate:.2%}"
        if self.method:
            text += f" (candidate: {self.method})"
        return text


def action_drift(
    reference: np.ndarray,
    candidate: np.ndarray,
    spec: ActionSpec,
    reference_logits: np.ndarray | None = None,
    candidate_logits: np.ndarray | None = None,
    tolerance_pct: float | None = None,
) -> DriftReport:
    """Drift metrics between two batches of decoded action chunks.

    Args:
        reference: float [N, T, A] actions of the FP32 reference, in environment units.
        candidate: float [N, T, A] actions of the candidate on the same inputs.
        spec: the policy's action spec (names, low/high, gripper dims).
        reference_logits: tokens head: [N, T, A, bins] logits of the reference (for token agreement);
            [N, A, bins] when T is 1.
        candidate_logits: idem for the candidate.
        tolerance_pct: optional max per-dimension mean error that makes the report truthy.

    Returns:
        The `DriftReport`.

    Raises:
        VlaedgeError: shapes differ from each other or from the action spec.

    Example:
        >>> ref = np.zeros((8, 4, 3), np.float32)
        >>> action_drift(ref, ref + 0.02, spec).mean_pct  # range 2 -> 1%
        1.0
    """
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 3 or ref.shape[2] != spec.dim:
        raise VlaedgeError(
            f"drift: candidate actions {cand.shape} vs reference {ref.shape}, the action spec "
            f"has {spec.dim} dims",
            "the candidate must be exported from the reference policy",
        )
    low, high = np.asarray(spec.low, np.float64), np.asarray(spec.high, np.float64)
    finite = np.isfinite(cand)
    err = np.where(finite, np.abs(cand - ref) / (high - low) * 100.0, 100.0)  # (N, T, A) % of range
    agree_dims = _token_agreement(reference_logits, candidate_logits, ref.shape)
    flips = _gripper_flips(ref, cand, spec, low, high)
    per_dim = []
    for a, name in enumerate(spec.names):
        e = err[..., a]
        per_dim.append(
            DimDrift(
                name,
                float(e.mean()),
                float(np.percentile(e, 99)),
                float(e.max()),
                None if agree_dims is None else float(agree_dims[a]),
                float(flips[a]) if a in flips else None,
            )
        )
    worst = max(per_dim, key=lambda d: d.mean_pct)
    cos = _chunk_cosine(ref, np.where(finite, cand, 0.0), low, high)
    return DriftReport(
        frames=ref.shape[0],
        chunk=ref.shape[1],
        mean_pct=float(err.mean()),
        p99_pct=float(np.percentile(err, 99)),
        max_pct=float(err.max()),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        per_dim=per_dim,
        step_mean_pct=[float(v) for v in err.mean(axis=(0, 2))],
        token_agreement=None if agree_dims is None else float(agree_dims.mean()),
        gripper_flip_rate=float(np.mean(list(flips.values()))) if flips else None,
        nonfinite=int((~finite).sum()),
        tolerance_pct=tolerance_pct,
        worst={"dim": worst.name, "mean_pct": worst.mean_pct},
    )


def _token_agreement(ref_logits, cand_logits, shape) -> np.ndarray | None:
    """Per-dimension share of equal argmax bins, or None without logits."""
    if ref_logits is None or cand_logits is None:
        return None
    ref_bins, cand_bins = (_chunked(np.argmax(logits, -1), shape) for logits in (ref_logits, cand_logits))
    if ref_bins.shape != tuple(shape) or cand_bins.shape != tuple(shape):
        raise VlaedgeError(
            f"drift: logits give bins {cand_bins.shape} / {ref_bins.shape}, actions are {shape}",
            "the candidate must be exported from the reference policy",
        )
    return (ref_bins == cand_bins).mean(axis=(0, 1))


def _chunked(bins: np.ndarray, shape: tuple) -> np.ndarray:
    """Bins [N, A] of a head whose logits have no chunk axis are chunk 1: [N, 1, A] as the actions."""
    return bins[:, None] if bins.ndim == 2 and len(shape) == 3 and shape[1] == 1 else bins


def _gripper_flips(ref, cand, spec: ActionSpec, low, high) -> dict[int, float]:
    """Gripper dim -> share of (frame, step) where open/closed (above the range midpoint) differs."""
    flips = {}
    for a in spec.gripper_dims:
        mid = (low[a] + high[a]) / 2
        flips[a] = float(np.mean((ref[..., a] > mid) != (cand[..., a] > mid)))
    return flips


def _chunk_cosine(ref, cand, low, high) -> np.ndarray:
    """Cosine similarity per frame of the whole chunk, each dim centred and scaled to [-1, 1].

    Centring on the range midpoint keeps a constant offset from looking like agreement. Two all-zero
    chunks count as identical (1), one all-zero chunk against a non-zero one as orthogonal (0).
    """
    mid, half = (low + high) / 2, (high - low) / 2
    r = ((ref - mid) / half).reshape(len(ref), -1)
    c = ((cand - mid) / half).reshape(len(cand), -1)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    dot = (r * c).sum(axis=1)
    eps = 1e-12
    both_zero = (nr < eps) & (nc < eps)
    cos = np.where((nr < eps) | (nc < eps), 0.0, dot / np.maximum(nr * nc, eps))
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


def check_candidate_inputs(policy: Policy, candidate: Runtime) -> None:
    """Checks that the candidate takes exactly the reference's inputs (names, dtypes, shapes).

    For ONNX Runtime candidates the model file's own input metadata is compared, so a model exported
    from another policy (another image size, float images) is refused before any inference.

    Raises:
        VlaedgeError: one line naming the first mismatching input.
    """
    expected = {s.name: s for s in policy.input_spec}
    actual = _runtime_inputs(candidate)
    if set(actual) != set(expected):
        raise VlaedgeError(
            f"candidate: {candidate.name} takes inputs {sorted(actual)}, the reference takes "
            f"{sorted(expected)}",
            "export the candidate from the same policy as the reference",
        )
    for name, spec in expected.items():
        dtype, shape = actual[name]
        if dtype != spec.dtype or not _shapes_compatible(shape, spec.shape):
            raise VlaedgeError(
                f"candidate: input {name!r} is {dtype} {_fmt_shape(shape)} in the candidate, the reference "
                f"takes {spec.dtype} {_fmt_shape(spec.shape)}",
                "export the candidate from the same policy (and image size) as the reference",
            )


def _runtime_inputs(runtime: Runtime) -> dict[str, tuple[str, tuple]]:
    session = getattr(runtime, "session", None)
    if session is not None and hasattr(session, "get_inputs"):  # ONNX Runtime: the file's own metadata
        return {i.name: (onnx_type_to_dtype(i.type), tuple(i.shape)) for i in session.get_inputs()}
    return {s.name: (s.dtype, s.shape) for s in runtime.input_spec}


def onnx_type_to_dtype(ort_type: str) -> str:
    """ONNX Runtime's "tensor(uint8)" -> "uint8" ("tensor(float)" -> "float32")."""
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(inner, inner)


def _shapes_compatible(actual: tuple, spec: tuple) -> bool:
    if len(actual) != len(spec):
        return False
    return all(s == BATCH or not isinstance(a, int) or a == s for a, s in zip(actual, spec, strict=True))


def _fmt_shape(shape: tuple) -> str:
    return "[" + ",".join(str(d) if d is not None else "?" for d in shape) + "]"


def open_loop_drift(
    policy: Policy,
    candidate: Runtime,
    frames: dict,
    seed: int = 0,
    tolerance_pct: float | None = None,
    batch_size: int = BATCH_SIZE,
    stage_parity_frames: int = 8,
) -> tuple[DriftReport, np.ndarray, np.ndarray]:
    """Runs the FP32 reference (torch) and the candidate on identical feeds and measures the drift.

    Args:
        policy: the FP32 reference policy (its torch module is the reference).
        candidate: the candidate runtime (see `vlaedge.runtimes.open_runtime`).
        frames: evaluation frames (a `FrameBatch`).
        seed: seeds `make_inputs` per batch (the flow head's `noise`); both models get the same feeds.
        tolerance_pct: see `DriftReport`.
        batch_size: frames per inference call.
        stage_parity_frames: a per-stage candidate's parity is measured on the first this many frames
            (0: none); the stage inputs and outputs of those frames are held while it runs.

    Returns:
        (report, reference actions [N, T, A], candidate actions [N, T, A]). For a per-stage candidate
        (`vlaedge.runtimes.staged.StagedRuntime`) and a float32 module, the reference runs the stage plan
        in torch (equal to `forward` within 1e-5, checked at export) and `report.stages` holds each
        stage's parity: the candidate's stage fed torch's stage inputs, so errors do not compound.

    Raises:
        VlaedgeError: the candidate's inputs or outputs do not match the reference's.
    """
    check_candidate_inputs(policy, candidate)
    n = len(frames["instruction"])
    refs, cands, ref_logits, cand_logits = [], [], [], []
    staged = isinstance(candidate, StagedRuntime)
    # a half-precision module's stages would need their feeds cast: its end-to-end drift is still measured
    parity = (ParityAccumulator(candidate.plan) if staged and stage_parity_frames
              and module_dtype(policy.module) == "float32" else None)
    measured = 0
    for start in progress.track(range(0, n, batch_size), f"drift: batches of {batch_size} frames"):
        batch = {k: v[start : start + batch_size] for k, v in frames.items()}
        feeds = policy.make_inputs(batch, seed=seed + start)
        size = len(batch["instruction"])
        k = min(size, stage_parity_frames - start) if parity is not None else 0
        if k > 0:  # the first k frames through the torch stages, recorded; the rest of the batch as usual
            ref_out, recorder = record_torch(policy, parity.plan, {n: v[:k] for n, v in feeds.items()})
            parity.add(recorder, candidate.run_stage)
            measured += k
            del recorder
            if k < size:
                rest = policy.run_torch({n: v[k:] for n, v in feeds.items()})
                ref_out = {n: np.concatenate([ref_out[n], rest[n]]) for n in ref_out}
        else:
            ref_out = policy.run_torch(feeds)
        cand_out = candidate.infer(feeds)
        missing = sorted(set(ref_out) - set(cand_out))
        if missing:
            raise VlaedgeError(
                f"candidate: {candidate.name} gives no output {', '.join(missing)}",
                "export the candidate from the same policy as the reference",
            )
        refs.append(policy.decode(ref_out))
        cands.append(policy.decode({k: cand_out[k] for k in ref_out}))
        if policy.logits_output:  # token agreement for every tokens head, whatever its output's name
            ref_logits.append(ref_out[policy.logits_output])
            cand_logits.append(cand_out[policy.logits_output])
    ref, cand = np.concatenate(refs), np.concatenate(cands)
    report = action_drift(
        ref,
        cand,
        policy.action_spec,
        np.concatenate(ref_logits) if ref_logits else None,
        np.concatenate(cand_logits) if cand_logits else None,
        tolerance_pct,
    )
    if parity is not None:
        report.stages = [p.to_dict() for p in parity.result()]
    if staged:
        report.stage_parity_frames = measured
    return report, ref, cand
