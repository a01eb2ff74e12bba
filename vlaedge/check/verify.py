"""Verification: does a (compressed) policy still act like the original, and how fast does it run?

`verify` runs the FP32 reference and a candidate (any runtime) on the evaluation split with identical
inputs and noise (open-loop drift, `vlaedge.check.drift`), optionally in an environment for N seeded episodes
each (closed loop, `closedloop`), and profiles the candidate (`profile`) interleaved with the FP32
reference ONNX on the same runtime, so every report says whether compression paid off: median and p99
speedup, file-size ratio and parameter ratio (`baseline_comparison`, the report's "baseline" section).
The result carries a `report.json`-ready dict (`vlaedge.check.report`); budgets are judged by
`vlaedge.check.gate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.check.closedloop import (
    ClosedLoopReport,
    SuccessRate,
    closed_loop,
    compare_closed_loop,
    wilson_interval,
)
from vlaedge.check.drift import DriftReport, open_loop_drift
from vlaedge.check.profile import ProfileReport, model_file_bytes, model_parameter_count
from vlaedge.check.report_markdown import speed_note
from vlaedge.check.sendable import RuntimeAct
from vlaedge.data import EpisodeDataset, sample_frames
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.recipe import VerifyConfig

__all__ = [
    "ClosedLoopReport",
    "DriftReport",
    "SuccessRate",
    "VerifyResult",
    "baseline_comparison",
    "closed_loop",
    "verify",
    "wilson_interval",
]

MAX_TRACE_FRAMES = 80  # frames per plotted evaluation episode


@dataclass
class VerifyResult:
    """Everything `verify` measured; truthy when the drift and (if run) the closed loop are truthy."""

    drift: DriftReport
    closed_loop: ClosedLoopReport | None
    profile: ProfileReport | None
    report: dict  # the report.json content (schema vlaedge.report/1), without a gate section
    notes: list[str] = field(default_factory=list)
    baseline: dict | None = None  # the candidate vs the FP32 reference ONNX (`baseline_comparison`)

    def __bool__(self) -> bool:
        return bool(self.drift) and (self.closed_loop is None or bool(self.closed_loop))

    def summary(self) -> str:
        lines = [self.drift.summary()]
        if self.closed_loop is not None:
            lines.append(self.closed_loop.summary())
        if self.profile is not None:
            m = self.profile.models[0]
            lines.append(
                f"latency ({m.runtime}, {self.profile.runs} runs): median {m.latency.median_ms:.2f} ms, "
                f"p99 {m.latency.p99_ms:.2f} ms, {m.rate['inferences_per_s']:.1f} inferences/s"
            )
        if self.baseline is not None:
            lines.append(f"vs FP32 ONNX: {speed_note(self.baseline)}")
        return "\n".join(lines + self.notes)


def verify(
    policy: Policy,
    model: str | Path | None,
    evaluation: EpisodeDataset,
    config: VerifyConfig,
    policy_sha256: str | None = None,
    checkpoint: str | Path | None = None,
    target: str | None = None,
    run_profile: bool = True,
    log: Callable[[str], None] = print,
    baseline: str | Path | None = None,
    trust_code: bool = False,
) -> VerifyResult:
    """Compares a candidate with the FP32 reference policy and profiles it.

    Args:
        policy: the FP32 reference policy.
        model: the candidate: an .onnx file for ONNX Runtime runtimes, a checkpoint directory (e.g. a
            pruned one) or None (the reference itself) for `config.runtime == "torch"`.
        evaluation: the evaluation split (never used for calibration).
        config: frames, runtime, threads, closed-loop episodes and env, profile runs.
        policy_sha256: the reference checkpoint's fingerprint, stored in the report (the gate refuses a
            report whose fingerprint differs from the budgets' or the run's).
        checkpoint: the reference checkpoint path, for the record.
        target: the deployment target name, for the record and per-target budgets.
        run_profile: also profile the candidate (batch 1, `config.profile_runs` runs within
            `config.profile_max_seconds`).
        log: where progress lines go.
        baseline: the FP32 reference exported to ONNX (`model_fp32.onnx` of a compress run, or an export
            of the checkpoint). With an .onnx candidate on an ONNX Runtime runtime it is timed interleaved
            with the candidate in the same profile (models[1]) and compared: speedup, size and parameter
            ratios in the report's "baseline" section. None: no comparison (noted in the report).

    Returns:
        The `VerifyResult` with its report dict.

    Raises:
        VlaedgeError: the candidate's inputs or outputs differ from the reference's, a missing model,
            an unknown runtime, an env that breaks the protocol.

    Example:
        >>> result = verify(policy, "runs/cpu-int8/model.onnx", evaluation, VerifyConfig(eval_frames=256))
        >>> print(result.summary())
    """
    from vlaedge.check.report import build_report

    candidate, arithmetic = _open_candidate(policy, model, config, trust_code, target)
    notes = []
    n = min(config.eval_frames, evaluation.num_frames)
    if n < config.eval_frames:
        notes.append(
            f"note: the evaluation split has {n} frames, fewer than verify.eval_frames="
            f"{config.eval_frames}; all were used"
        )
    log(f"verify: reference (torch FP32) vs candidate ({candidate.name}"
        + (f", {arithmetic}" if arithmetic else "") + f") on {n} evaluation frames")
    drift, _, _ = open_loop_drift(policy, candidate, sample_frames(evaluation, n, config.seed), config.seed,
                                  stage_parity_frames=config.stage_parity_frames)
    drift.method = arithmetic
    log(drift.summary())
    if drift.stages:
        from vlaedge.models.stages import StageParity

        log(f"per-stage parity vs the FP32 torch stages on the first {drift.stage_parity_frames} frames "
            "(each stage fed torch's stage inputs):")
        for p in drift.stages:
            log("  " + StageParity(**p).line())
    traces = _traces(policy, candidate, evaluation, config)
    loop = None
    if config.closed_loop_episodes:
        log(
            f"closed loop: {config.closed_loop_episodes} episodes each on {config.env or 'the tabletop task'}"
        )
        loop = compare_closed_loop(
            policy.act,
            RuntimeAct(policy, candidate, model, config.threads),  # sendable to a Ray worker
            config.closed_loop_episodes,
            config.min_episodes,
            config.closed_loop_seed,
            config.env,
            config.env_adapter,
            execute=config.execute,
            success_key=config.success_key,
            max_steps=config.max_steps,
        )
        log(loop.summary())
    comparable = (baseline is not None and model is not None and config.runtime.startswith("ort-")
                  and Path(model).suffix in (".onnx", ".json"))  # .json: a stage plan (issue 23)
    if not comparable:
        notes.append("note: no FP32 baseline compared (it needs an .onnx candidate on an ONNX Runtime "
                     "runtime and the reference exported to ONNX)")
    prof = None
    torch_candidate = getattr(candidate, "policy", policy)
    candidate.close()  # profile opens its own sessions: two copies of a real-size model need not fit
    if run_profile:
        prof = _profile(policy, torch_candidate, model, baseline if comparable else None, evaluation, config)
        log(prof.table())
    base = None
    if comparable:
        from vlaedge.runtimes import qdq_arithmetic

        base = baseline_comparison(model, baseline, prof, qdq_arithmetic(target, model) == "simulated")
    if base is not None:
        log(f"vs FP32 ONNX: {speed_note(base)}")
    report = build_report(
        policy,
        candidate_model=model,
        runtime=candidate.name,
        target=target,
        policy_sha256=policy_sha256,
        checkpoint=checkpoint,
        evaluation=evaluation,
        frames=n,
        drift=drift,
        closed_loop=loop,
        profile=prof,
        traces=traces,
        notes=notes,
        baseline=base,
    )
    return VerifyResult(drift, loop, prof, report, notes, base)


def baseline_comparison(model: str | Path, baseline: str | Path, prof: ProfileReport | None,
                        tensorrt_graph: bool = False) -> dict:
    """The candidate against the FP32 reference ONNX: speed (from one interleaved profile, where the
    candidate is models[0] and the baseline models[1]), file size and stored parameters.

    Args:
        model: the candidate .onnx file.
        baseline: the FP32 reference .onnx file.
        prof: the interleaved profile of both, or None (no latency figures then).
        tensorrt_graph: the candidate is a Q/DQ graph for TensorRT, timed here with Q/DQ fusion off (a
            cause `slower_reasons` names).

    Returns:
        The report's "baseline" dict: model, file_bytes, parameters, candidate_parameters, size_ratio and
        parameter_ratio (candidate / FP32: below 1 is smaller), and with a profile median_ms, p99_ms,
        median_speedup and p99_speedup (FP32 latency / candidate latency: above 1 is faster), slower
        (median speedup below 1) and slower_why (why a slower candidate is slower, `slower_reasons`; None
        when it is not slower).
    """
    ref_bytes, cand_bytes = model_file_bytes(baseline), model_file_bytes(model)
    ref_params, cand_params = model_parameter_count(baseline), model_parameter_count(model)
    out = {
        "model": str(baseline),
        "file_bytes": ref_bytes,
        "parameters": ref_params,
        "candidate_parameters": cand_params,
        "size_ratio": cand_bytes / ref_bytes,
        "parameter_ratio": cand_params / ref_params if ref_params else None,
        "runtime": None,
        "median_ms": None,
        "p99_ms": None,
        "median_speedup": None,
        "p99_speedup": None,
        "slower": None,
        "slower_why": None,
        "interleaved": False,
    }
    if prof is not None and len(prof.models) > 1:
        cand, ref = prof.models[0].latency, prof.models[1].latency
        out.update(runtime=prof.models[1].runtime, median_ms=ref.median_ms, p99_ms=ref.p99_ms,
                   median_speedup=ref.median_ms / cand.median_ms, p99_speedup=ref.p99_ms / cand.p99_ms,
                   slower=ref.median_ms < cand.median_ms, interleaved=prof.interleaved)
        if out["slower"]:
            out["slower_why"] = slower_reasons(ref.median_ms, prof.models[0].runtime, prof.load,
                                               tensorrt_graph=tensorrt_graph)
    return out


SMALL_MS = 2.0  # an FP32 step under this (ms) is dominated by per-node dispatch, not by GEMMs


def slower_reasons(fp32_median_ms: float, runtime: str, load: dict | None = None,
                   int8_dot: bool | None = None, tensorrt_graph: bool = False) -> str:
    """Why a quantized candidate can be slower than its FP32 graph on this machine, in one sentence: the
    known causes that hold here, most likely first.

    Args:
        fp32_median_ms: the FP32 graph's median latency (ms).
        runtime: the candidate's runtime name ("ort-cpu", ...).
        load: the profile's load record (`vlaedge.check.host`), or None.
        int8_dot: whether the CPU has an int8 dot-product instruction (`vlaedge.info.int8_dot_product`;
            looked up when None).
        tensorrt_graph: the candidate is a TensorRT Q/DQ graph timed with Q/DQ fusion off.

    Returns:
        e.g. "this CPU has no int8 dot-product instruction (AVX512-VNNI / AVX-VNNI): ONNX Runtime's INT8
        kernels use AVX2 (vlaedge info lists the CPU features); at 0.97 ms per FP32 step ...".
    """
    from vlaedge.info import int8_dot_product

    int8_dot = int8_dot_product() if int8_dot is None else int8_dot
    reasons = []
    if tensorrt_graph:
        reasons.append("the candidate is a Q/DQ graph for TensorRT, run here with Q/DQ fusion off (as "
                       "TensorRT computes it, in float): its speed on this machine says nothing about the "
                       "engine's; profile the engine on the device (vlaedge profile on the Jetson)")
    if runtime.startswith("ort-cpu") and int8_dot is False and not tensorrt_graph:
        reasons.append("this CPU has no int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX): ONNX "
                       "Runtime's INT8 kernels fall back to AVX2, often no faster than FP32 "
                       "(`vlaedge info` lists the CPU features)")
    if fp32_median_ms < SMALL_MS:
        reasons.append(f"at {fp32_median_ms:.2f} ms per FP32 step the policy is too small for INT8 to pay: "
                       "per-node dispatch and the quantize/dequantize of activations cost about what the "
                       "INT8 matrix products save (INT8 is 1.9x FP32 at 127 M parameters: "
                       "benchmarks/results/scale.md)")
    if load and (load.get("busy_others_share") or 0) > 0.25:
        reasons.append(f"other processes used {load['busy_others_share']:.0%} of the CPU while timing")
    return "; ".join(reasons) or "none of the known causes (small policy, no VNNI, a busy machine) holds " \
        "here: profile the two graphs per node (onnxruntime's enable_profiling) to find the slow nodes"


def _open_candidate(policy: Policy, model, config: VerifyConfig, trust_code: bool = False,
                    target: str | None = None):
    """The candidate runtime and, for a quantized ONNX graph, how it computes the Q/DQ (None otherwise).

    A graph TensorRT runs (a TensorRT target, or a ModelOpt Q/DQ graph with no target) is run with Q/DQ
    fusion off on ort-cpu / ort-cuda (`vlaedge.runtimes.qdq_arithmetic`), so drift and the closed loop
    measure what TensorRT computes, not ONNX Runtime's CPU INT8 kernels; the `cpu` target's graphs run
    on those kernels, as deployed."""
    from vlaedge.runtimes import model_quantization, open_runtime, qdq_arithmetic

    if config.runtime == "torch" and model is not None:
        from vlaedge.models import load_policy
        from vlaedge.runtimes.torch import TorchRuntime

        if not Path(model).is_dir():
            raise VlaedgeError(
                f"candidate: {model} is not a checkpoint directory (runtime torch)",
                "pass a checkpoint directory, or an .onnx file with --runtime ort-cpu",
            )
        # on the reference's device: drift compares like with like (and the profile times torch there)
        candidate = load_policy(model, trust_code=trust_code, device=policy.device.type)
        return TorchRuntime(candidate, config.threads), None
    if model is not None and not Path(model).is_file():
        raise VlaedgeError(f"candidate: {model} does not exist", "pass the exported .onnx file")
    qdq = "fused"
    if model is not None and config.runtime in ("ort-cpu", "ort-cuda"):
        qdq = qdq_arithmetic(target, model)
    runtime = open_runtime(config.runtime, policy, model, config.threads, qdq=qdq)
    quantized = model is not None and config.runtime.startswith("ort-") and model_quantization(model)
    return runtime, (getattr(runtime, "arithmetic", None) if quantized else None)


def _traces(policy: Policy, candidate, evaluation: EpisodeDataset, config: VerifyConfig) -> list[dict]:
    """The first action of every chunk along a few whole evaluation episodes, reference and candidate, in
    batches of the drift's size (80 frames in one batch of a pi0-size policy took more than 19 GB)."""
    from vlaedge.check.drift import BATCH_SIZE

    traces = []
    starts = np.cumsum([0] + [len(ep) for ep in evaluation.episodes])
    episodes = evaluation.episodes[: config.trace_episodes]
    for k, ep in enumerate(progress.track(episodes, "traces: evaluation episodes") if episodes else ()):
        idx = np.arange(int(starts[k]), int(starts[k]) + min(len(ep), MAX_TRACE_FRAMES))
        refs, cands = [], []
        for first in range(0, len(idx), BATCH_SIZE):
            feeds = policy.make_inputs(evaluation.frames(idx[first:first + BATCH_SIZE]),
                                       seed=config.seed + first)
            refs.append(policy.decode(policy.run_torch(feeds))[:, 0])
            out = candidate.infer(feeds)
            cands.append(policy.decode({name: out[name] for name in policy.output_names})[:, 0])
        traces.append(
            {
                "episode": ep.index,
                "instruction": ep.instruction,
                "reference": np.round(np.concatenate(refs), 5).tolist(),
                "candidate": np.round(np.concatenate(cands), 5).tolist(),
            }
        )
    return traces


def _profile(
    policy: Policy, torch_candidate: Policy, model, baseline, evaluation: EpisodeDataset, config: VerifyConfig
) -> ProfileReport:
    from vlaedge.check.profile import profile

    frames = evaluation.frames([0])
    feeds = policy.make_inputs(frames, seed=config.seed)
    control_hz = config.control_hz or evaluation.fps
    if config.runtime == "torch":
        return profile(
            [],
            "torch",
            feeds,
            torch_candidate,
            config.profile_runs,
            config.profile_warmup,
            config.threads,
            control_hz,
            max_seconds=config.profile_max_seconds,
        )
    return profile(
        [model] + ([baseline] if baseline is not None else []),
        config.runtime,
        feeds,
        policy,
        config.profile_runs,
        config.profile_warmup,
        config.threads,
        control_hz,
        max_seconds=config.profile_max_seconds,
    )
