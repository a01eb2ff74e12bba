"""The tuner's shared state: what every variant is built from (`Work`) and what a run returns
(`TuneResult`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TuneResult:
    """What `tune` measured and chose; truthy when some configuration is within every budget."""

    out: Path
    rows: list[dict]
    chosen: dict | None  # the picked row (FP32's row when nothing quantized is faster)
    reason: str
    recipe: Path | None  # OUT/recipe.yaml; None when nothing is within budget (no recipe is written then)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reproduce: str = ""  # the `vlaedge compress` command line that rebuilds the pick
    counts: dict = field(default_factory=dict)  # declared variants: total, built, from_cache, not_built, ...

    def __bool__(self) -> bool:
        return self.chosen is not None

    def summary(self) -> str:
        """The verdict, what was written and the command that rebuilds the pick; when nothing is within
        budget only what was written (the verdict is then the command's failure line)."""
        files = f"{self.out}/tune.md, tune.html, tune.json"
        if self.recipe is None:
            return f"wrote {files} (no recipe.yaml: nothing is within every budget)"
        return (f"tune: {self.reason}\nwrote {files} and {self.recipe}"
                + (f"\nreproduce the pick: {self.reproduce}" if self.reproduce else ""))

    def to_json(self) -> str:
        """The one JSON object `vlaedge tune --json` prints: {command, verdict ("pass" | "fail"), passed,
        chosen, reason, speedup, drift_mean_pct, drift_p99_pct (% of action range), size_ratio (the pick
        against FP32), variants (counts), reproduce, paths {out, tune_json, tune_md, tune_html, recipe}}; a
        figure not measured (or nothing chosen) is null."""
        pick = self.chosen or {}
        drift = pick.get("drift") or {}
        names = ("tune.json", "tune.md", "tune.html")
        summary = {
            "command": "tune", "verdict": "pass" if self else "fail", "passed": bool(self),
            "chosen": pick.get("name"), "reason": self.reason, "speedup": pick.get("speedup"),
            "drift_mean_pct": drift.get("mean_pct"), "drift_p99_pct": drift.get("p99_pct"),
            "size_ratio": pick.get("size_ratio"), "variants": self.counts,
            "reproduce": self.reproduce or None,
            "paths": {"out": str(self.out), **{n.replace(".", "_"): str(self.out / n) for n in names},
                      "recipe": str(self.recipe) if self.recipe else None},
        }
        return json.dumps(finite(summary), allow_nan=False, default=float)


def finite(value):
    """`value` (nested dicts and lists) with every NaN or infinite float replaced by None: what strict JSON
    holds (tune.json and --json are read by tools that refuse NaN)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Work:
    """What every variant is built from (shared by `build`)."""

    reference: object  # the FP32 policy (drift reference)
    policy: object  # the policy quantized (the reference, or its pruned copy)
    target: object
    base: object  # the recipe's QuantizeConfig
    calib_feeds: list
    check_feeds: dict
    export_cfg: object
    fp32_onnx: Path  # the FP32 export the variants quantize (the pruned policy's when the recipe prunes)
    baseline_onnx: Path  # the unpruned policy's FP32 export: the table's fp32 row, what speedups are against
    folder: Path
    threads: int | None
    drift_budgets: object
    search: FrameSet  # drift frames of the calibration split
    evaluation: FrameSet  # of the evaluation split
    seed: int
    previous: Path | None = None  # the previous run's variants/ to resume from (read, never written)

    def drift(self, runtime):
        """(drift on the search frames, drift on the evaluation frames) of a candidate runtime."""
        return self.search.drift(runtime), self.evaluation.drift(runtime)


class FrameSet:
    """Frames with their feeds and the FP32 reference's actions computed once (the reference is the same
    for every variant), judged the way `vlaedge.check.drift.open_loop_drift` does (same feeds per batch of
    `BATCH_SIZE` frames and seed, so the figures equal verify's)."""

    def __init__(self, policy, frames: dict, seed: int):
        from vlaedge.check.drift import BATCH_SIZE

        self.policy, self.frames = policy, len(frames["instruction"])
        self.feeds = [policy.make_inputs({k: v[s:s + BATCH_SIZE] for k, v in frames.items()}, seed=seed + s)
                      for s in range(0, self.frames, BATCH_SIZE)]
        outs = [policy.run_torch(f) for f in self.feeds]
        self.names = list(outs[0])
        self.actions = np.concatenate([policy.decode(o) for o in outs])
        name = policy.logits_output
        self.logits = np.concatenate([o[name] for o in outs]) if name else None

    def drift(self, runtime):
        from vlaedge.check.drift import action_drift, check_candidate_inputs

        check_candidate_inputs(self.policy, runtime)
        outs = [runtime.infer(f) for f in self.feeds]
        cand = np.concatenate([self.policy.decode({k: o[k] for k in self.names}) for o in outs])
        name = self.policy.logits_output
        logits = np.concatenate([o[name] for o in outs]) if name else None
        return action_drift(self.actions, cand, self.policy.action_spec, self.logits, logits)
