"""A stage plan (stages.json) on ONNX Runtime: one session per stage graph, the plan's denoise loop run
here in numpy (`vlaedge.models.stages.run_plan`, the same loop the torch reference runs: Euler on a
velocity, or a sampler stage returning its next sample, fed t_k, the step index and per-step slices).

`infer(feeds)` takes the policy's inputs and returns its outputs, so verify, drift, profile and gate use
a staged model as they use a single graph. After each call `stage_ms` holds the milliseconds each stage
took in it (the loop's stage: all its steps together) and `stage_calls` how often each ran.

Plans opened together (profile times the compressed plan interleaved with the FP32 one) can share a
`SharedStages`: a stage file both plans hold (a stage kept in FP32, hard-linked into the compressed plan
by `vlaedge.compress.quantize_stages`) is then one session, not two. At pi0 size that stage is the
10 GB prefix, and two prepacked copies of it did not fit in 24 GB.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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
        prepack: let kernels pack their weights (see `vlaedge.runtimes.ort.OrtRuntime`).
        shared: sessions shared with other plans opened with the same `SharedStages` (None: this plan's
            own sessions).

    Raises:
        VlaedgeError: an unreadable plan, a missing stage file, a stage file whose sha256 is not the one
            stages.json records, or a stage ONNX Runtime cannot load.
    """

    def __init__(self, plan_file: str | Path, input_spec: tuple[TensorSpec, ...],
                 output_names: tuple[str, ...], name: str = "ort-cpu", threads: int | None = None,
                 qdq: str = "fused", prepack: bool = True, shared: SharedStages | None = None):
        from vlaedge.runtimes.ort import OrtRuntime

        plan_file = Path(plan_file)
        self.name, self.input_spec, self.output_names = name, input_spec, output_names
        self.qdq = qdq
        self.plan_file = read_plan_file(plan_file)
        check_stage_hashes(plan_file, self.plan_file)  # before any session is built
        self.plan = self.plan_file.plan()
        self.stages: dict[str, OrtRuntime] = {}
        self.shared = shared
        for g in self.plan_file.graphs:
            specs = tuple(TensorSpec(i.name, tuple(i.shape), i.dtype, -1.0, 1.0) for i in g.inputs)
            outputs = tuple(o.name for o in g.outputs)
            if name == "trt":  # the bundle's plan: each stage's engine (model.plan) beside its model.onnx
                from vlaedge.runtimes.trt import TrtRuntime

                self.stages[g.name] = TrtRuntime(plan_file.parent / g.file, specs, outputs)
                continue
            file = plan_file.parent / g.file

            def session(file=file, specs=specs, outputs=outputs) -> OrtRuntime:
                return OrtRuntime(file, specs, outputs, name, threads, qdq, prepack)

            key = (name, threads, qdq, prepack, specs, outputs)
            self.stages[g.name] = shared.open(file, key, session) if shared is not None else session()
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
            if self.shared is not None:
                self.shared.release(rt)
            else:
                rt.close()
        self.stages = {}


class SharedStages:
    """Stage sessions shared between plans: a stage file that is the same file on disk (same device and
    inode for the .onnx and each external data file, as a hard link is) and is opened with the same
    runtime settings gets one session, closed when the last plan holding it closes.

    Example:
        >>> shared = SharedStages()
        >>> int8 = open_runtime("ort-cpu", policy, "run/stages.json", shared=shared)
        >>> fp32 = open_runtime("ort-cpu", policy, "run/stages_fp32.json", shared=shared)  # kept: shared
    """

    def __init__(self):
        self._open: dict[tuple, list] = {}  # key -> [runtime, plans holding it]

    def open(self, file: Path, settings: tuple, make: Callable[[], Runtime]) -> Runtime:
        """The session of `file` with `settings`, made by `make()` the first time."""
        from vlaedge.onnx_file import external_data_files

        ids = tuple((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                    for st in map(os.stat, (file, *external_data_files(file, "profile"))))
        key = (ids, settings)
        if key not in self._open:
            self._open[key] = [make(), 0]
        self._open[key][1] += 1
        return self._open[key][0]

    def release(self, runtime: Runtime) -> None:
        """One plan no longer holds `runtime`; the last one closes it."""
        for key, held in list(self._open.items()):
            if held[0] is runtime:
                held[1] -= 1
                if held[1] == 0:
                    runtime.close()
                    del self._open[key]
                return
        runtime.close()

    def __len__(self) -> int:
        return len(self._open)


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
