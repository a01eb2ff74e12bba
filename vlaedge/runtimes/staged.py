"""A stage plan (stages.json) on ONNX Runtime: one session per stage graph, the plan's denoise loop run
here in numpy (`vlaedge.models.stages.run_plan`, the same loop the torch reference runs: Euler on a
velocity, or a sampler stage returning its next sample, fed t_k, the step index and per-step slices).

`infer(feeds)` takes the policy's inputs and returns its outputs, so verify, drift, profile and gate use
a staged model as they use a single graph. After each call `stage_ms` holds the milliseconds each stage
took in it (the loop's stage: all its steps together) and `stage_calls` how often each ran.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vlaedge.models.base import TensorSpec
from vlaedge.models.stages import StageGraph, check_stage_hashes, read_plan_file, run_plan
from vlaedge.runtimes.base import Runtime


class StagedRuntime(Runtime):
    """A stage plan on an ONNX Runtime execution provider.

    Args:
        plan_file: the stages.json; its stage graphs are read relative to it.
        input_spec: the policy's inputs (checked once per call, in `Runtime.infer`).
        output_names: the policy's outputs to return.
        name: "ort-cpu", "ort-cuda", "ort-trt", or "trt" (each stage's engine beside its ONNX).
        threads: intra-op threads of every stage's session.
        qdq: how every stage computes Q/DQ ("fused" or "simulated", see `vlaedge.runtimes.ort`).

    Raises:
        VlaedgeError: an unreadable plan, a missing stage file, a stage file whose sha256 is not the one
            stages.json records, or a stage ONNX Runtime cannot load.
    """

    def __init__(self, plan_file: str | Path, input_spec: tuple[TensorSpec, ...],
                 output_names: tuple[str, ...], name: str = "ort-cpu", threads: int | None = None,
                 qdq: str = "fused", prepack: bool = True):
        from vlaedge.runtimes.ort import OrtRuntime

        plan_file = Path(plan_file)
        self.name, self.input_spec, self.output_names = name, input_spec, output_names
        self.qdq = qdq
        self.plan_file = read_plan_file(plan_file)
        check_stage_hashes(plan_file, self.plan_file)  # before any session is built
        self.plan = self.plan_file.plan()
        self.stages: dict[str, OrtRuntime] = {}
        for g in self.plan_file.graphs:
            specs = tuple(TensorSpec(i.name, tuple(i.shape), i.dtype, -1.0, 1.0) for i in g.inputs)
            outputs = tuple(o.name for o in g.outputs)
            if name == "trt":  # the bundle's plan: each stage's engine (model.plan) beside its model.onnx
                from vlaedge.runtimes.trt import TrtRuntime

                self.stages[g.name] = TrtRuntime(plan_file.parent / g.file, specs, outputs)
                continue
            self.stages[g.name] = OrtRuntime(plan_file.parent / g.file, specs, outputs, name, threads, qdq,
                                             prepack)
        self.session = PlanInputs(self)  # get_inputs() of the policy inputs, as a session gives them
        self.stage_ms: dict[str, float] = {}
        self.stage_calls: dict[str, int] = {}

    @property
    def arithmetic(self) -> str:
        """How every stage computes Q/DQ, in words (`vlaedge.runtimes.ort.qdq_label`)."""
        from vlaedge.runtimes.ort import qdq_label

        return qdq_label(self.qdq, self.name)

    def run_stage(self, stage: StageGraph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One stage on its feeds (checked against the stage's inputs), timed into `stage_ms`."""
        start = time.perf_counter_ns()
        out = self.stages[stage.name].infer(feeds)
        ms = (time.perf_counter_ns() - start) / 1e6
        self.stage_ms[stage.name] = self.stage_ms.get(stage.name, 0.0) + ms
        self.stage_calls[stage.name] = self.stage_calls.get(stage.name, 0) + 1
        return out

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.stage_ms, self.stage_calls = {}, {}
        return run_plan(self.plan, self.run_stage, feeds, self.output_names)

    def close(self) -> None:
        for rt in self.stages.values():
            rt.close()


class PlanInputs:
    """What readers of `runtime.session.get_inputs()` need from a plan: each policy input's metadata (name,
    type, shape) as the stage graph that reads it declares it (the loop's init: the loop stage's sample); a
    policy input only the loop slices per step (DDPM's variance noise) as the policy declares it."""

    def __init__(self, runtime: StagedRuntime):
        self.runtime = runtime

    def get_inputs(self) -> list:
        from types import SimpleNamespace

        rt, found = self.runtime, {}
        d = rt.plan.denoise
        for g in rt.plan.graphs:
            session = getattr(rt.stages[g.name], "session", None)  # None: a TensorRT engine
            for arg in session.get_inputs() if session is not None else []:
                name = d.init if d is not None and g.name == d.stage and arg.name == d.sample else arg.name
                found.setdefault(name, SimpleNamespace(name=name, type=arg.type, shape=arg.shape))
        types = {"uint8": "tensor(uint8)", "int64": "tensor(int64)", "int32": "tensor(int32)",
                 "float32": "tensor(float)", "float16": "tensor(float16)"}
        return [found.get(s.name) or SimpleNamespace(name=s.name, type=types.get(s.dtype, s.dtype),
                                                     shape=list(s.shape)) for s in rt.input_spec]
