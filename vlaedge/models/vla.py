"""The built-in reference VLA: ViT patch encoder, word tokens, proprio token, fusion transformer, and
one of three action heads (RT-2/OpenVLA 256-bin tokens, OpenVLA-OFT continuous chunks, pi0-style
flow matching with `noise` as an input).

Attention uses separate q/k/v/o Linear layers and `scaled_dot_product_attention`, so quantizers reach
every projection (ModelOpt leaves the packed weights of nn.MultiheadAttention in FP32).

Data flow: a conv stem (FiLM-conditioned on the pooled instruction, as in RT-1) feeds both the ViT patch
tokens and spatial-softmax keypoints. An observation MLP over [keypoints, state, instruction] seeds the
action queries; the fusion transformer over [patches, words, state token, queries] adds to them through a
zero-initialised gate. What we measured on the tabletop task (CPU budgets, ~1M parameters): with only
the patch tokens feeding the fusion, behaviour cloning either ignored the image or memorised the training
layouts (held-out loss above the state-only level); the keypoint observation path generalises.
Trained that way, the policies lean on the keypoint path: zeroing `fusion_gate` (dropping the patch
tokens and the fusion transformer's contribution) moves the default policy's actions by 2-4% of range and
leaves it at 100/100 closed loop; the trained `small` moves 1-2% and scores 97/100 (vs 98). So pruning
transformer blocks of these policies costs little accuracy, less than it would in a policy whose
transformer carries the decision.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("tokens", "chunk", "flow")

# Named sizes. nano: tests (<1M params); small: benchmarks (10-30M); base: realistic size (100M+).
SIZES: dict[str, dict] = {
    "nano": {"dim": 128, "num_heads": 4, "vision_depth": 2, "fusion_depth": 2, "expert_dim": 64,
             "expert_depth": 1},
    "small": {"dim": 384, "num_heads": 6, "vision_depth": 4, "fusion_depth": 4, "expert_dim": 192,
              "expert_depth": 2},
    "base": {"dim": 768, "num_heads": 12, "vision_depth": 8, "fusion_depth": 8, "expert_dim": 384,
             "expert_depth": 2},
}


# Integer fields and their sane ranges: a negative or absurd size fails here, not deep inside torch.
_INT_RANGES = {
    "image_size": (4, 4096), "patch_size": (4, 512), "dim": (4, 16384), "num_heads": (1, 256),
    "head_dim": (0, 1024), "vision_depth": (0, 256), "fusion_depth": (1, 256), "keypoints": (1, 4096),
    "max_instruction_len": (1, 4096), "state_dim": (1, 4096), "action_dim": (1, 1024), "chunk": (1, 4096),
    "num_bins": (2, 65536), "flow_steps": (1, 1000), "expert_dim": (4, 16384), "expert_depth": (0, 256),
}


@dataclass
class VLAConfig:
    """Architecture of a reference VLA; saved as the checkpoint's config.json."""

    head: Literal["tokens", "chunk", "flow"] = "chunk"  # action head family
    image_size: int = 64  # square camera image side, pixels
    patch_size: int = 8  # ViT patch side, pixels
    dim: int = 128  # transformer width
    num_heads: int = 4  # attention heads per block before pruning
    head_dim: int = 0  # per-head width; 0 = dim // num_heads
    vision_depth: int = 2  # ViT blocks over image patches
    fusion_depth: int = 2  # blocks over [vision, instruction, state, action queries]
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * dim before pruning
    keypoints: int = 16  # spatial-softmax keypoints read from the conv stem
    vocab: list[str] = field(default_factory=list)  # tokenizer words (ids start at 2)
    max_instruction_len: int = 12  # instruction tokens
    state_dim: int = 4  # proprio state size
    action_dim: int = 3  # action dimensions A
    chunk: int = 4  # actions predicted per inference T
    num_bins: int = 256  # tokens head: bins per dimension over [-1, 1]
    flow_steps: int = 5  # flow head: Euler steps K
    expert_dim: int = 64  # flow head: action expert width
    expert_depth: int = 1  # flow head: action expert blocks
    action_names: list[str] = field(default_factory=lambda: ["dx", "dy", "gripper"])
    action_low: list[float] = field(default_factory=lambda: [-1.0, -1.0, -1.0])  # env units
    action_high: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    gripper_dims: list[int] = field(default_factory=lambda: [2])
    block_heads: list[int] = field(default_factory=list)  # per block after pruning; [] = num_heads
    block_mlp: list[int] = field(default_factory=list)  # per block after pruning; [] = full width

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head: {self.head!r} is not one of {', '.join(HEADS)}")
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name}: {value!r} is not an integer in [{low}, {high}]")
        if not (isinstance(self.mlp_ratio, int | float) and 0 < self.mlp_ratio <= 64):
            raise ValueError(f"mlp_ratio: {self.mlp_ratio!r} is not a number in (0, 64]")
        for name in ("block_heads", "block_mlp"):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name}: every entry must be a positive integer, got {getattr(self, name)}")
        if any(not isinstance(g, int) or not 0 <= g < self.action_dim for g in self.gripper_dims):
            raise ValueError(f"gripper_dims: {self.gripper_dims} are not all action dims "
                             f"0..{self.action_dim - 1}")
        if self.image_size % self.patch_size or self.patch_size % 4:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size "
                             f"{self.patch_size}, "
                             "itself a multiple of 4 (the conv stem)")
        if not self.head_dim:
            self.head_dim = self.dim // self.num_heads
        n = len(self.action_names)
        if not (n == self.action_dim == len(self.action_low) == len(self.action_high)):
            raise ValueError(f"action_names/low/high must all have action_dim={self.action_dim} entries")
        blocks = self.vision_depth + self.fusion_depth + (self.expert_depth if self.head == "flow" else 0)
        for name in ("block_heads", "block_mlp"):
            value = getattr(self, name)
            if value and len(value) != blocks:
                raise ValueError(f"{name}: {len(value)} entries for {blocks} transformer blocks")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_shape(self, i: int, width: int) -> tuple[int, int]:
        """(heads, mlp hidden) of transformer block i (vision, then fusion, then expert)."""
        heads = self.block_heads[i] if self.block_heads else self.num_heads
        mlp = self.block_mlp[i] if self.block_mlp else int(self.mlp_ratio * width)
        return heads, mlp

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.o_proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, nh, N, hd)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _blocks(cfg: VLAConfig, first: int, count: int, width: int) -> nn.ModuleList:
    head_dim = cfg.head_dim if width == cfg.dim else width // cfg.num_heads
    return nn.ModuleList(
        Block(width, *_shape(cfg, first + i, width, head_dim)) for i in range(count)
    )


def _shape(cfg: VLAConfig, i: int, width: int, head_dim: int) -> tuple[int, int, int]:
    heads, mlp = cfg.block_shape(i, width)
    return heads, head_dim, mlp


class VisionTower(nn.Module):
    """ViT over the uint8 camera image; normalisation is inside the graph."""

    def __init__(self, cfg: VLAConfig):
        super().__init__()
        # Octo-style small conv stem (two stride-2 3x3 convs) then the patchifying conv: a locality prior
        # that small-data behaviour cloning learns much faster with than a single linear patchify.
        c = cfg.dim // 4
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GELU())
        self.stem_channels = 2 * c
        self.patch_embed = nn.Conv2d(2 * c, cfg.dim, cfg.patch_size // 4, stride=cfg.patch_size // 4)
        self.patch_norm = nn.LayerNorm(cfg.dim)  # unit-scale content before adding positions
        side = cfg.image_size // cfg.patch_size
        self.register_buffer("pos_embed", sincos_2d(side, cfg.dim), persistent=False)  # (1, P, D), fixed
        self.blocks = _blocks(cfg, 0, cfg.vision_depth, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        # spatial-softmax keypoints (Levine et al. 2016, as in Diffusion Policy) on the instruction-
        # conditioned stem features at 1/4 resolution: K attention maps give K expected (x, y) positions,
        # a direct, precise read-out of where the named objects are.
        self.keypoint_maps = nn.Conv2d(2 * c, cfg.keypoints, 1)
        self.register_buffer("grid", patch_grid(cfg.image_size // 4), persistent=False)  # (HW/16, 2)

    def forward(self, image: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """film: (B, 2C) instruction-conditioned scale and shift of the stem features (RT-1's FiLM)."""
        x = image.float() * (2.0 / 255.0) - 1.0  # (B, 3, H, W) in [-1, 1]
        scale, shift = film[:, :, None, None].chunk(2, dim=1)
        features = self.stem(x) * (1.0 + scale) + shift  # (B, C, H/4, W/4)
        attention = torch.softmax(self.keypoint_maps(features).flatten(2), dim=-1)  # (B, K, HW/16)
        keypoints = (attention @ self.grid).flatten(1)  # (B, 2K) expected (x, y) of each map
        x = self.patch_norm(self.patch_embed(features).flatten(2).transpose(1, 2)) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x), keypoints  # (B, P, D), (B, 2K)


def patch_grid(side: int) -> torch.Tensor:
    """Patch-centre coordinates (side*side, 2) as (x, y) in [-1, 1], row-major like the patch tokens."""
    c = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (1, side*side, dim), as in MAE: it makes patch
    positions readable from the first step, which small-data behaviour cloning needs."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                            indexing="ij")
    parts = [f(c.flatten()[:, None] * omega[None]) for c in (xs, ys) for f in (torch.sin, torch.cos)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))[None]


class FlowExpert(nn.Module):
    """pi0-style action expert: predicts the velocity of a noisy action chunk given the context."""

    def __init__(self, cfg: VLAConfig):
        super().__init__()
        d = cfg.expert_dim
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.context_in = nn.Linear(cfg.dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.chunk, d) * 0.02)
        self.blocks = _blocks(cfg, cfg.vision_depth + cfg.fusion_depth, cfg.expert_depth, d)
        self.norm = nn.LayerNorm(d)
        self.action_out = nn.Linear(d, cfg.action_dim)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.action_in.out_features // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        angles = t[:, None] * freqs[None] * 100.0
        return self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))  # (B, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        h = self.action_in(x) + self.pos_embed + self.time_embedding(t)[:, None]  # (B, T, d)
        h = torch.cat([self.context_in(context), h], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.action_out(self.norm(h[:, -T:]))  # (B, T, A)


class ReferenceVLA(nn.Module):
    """The reference VLA.

    Inputs: image uint8 (B,3,H,W), instruction_ids int64 (B,L), state float32 (B,S), and for the flow
    head noise float32 (B,T,A). Output: `action_logits` (B,T,A,bins) for the tokens head, else
    `actions` (B,T,A) in the normalised range [-1, 1].
    """

    def __init__(self, cfg: VLAConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.vision_tower = VisionTower(cfg)
        self.text_embed = nn.Embedding(len(cfg.vocab) + 2, D)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.max_instruction_len, D) * 0.02)
        self.film = nn.Linear(D, 2 * self.vision_tower.stem_channels)  # pooled instruction -> stem FiLM
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.state_proj = nn.Sequential(nn.Linear(cfg.state_dim, D), nn.GELU(), nn.Linear(D, D))
        self.action_queries = nn.Parameter(torch.randn(1, cfg.chunk, D) * 0.02)
        # what the observation says, as one vector: keypoint coordinates, proprio state and the pooled
        # instruction through an MLP. It seeds every action query, a direct path that generalises (patch
        # tokens alone let a small policy memorise its training layouts instead).
        observed = 2 * cfg.keypoints + cfg.state_dim + D
        self.observation_mlp = nn.Sequential(nn.Linear(observed, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.fusion = _blocks(cfg, cfg.vision_depth, cfg.fusion_depth, D)
        self.fusion_norm = nn.LayerNorm(D)
        # LayerScale-style gate on the fusion output, zero at init: training starts from the observation
        # path, which behaviour cloning learns reliably, and lets the fusion transformer in as it helps
        self.fusion_gate = nn.Parameter(torch.zeros(D))
        if cfg.head == "tokens":
            self.action_head = nn.Linear(D, cfg.action_dim * cfg.num_bins)
        elif cfg.head == "chunk":
            self.action_head = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, cfg.action_dim))
        else:
            self.action_head = FlowExpert(cfg)

    def encode(self, image, instruction_ids, state) -> torch.Tensor:
        """Fused action-query tokens (B, T, D)."""
        words = self.text_embed(instruction_ids)  # (B, L, D)
        mask = (instruction_ids != 0).unsqueeze(-1).float()  # padding is id 0
        pooled = (words * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        patches, keypoints = self.vision_tower(image, self.film(pooled))
        state_token = self.state_proj(state)[:, None]  # (B, 1, D)
        observation = self.observation_mlp(torch.cat([keypoints, state, pooled], dim=-1))  # (B, D)
        queries = self.action_queries + observation[:, None]  # refined by attention in the fusion blocks
        tokens = [patches, words + self.text_pos, state_token, queries]
        x = torch.cat(tokens, dim=1)
        for block in self.fusion:
            x = block(x)
        return queries + self.fusion_gate * self.fusion_norm(x[:, -self.cfg.chunk:])

    def forward(self, image, instruction_ids, state, noise=None):
        ctx = self.encode(image, instruction_ids, state)
        B, T, A = ctx.shape[0], self.cfg.chunk, self.cfg.action_dim
        if self.cfg.head == "tokens":
            return self.action_head(ctx).view(B, T, A, self.cfg.num_bins)
        if self.cfg.head == "chunk":
            return torch.tanh(self.action_head(ctx))
        return self.integrate(noise, ctx)

    def integrate(self, noise: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Euler-integrates the flow from noise (t=0) to actions (t=1) in K fixed steps."""
        x, K = noise, self.cfg.flow_steps
        for k in range(K):
            t = torch.full((x.shape[0],), k / K, dtype=x.dtype, device=x.device)
            x = x + self.action_head(x, t, ctx) / K
        return x


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
