"""The reverse-diffusion samplers LeRobot's Diffusion Policy runs, in torch, with every random draw an input.

LeRobot 0.4.4 samples with Hugging Face diffusers' `DDPMScheduler` or `DDIMScheduler` (diffusers 0.35.2),
built with LeRobot's arguments only, so every other scheduler option is at its default: timestep spacing
"leading", `steps_offset` 0, DDPM `variance_type` "fixed_small", DDIM `eta` 0 and `set_alpha_to_one`,
no thresholding, no zero-SNR rescaling. With those, for N inference steps out of T training steps:

- timesteps t_k = (N - 1 - k) * (T // N), k = 0..N-1 (the last one is 0), and t_k's predecessor is t_{k+1}
  (alpha_bar of the step after the last is 1);
- the U-Net predicts eps (`prediction_type` "epsilon") or x_0 ("sample") from (x_t, t); x_0 is clipped to
  [-`clip_sample_range`, `clip_sample_range`] with `clip_sample`;
- DDPM: x_prev = c0 x_0 + ct x_t (the posterior mean, Ho et al. 2020 eq. 7), plus sqrt(variance) z at every
  step with t > 0, z standard normal: N - 1 draws of (B, horizon, A), the `variance_noise` input here;
- DDIM (eta 0, deterministic): x_prev = sqrt(alpha_bar_prev) x_0 + sqrt(1 - alpha_bar_prev) eps, eps
  re-derived from the unclipped x_0 when the U-Net predicts samples (Song et al. 2021 eq. 12).

Coefficients are computed once, in float32 with diffusers' operations and order. In the single graph they
enter as constants and the loop over steps is a fixed Python loop (unrolled in an ONNX export); per stage
(`DiffusionModel.denoise_step`, the runtime running the loop) one step's coefficients are gathered from a
constant table (`step_table`) by the step index k (`indexed_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULERS = ("DDPM", "DDIM")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTIONS = ("epsilon", "sample")


@dataclass(frozen=True)
class SamplerSpec:
    """The checkpoint's noise-scheduler fields (config.json names in the comments)."""

    scheduler: str  # noise_scheduler_type: "DDPM" or "DDIM"
    train_steps: int  # num_train_timesteps T
    steps: int  # num_inference_steps N (T when null), 1 <= N <= T
    beta_schedule: str  # one of BETA_SCHEDULES
    beta_start: float
    beta_end: float
    prediction: str  # prediction_type: "epsilon" or "sample"
    clip: bool  # clip_sample
    clip_range: float  # clip_sample_range


@dataclass(frozen=True)
class Step:
    """One reverse step's timestep and float32 coefficients (as Python floats: graph constants)."""

    t: int  # the timestep the U-Net is told
    sqrt_alpha: float  # sqrt(alpha_bar_t)
    sqrt_one_minus_alpha: float  # sqrt(1 - alpha_bar_t)
    x0_coef: float  # DDPM: posterior-mean coefficient of x_0; DDIM: sqrt(alpha_bar_prev)
    xt_coef: float  # DDPM: posterior-mean coefficient of x_t; DDIM: sqrt(1 - alpha_bar_prev), on eps
    std: float | None  # DDPM with t > 0: the posterior standard deviation (a noise draw); else None


def betas(spec: SamplerSpec) -> Tensor:
    """(T,) float32 betas of the forward process, as diffusers computes each schedule."""
    t = spec.train_steps
    if spec.beta_schedule == "linear":
        return torch.linspace(spec.beta_start, spec.beta_end, t, dtype=torch.float32)
    if spec.beta_schedule == "scaled_linear":
        return torch.linspace(spec.beta_start**0.5, spec.beta_end**0.5, t, dtype=torch.float32) ** 2
    if spec.beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, t)) * (spec.beta_end - spec.beta_start) + spec.beta_start

    def alpha_bar(x: float) -> float:  # squaredcos_cap_v2: Nichol & Dhariwal's cosine schedule
        return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / t) / alpha_bar(i / t), 0.999) for i in range(t)],
                        dtype=torch.float32)


def timesteps(spec: SamplerSpec) -> list[int]:
    """The N timesteps, descending ("leading" spacing: multiples of T // N, ending at 0)."""
    ratio = spec.train_steps // spec.steps
    return [k * ratio for k in reversed(range(spec.steps))]


def plan(spec: SamplerSpec) -> list[Step]:
    """Every reverse step of `spec`'s sampler, in the order they run."""
    alphas_cumprod = torch.cumprod(1.0 - betas(spec), dim=0)
    ts = timesteps(spec)
    one = torch.tensor(1.0)
    out = []
    for k, t in enumerate(ts):
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[ts[k + 1]] if k + 1 < len(ts) else one
        beta_t = 1 - a_t
        if spec.scheduler == "DDIM":
            x0_coef, xt_coef, std = a_prev**0.5, (1 - a_prev) ** 0.5, None
        else:
            current_alpha = a_t / a_prev
            current_beta = 1 - current_alpha
            x0_coef = (a_prev**0.5 * current_beta) / beta_t
            xt_coef = current_alpha**0.5 * (1 - a_prev) / beta_t
            variance = torch.clamp((1 - a_prev) / (1 - a_t) * current_beta, min=1e-20)
            std = float(variance**0.5) if t > 0 else None
        out.append(Step(t, float(a_t**0.5), float(beta_t**0.5), float(x0_coef), float(xt_coef), std))
    return out


def step_table(spec: SamplerSpec) -> Tensor:
    """(N, 5) float32: each step's sqrt_alpha, sqrt_one_minus_alpha, x0_coef, xt_coef and std (0 where the
    step draws no noise), in step order; the values `plan` gives, so a gathered step equals its `Step`."""
    rows = [[s.sqrt_alpha, s.sqrt_one_minus_alpha, s.x0_coef, s.xt_coef, s.std or 0.0] for s in plan(spec)]
    return torch.tensor(rows, dtype=torch.float32)


def indexed_step(spec: SamplerSpec, table: Tensor, index: Tensor) -> Step:
    """Step `index` of `step_table(spec)` for each batch row, as `reverse_step` takes it.

    Args:
        spec: the sampler.
        table: (N, 5) from `step_table(spec)`.
        index: (B,) int64 step indices k (0 first).

    Returns:
        A `Step` whose coefficients are (B, 1, 1) tensors (t unset: -1). DDPM's `std` is a tensor at every
        step, 0 at the last, so that step's noise input (zeros) adds nothing; DDIM's is None.
    """
    c = table[index][:, :, None, None]  # (B, 5, 1, 1): a Gather, not unrolled
    std = c[:, 4] if spec.scheduler == "DDPM" else None
    return Step(-1, c[:, 0], c[:, 1], c[:, 2], c[:, 3], std)


def noise_draws(spec: SamplerSpec) -> int:
    """How many (B, horizon, A) variance-noise draws one sampling takes (DDPM: N - 1; DDIM: 0)."""
    return sum(s.std is not None for s in plan(spec))


def reverse_step(spec: SamplerSpec, step: Step, x: Tensor, prediction: Tensor,
                 noise: Tensor | None) -> Tensor:
    """x_t -> x_prev for one `step`.

    Args:
        spec: the sampler.
        step: from `plan(spec)`.
        x: (B, horizon, A) float32, the current sample x_t.
        prediction: (B, horizon, A) the U-Net's output for (x, step.t).
        noise: (B, horizon, A) standard normal, required when `step.std` is set (DDPM, t > 0), else unused.

    Returns:
        (B, horizon, A) float32 x_prev.
    """
    if spec.prediction == "epsilon":
        x0 = (x - step.sqrt_one_minus_alpha * prediction) / step.sqrt_alpha
        eps = prediction
    else:
        x0 = prediction
        eps = (x - step.sqrt_alpha * x0) / step.sqrt_one_minus_alpha if spec.scheduler == "DDIM" else None
    if spec.clip:
        x0 = x0.clamp(-spec.clip_range, spec.clip_range)
    if spec.scheduler == "DDIM":
        return step.x0_coef * x0 + step.xt_coef * eps
    x_prev = step.x0_coef * x0 + step.xt_coef * x
    return x_prev if step.std is None else x_prev + step.std * noise
