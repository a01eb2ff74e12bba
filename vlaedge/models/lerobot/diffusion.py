"""Diffusion Policy as LeRobot 0.4.4 builds it, for inference, without LeRobot, diffusers or torchvision.

Chi et al. 2023, "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion"
(https://arxiv.org/abs/2303.04137). What `build` returns computes LeRobot's
`DiffusionPolicy.predict_action_chunk(batch, noise)` in eval mode, with the sampler's random draws as inputs:

1. each camera image is center-cropped to `crop_shape` (eval mode) and encoded by a ResNet-18 trunk
   (`resnet.py`; GroupNorm with C / 16 groups for `use_group_norm`, else BatchNorm with running
   statistics), a spatial soft-argmax over `spatial_softmax_num_keypoints` keypoints (Finn et al. 2016) and
   a Linear + ReLU: `2 * keypoints` features per camera (one encoder for all cameras, or one each with
   `use_separate_rgb_encoder_per_camera`);
2. the global condition is [state, camera features..., environment state] of every observation step,
   flattened: (B, n_obs_steps * (S + N * 2K + E));
3. starting from `noise`, the DDPM or DDIM sampler (`diffusion_sampler.py`) runs the conditional 1-D U-Net
   (`diffusion_unet.py`) for `num_inference_steps` steps; DDPM adds `variance_noise[:, k]` after step k;
4. the executed slice is returned: actions[:, n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps].

Per stage (the runtime running the sampler loop, `vlaedge.models.stage_loop`): `encode_observation` (1-2),
`denoise_step` (one U-Net call and scheduler step of 3, its coefficients gathered by the step index) and
`executed_actions` (4); looping `denoise_step` over the steps equals `forward`.

Tensor names equal LeRobot's `DiffusionPolicy.diffusion` state dict (checkpoint keys without `diffusion.`).

Inputs (LeRobot's preprocessor output, all float32, normalized): `observation.images.<cam>` for each VISUAL
feature and `observation.state`, plus `observation.environment_state` with an ENV feature, each with the
observation history as axis 1: images (B, n_obs_steps, 3, H, W), vectors (B, n_obs_steps, D), oldest first
(LeRobot's queue order). With `n_obs_steps` 1 the history axis may be left out: (B, 3, H, W), (B, D).
Noise inputs: see `noise_shapes`.

Example:
    >>> net = build(json.loads((folder / "config.json").read_text()), folder)
    >>> batch = {"observation.images.top": img, "observation.state": state, "noise": noise}
    >>> actions = net(batch)  # (B, n_action_steps, A) normalized
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot import diffusion_sampler as sampler
from vlaedge.models.lerobot.diffusion_unet import ConditionalUnet1d
from vlaedge.models.lerobot.features import (
    ACTION_KEY,
    ENV_KEY,
    NOISE_KEY,
    STATE_KEY,
    action_feature,
    camera_keys,
    refuse,
)
from vlaedge.models.lerobot.resnet import FEATURE_CHANNELS, feature_size, resnet18_layers

ROOT = "diffusion"  # DiffusionPolicy holds the network as `self.diffusion`: the checkpoint's key prefix
VARIANCE_NOISE_KEY = "variance_noise"  # (B, N - 1, horizon, A): DDPM's per-step draws, step order
# DiffusionConfig's defaults (LeRobot 0.4.4), for config.json files written before a field existed
_DEFAULTS = {"n_obs_steps": 2, "horizon": 16, "n_action_steps": 8, "vision_backbone": "resnet18",
             "resize_shape": None, "crop_shape": None, "pretrained_backbone_weights": None,
             "use_group_norm": True, "spatial_softmax_num_keypoints": 32,
             "use_separate_rgb_encoder_per_camera": False, "down_dims": [512, 1024, 2048], "kernel_size": 5,
             "n_groups": 8, "diffusion_step_embed_dim": 128, "use_film_scale_modulation": True,
             "noise_scheduler_type": "DDPM", "num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2",
             "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True,
             "clip_sample_range": 1.0, "num_inference_steps": None, "compile_model": False}


@dataclass(frozen=True)
class DiffusionSpec:
    """What the network is built from, read and checked from config.json by `DiffusionSpec.from_config`."""

    cameras: tuple[str, ...]  # VISUAL input keys, in config.json's order
    image_shape: tuple[int, int, int] | None  # (3, H, W), the same for every camera; None without one
    state_dim: int  # `observation.state` size S
    env_dim: int | None  # `observation.environment_state` size E, None without one
    action_dim: int  # `action` size A
    n_obs_steps: int  # observation history length
    horizon: int  # actions denoised per call
    n_action_steps: int  # actions returned (executed), from index n_obs_steps - 1
    crop_shape: tuple[int, int] | None  # eval-mode center crop (H, W), None for none
    group_norm: bool  # GroupNorm (True) or BatchNorm (False) in the ResNet trunk
    keypoints: int  # spatial soft-argmax keypoints K
    separate_encoders: bool  # one image encoder per camera
    down_dims: tuple[int, ...]  # U-Net stage widths
    kernel_size: int  # U-Net convolution kernel
    n_groups: int  # U-Net GroupNorm groups
    step_embed_dim: int  # timestep embedding size
    film_scale: bool  # FiLM scale and bias (else bias only)
    sampler: sampler.SamplerSpec

    @classmethod
    def from_config(cls, config: dict) -> DiffusionSpec:
        """Reads config.json's fields (LeRobot's defaults where absent).

        Raises:
            VlaedgeError: a field this module does not build, naming it and its value.
        """
        c = {**_DEFAULTS, **config}
        inputs, cameras = c.get("input_features") or {}, camera_keys(c)
        env = next(((k, f) for k, f in inputs.items() if f.get("type") == "ENV"), None)
        _check_features(c, inputs, cameras, env)
        _check_supported(c)
        image_shape = tuple(inputs[cameras[0]]["shape"]) if cameras else None
        crop = tuple(c["crop_shape"]) if c["crop_shape"] is not None else None
        _check_sizes(c, image_shape, crop)
        return cls(
            cameras=cameras, image_shape=image_shape, state_dim=inputs[STATE_KEY]["shape"][0],
            env_dim=env[1]["shape"][0] if env else None,
            action_dim=c["output_features"][ACTION_KEY]["shape"][0], n_obs_steps=c["n_obs_steps"],
            horizon=c["horizon"], n_action_steps=c["n_action_steps"], crop_shape=crop,
            group_norm=bool(c["use_group_norm"]), keypoints=c["spatial_softmax_num_keypoints"],
            separate_encoders=bool(c["use_separate_rgb_encoder_per_camera"]),
            down_dims=tuple(c["down_dims"]), kernel_size=c["kernel_size"], n_groups=c["n_groups"],
            step_embed_dim=c["diffusion_step_embed_dim"], film_scale=bool(c["use_film_scale_modulation"]),
            sampler=sampler.SamplerSpec(
                scheduler=c["noise_scheduler_type"], train_steps=c["num_train_timesteps"],
                steps=c["num_inference_steps"] or c["num_train_timesteps"], beta_schedule=c["beta_schedule"],
                beta_start=c["beta_start"], beta_end=c["beta_end"], prediction=c["prediction_type"],
                clip=bool(c["clip_sample"]), clip_range=c["clip_sample_range"]))


def _check_features(c: dict, inputs: dict, cameras: tuple, env: tuple | None) -> None:
    if inputs.get(STATE_KEY, {}).get("type") != "STATE":
        raise refuse("input_features", sorted(inputs), f"Diffusion Policy needs a STATE input {STATE_KEY!r}")
    if not cameras and env is None:
        raise refuse("input_features", sorted(inputs), "Diffusion Policy needs a VISUAL or an ENV input")
    shapes = {k: list(inputs[k]["shape"]) for k in cameras}
    for key, shape in shapes.items():
        if len(shape) != 3 or shape[0] != 3:
            raise refuse(f"input_features.{key}.shape", shape, "images must be (3, H, W)")
        if shape != shapes[cameras[0]]:
            raise refuse(f"input_features.{key}.shape", shape,
                         f"all cameras must have one shape (LeRobot's rule), here {shapes[cameras[0]]}")
    if env is not None and env[0] != ENV_KEY:
        raise refuse("input_features", env[0], f"LeRobot's Diffusion Policy reads ENV from {ENV_KEY!r}")
    action = action_feature(c)
    if action is None or action.get("type") != "ACTION":
        raise refuse("output_features", sorted(c.get("output_features") or {}),
                     f"Diffusion Policy needs an ACTION output named {ACTION_KEY!r}")


_CHOICES = {"vision_backbone": ("resnet18",), "noise_scheduler_type": sampler.SCHEDULERS,
            "beta_schedule": sampler.BETA_SCHEDULES, "prediction_type": sampler.PREDICTIONS,
            "resize_shape": (None,), "compile_model": (False,)}
_WHY = {"resize_shape": "set it to null and resize the images to the feature's H x W before the policy "
                        "(the antialiased resize has no opset-17 ONNX form)",
        "compile_model": "set it to false (torch.compile changes nothing at inference)"}


def _check_supported(c: dict) -> None:
    for field, allowed in _CHOICES.items():
        if c[field] not in allowed:
            raise refuse(field, c[field], _WHY.get(field, f"use one of {', '.join(map(str, allowed))}"))
    if not isinstance(c["spatial_softmax_num_keypoints"], int) or c["spatial_softmax_num_keypoints"] < 1:
        raise refuse("spatial_softmax_num_keypoints", c["spatial_softmax_num_keypoints"],
                     "use a positive number of keypoints (LeRobot cannot build null either)")
    steps, train = c["num_inference_steps"] or c["num_train_timesteps"], c["num_train_timesteps"]
    if not 1 <= steps <= train:
        raise refuse("num_inference_steps", c["num_inference_steps"],
                     f"use 1..num_train_timesteps = {train} (diffusers' limit)")
    if c["horizon"] % 2 ** len(c["down_dims"]):
        raise refuse("horizon", c["horizon"],
                     f"it must be a multiple of 2 ** len(down_dims) = {2 ** len(c['down_dims'])}")
    if not 1 <= c["n_action_steps"] <= c["horizon"] - c["n_obs_steps"] + 1:
        raise refuse("n_action_steps", c["n_action_steps"],
                     f"use 1..horizon - n_obs_steps + 1 = {c['horizon'] - c['n_obs_steps'] + 1}")
    dims = list(c["down_dims"])
    if any(d % c["n_groups"] for d in dims) or dims[0] % 8:
        raise refuse("down_dims", dims, f"each must be a multiple of n_groups = {c['n_groups']} and the "
                     "first of 8 (GroupNorm groups)")


def _check_sizes(c: dict, image_shape: tuple | None, crop: tuple | None) -> None:
    if image_shape is None or crop is None:
        return
    if len(crop) != 2 or not (0 < crop[0] <= image_shape[1] and 0 < crop[1] <= image_shape[2]):
        raise refuse("crop_shape", list(crop), f"it must fit in the images' H x W = {list(image_shape[1:])}")


def noise_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of the sampler's random inputs, all standard normal.

    `noise`: (horizon, A), the start sample. DDPM adds `variance_noise`: (N - 1, horizon, A), the draw
    added after each of the first N - 1 of its N steps (the last step, t = 0, adds none), in step order.

    Raises:
        VlaedgeError: as `build`.
    """
    spec = DiffusionSpec.from_config(config)
    shapes = {NOISE_KEY: (spec.horizon, spec.action_dim)}
    draws = sampler.noise_draws(spec.sampler)
    if draws:
        shapes[VARIANCE_NOISE_KEY] = (draws, spec.horizon, spec.action_dim)
    return shapes


def build(config: dict, root: Path) -> nn.Module:
    """The Diffusion Policy network for a LeRobot `pretrained_model/` folder, in eval mode.

    Args:
        config: parsed `config.json` (`"type": "diffusion"`).
        root: the `pretrained_model/` folder (unused: the backbone's weights are in model.safetensors).

    Returns:
        `DiffusionModel`: `net(batch) -> (B, n_action_steps, A)` float32 normalized actions (see the module
        docstring for `batch`); its state dict keys are the checkpoint's without the `diffusion.` prefix.
        Under `vlaedge.models.weights.empty_parameters()` its parameters are on the meta device.

    Raises:
        VlaedgeError: a config field this module does not build (see `DiffusionSpec.from_config`).
    """
    return DiffusionModel(DiffusionSpec.from_config(config)).eval()


class SpatialSoftmax(nn.Module):
    """Spatial soft-argmax: a 1x1 convolution to K maps, a softmax over each map's pixels, and the expected
    (x, y) under it on a [-1, 1] grid (LeRobot's `SpatialSoftmax`, Finn et al. 2016).

    `pos_grid` (H * W, 2) float32 is in the checkpoint (LeRobot registers it as a persistent buffer);
    it is computed here from numpy's linspace as LeRobot does, then loaded over.
    """

    def __init__(self, channels: int, height: int, width: int, keypoints: int):
        super().__init__()
        self.size, self.keypoints = height * width, keypoints
        self.nets = nn.Conv2d(channels, keypoints, kernel_size=1)
        pos_x, pos_y = np.meshgrid(np.linspace(-1.0, 1.0, width), np.linspace(-1.0, 1.0, height))
        grid = np.stack([pos_x.reshape(-1), pos_y.reshape(-1)], axis=1)
        self.register_buffer("pos_grid", torch.from_numpy(grid).float())

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, K, 2) keypoints (x, y)."""
        attention = F.softmax(self.nets(features).reshape(-1, self.size), dim=-1)  # (B * K, H * W)
        return (attention @ self.pos_grid).view(-1, self.keypoints, 2)


class RgbEncoder(nn.Module):
    """Center crop -> ResNet-18 trunk -> spatial soft-argmax -> Linear -> ReLU (LeRobot's
    `DiffusionRgbEncoder` in eval mode): (B, 3, H, W) -> (B, 2K)."""

    def __init__(self, spec: DiffusionSpec):
        super().__init__()
        self.crop = None  # (top, left, height, width) of the eval-mode center crop, static for export
        if spec.crop_shape is not None:  # torchvision's center_crop: offsets rounded half to even
            (h, w), (crop_h, crop_w) = spec.image_shape[1:], spec.crop_shape
            self.crop = (int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0)), crop_h, crop_w)
        height, width = spec.crop_shape or spec.image_shape[1:]
        norm = (lambda c: nn.GroupNorm(c // 16, c)) if spec.group_norm else nn.BatchNorm2d
        self.backbone = nn.Sequential(*resnet18_layers(norm).values())
        self.pool = SpatialSoftmax(FEATURE_CHANNELS, *feature_size(height, width), spec.keypoints)
        self.feature_dim = 2 * spec.keypoints
        self.out = nn.Linear(self.feature_dim, self.feature_dim)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) float32 -> (B, 2K)."""
        if self.crop is not None:
            top, left, h, w = self.crop
            x = x[..., top : top + h, left : left + w]
        return self.relu(self.out(torch.flatten(self.pool(self.backbone(x)), start_dim=1)))


class DiffusionModel(nn.Module):
    """The network of LeRobot's DiffusionPolicy (`policy.diffusion`), inference only.

    Args:
        spec: from `DiffusionSpec.from_config(config.json)`.

    `forward(batch)` -> (B, n_action_steps, A) float32 normalized actions; see the module docstring.
    """

    def __init__(self, spec: DiffusionSpec):
        super().__init__()
        self.spec = spec
        self.steps = sampler.plan(spec.sampler)
        self.register_buffer("step_table", sampler.step_table(spec.sampler), persistent=False)  # (N, 5)
        per_step = spec.state_dim + (spec.env_dim or 0)
        if spec.cameras:
            if spec.separate_encoders:
                self.rgb_encoder = nn.ModuleList(RgbEncoder(spec) for _ in spec.cameras)
            else:
                self.rgb_encoder = RgbEncoder(spec)
            per_step += 2 * spec.keypoints * len(spec.cameras)
        self.unet = ConditionalUnet1d(spec.action_dim, per_step * spec.n_obs_steps, spec.down_dims,
                                      spec.kernel_size, spec.n_groups, spec.step_embed_dim, spec.film_scale)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch (see the module docstring) -> (B, n_action_steps, A) normalized actions."""
        cond = self.encode_observation(batch)
        x = _required(batch, NOISE_KEY, (self.spec.horizon, self.spec.action_dim))
        n_draws = sum(s.std is not None for s in self.steps)
        draws = _required(batch, VARIANCE_NOISE_KEY, (n_draws, *x.shape[1:])) if n_draws else None
        k = 0
        for step in self.steps:
            t = torch.full((1,), step.t, dtype=torch.long, device=x.device)
            embed = self.unet.step_embedding(t).expand(x.shape[0], -1)  # (B, E), one row computed
            prediction = self.unet(x, embed, cond)
            x = sampler.reverse_step(self.spec.sampler, step, x, prediction,
                                     draws[:, k] if step.std is not None else None)
            k += step.std is not None
        return self.executed_actions(x)

    def denoise_step(self, x: Tensor, timestep: Tensor, index: Tensor, global_cond: Tensor,
                     variance_noise: Tensor | None = None) -> Tensor:
        """One sampler step, as a stage the runtime loops: the U-Net at `timestep`, then the scheduler step
        whose coefficients row `index` of `step_table` holds.

        Args:
            x: (B, horizon, A) float32, the sample x_k (k = 0: `noise`).
            timestep: (B,) float32, the scheduler's timestep t_k (`sampler.timesteps`, e.g. 90, 80, ..., 0).
            index: (B,) int64, the step k.
            global_cond: (B, G) from `encode_observation`.
            variance_noise: DDPM only, (B, horizon, A): `variance_noise[:, k]`, zeros at the last step.

        Returns:
            (B, horizon, A) float32 x_{k+1}.
        """
        prediction = self.unet(x, self.unet.step_embedding(timestep), global_cond)
        step = sampler.indexed_step(self.spec.sampler, self.step_table, index)
        return sampler.reverse_step(self.spec.sampler, step, x, prediction, variance_noise)

    def executed_actions(self, x: Tensor) -> Tensor:
        """(B, horizon, A) sampled actions -> (B, n_action_steps, A), from index n_obs_steps - 1."""
        start = self.spec.n_obs_steps - 1
        return x[:, start : start + self.spec.n_action_steps]

    def encode_observation(self, batch: dict[str, Tensor]) -> Tensor:
        """Normalized observations (see the module docstring) -> the global condition
        (B, n_obs_steps * (S + N * 2K + E)): per step [state, cameras..., env], steps oldest first."""
        spec = self.spec
        feats = [self._history(batch, STATE_KEY, 1)]  # (B, n_obs, S)
        if spec.cameras:
            images = [self._history(batch, key, 3) for key in spec.cameras]  # (B, n_obs, 3, H, W) each
            if spec.separate_encoders:
                for encoder, image in zip(self.rgb_encoder, images, strict=True):
                    out = encoder(image.flatten(0, 1))  # (B * n_obs, 2K)
                    feats.append(out.reshape(-1, spec.n_obs_steps, out.shape[-1]))
            else:
                stacked = torch.stack(images, dim=2).flatten(0, 2)  # (B * n_obs * N, 3, H, W)
                out = self.rgb_encoder(stacked)  # (B * n_obs * N, 2K)
                feats.append(out.reshape(-1, spec.n_obs_steps, len(spec.cameras) * out.shape[-1]))
        if spec.env_dim is not None:
            feats.append(self._history(batch, ENV_KEY, 1))
        return torch.cat(feats, dim=-1).flatten(start_dim=1)

    def _history(self, batch: dict[str, Tensor], key: str, feature_dims: int) -> Tensor:
        """batch[key] as (B, n_obs_steps, *feature): the history axis added when n_obs_steps is 1 and the
        input has none."""
        x = _required(batch, key, None)
        n = self.spec.n_obs_steps
        if x.dim() == feature_dims + 1 and n == 1:
            return x.unsqueeze(1)
        if x.dim() != feature_dims + 2 or x.shape[1] != n:
            raise VlaedgeError(
                f"lerobot diffusion: input {key!r} has shape {tuple(x.shape)}, expected "
                f"(B, n_obs_steps = {n}, ...feature)" + (" or (B, ...feature)" if n == 1 else ""),
                "stack the last n_obs_steps observations on axis 1, oldest first")
        return x


def _required(batch: dict[str, Tensor], key: str, shape: tuple | None) -> Tensor:
    """batch[key], checked to be (B, *shape) when `shape` is given."""
    if key not in batch:
        raise VlaedgeError(f"lerobot diffusion: input {key!r} is missing (got {sorted(batch)})",
                           "feed every input the network names (noise: standard normal, see noise_shapes)")
    x = batch[key]
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise VlaedgeError(f"lerobot diffusion: input {key!r} has shape {tuple(x.shape)}, expected "
                           f"(B, {', '.join(map(str, shape))})", "see noise_shapes(config)")
    return x
