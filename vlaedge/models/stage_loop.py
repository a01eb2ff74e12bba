"""The denoise loop of a stage plan (`vlaedge.models.stages`): its declaration, `DenoiseLoop`, and
`run_loop`, the one loop every backend runs (through `vlaedge.models.stages.run_plan`).

Two updates (`update`):

- "euler" (flow matching: SmolVLA, pi0, GR00T): the stage returns a velocity and the runtime steps
  x_{k+1} = x_k + v(x_k, t_k) * (t_end - t_start) / steps, t_k = t_start + (t_end - t_start) * k / steps;
- "sample" (a diffusion sampler: DDPM, DDIM): the stage returns x_{k+1} itself (the scheduler's step is
  inside its graph), fed t_k = `times[k]` (the scheduler's timesteps; t_start/t_end spacing without it).

Either way the stage may also take the step index k (`index`, int64 (B,)) and per-step slices of policy
inputs (`step_inputs`: stage input <- policy input[:, k], e.g. DDPM's variance noise (B, N - 1, T, A)
fed (B, T, A) at step k). A policy input with fewer slices than steps (`step_input_steps`) feeds zeros
at the steps after its last slice: the stage must give them no weight (DDPM's last step draws nothing and
its noise coefficient is 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlaedge.errors import VlaedgeError

FIX = "see the `stages` section in vlaedge/models/stages.py's docstring"


class DenoiseLoop(BaseModel):
    """The loop the runtime runs around one stage: Euler on its velocity, or its own next sample."""

    model_config = ConfigDict(extra="forbid")

    stage: str  # the stage run `steps` times
    steps: int = Field(ge=1)  # loop iterations (Euler steps, sampler steps)
    init: str  # the policy input holding the start sample x_0 (the seeded noise)
    sample: str = "x"  # the stage input fed the current sample x_k
    time: str = "t"  # the stage input fed t_k, float32 (B,)
    update: Literal["euler", "sample"] = "euler"  # how x_{k+1} is made (module docstring)
    velocity: str = "velocity"  # update "euler": the stage output holding v(x_k, t_k)
    next: str | None = None  # update "sample": the stage output holding x_{k+1}
    t_start: float = 0.0  # t_0 (and, for Euler, the span t_end - t_start)
    t_end: float = 1.0
    times: list[float] | None = None  # update "sample": t_k for each step (len `steps`), e.g. 90, 80, ..., 0
    index: str | None = None  # a stage input fed the step index k, int64 (B,)
    step_inputs: dict[str, str] = {}  # stage input -> policy input (B, M, ...): fed [:, k] at step k
    step_input_steps: int | None = Field(None, ge=1)  # M, the slices of each step input (default `steps`)
    output: str  # the name of x_steps: a policy output or a later stage's input

    @model_validator(mode="after")
    def _consistent(self):
        if self.update == "sample" and self.next is None:
            raise ValueError("update 'sample' reads the next sample from a stage output: name it in `next`")
        if self.update == "sample" and self.velocity != "velocity":  # a plan file writes the default
            raise ValueError(f"velocity {self.velocity!r} is the euler update's output; update 'sample' "
                             "reads `next`")
        if self.update == "euler" and (self.next is not None or self.times is not None):
            raise ValueError(f"{'next' if self.next is not None else 'times'} is for update 'sample'; euler "
                             "steps uniformly from t_start to t_end and reads `velocity`")
        if self.times is not None and len(self.times) != self.steps:
            raise ValueError(f"times has {len(self.times)} values, steps is {self.steps}: give one t a step")
        if self.times is not None and (self.t_start, self.t_end) != (0.0, 1.0):
            raise ValueError(f"times and t_start/t_end ({self.t_start}, {self.t_end}) both given: times "
                             "are the t fed at each step, drop t_start/t_end")
        if self.step_input_steps is not None and (not self.step_inputs or self.step_input_steps > self.steps):
            raise ValueError(f"step_input_steps {self.step_input_steps} needs step_inputs and must be "
                             f"1..steps = {self.steps}")
        names = self.loop_inputs()
        if len(set(names)) != len(names):
            raise ValueError(f"the loop's stage inputs must be distinct, got {names}")
        return self

    def loop_inputs(self) -> list[str]:
        """The stage inputs the loop feeds: sample, time, index, then the step inputs."""
        return [self.sample, self.time, *([self.index] if self.index else []), *self.step_inputs]

    def result(self) -> str:
        """The stage output the update reads: `velocity` (euler) or `next` (sample)."""
        return self.next if self.update == "sample" else self.velocity

    def step_times(self) -> list[float]:
        """t_k for k = 0..steps-1: `times`, else t_start + (t_end - t_start) * k / steps."""
        if self.times is not None:
            return list(self.times)
        span = self.t_end - self.t_start
        return [self.t_start + span * k / self.steps for k in range(self.steps)]


# run_stage(stage, feeds) -> outputs, as `vlaedge.models.stages.StageRunner`
Runner = Callable[[object, dict[str, np.ndarray]], dict[str, np.ndarray]]


def run_loop(loop: DenoiseLoop, stage, run_stage: Runner, env: dict[str, np.ndarray]) -> np.ndarray:
    """Runs the loop's stage `steps` times from x_0 = env[init].

    Args:
        loop: the loop.
        stage: its stage (a `StageGraph`: `.inputs` in call order).
        run_stage: runs one stage on its feeds.
        env: the policy's inputs and earlier stages' outputs, each (B, ...).

    Returns:
        x_steps, float32, the shape of env[init].

    Raises:
        VlaedgeError: a step input whose axis 1 is not `step_input_steps` (or `steps`) long.
    """
    x = np.asarray(env[loop.init], np.float32)
    batch, span = x.shape[0], loop.t_end - loop.t_start
    sources = {n: _step_source(loop, env, n, x.shape[0]) for n in loop.step_inputs}
    for k, t in enumerate(loop.step_times()):
        own = {loop.sample: x, loop.time: np.full((batch,), t, np.float32)}
        if loop.index is not None:
            own[loop.index] = np.full((batch,), k, np.int64)
        for name, source in sources.items():
            own[name] = (np.ascontiguousarray(source[:, k]) if k < source.shape[1]
                         else np.zeros((batch, *source.shape[2:]), source.dtype))
        out = run_stage(stage, {n: own[n] if n in own else env[n] for n in stage.inputs})
        if loop.update == "sample":
            x = np.asarray(out[loop.next], np.float32)
        else:
            x = (x + out[loop.velocity] * span / loop.steps).astype(np.float32)
    return x


def _step_source(loop: DenoiseLoop, env: dict[str, np.ndarray], name: str, batch: int) -> np.ndarray:
    """The policy input step input `name` is sliced from, checked: (B, M, ...) with M its slice count."""
    source, value = loop.step_inputs[name], env[loop.step_inputs[name]]
    want = loop.step_input_steps or loop.steps
    if value.ndim < 2 or value.shape[0] != batch or value.shape[1] != want:
        raise VlaedgeError(f"stages: denoise.step_inputs.{name}: policy input {source!r} has shape "
                           f"{tuple(value.shape)}, the loop slices (B = {batch}, {want}, ...) on axis 1",
                           f"feed {source} with one slice per step on axis 1, or fix "
                           "denoise.step_input_steps; " + FIX)
    return value
