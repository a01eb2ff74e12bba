"""An OpenVLA-style VLA built from Hugging Face `transformers` parts, small enough to train on a CPU.

Architecture (as OpenVLA / OpenVLA-OFT, scaled down): a SigLIP vision tower (`SiglipVisionModel`) over
the 32x32 camera image in 4x4 patches (8x8 = 64 patch tokens), a projector (2x2 patch merge, as
Qwen2-VL / SmolVLM do, then a 2-layer MLP) to 16 image tokens, and a Llama decoder (`LlamaModel`,
grouped-query attention: 4 query heads over 2 key/value heads) over
[image tokens, instruction tokens, state token, action queries]. The action queries (one per predicted
step) are decoded in parallel, as OpenVLA-OFT does, into 256-bin action tokens: logits [B, T, A, 256]
over [-1, 1] (OpenVLA's discretisation; the vlaedge spec says `decode: tokens`).

Proprio/keypoint path (what small real VLAs add beside the patch tokens, e.g. Octo's / Diffusion
Policy's spatial softmax and pi0's state token): spatial-softmax keypoints read from the SigLIP patch
features, FiLM-conditioned on the pooled instruction (RT-1), with the proprio state and the pooled
instruction go through an MLP that seeds every action query; the decoder's output joins it through a
zero-initialised gate. This is the path `vlaedge.models.vla` found that behaviour cloning on the tabletop
task needs (patch tokens alone memorise the training layouts).

Inputs (names as in config.json): `image` uint8 [B, 3, 32, 32] (SigLIP's mean 0.5 / std 0.5
normalisation to [-1, 1] happens in the graph), `instruction_ids` int64 [B, 12] (word ids, 0 = padding),
`state` float32 [B, 4]. Output: `action_logits` float32 [B, T, A, 256].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 4, "vision_use_head": False}
TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64}


class OpenVLAStyleConfig(PretrainedConfig):
    """Configuration of `OpenVLAStyleForActionPrediction` (saved by `save_pretrained` as config.json)."""

    model_type = "vlaedge_openvla_style"

    def __init__(self, vision_config: dict | None = None, text_config: dict | None = None,
                 vocab_size: int = 24, max_instruction_len: int = 12, state_dim: int = 4,
                 action_dim: int = 3, chunk: int = 4, num_bins: int = 256, keypoints: int = 16,
                 attn_implementation_name: str = "eager", **kwargs):
        self.vision_config = {**VISION, **(vision_config or {})}  # SiglipVisionConfig fields
        self.text_config = {**TEXT, **(text_config or {})}  # LlamaConfig fields (vocab_size set below)
        self.vocab_size = vocab_size  # word ids: 0 pad, 1 unknown, 2.. the vocabulary
        self.max_instruction_len = max_instruction_len  # instruction tokens L
        self.state_dim = state_dim  # proprio state S
        self.action_dim = action_dim  # action dims A
        self.chunk = chunk  # actions per inference T
        self.num_bins = num_bins  # action token bins per dim over [-1, 1]
        self.keypoints = keypoints  # spatial-softmax keypoints K
        self.attn_implementation_name = attn_implementation_name  # "eager" or "sdpa" for both towers
        super().__init__(**kwargs)


def causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
    """Additive causal mask (1, 1, n, n) for the Llama towers, given explicitly: transformers' own mask
    builder checks position ids for packed sequences with `torch.diff`, which has no ONNX export."""
    lowest = torch.finfo(like.dtype).min
    return torch.full((n, n), lowest, dtype=like.dtype, device=like.device).triu(1)[None, None]


def patch_grid(side: int) -> torch.Tensor:
    """Patch-centre coordinates (side*side, 2) as (x, y) in [-1, 1], row-major like the patch tokens."""
    c = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


class OpenVLAStyleForActionPrediction(PreTrainedModel):
    """SigLIP tower + projector + Llama (GQA) decoder + parallel 256-bin action tokens."""

    config_class = OpenVLAStyleConfig
    base_model_prefix = "vla"
    main_input_name = "image"

    def __init__(self, config: OpenVLAStyleConfig):
        super().__init__(config)
        attn = config.attn_implementation_name
        vision = SiglipVisionConfig(**config.vision_config)
        vision._attn_implementation = attn
        text = LlamaConfig(**{**config.text_config, "vocab_size": config.vocab_size})
        text._attn_implementation = attn
        dv, D = vision.hidden_size, text.hidden_size
        self.side = vision.image_size // vision.patch_size
        self.vision_tower = SiglipVisionModel(vision)
        self.projector = nn.Sequential(nn.Linear(4 * dv, D), nn.GELU(), nn.Linear(D, D))  # 2x2 merge
        self.language_model = LlamaModel(text)
        self.state_proj = nn.Sequential(nn.Linear(config.state_dim, D), nn.GELU(), nn.Linear(D, D))
        # keypoint path: instruction FiLM on the patch features, K spatial-softmax maps
        self.keypoint_film = nn.Linear(D, 2 * dv)
        self.keypoint_maps = nn.Linear(dv, config.keypoints)
        observed = 2 * config.keypoints + config.state_dim + D
        self.observation_mlp = nn.Sequential(nn.Linear(observed, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.action_queries = nn.Parameter(torch.randn(1, config.chunk, D) * 0.02)
        self.fusion_gate = nn.Parameter(torch.zeros(D))
        self.action_head = nn.Linear(D, config.action_dim * config.num_bins)
        self.post_init()
        nn.init.zeros_(self.keypoint_film.weight)
        nn.init.zeros_(self.keypoint_film.bias)

    def _init_weights(self, module):
        """Keeps PyTorch's and the sub-models' own initialisation (nothing re-initialised here)."""

    def encode(self, image: torch.Tensor, instruction_ids: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Action-query features (B, T, D) from image uint8 (B,3,H,W), ids int64 (B,L), state (B,S)."""
        pixels = image.float() * (2.0 / 255.0) - 1.0  # SigLIP's mean 0.5 / std 0.5 normalisation
        patches = self.vision_tower(pixel_values=pixels).last_hidden_state  # (B, P, dv)
        words = self.language_model.embed_tokens(instruction_ids)  # (B, L, D)
        mask = (instruction_ids != 0).unsqueeze(-1).float()
        pooled = (words * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        scale, shift = self.keypoint_film(pooled)[:, None].chunk(2, dim=-1)
        maps = self.keypoint_maps(patches * (1.0 + scale) + shift)  # (B, P, K)
        grid = patch_grid(self.side).to(maps)  # (P, 2), not a buffer: from_pretrained would not fill it
        keypoints = (torch.softmax(maps, dim=1).transpose(1, 2) @ grid).flatten(1)  # (B, 2K)
        observation = self.observation_mlp(torch.cat([keypoints, state, pooled], dim=-1))  # (B, D)
        queries = self.action_queries + observation[:, None]  # (B, T, D)
        B, dv, s = patches.shape[0], patches.shape[-1], self.side
        merged = (patches.view(B, s // 2, 2, s // 2, 2, dv).permute(0, 1, 3, 2, 4, 5)
                  .reshape(B, (s // 2) ** 2, 4 * dv))  # 2x2 patch merge: (B, P/4, 4 dv)
        tokens = torch.cat([self.projector(merged), words, self.state_proj(state)[:, None], queries], dim=1)
        mask = causal_mask(tokens.shape[1], tokens)
        hidden = self.language_model(inputs_embeds=tokens, attention_mask=mask,
                                     use_cache=False).last_hidden_state
        return queries + self.fusion_gate * hidden[:, -self.config.chunk:]

    def forward(self, image: torch.Tensor, instruction_ids: torch.Tensor,
                state: torch.Tensor) -> torch.Tensor:
        """Action-token logits float32 (B, T, A, bins)."""
        c = self.config
        ctx = self.encode(image, instruction_ids, state)
        return self.action_head(ctx).view(ctx.shape[0], c.chunk, c.action_dim, c.num_bins)

    def training_loss(self, feeds: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the action tokens; `actions` (B, T, A) normalised to [-1, 1]."""
        bins = self.config.num_bins
        logits = self(feeds["image"], feeds["instruction_ids"], feeds["state"])
        labels = ((actions + 1) * 0.5 * bins).long().clamp(0, bins - 1)
        return F.cross_entropy(logits.reshape(-1, bins), labels.reshape(-1))


def build(**kwargs) -> OpenVLAStyleForActionPrediction:
    """The vlaedge factory: a fresh model; `kwargs` are `OpenVLAStyleConfig` fields."""
    return OpenVLAStyleForActionPrediction(OpenVLAStyleConfig(**kwargs))


def from_config(config: dict) -> OpenVLAStyleForActionPrediction:
    """The vlaedge factory for this model saved with `save_pretrained`: `config` is the config.json it wrote
    (`"factory": "policy.py:from_config", "factory_config": "config.json"` in vlaedge.json)."""
    return OpenVLAStyleForActionPrediction(OpenVLAStyleConfig(**config))
