"""A SmolVLA / pi0-style VLA built from Hugging Face `transformers` parts, small enough to train on a CPU.

Architecture (as SmolVLA / pi0, scaled down): a SigLIP vision tower (`SiglipVisionModel`) over the 32x32
camera image in 4x4 patches, a pixel-shuffle connector (2x2 merge + linear, SmolVLM's) to 16 image
tokens, a small language-model prefix (`LlamaModel`, grouped-query attention: 4 query heads over 2
key/value heads) over [image tokens, instruction tokens, state token, condition queries], and a
flow-matching action expert: a smaller `LlamaModel` over [the prefix's condition tokens, the noisy action
chunk + the flow time] that predicts the velocity of the chunk. `forward` integrates it with 10 fixed
Euler steps from `noise` (an input, so the reference and a compressed candidate see the same noise) at
t = 0 to the action chunk at t = 1 (rectified flow: x_t = (1 - t) noise + t actions, v = actions - noise,
as pi0). Training uses `training_loss`: the velocity at one random t per sample, not the unrolled loop.

Stages (declared in config.json's "stages", exported one ONNX graph each by vlaedge): `vision`
(`encode_image`: image -> patches), `prefix` (`encode_prefix`: patches, instruction ids, state -> context)
and `expert` (`action_head`: x, t, context -> velocity), run `flow_steps` times by the runtime's Euler
loop instead of unrolled into one graph. `forward` is exactly that composition.

Proprio/keypoint path (what small real VLAs add beside the patch tokens): spatial-softmax keypoints from
the SigLIP patch features, FiLM-conditioned on the pooled instruction (RT-1), with the proprio state and
the pooled instruction go through an MLP that seeds the condition queries; the prefix's output joins it
through a zero-initialised gate (see `vlaedge.models.vla` for why the tabletop task needs this path).

Inputs (names as in config.json): `image` uint8 [B, 3, 32, 32] (normalised to [-1, 1] in the graph),
`instruction_ids` int64 [B, 12] (word ids, 0 = padding), `state` float32 [B, 4], `noise` float32
[B, T, A]. Output: `actions` float32 [B, T, A] in the normalised range [-1, 1].
"""

from __future__ import annotations

import math

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
EXPERT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 16, "vocab_size": 1,
          "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


class SmolVLAStyleConfig(PretrainedConfig):
    """Configuration of `SmolVLAStyleForFlowMatching` (saved by `save_pretrained` as config.json)."""

    model_type = "vlaedge_smolvla_style"

    def __init__(self, vision_config: dict | None = None, text_config: dict | None = None,
                 expert_config: dict | None = None, vocab_size: int = 24, max_instruction_len: int = 12,
                 state_dim: int = 4, action_dim: int = 3, chunk: int = 4, flow_steps: int = 10,
                 keypoints: int = 16, attn_implementation_name: str = "eager", **kwargs):
        self.vision_config = {**VISION, **(vision_config or {})}  # SiglipVisionConfig fields
        self.text_config = {**TEXT, **(text_config or {})}  # prefix LlamaConfig fields
        self.expert_config = {**EXPERT, **(expert_config or {})}  # action expert LlamaConfig fields
        self.vocab_size = vocab_size  # word ids: 0 pad, 1 unknown, 2.. the vocabulary
        self.max_instruction_len = max_instruction_len  # instruction tokens L
        self.state_dim = state_dim  # proprio state S
        self.action_dim = action_dim  # action dims A
        self.chunk = chunk  # actions per inference T
        self.flow_steps = flow_steps  # Euler steps K of the unrolled flow in forward
        self.keypoints = keypoints  # spatial-softmax keypoints K
        self.attn_implementation_name = attn_implementation_name  # "eager" or "sdpa" for every tower
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


class ActionExpert(nn.Module):
    """The flow-matching action expert: velocity (B, T, A) of a noisy chunk at time t given the prefix."""

    def __init__(self, config: SmolVLAStyleConfig, prefix_width: int):
        super().__init__()
        expert = LlamaConfig(**config.expert_config)
        expert._attn_implementation = config.attn_implementation_name
        d = expert.hidden_size
        self.action_in = nn.Linear(config.action_dim, d)
        self.context_in = nn.Linear(prefix_width, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.transformer = LlamaModel(expert)
        self.action_out = nn.Linear(d, config.action_dim)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Sine-cosine embedding of t in [0, 1] (B,) through an MLP: (B, d)."""
        half = self.action_in.out_features // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        angles = t[:, None] * freqs[None] * 100.0
        return self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        h = self.action_in(x) + self.time_embedding(t)[:, None]  # (B, T, d); positions from RoPE
        tokens = torch.cat([self.context_in(context), h], dim=1)
        hidden = self.transformer(inputs_embeds=tokens, attention_mask=causal_mask(tokens.shape[1], tokens),
                                  use_cache=False).last_hidden_state
        return self.action_out(hidden[:, -T:])


class SmolVLAStyleForFlowMatching(PreTrainedModel):
    """SigLIP tower + pixel-shuffle connector + Llama (GQA) prefix + flow-matching Llama action expert."""

    config_class = SmolVLAStyleConfig
    base_model_prefix = "vla"
    main_input_name = "image"

    def __init__(self, config: SmolVLAStyleConfig):
        super().__init__(config)
        attn = config.attn_implementation_name
        vision = SiglipVisionConfig(**config.vision_config)
        vision._attn_implementation = attn
        text = LlamaConfig(**{**config.text_config, "vocab_size": config.vocab_size})
        text._attn_implementation = attn
        dv, D = vision.hidden_size, text.hidden_size
        self.side = vision.image_size // vision.patch_size
        self.vision_tower = SiglipVisionModel(vision)
        self.connector = nn.Linear(4 * dv, D)  # SmolVLM: pixel shuffle (2x2 merge), then one linear
        self.language_model = LlamaModel(text)
        self.state_proj = nn.Linear(config.state_dim, D)  # SmolVLA: the state as one prefix token
        self.keypoint_film = nn.Linear(D, 2 * dv)
        self.keypoint_maps = nn.Linear(dv, config.keypoints)
        observed = 2 * config.keypoints + config.state_dim + D
        self.observation_mlp = nn.Sequential(nn.Linear(observed, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.condition_queries = nn.Parameter(torch.randn(1, config.chunk, D) * 0.02)
        self.fusion_gate = nn.Parameter(torch.zeros(D))
        self.action_head = ActionExpert(config, D)
        self.post_init()
        nn.init.zeros_(self.keypoint_film.weight)
        nn.init.zeros_(self.keypoint_film.bias)

    def _init_weights(self, module):
        """Keeps PyTorch's and the sub-models' own initialisation (nothing re-initialised here)."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Stage `vision`: SigLIP patch features (B, P, dv) from image uint8 (B, 3, H, W)."""
        pixels = image.float() * (2.0 / 255.0) - 1.0  # SigLIP's mean 0.5 / std 0.5 normalisation
        return self.vision_tower(pixel_values=pixels).last_hidden_state  # (B, P, dv)

    def encode_prefix(self, patches: torch.Tensor, instruction_ids: torch.Tensor,
                      state: torch.Tensor) -> torch.Tensor:
        """Stage `prefix`: condition tokens (B, T, D) from patches (B, P, dv), ids int64 (B, L) and
        state (B, S)."""
        words = self.language_model.embed_tokens(instruction_ids)  # (B, L, D)
        mask = (instruction_ids != 0).unsqueeze(-1).float()
        pooled = (words * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        scale, shift = self.keypoint_film(pooled)[:, None].chunk(2, dim=-1)
        maps = self.keypoint_maps(patches * (1.0 + scale) + shift)  # (B, P, K)
        grid = patch_grid(self.side).to(maps)  # (P, 2), not a buffer: from_pretrained would not fill it
        keypoints = (torch.softmax(maps, dim=1).transpose(1, 2) @ grid).flatten(1)  # (B, 2K)
        observation = self.observation_mlp(torch.cat([keypoints, state, pooled], dim=-1))  # (B, D)
        queries = self.condition_queries + observation[:, None]  # (B, T, D)
        B, dv, s = patches.shape[0], patches.shape[-1], self.side
        shuffled = (patches.view(B, s // 2, 2, s // 2, 2, dv).permute(0, 1, 3, 2, 4, 5)
                    .reshape(B, (s // 2) ** 2, 4 * dv))  # pixel shuffle: (B, P/4, 4 dv)
        tokens = torch.cat([self.connector(shuffled), words, self.state_proj(state)[:, None], queries], dim=1)
        mask = causal_mask(tokens.shape[1], tokens)
        hidden = self.language_model(inputs_embeds=tokens, attention_mask=mask,
                                     use_cache=False).last_hidden_state
        return queries + self.fusion_gate * hidden[:, -self.config.chunk:]

    def encode(self, image: torch.Tensor, instruction_ids: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Condition tokens (B, T, D) from image uint8 (B,3,H,W), ids int64 (B,L), state (B,S): the
        `vision` then the `prefix` stage."""
        return self.encode_prefix(self.encode_image(image), instruction_ids, state)

    def forward(self, image: torch.Tensor, instruction_ids: torch.Tensor, state: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        """Actions (B, T, A) in [-1, 1]: `flow_steps` Euler steps of the expert from `noise` (B, T, A)."""
        ctx = self.encode(image, instruction_ids, state)
        x, K = noise, self.config.flow_steps
        for k in range(K):
            t = torch.full((x.shape[0],), k / K, dtype=x.dtype, device=x.device)
            x = x + self.action_head(x, t, ctx) / K
        return x

    def training_loss(self, feeds: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        """Flow-matching loss: MSE of the velocity at one uniform t per sample; `actions` (B, T, A)
        normalised to [-1, 1] (rectified flow, as pi0)."""
        ctx = self.encode(feeds["image"], feeds["instruction_ids"], feeds["state"])
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0])
        x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * actions
        return F.mse_loss(self.action_head(x_t, t, ctx), actions - noise)


def build(**kwargs) -> SmolVLAStyleForFlowMatching:
    """The vlaedge factory: a fresh model; `kwargs` are `SmolVLAStyleConfig` fields."""
    return SmolVLAStyleForFlowMatching(SmolVLAStyleConfig(**kwargs))


def from_config(config: dict) -> SmolVLAStyleForFlowMatching:
    """The vlaedge factory for this model saved with `save_pretrained`: `config` is the config.json it wrote
    (`"factory": "policy.py:from_config", "factory_config": "config.json"` in vlaedge.json)."""
    return SmolVLAStyleForFlowMatching(SmolVLAStyleConfig(**config))
