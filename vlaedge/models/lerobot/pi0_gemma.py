"""pi0 / pi0.5's PaliGemma-with-expert as LeRobot 0.4.4 runs it for inference, on transformers'
fix/lerobot_openpi branch (4.53.3 with openpi's `transformers_replace` files), without transformers.

Module tree (= LeRobot's `PaliGemmaWithExpertModel`, so the state dict is the checkpoint's
`model.paligemma_with_expert.*`): `paligemma.model.{vision_tower, multi_modal_projector, language_model}`,
`paligemma.lm_head` (tied to `language_model.embed_tokens`, as transformers ties them; unused), and
`gemma_expert.{model, lm_head}` (the expert has no token embedding; its `lm_head` is unused).

What the branch changes in Gemma, and this module reproduces:

- `GemmaRMSNorm`: variance in float32, `x * rsqrt(var + eps)` in the promoted dtype, times `1 + weight`,
  cast back; with `use_adarms` (pi0.5's expert) the weight is replaced by `dense`, a Linear from the
  condition (the time embedding) to (scale, shift, gate): `normed * (1 + scale) + shift`, and every
  residual becomes `x + y * gate` (gated residual); the final norm is conditioned the same way;
- `GemmaModel.forward` does not scale its input by sqrt(width) (LeRobot scales the language embeddings
  itself, never the image tokens) and casts it to bfloat16 when the layers are bfloat16;
- attention given a cache and `use_cache=False` (the denoising steps) concatenates the cached prefix keys
  and values with its own instead of appending to the cache, so every step reads the prefix alone.

Attention is transformers' eager attention as LeRobot selects it: scores `q k^T * head_dim^-0.5` in the
layer's dtype, LeRobot's mask value -2.3819763e38 where masked, softmax in float32, cast back. RoPE is
transformers' Gemma RoPE (theta 10000, halves rotated, cos/sin cast to the hidden dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaedge.models.lerobot.pi0_siglip import Projector, VisionSize, VisionTower

MASK_VALUE = -2.3819763e38  # LeRobot's OPENPI_ATTENTION_MASK_VALUE
ROPE_THETA = 10_000.0
RMS_EPS = 1e-6
# LeRobot's to_bfloat16_for_selected_params: parameters whose names contain one of these stay float32
KEEP_FLOAT32 = ("vision_tower.vision_model.embeddings.patch_embedding.weight",
                "vision_tower.vision_model.embeddings.patch_embedding.bias",
                "vision_tower.vision_model.embeddings.position_embedding.weight",
                "input_layernorm", "post_attention_layernorm", "model.norm")


@dataclass(frozen=True)
class GemmaSize:
    """One of LeRobot's `get_gemma_config` variants."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class PaliGemmaSizes:
    """Everything LeRobot fixes in code: the two Gemma variants, SigLIP, the vocabulary."""

    vlm: GemmaSize
    expert: GemmaSize
    vision: VisionSize = VisionSize()
    vocab: int = 257_152


def rope(positions: Tensor, head_dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin (B, 1, L, head_dim) of transformers' Gemma RoPE for (B, L) int64 positions, in `dtype`.

    The inverse frequencies are rounded to `dtype` first: transformers keeps them in a buffer, which
    LeRobot's bfloat16 cast of the whole PaliGemma-with-expert rounds too (then upcasts them per call).
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim
    inv_freq = (1.0 / (ROPE_THETA**exponents)).to(dtype).float()
    freqs = positions.float()[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, angles: tuple[Tensor, Tensor]) -> Tensor:
    """(B, H, L, D) rotated: x cos + rotate_half(x) sin, rotate_half = [-x2, x1]."""
    cos, sin = angles
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Eager attention with grouped key/value heads.

    Args:
        q: (B, H, Lq, D); k, v: (B, KV, Lk, D), H a multiple of KV.
        mask: (B, Lq, Lk) bool, True where a query may attend.

    Returns:
        (B, Lq, H * D) in q's dtype.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
        v = v[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
    scores = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
    scores = torch.where(mask[:, None], scores.float(), MASK_VALUE)
    out = torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), v).transpose(1, 2)
    return out.reshape(*out.shape[:2], -1)


def gated(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    """The branch's residual: x + y, or x + y * gate under adaRMS."""
    return x + y if gate is None else x + y * gate


class RMSNorm(nn.Module):
    """Gemma's RMSNorm (`weight`), or pi0.5's adaptive one (`dense`: condition -> scale, shift, gate)."""

    def __init__(self, width: int, cond_width: int | None = None):
        super().__init__()
        if cond_width is None:
            self.weight = nn.Parameter(torch.zeros(width))
            self.dense = None
        else:
            self.dense = nn.Linear(cond_width, 3 * width)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, L, width), condition (B, cond) -> normalized x in x's dtype, gate (B, 1, width) or None."""
        normed = x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + RMS_EPS)
        if self.dense is None:
            return (normed * (1.0 + self.weight.float())).to(x.dtype), None
        scale, shift, gate = self.dense(cond)[:, None].chunk(3, dim=-1)
        return (normed * (1 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


class GemmaAttention(nn.Module):
    def __init__(self, size: GemmaSize):
        super().__init__()
        self.head_dim = size.head_dim
        self.q_proj = nn.Linear(size.width, size.num_heads * size.head_dim, bias=False)
        self.k_proj = nn.Linear(size.width, size.num_kv_heads * size.head_dim, bias=False)
        self.v_proj = nn.Linear(size.width, size.num_kv_heads * size.head_dim, bias=False)
        self.o_proj = nn.Linear(size.num_heads * size.head_dim, size.width, bias=False)

    def qkv(self, x: Tensor, angles: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, width) -> q (B, H, L, D), k and v (B, KV, L, D); q and k rotated."""
        q, k, v = (p(x).view(*x.shape[:2], -1, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        return apply_rope(q, angles), apply_rope(k, angles), v


class GemmaMLP(nn.Module):
    def __init__(self, size: GemmaSize):
        super().__init__()
        self.gate_proj = nn.Linear(size.width, size.mlp_dim, bias=False)
        self.up_proj = nn.Linear(size.width, size.mlp_dim, bias=False)
        self.down_proj = nn.Linear(size.mlp_dim, size.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaLayer(nn.Module):
    def __init__(self, size: GemmaSize, cond_width: int | None):
        super().__init__()
        self.self_attn = GemmaAttention(size)
        self.mlp = GemmaMLP(size)
        self.input_layernorm = RMSNorm(size.width, cond_width)
        self.post_attention_layernorm = RMSNorm(size.width, cond_width)

    def finish(self, att: Tensor, h: Tensor, gate: Tensor | None, cond: Tensor | None) -> Tensor:
        """o_proj, (gated) residual, post-attention norm, MLP, (gated) residual."""
        h = gated(h, self.self_attn.o_proj(att), gate)
        normed, gate = self.post_attention_layernorm(h, cond)
        return gated(h, self.mlp(normed), gate)


class GemmaStack(nn.Module):
    """transformers' `GemmaModel` modules: `embed_tokens` (the VLM only), `layers`, `norm`."""

    def __init__(self, size: GemmaSize, vocab: int | None, adaptive: bool = False):
        super().__init__()
        cond = size.width if adaptive else None
        if vocab is not None:
            self.embed_tokens = nn.Embedding(vocab, size.width)
        self.layers = nn.ModuleList(GemmaLayer(size, cond) for _ in range(size.depth))
        self.norm = RMSNorm(size.width, cond)

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].self_attn.q_proj.weight.dtype


class PaliGemmaModel(nn.Module):
    def __init__(self, sizes: PaliGemmaSizes, image_size: int):
        super().__init__()
        self.vision_tower = VisionTower(sizes.vision, image_size)
        self.multi_modal_projector = Projector(sizes.vision.width, sizes.vlm.width)
        self.language_model = GemmaStack(sizes.vlm, sizes.vocab)


class PaliGemma(nn.Module):
    def __init__(self, sizes: PaliGemmaSizes, image_size: int):
        super().__init__()
        self.model = PaliGemmaModel(sizes, image_size)
        self.lm_head = nn.Linear(sizes.vlm.width, sizes.vocab, bias=False, device="meta")
        self.lm_head.weight = self.model.language_model.embed_tokens.weight  # tied, as transformers ties


class GemmaExpert(nn.Module):
    def __init__(self, size: GemmaSize, vocab: int, adaptive: bool):
        super().__init__()
        self.model = GemmaStack(size, None, adaptive)
        self.lm_head = nn.Linear(size.width, vocab, bias=False)


class PaliGemmaWithExpert(nn.Module):
    """The VLM and the action expert (see the module docstring).

    Args:
        sizes: the variants' sizes.
        image_size: the square image side SigLIP gets (LeRobot's `image_resolution`).
        adaptive: pi0.5's expert (adaRMS norms conditioned on the time, gated residuals).
        dtype: "float32", or "bfloat16" for LeRobot's mixed precision (`to_bfloat16_for_selected_params`).
    """

    def __init__(self, sizes: PaliGemmaSizes, image_size: int, adaptive: bool, dtype: str):
        super().__init__()
        self.paligemma = PaliGemma(sizes, image_size)
        self.gemma_expert = GemmaExpert(sizes.expert, sizes.vocab, adaptive)
        if dtype == "bfloat16":
            self.to(torch.bfloat16)
            for name, param in self.named_parameters():
                if any(s in name for s in KEEP_FLOAT32):
                    param.data = param.data.float()

    def embed_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, patches, VLM width) image tokens (projected, not rescaled)."""
        model = self.paligemma.model
        return model.multi_modal_projector.linear(model.vision_tower.vision_model(pixels))

    def embed_language(self, tokens: Tensor) -> Tensor:
        """(B, L) int64 -> (B, L, width) embeddings times sqrt(width) (LeRobot's embed_prefix scales them)."""
        emb = self.paligemma.model.language_model.embed_tokens(tokens)
        return emb * math.sqrt(emb.shape[-1])

    def prefix_cache(self, embs: Tensor, mask: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Every VLM layer's keys (after RoPE) and values for the prefix.

        Args:
            embs: (B, P, width) prefix embeddings.
            mask: (B, P, P) bool attention mask.
            positions: (B, P) int64 RoPE positions.

        Returns:
            keys, values: (layers, B, kv_heads, P, head_dim) in the VLM's dtype. The last layer's
            attention output, MLP and the final norm feed nothing the expert reads, so they are skipped.
        """
        lm = self.paligemma.model.language_model
        h = embs.to(lm.dtype)
        angles = rope(positions, lm.layers[0].self_attn.head_dim, h.dtype)
        keys, values = [], []
        for i, layer in enumerate(lm.layers):
            normed, _ = layer.input_layernorm(h)
            q, k, v = layer.self_attn.qkv(normed, angles)
            keys.append(k)
            values.append(v)
            if i < len(lm.layers) - 1:
                h = layer.finish(attend(q, k, v, mask), h, None, None)
        return torch.stack(keys), torch.stack(values)

    def expert(self, suffix: Tensor, cond: Tensor | None, keys: Tensor, values: Tensor, mask: Tensor,
               positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The expert layers over the suffix tokens, each attending to [cached prefix, suffix].

        Args:
            suffix: (B, S, expert width) suffix embeddings (float32).
            cond: (B, expert width) adaRMS condition (pi0.5), or None.
            keys, values: (layers, B, kv_heads, P, head_dim) from `prefix_cache`.
            mask: (B, S, P + S) bool.
            positions: (B, S) int64 RoPE positions (continuing after the prefix's valid tokens).

        Returns:
            out: (B, S, expert width) after the final (conditioned) norm, in the expert's dtype;
            suffix_keys, suffix_values: (layers, B, kv_heads, S, head_dim), the suffix's own keys and
            values per layer (pi0 appends its state token's to the prefix cache).
        """
        stack = self.gemma_expert.model
        h = suffix.to(stack.dtype)
        angles = rope(positions, stack.layers[0].self_attn.head_dim, h.dtype)
        own_keys, own_values = [], []
        for i, layer in enumerate(stack.layers):
            normed, gate = layer.input_layernorm(h, cond)
            q, k, v = layer.self_attn.qkv(normed, angles)
            own_keys.append(k)
            own_values.append(v)
            k, v = torch.cat([keys[i], k], dim=2), torch.cat([values[i], v], dim=2)
            h = layer.finish(attend(q, k, v, mask), h, gate, cond)
        return stack.norm(h, cond)[0], torch.stack(own_keys), torch.stack(own_values)
