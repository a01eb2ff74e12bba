"""Diffusion Policy's denoiser: a 1-D convolutional U-Net over the action sequence, FiLM-conditioned.

Chi et al. 2023, "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion"
(https://arxiv.org/abs/2303.04137), as LeRobot 0.4.4 builds it (`DiffusionConditionalUnet1d`), with the
same module tree and therefore the same tensor names:

- `diffusion_step_encoder`: sinusoidal embedding of the timestep (no tensors, index 0), Linear, Mish,
  Linear (indices 1 and 3);
- `down_modules.<i>`: two residual blocks and a stride-2 convolution (the last stage keeps its length:
  an identity, no tensors); `mid_modules`: two residual blocks; `up_modules.<i>`: two residual blocks
  reading the skip connection, and a stride-2 transposed convolution (every up stage has one);
- `final_conv`: Conv1d-GroupNorm(8)-Mish, then a 1x1 convolution to the action size.

Each residual block is conditioned on [timestep embedding, global condition] through FiLM: a per-channel
scale and bias (`use_film_scale_modulation`) or a bias only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalPosEmb(nn.Module):
    """Transformer sinusoidal embedding of a scalar: [sin(t w_i), cos(t w_i)] with
    w_i = exp(-i log(10000) / (dim / 2 - 1)), i < dim / 2; computed as LeRobot does (float32)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        """t (B,) timesteps (int or float) -> (B, dim) float32."""
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        angle = t.unsqueeze(-1) * freq.unsqueeze(0)
        return torch.cat((angle.sin(), angle.cos()), dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d ('same' padding) -> GroupNorm -> Mish, as `block.0`, `block.1`, `block.2`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, T) -> (B, out_channels, T)."""
        return self.block(x)


class ResidualBlock1d(nn.Module):
    """Two `Conv1dBlock`s with FiLM conditioning between them and a (1x1 convolution) residual.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        cond_dim: size of the conditioning vector.
        kernel_size: of both convolutions.
        n_groups: GroupNorm groups.
        film_scale: FiLM with scale and bias (True) or bias only (False).
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int,
                 film_scale: bool):
        super().__init__()
        self.film_scale = film_scale
        self.out_channels = out_channels
        self.conv1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        film = out_channels * 2 if film_scale else out_channels  # FiLM (scale and) bias per channel
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film))
        self.conv2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.residual_conv = (nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels
                              else nn.Identity())

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, in_channels, T), cond (B, cond_dim) -> (B, out_channels, T)."""
        out = self.conv1(x)
        film = self.cond_encoder(cond).unsqueeze(-1)  # (B, out_channels [* 2], 1)
        if self.film_scale:
            out = film[:, : self.out_channels] * out + film[:, self.out_channels :]
        else:
            out = out + film
        return self.conv2(out) + self.residual_conv(x)


class ConditionalUnet1d(nn.Module):
    """LeRobot's `DiffusionConditionalUnet1d` (see the module docstring).

    Args:
        action_dim: channels of the denoised sequence A.
        global_cond_dim: size of the observation conditioning (all observation steps, flattened).
        down_dims: channels of each stage; the sequence halves after each stage but the last.
        kernel_size: of the residual blocks' convolutions.
        n_groups: GroupNorm groups of the residual blocks (the final block uses 8, as LeRobot's).
        step_embed_dim: timestep embedding size.
        film_scale: FiLM with scale and bias, else bias only.
    """

    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: tuple[int, ...], kernel_size: int,
                 n_groups: int, step_embed_dim: int, film_scale: bool):
        super().__init__()
        e = step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(e), nn.Linear(e, e * 4), nn.Mish(), nn.Linear(e * 4, e))
        cond = e + global_cond_dim

        def block(c_in: int, c_out: int) -> ResidualBlock1d:
            return ResidualBlock1d(c_in, c_out, cond, kernel_size, n_groups, film_scale)

        in_out = [(action_dim, down_dims[0]), *zip(down_dims[:-1], down_dims[1:], strict=True)]
        self.down_modules = nn.ModuleList(
            nn.ModuleList([block(c_in, c_out), block(c_out, c_out),
                           nn.Conv1d(c_out, c_out, 3, 2, 1) if i < len(in_out) - 1 else nn.Identity()])
            for i, (c_in, c_out) in enumerate(in_out))
        self.mid_modules = nn.ModuleList([block(down_dims[-1], down_dims[-1]) for _ in range(2)])
        self.up_modules = nn.ModuleList(
            nn.ModuleList([block(c_in * 2, c_out), block(c_out, c_out),  # c_in * 2: the skip concatenated
                           nn.ConvTranspose1d(c_out, c_out, 4, 2, 1)])
            for c_out, c_in in reversed(in_out[1:]))
        self.final_conv = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size),
                                        nn.Conv1d(down_dims[0], action_dim, 1))

    def step_embedding(self, t: Tensor) -> Tensor:
        """t (B,) timesteps -> (B, step_embed_dim)."""
        return self.diffusion_step_encoder(t)

    def forward(self, x: Tensor, step_embed: Tensor, global_cond: Tensor) -> Tensor:
        """x (B, T, A) noisy actions, step_embed (B, E) from `step_embedding`, global_cond (B, G)
        -> (B, T, A) the prediction (noise or sample, per the checkpoint's `prediction_type`)."""
        cond = torch.cat([step_embed, global_cond], dim=-1)
        x = x.transpose(1, 2)  # (B, A, T): channels first for the convolutions
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, cond)
        for res1, res2, up in self.up_modules:
            x = up(res2(res1(torch.cat((x, skips.pop()), dim=1), cond), cond))
        return self.final_conv(x).transpose(1, 2)
