"""ACT (Action Chunking Transformer) as LeRobot 0.4.4 builds it, for inference, without LeRobot.

Zhao et al. 2023, "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware"
(https://arxiv.org/abs/2304.13705). What `build` returns computes LeRobot's
`ACTPolicy.predict_action_chunk(batch)` in eval mode:

1. each camera image (B, 3, H, W) goes through a ResNet-18 trunk (`resnet.py`, frozen batch norm) to
   (B, 512, H/32, W/32), then a 1x1 convolution to `dim_model`; every feature pixel is one token, with a
   fixed 2-D sinusoidal position embedding (DETR style, positions 1..H scaled to (0, 2 pi]);
2. the transformer encoder reads [latent, robot state, environment state, camera pixels...] tokens; the
   latent is the projection of zeros (at inference the VAE's latent is its prior mean) and the 1-D tokens
   have learned position embeddings; keys and queries get the position embedding added in every layer;
3. the decoder cross-attends from `chunk_size` zero queries (learned position embeddings, DETR object
   queries) to the encoder output; a linear head gives (B, chunk_size, action_dim) normalized actions.

The VAE encoder (`vae_encoder*`, only used in training) is built so that the state dict matches the
checkpoint, and never runs. Tensor names equal LeRobot's `ACTPolicy.model` state dict (checkpoint keys with
the `model.` prefix removed). Sequences are (S, B, D) as in LeRobot (`nn.MultiheadAttention`, not
batch-first). All cameras of one shape go through the trunk as one batch.

Example:
    >>> net = build(json.loads((folder / "config.json").read_text()), folder)
    >>> actions = net({"observation.images.top": img, "observation.state": state})  # (B, chunk, A)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaedge.models.lerobot.features import (
    ACTION_KEY,
    ENV_KEY,
    STATE_KEY,
    action_feature,
    camera_keys,
    refuse,
)
from vlaedge.models.lerobot.resnet import FEATURE_CHANNELS, FrozenBatchNorm2d, feature_size, resnet18_layers

ROOT = "model"  # ACTPolicy holds the network as `self.model`: the checkpoint's key prefix
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}
# ACTConfig's defaults (LeRobot 0.4.4), for config.json files written before a field existed
_DEFAULTS = {"n_obs_steps": 1, "chunk_size": 100, "vision_backbone": "resnet18",
             "replace_final_stride_with_dilation": False, "pre_norm": False, "dim_model": 512, "n_heads": 8,
             "dim_feedforward": 3200, "feedforward_activation": "relu", "n_encoder_layers": 4,
             "n_decoder_layers": 1, "use_vae": True, "latent_dim": 32, "n_vae_encoder_layers": 4,
             "temporal_ensemble_coeff": None}


@dataclass(frozen=True)
class ActSpec:
    """What the network is built from, read and checked from config.json by `ActSpec.from_config`."""

    cameras: tuple[str, ...]  # VISUAL input keys, in config.json's order
    image_shapes: tuple[tuple[int, int, int], ...]  # (3, H, W) per camera
    state_dim: int | None  # `observation.state` (STATE) size, None without one
    env_dim: int | None  # `observation.environment_state` (ENV) size, None without one
    action_dim: int  # `action` (ACTION) size
    chunk_size: int  # actions predicted per call
    dim_model: int  # transformer width D
    n_heads: int  # attention heads
    dim_feedforward: int  # feed-forward hidden width
    activation: str  # feed-forward activation: relu / gelu
    n_encoder_layers: int
    n_decoder_layers: int
    pre_norm: bool  # LayerNorm before (True) or after (False) each sub-block
    use_vae: bool  # VAE encoder tensors present in the checkpoint
    latent_dim: int  # VAE latent size (the latent token is the projection of zeros)
    n_vae_encoder_layers: int

    @classmethod
    def from_config(cls, config: dict) -> ActSpec:
        """Reads config.json's fields (LeRobot's defaults where absent).

        Raises:
            VlaedgeError: a field this module does not build, naming it and its value.
        """
        c = {**_DEFAULTS, **config}
        _check_supported(c)
        inputs, cameras, action = c.get("input_features") or {}, camera_keys(c), action_feature(c)
        shapes = tuple(tuple(inputs[k]["shape"]) for k in cameras)
        state = inputs.get(STATE_KEY) if inputs.get(STATE_KEY, {}).get("type") == "STATE" else None
        env = next(((k, f) for k, f in inputs.items() if f.get("type") == "ENV"), None)
        _check_features(c, cameras, shapes, env, action)
        return cls(
            cameras=cameras, image_shapes=shapes, state_dim=state["shape"][0] if state else None,
            env_dim=env[1]["shape"][0] if env else None, action_dim=action["shape"][0],
            chunk_size=c["chunk_size"], dim_model=c["dim_model"], n_heads=c["n_heads"],
            dim_feedforward=c["dim_feedforward"], activation=c["feedforward_activation"],
            n_encoder_layers=c["n_encoder_layers"], n_decoder_layers=c["n_decoder_layers"],
            pre_norm=bool(c["pre_norm"]), use_vae=bool(c["use_vae"]), latent_dim=c["latent_dim"],
            n_vae_encoder_layers=c["n_vae_encoder_layers"])


def _check_supported(c: dict) -> None:
    if c["vision_backbone"] != "resnet18":
        raise refuse("vision_backbone", c["vision_backbone"], "only resnet18 ACT checkpoints load")
    if c["replace_final_stride_with_dilation"]:
        raise refuse("replace_final_stride_with_dilation", c["replace_final_stride_with_dilation"],
                     "resnet18 has no dilated variant (LeRobot cannot build it either); set it to false")
    if c["feedforward_activation"] not in _ACTIVATIONS:
        raise refuse("feedforward_activation", c["feedforward_activation"],
                     f"use one of {', '.join(_ACTIVATIONS)}")
    if c["n_obs_steps"] != 1:
        raise refuse("n_obs_steps", c["n_obs_steps"], "ACT takes one observation step; set it to 1")
    if c["temporal_ensemble_coeff"] is not None:
        raise refuse("temporal_ensemble_coeff", c["temporal_ensemble_coeff"],
                     "vlaedge runs the predicted chunk; set it to null (n_action_steps > 1)")
    if c["dim_model"] % c["n_heads"]:
        raise refuse("dim_model", c["dim_model"], f"it must be a multiple of n_heads = {c['n_heads']}")


def _check_features(c: dict, cameras: tuple, shapes: tuple, env: tuple | None, action: dict | None) -> None:
    if not cameras and env is None:
        raise refuse("input_features", sorted(c.get("input_features") or {}),
                     "ACT needs at least one VISUAL input or an ENV input")
    for key, shape in zip(cameras, shapes, strict=True):
        if len(shape) != 3 or shape[0] != 3:
            raise refuse(f"input_features.{key}.shape", list(shape), "images must be (3, H, W)")
    if cameras and c["dim_model"] % 4:
        raise refuse("dim_model", c["dim_model"], "the 2-D image position embedding needs a multiple of 4")
    if env is not None and env[0] != ENV_KEY:
        raise refuse("input_features", env[0], f"LeRobot's ACT reads the ENV input from {ENV_KEY!r}")
    if action is None or action.get("type") != "ACTION":
        raise refuse("output_features", sorted(c.get("output_features") or {}),
                     f"ACT needs an ACTION output named {ACTION_KEY!r}")


def noise_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """ACT draws no noise at inference: {}."""
    return {}


def build(config: dict, root: Path) -> nn.Module:
    """The ACT network for a LeRobot `pretrained_model/` folder, in eval mode.

    Args:
        config: parsed `config.json` (`"type": "act"`).
        root: the `pretrained_model/` folder (unused: ACT needs no other file).

    Returns:
        `ACT`: `net(batch) -> (B, chunk_size, action_dim)` float32 normalized actions; its state dict
        keys are the checkpoint's without the `model.` prefix. Under
        `vlaedge.models.weights.empty_parameters()` its parameters are on the meta device.

    Raises:
        VlaedgeError: a config field this module does not build (see `ActSpec.from_config`).
    """
    return ACT(ActSpec.from_config(config)).eval()


def sinusoid_1d(n_positions: int, dim: int) -> Tensor:
    """Attention-is-all-you-need position table: (n_positions, dim) float32, sin on even, cos on odd
    channels, computed in float64 as LeRobot does."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim)
    angle[:, 0::2] = angle[:, 0::2].sin()
    angle[:, 1::2] = angle[:, 1::2].cos()
    return angle.float()


def sinusoid_2d(height: int, width: int, dim: int) -> Tensor:
    """LeRobot's (DETR's) 2-D position embedding of an (H, W) feature map: (H * W, dim) float32, row-major
    pixels, channels [y sin/cos interleaved (dim / 2), x sin/cos interleaved (dim / 2)].

    Positions are 1..H (1..W) scaled by 2 pi / (H + 1e-6); computed with LeRobot's float32 operations."""
    half = dim // 2
    ones = torch.ones(1, height, width)
    y = ones.cumsum(1, dtype=torch.float32)
    x = ones.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    freq = 10000 ** (2 * (torch.arange(half, dtype=torch.float32) // 2) / half)
    x, y = x.unsqueeze(-1) / freq, y.unsqueeze(-1) / freq  # (1, H, W, half)
    emb_x = torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(3)
    emb_y = torch.stack((y[..., 0::2].sin(), y[..., 1::2].cos()), dim=-1).flatten(3)
    return torch.cat((emb_y, emb_x), dim=3).reshape(height * width, dim)


def _attention(spec: ActSpec) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(spec.dim_model, spec.n_heads)


class _Layer(nn.Module):
    """What encoder and decoder layers share: the feed-forward block (linear1 -> activation -> linear2)
    and the norm placement."""

    def __init__(self, spec: ActSpec):
        super().__init__()
        self.linear1 = nn.Linear(spec.dim_model, spec.dim_feedforward)
        self.linear2 = nn.Linear(spec.dim_feedforward, spec.dim_model)
        self.activation = _ACTIVATIONS[spec.activation]
        self.pre_norm = spec.pre_norm

    def feed_forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)."""
        return self.linear2(self.activation(self.linear1(x)))


class EncoderLayer(_Layer):
    """Self-attention and feed-forward, each with a residual and a LayerNorm (after, or before with
    `pre_norm`); the position embedding is added to queries and keys, not values."""

    def __init__(self, spec: ActSpec):
        super().__init__(spec)
        self.self_attn = _attention(spec)
        self.norm1 = nn.LayerNorm(spec.dim_model)
        self.norm2 = nn.LayerNorm(spec.dim_model)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x (S, B, D), pos (S, 1, D) -> (S, B, D)."""
        h = self.norm1(x) if self.pre_norm else x
        x = x + self.self_attn(h + pos, h + pos, h, need_weights=False)[0]
        if self.pre_norm:
            return x + self.feed_forward(self.norm2(x))
        x = self.norm1(x)
        return self.norm2(x + self.feed_forward(x))


class DecoderLayer(_Layer):
    """Self-attention over the queries, cross-attention to the encoder output, feed-forward; each with a
    residual and a LayerNorm (after, or before with `pre_norm`)."""

    def __init__(self, spec: ActSpec):
        super().__init__(spec)
        self.self_attn = _attention(spec)
        self.multihead_attn = _attention(spec)
        self.norm1 = nn.LayerNorm(spec.dim_model)
        self.norm2 = nn.LayerNorm(spec.dim_model)
        self.norm3 = nn.LayerNorm(spec.dim_model)

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor, memory_pos: Tensor) -> Tensor:
        """x (T, B, D) queries, memory (S, B, D), pos (T, 1, D), memory_pos (S, 1, D) -> (T, B, D)."""
        h = self.norm1(x) if self.pre_norm else x
        x = x + self.self_attn(h + pos, h + pos, h, need_weights=False)[0]
        h = self.norm2(x) if self.pre_norm else self.norm1(x)
        x = (x if self.pre_norm else h) + self.multihead_attn(
            h + pos, memory + memory_pos, memory, need_weights=False)[0]
        h = self.norm3(x) if self.pre_norm else self.norm2(x)
        x = (x if self.pre_norm else h) + self.feed_forward(h)
        return x if self.pre_norm else self.norm3(x)


class Encoder(nn.Module):
    """`n_layers` encoder layers, then a LayerNorm with `pre_norm` (identity otherwise)."""

    def __init__(self, spec: ActSpec, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(spec) for _ in range(n_layers))
        self.norm = nn.LayerNorm(spec.dim_model) if spec.pre_norm else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x (S, B, D), pos (S, 1, D) -> (S, B, D)."""
        for layer in self.layers:
            x = layer(x, pos)
        return self.norm(x)


class Decoder(nn.Module):
    """Decoder layers, then a LayerNorm."""

    def __init__(self, spec: ActSpec):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(spec) for _ in range(spec.n_decoder_layers))
        self.norm = nn.LayerNorm(spec.dim_model)

    def forward(self, x: Tensor, memory: Tensor, pos: Tensor, memory_pos: Tensor) -> Tensor:
        """See `DecoderLayer.forward`."""
        for layer in self.layers:
            x = layer(x, memory, pos, memory_pos)
        return self.norm(x)


class ACT(nn.Module):
    """The network of LeRobot's ACTPolicy (`policy.model`), inference only: latent zero, no dropout.

    Args:
        spec: from `ActSpec.from_config(config.json)`.

    `forward(batch)` takes the preprocessor's output: `observation.images.<cam>` (B, 3, H, W) float32 for
    each of `spec.cameras`, `observation.state` (B, state_dim) with a state input,
    `observation.environment_state` (B, env_dim) with an ENV input (all normalized); it returns
    (B, chunk_size, action_dim) float32 normalized actions.
    """

    def __init__(self, spec: ActSpec):
        super().__init__()
        self.spec = spec
        d = spec.dim_model
        if spec.use_vae:
            self._make_vae_encoder(spec)
        if spec.cameras:
            self.backbone = nn.Sequential(resnet18_layers(FrozenBatchNorm2d))
        self.encoder = Encoder(spec, spec.n_encoder_layers)
        self.decoder = Decoder(spec)
        if spec.state_dim is not None:
            self.encoder_robot_state_input_proj = nn.Linear(spec.state_dim, d)
        if spec.env_dim is not None:
            self.encoder_env_state_input_proj = nn.Linear(spec.env_dim, d)
        self.encoder_latent_input_proj = nn.Linear(spec.latent_dim, d)
        if spec.cameras:
            self.encoder_img_feat_input_proj = nn.Conv2d(FEATURE_CHANNELS, d, kernel_size=1)
        n_1d = 1 + (spec.state_dim is not None) + (spec.env_dim is not None)
        self.encoder_1d_feature_pos_embed = nn.Embedding(n_1d, d)
        self.decoder_pos_embed = nn.Embedding(spec.chunk_size, d)
        self.action_head = nn.Linear(d, spec.action_dim)
        pixels = [sinusoid_2d(*feature_size(*shape[1:]), d) for shape in spec.image_shapes]
        image_pos = torch.cat(pixels) if pixels else torch.zeros(0, d)
        self.register_buffer("image_pos_embed", image_pos.unsqueeze(1), persistent=False)  # (P, 1, D)
        for p in (*self.encoder.parameters(), *self.decoder.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _make_vae_encoder(self, spec: ActSpec) -> None:
        """The training-only VAE encoder's modules and tensors (present in the checkpoint, never run)."""
        d = spec.dim_model
        self.vae_encoder = Encoder(spec, spec.n_vae_encoder_layers)
        self.vae_encoder_cls_embed = nn.Embedding(1, d)
        if spec.state_dim is not None:
            self.vae_encoder_robot_state_input_proj = nn.Linear(spec.state_dim, d)
        self.vae_encoder_action_input_proj = nn.Linear(spec.action_dim, d)
        self.vae_encoder_latent_output_proj = nn.Linear(d, 2 * spec.latent_dim)
        n_tokens = 2 + spec.chunk_size if spec.state_dim is not None else 1 + spec.chunk_size
        self.register_buffer("vae_encoder_pos_enc", sinusoid_1d(n_tokens, d).unsqueeze(0))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch (see the class) -> (B, chunk_size, action_dim) normalized actions."""
        ref = batch[self.spec.cameras[0]] if self.spec.cameras else batch[ENV_KEY]
        latent = ref.new_zeros(ref.shape[0], self.spec.latent_dim)  # the VAE prior's mean
        tokens = [self.encoder_latent_input_proj(latent)]
        if self.spec.state_dim is not None:
            tokens.append(self.encoder_robot_state_input_proj(batch[STATE_KEY]))
        if self.spec.env_dim is not None:
            tokens.append(self.encoder_env_state_input_proj(batch[ENV_KEY]))
        x = torch.stack(tokens)  # (n_1d, B, D)
        pos = self.encoder_1d_feature_pos_embed.weight.unsqueeze(1)  # (n_1d, 1, D)
        if self.spec.cameras:
            x = torch.cat([x, self._image_tokens(batch)])
            pos = torch.cat([pos, self.image_pos_embed.to(pos.dtype)])
        memory = self.encoder(x, pos)  # (S, B, D)
        queries = memory.new_zeros(self.spec.chunk_size, *memory.shape[1:])  # (T, B, D)
        out = self.decoder(queries, memory, self.decoder_pos_embed.weight.unsqueeze(1), pos)
        return self.action_head(out.transpose(0, 1))  # (B, T, A)

    def _image_tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """(P, B, D) tokens of every camera's feature pixels, cameras in order, pixels row-major."""
        images = [batch[key] for key in self.spec.cameras]
        if len(set(self.spec.image_shapes)) == 1:  # one trunk pass for all cameras
            feats = self.encoder_img_feat_input_proj(self.backbone(torch.cat(images)))  # (N*B, D, h, w)
            feats = feats.reshape(len(images), -1, *feats.shape[1:])  # (N, B, D, h, w)
            return feats.flatten(3).permute(0, 3, 1, 2).flatten(0, 1)  # (N*h*w, B, D)
        tokens = []
        for image in images:
            feats = self.encoder_img_feat_input_proj(self.backbone(image))  # (B, D, h, w)
            tokens.append(feats.flatten(2).permute(2, 0, 1))  # (h*w, B, D)
        return torch.cat(tokens)
