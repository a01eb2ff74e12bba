"""PaliGemma's SigLIP vision tower and projector as LeRobot 0.4.4 runs them for pi0 / pi0.5.

Module names equal transformers' `SiglipVisionTransformer` / `PaliGemmaMultiModalProjector` (LeRobot builds
`PaliGemmaForConditionalGeneration` and calls `get_image_features`), so the state dict matches the
checkpoint's `...paligemma.model.vision_tower.vision_model.*` and `...multi_modal_projector.linear.*`.

Arithmetic, as on transformers' fix/lerobot_openpi branch (4.53.3 with openpi's replacement files):

- patch embedding (Conv2d, stride = patch) plus a learned position per patch, the pixels cast to the patch
  embedding's dtype;
- the patch tokens cast to the encoder's dtype when it runs in bfloat16 (the branch's one change here);
- pre-norm encoder layers: LayerNorm, multi-head attention through PyTorch's scaled_dot_product_attention
  (transformers' "sdpa", what a directly constructed PaliGemma uses), LayerNorm, fc1 - tanh GELU - fc2;
- the final LayerNorm, then the projector (one Linear) to the language model's width. The branch's
  `get_image_features` does NOT divide by sqrt(width) as stock transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class VisionSize:
    """SigLIP's sizes (LeRobot: So400m with patch 14 and MLP width 4304, whatever the image size)."""

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch: int = 14
    eps: float = 1e-6  # LayerNorm epsilon


class SiglipAttention(nn.Module):
    def __init__(self, size: VisionSize):
        super().__init__()
        self.num_heads = size.num_heads
        self.k_proj = nn.Linear(size.width, size.width)
        self.v_proj = nn.Linear(size.width, size.width)
        self.q_proj = nn.Linear(size.width, size.width)
        self.out_proj = nn.Linear(size.width, size.width)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, width) -> (B, N, width), full (unmasked) attention over the patches."""
        b, n, width = x.shape
        heads = [p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj,
                                                                               self.v_proj)]
        scale = heads[0].shape[-1] ** -0.5
        out = F.scaled_dot_product_attention(*heads, attn_mask=None, dropout_p=0.0, is_causal=False,
                                             scale=scale)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))


class SiglipMLP(nn.Module):
    def __init__(self, size: VisionSize):
        super().__init__()
        self.fc1 = nn.Linear(size.width, size.mlp_dim)
        self.fc2 = nn.Linear(size.mlp_dim, size.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, size: VisionSize):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(size.width, eps=size.eps)
        self.self_attn = SiglipAttention(size)
        self.layer_norm2 = nn.LayerNorm(size.width, eps=size.eps)
        self.mlp = SiglipMLP(size)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, size: VisionSize):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(size) for _ in range(size.depth))


class SiglipEmbeddings(nn.Module):
    def __init__(self, size: VisionSize, image_size: int):
        super().__init__()
        patches = (image_size // size.patch) ** 2
        self.patch_embedding = nn.Conv2d(3, size.width, kernel_size=size.patch, stride=size.patch)
        self.position_embedding = nn.Embedding(patches, size.width)
        self.register_buffer("position_ids", torch.arange(patches)[None], persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, patches, width) in the patch embedding's dtype."""
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        return x + self.position_embedding(self.position_ids)


class SiglipVisionModel(nn.Module):
    """transformers' `SiglipVisionTransformer` without the pooling head (PaliGemma has none)."""

    def __init__(self, size: VisionSize, image_size: int):
        super().__init__()
        self.embeddings = SiglipEmbeddings(size, image_size)
        self.encoder = SiglipEncoder(size)
        self.post_layernorm = nn.LayerNorm(size.width, eps=size.eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, patches, width)."""
        x = self.embeddings(pixels)
        encoder_dtype = self.encoder.layers[0].self_attn.q_proj.weight.dtype
        if encoder_dtype == torch.bfloat16:
            x = x.to(encoder_dtype)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class VisionTower(nn.Module):
    """`vision_tower`, holding `vision_model` (transformers' `SiglipVisionModel` nesting)."""

    def __init__(self, size: VisionSize, image_size: int):
        super().__init__()
        self.vision_model = SiglipVisionModel(size, image_size)


class Projector(nn.Module):
    """`multi_modal_projector`: one Linear from the vision width to the language model's."""

    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.linear = nn.Linear(vision_width, text_width)
