"""SmolVLA's VLM-with-expert: the SmolVLM backbone (transformers' own modules) and the action expert that
reads its per-layer key/value cache, as LeRobot 0.4.4's `SmolVLMWithExpertModel` computes them for inference.

Module tree (= LeRobot's, so the state dict keys match the checkpoint's `model.vlm_with_expert.*`):

- `vlm`: transformers' `SmolVLMForConditionalGeneration` built from the backbone's config.json, the text
  model cut to `num_vlm_layers` layers; only its submodules run (vision embeddings, encoder layers,
  post layer norm, connector, token embeddings, decoder layers), never its own `forward`. `lm_head` and the
  text model's final norm are in the state dict but unused, as in LeRobot.
- `lm_expert`: a transformers `LlamaModel` from a copy of the text config, `expert_width_multiplier` times
  narrower, without `embed_tokens`; in cross-attention layers its `k_proj`/`v_proj` map the VLM's cached
  keys/values (kv_heads * head_dim wide) instead of the expert's hidden states.

Inference is two passes:

1. prefix (`prefix_cache`): the prefix embeddings go through every VLM layer; each layer's keys (after
   RoPE) and values are kept. The last layer's attention and MLP do not change the cache, so they are
   skipped (LeRobot computes and drops them).
2. expert (`expert`): per denoising step, the action tokens go through the expert layers. A self-attention
   layer attends to [cached prefix keys, its own keys] (prefix padding masked, causal among the actions,
   RoPE positions continuing after the prefix); a cross-attention layer attends to its projection of the
   cached keys/values only, its queries with RoPE positions 0..S-1.

RoPE is LeRobot's own (wavelength 10000, halves rotated), not the backbone's `rope_theta`. Attention is
LeRobot's eager attention (scores in float32, padding set to the float32 minimum); the vision encoder keeps
transformers' SDPA attention. The dtype casts follow LeRobot's, so a bfloat16 VLM (`load_vlm_weights: true`)
computes as it does there.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

ROPE_WAVELENGTH = 10_000  # LeRobot's apply_rope default, used for the VLM and the expert alike


def expert_intermediate_size(hidden: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    """The expert MLP width LeRobot derives from its hidden size: 2/3 * 4 * hidden, rounded up to 256."""
    size = int(multiplier * int(2 * hidden / 3))
    return multiple_of * ((size + multiple_of - 1) // multiple_of)


def rope_angles(positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """Sine and cosine of LeRobot's rotary angles, computed once and shared by every layer.

    Args:
        positions: (B, L) int64 positions.
        head_dim: D, the rotated width.

    Returns:
        sin, cos: (B, L, 1, D/2) float32.
    """
    exponents = (2.0 / head_dim) * torch.arange(head_dim // 2, dtype=torch.float32, device=positions.device)
    timescale = ROPE_WAVELENGTH**exponents
    radians = (positions[..., None].float() / timescale[None, None, :])[..., None, :]
    return torch.sin(radians), torch.cos(radians)


def rope(x: Tensor, angles: tuple[Tensor, Tensor]) -> Tensor:
    """Rotary position embedding, LeRobot's variant (first and second halves of each head rotated).

    Args:
        x: (B, L, H, D) queries or keys, any float dtype (computed in float32, returned in x's dtype).
        angles: `rope_angles` of the positions.

    Returns:
        (B, L, H, D) rotated, in x's dtype.
    """
    sin, cos = angles
    half = x.shape[-1] // 2
    x32 = x.float()
    x1, x2 = x32[..., :half], x32[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, num_heads: int) -> Tensor:
    """LeRobot's eager attention with grouped key/value heads.

    Args:
        q: (B, Lq, H, D) queries.
        k: (B, Lk, KV, D) keys; H must be a multiple of KV.
        v: (B, Lk, KV, D) values.
        mask: (B, Lq, Lk) bool, True where a query may attend.
        num_heads: H.

    Returns:
        (B, Lq, H * D) in v's dtype.
    """
    groups = num_heads // k.shape[2]
    k = k[:, :, :, None, :].expand(-1, -1, -1, groups, -1).flatten(2, 3)
    v = v[:, :, :, None, :].expand(-1, -1, -1, groups, -1).flatten(2, 3)
    scores = torch.matmul(q.float().transpose(1, 2), k.float().permute(0, 2, 3, 1))  # (B, H, Lq, Lk)
    scores = scores * q.shape[-1] ** -0.5
    scores = torch.where(mask[:, None], scores, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v.transpose(1, 2)).transpose(1, 2)  # (B, Lq, H, D)
    return out.reshape(*out.shape[:2], -1)


def _heads(proj: nn.Linear, h: Tensor, head_dim: int) -> Tensor:
    """(B, L, in) -> (B, L, heads, head_dim), h cast to the projection's dtype first (as LeRobot does)."""
    out = proj(h.to(proj.weight.dtype))
    return out.view(*out.shape[:-1], -1, head_dim)


def _finish_layer(layer: nn.Module, att: Tensor, h: Tensor) -> Tensor:
    """o_proj, residual, post-attention norm, MLP, residual: the rest of a decoder layer.

    The residual sums are computed in the promoted dtype and stored in the attention output's dtype, as
    LeRobot's in-place `+=` does.
    """
    out = layer.self_attn.o_proj(att.to(layer.self_attn.o_proj.weight.dtype))
    out = (out + h).to(out.dtype)
    mlp = layer.mlp(layer.post_attention_layernorm(out))
    return (mlp + out).to(mlp.dtype)


def patch_positions(rows: int, cols: int, per_side: int, dtype: torch.dtype) -> Tensor:
    """The vision position ids of an unpadded (rows x cols patches) image, as transformers 4.57 (the
    version LeRobot 0.4.4 requires) computes them for an all-True patch mask.

    Coordinates i / n * (1 - 1e-6), computed in the pixel dtype, are bucketed by the boundaries k / per_side.
    In float32 the factor puts i / n just below its boundary, so an 8-patch side gets 0, 0, 1, ..., 6; in
    bfloat16/float16 it rounds away, giving 0..n-1. transformers 5 always gives 0..n-1: this function keeps
    4.57's ids, which the checkpoints were trained and evaluated with.

    Returns:
        (rows * cols,) int64.
    """
    boundaries = torch.arange(1 / per_side, 1.0, 1 / per_side)
    h = torch.arange(rows, dtype=dtype) / torch.tensor(rows) * (1 - 1e-6)
    w = torch.arange(cols, dtype=dtype) / torch.tensor(cols) * (1 - 1e-6)
    h, w = torch.bucketize(h, boundaries, right=True), torch.bucketize(w, boundaries, right=True)
    return (h[:, None] * per_side + w[None, :]).reshape(-1)


class SmolVLMWithExpert(nn.Module):
    """The SmolVLM backbone and the action expert (see the module docstring).

    Args:
        vlm_config: the backbone's `SmolVLMConfig` (from its config.json), not modified.
        num_vlm_layers: text layers kept (<= 0: all).
        attention_mode: LeRobot's `attention_mode`; "cross" in it interleaves cross-attention layers.
        self_attn_every_n_layers: every n-th layer (0, n, 2n, ...) is self-attention in cross mode
            (<= 0: all layers cross-attend).
        expert_width_multiplier: expert hidden size = int(text hidden size * this).
        image_size: (H, W) pixels the vision encoder gets (after resize_with_pad).
        vlm_dtype: the VLM's parameter dtype (LeRobot: bfloat16 when it loaded the Hub VLM weights).
    """

    def __init__(self, vlm_config, num_vlm_layers: int, attention_mode: str, self_attn_every_n_layers: int,
                 expert_width_multiplier: float, image_size: tuple[int, int], vlm_dtype: torch.dtype):
        super().__init__()
        from transformers import LlamaModel, SmolVLMForConditionalGeneration

        config = copy.deepcopy(vlm_config)
        text = config.text_config
        if num_vlm_layers > 0:
            text.num_hidden_layers = min(num_vlm_layers, text.num_hidden_layers)
        # transformers' default, as LeRobot built it (a bfloat16 VLM matches LeRobot exactly only with it)
        config.vision_config._attn_implementation = "sdpa"
        self.vlm = SmolVLMForConditionalGeneration(config).to(vlm_dtype)
        self.lm_expert = LlamaModel(self._expert_config(text, expert_width_multiplier))
        self.lm_expert.embed_tokens = None
        every = self_attn_every_n_layers
        self.cross_layers = tuple("cross" in attention_mode and not (every > 0 and i % every == 0)
                                  for i in range(text.num_hidden_layers))
        self._read_vlm_cache(text.num_key_value_heads * text.head_dim)
        self.num_heads, self.head_dim = text.num_attention_heads, text.head_dim
        self.hidden_size, self.expert_hidden_size = text.hidden_size, self.lm_expert.config.hidden_size
        vision = config.vision_config
        rows, cols = image_size[0] // vision.patch_size, image_size[1] // vision.patch_size
        positions = patch_positions(rows, cols, vision.image_size // vision.patch_size, vlm_dtype)
        self.register_buffer("patch_position_ids", positions, persistent=False)

    def _read_vlm_cache(self, kv_width: int) -> None:
        """Cross-attention layers' k_proj/v_proj take the VLM's cached keys/values (kv_width wide)."""
        for layer, is_cross in zip(self.lm_expert.layers, self.cross_layers, strict=True):
            if is_cross:
                attn = layer.self_attn
                bias = attn.k_proj.bias is not None
                attn.k_proj = nn.Linear(kv_width, attn.k_proj.out_features, bias=bias)
                attn.v_proj = nn.Linear(kv_width, attn.v_proj.out_features, bias=bias)

    @staticmethod
    def _expert_config(text, multiplier: float):
        config = copy.deepcopy(text)
        config.hidden_size = int(text.hidden_size * multiplier)
        config.intermediate_size = expert_intermediate_size(config.hidden_size)
        config.head_dim = text.head_dim  # heads keep the VLM's width, only the residual stream narrows
        return config

    @property
    def text_layers(self) -> nn.ModuleList:
        return self.vlm.model.text_model.layers

    def embed_image(self, pixels: Tensor) -> Tensor:
        """Vision encoder and connector (pixel shuffle + projection) for one camera.

        Args:
            pixels: (B, 3, H, W) in [-1, 1], H and W the `image_size` given at construction.

        Returns:
            (B, N, text hidden) image tokens in the VLM's dtype (N = patches / scale_factor^2).
        """
        vision = self.vlm.model.vision_model
        embed = vision.embeddings
        x = embed.patch_embedding(pixels.to(embed.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = x + embed.position_embedding(self.patch_position_ids)
        for layer in vision.encoder.layers:
            x = layer(x, None)
        return self.vlm.model.connector(vision.post_layernorm(x))

    def embed_language(self, tokens: Tensor) -> Tensor:
        """(B, L) int64 token ids -> (B, L, text hidden) embeddings (not yet scaled)."""
        return self.vlm.model.text_model.embed_tokens(tokens)

    def prefix_cache(self, embs: Tensor, mask: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Every VLM layer's keys (after RoPE) and values for the prefix.

        Args:
            embs: (B, Lp, text hidden) prefix embeddings.
            mask: (B, Lp, Lp) bool attention mask (padding and the prefix's block structure).
            positions: (B, Lp) int64 RoPE positions.

        Returns:
            keys, values: (layers, B, kv_heads, Lp, head_dim) each.
        """
        keys, values, h = [], [], embs
        angles = rope_angles(positions, self.head_dim)
        last = len(self.text_layers) - 1
        for i, layer in enumerate(self.text_layers):
            normed = layer.input_layernorm(h)
            q = rope(_heads(layer.self_attn.q_proj, normed, self.head_dim), angles)
            k = rope(_heads(layer.self_attn.k_proj, normed, self.head_dim), angles)
            v = _heads(layer.self_attn.v_proj, normed, self.head_dim)
            keys.append(k.transpose(1, 2))
            values.append(v.transpose(1, 2))
            if i < last:  # the last layer's output feeds nothing the expert reads
                h = _finish_layer(layer, attend(q, k, v, mask, self.num_heads), h)
        return torch.stack(keys), torch.stack(values)

    def expert(self, suffix: Tensor, keys: Tensor, values: Tensor, prefix_mask: Tensor) -> Tensor:
        """The expert layers over the action tokens, reading the prefix cache, then its final norm.

        Args:
            suffix: (B, S, expert hidden) action-time embeddings.
            keys, values: (layers, B, kv_heads, Lp, head_dim) from `prefix_cache`.
            prefix_mask: (B, Lp) bool, False on prefix padding.

        Returns:
            (B, S, expert hidden).
        """
        steps = torch.arange(suffix.shape[1], device=suffix.device)
        own = (steps[None, :] <= steps[:, None])[None].expand(suffix.shape[0], -1, -1)  # causal (B, S, S)
        to_prefix = prefix_mask[:, None, :].expand(-1, suffix.shape[1], -1)  # (B, S, Lp)
        after_prefix = prefix_mask.long().sum(dim=-1, keepdim=True) + steps[None, :]  # (B, S) positions
        after_prefix = rope_angles(after_prefix, self.head_dim)  # self-attention layers
        from_zero = rope_angles(steps[None, :].expand(suffix.shape[0], -1), self.head_dim)  # cross layers
        h = suffix
        for i, layer in enumerate(self.lm_expert.layers):
            normed = layer.input_layernorm(h)
            q = _heads(layer.self_attn.q_proj, normed, self.head_dim)
            past_k, past_v = keys[i].transpose(1, 2), values[i].transpose(1, 2)  # (B, Lp, KV, D)
            if self.cross_layers[i]:
                k = _heads(layer.self_attn.k_proj, past_k.flatten(2), self.head_dim)
                v = _heads(layer.self_attn.v_proj, past_v.flatten(2), self.head_dim)
                att = attend(rope(q, from_zero), k, v, to_prefix, self.num_heads)
            else:
                k = rope(_heads(layer.self_attn.k_proj, normed, self.head_dim), after_prefix)
                v = _heads(layer.self_attn.v_proj, normed, self.head_dim)
                k = torch.cat([past_k.to(k.dtype), k], dim=1)
                v = torch.cat([past_v.to(v.dtype), v], dim=1)
                att = attend(rope(q, after_prefix), k, v, torch.cat([to_prefix, own], dim=2), self.num_heads)
            h = _finish_layer(layer, att, h)
        return self.lm_expert.norm(h)
