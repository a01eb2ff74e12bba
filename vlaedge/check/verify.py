"""Verification: does a (compressed) policy still act like the original, and how fast does it run?

`verify` runs the FP32 reference and a candidate (any runtime) on the evaluation split with identical
inputs and noise (open-loop drift, `vlaedge.check.drift`), optionally in an environment for N seeded episodes
each (closed loop, `closedloop`), and profiles the candidate (`profile`). The result
carries a `report.json`-ready dict (`vlaedge.check.report`); budgets are judged by `vlaedge.check.gate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaedge.check.closedloop import (
    ClosedLoopReport,
    SuccessRate,
    closed_loop,
    compare_closed_loop,
    wilson_interval,
)
from vlaedge.check.drift import DriftReport, open_loop_drift
from vlaedge.check.profile import ProfileReport
from vlaedge.data import EpisodeDataset, sample_frames
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import Policy
from vlaedge.recipe import VerifyConfig

__all__ = [
    "ClosedLoopReport",
    "DriftReport",
    "SuccessRate",
    "VerifyResult",
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
        run_profile: also profile the candidate (batch 1, `config.profile_runs` runs).
        log: where progress lines go.

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

    candidate = _open_candidate(policy, model, config)
    notes = []
    n = min(config.eval_frames, evaluation.num_frames)
    if n < config.eval_frames:
        notes.append(
            f"note: the evaluation split has {n} frames, fewer than verify.eval_frames="
            f"{config.eval_frames}; all were used"
        )
    log(f"verify: reference (torch FP32) vs candidate ({candidate.name}) on {n} evaluation frames")
    drift, _, _ = open_loop_drift(policy, candidate, sample_frames(evaluation, n, config.seed), config.seed)
    log(drift.summary())
    traces = _traces(policy, candidate, evaluation, config)
    loop = None
    if config.closed_loop_episodes:
        log(
            f"closed loop: {config.closed_loop_episodes} episodes each on {config.env or 'the tabletop task'}"
        )
        loop = compare_closed_loop(
            policy.act,
            _act_fn(policy, candidate),
            config.closed_loop_episodes,
            config.min_episodes,
            config.closed_loop_seed,
            config.env,
            config.env_adapter,
            execute=config.execute,
            max_steps=config.max_steps,
        )
        log(loop.summary())
    prof = None
    if run_profile:
        prof = _profile(policy, candidate, model, evaluation, config)
        log(prof.table())
    candidate.close()
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
    )
    return VerifyResult(drift, loop, prof, report, notes)


def _open_candidate(policy: Policy, model, config: VerifyConfig):
    from vlaedge.runtimes import open_runtime

    if config.runtime == "torch" and model is not None:
        from vlaedge.models import load_policy
        from vlaedge.runtimes.torch import TorchRuntime

        if not Path(model).is_dir():
            raise VlaedgeError(
                f"candidate: {model} is not a checkpoint directory (runtime torch)",
                "pass a checkpoint directory, or an .onnx file with --runtime ort-cpu",
            )
        return TorchRuntime(load_policy(model), config.threads)
    if model is not None and not Path(model).is_file():
        raise VlaedgeError(f"candidate: {model} does not exist", "pass the exported .onnx file")
    return open_runtime(config.runtime, policy, model, config.threads)


def _act_fn(policy: Policy, candidate):
    return lambda frames: policy.decode(candidate.infer(policy.make_inputs(frames)))


def _traces(policy: Policy, candidate, evaluation: EpisodeDataset, config: VerifyConfig) -> list[dict]:
    """The first action of every chunk along a few whole evaluation episodes, reference and candidate."""
    traces, start = [], 0
    starts = np.cumsum([0] + [len(ep) for ep in evaluation.episodes])
    for k, ep in enumerate(evaluation.episodes[: config.trace_episodes]):
        start = int(starts[k])
        idx = np.arange(start, start + min(len(ep), MAX_TRACE_FRAMES))
        frames = evaluation.frames(idx)
        feeds = policy.make_inputs(frames, seed=config.seed)
        ref = policy.decode(policy.run_torch(feeds))[:, 0]
        out = candidate.infer(feeds)
        cand = policy.decode({k2: out[k2] for k2 in policy.output_names})[:, 0]
        traces.append(
            {
                "episode": ep.index,
                "instruction": ep.instruction,
                "reference": np.round(ref, 5).tolist(),
                "candidate": np.round(cand, 5).tolist(),
            }
        )
    return traces


def _profile(
    policy: Policy, candidate, model, evaluation: EpisodeDataset, config: VerifyConfig
) -> ProfileReport:
    from vlaedge.check.profile import profile

    frames = evaluation.frames([0])
    feeds = policy.make_inputs(frames, seed=config.seed)
    control_hz = config.control_hz or evaluation.fps
    if config.runtime == "torch":
        torch_policy = getattr(candidate, "policy", policy)
        return profile(
            [],
            "torch",
            feeds,
            torch_policy,
            config.profile_runs,
            config.profile_warmup,
            config.threads,
            control_hz,
        )
    return profile(
        [model],
        config.runtime,
        feeds,
        policy,
        config.profile_runs,
        config.profile_warmup,
        config.threads,
        control_hz,
    )
