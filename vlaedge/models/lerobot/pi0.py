"""pi0 and pi0.5 as LeRobot 0.4.4 builds them, for inference, without LeRobot, transformers or the Hub.

Black et al. 2024, "pi0: A Vision-Language-Action Flow Model for General Robot Control"
(https://arxiv.org/abs/2410.24164); Physical Intelligence 2025, "pi0.5" (https://arxiv.org/abs/2504.16054).
What `build` returns computes LeRobot's `PI0Policy` / `PI05Policy.predict_action_chunk(batch)` for a given
flow-matching `noise`, as it runs on transformers' fix/lerobot_openpi branch (what LeRobot 0.4.4 requires:
openpi's `transformers_replace` changes, see `pi0_gemma.py` and `pi0_siglip.py`):

1. each camera (B, 3, H, W) in [0, 1] whose (H, W) is not `image_resolution` is resized to fit keeping its
   aspect ratio (bilinear), clamped to [-1, 1] and padded evenly on both sides with -1 (LeRobot pads the
   [0, 1] image with openpi's [-1, 1] pad value, so padding ends at -3 after scaling); then x * 2 - 1 and
   SigLIP + projector give image tokens (not rescaled); `empty_cameras` placeholders are left out (LeRobot
   masks their tokens out of every query and position: they change nothing);
2. the prefix is [image tokens, language embeddings * sqrt(width)], attending to each other (padding
   masked), through the PaliGemma Gemma layers once; every layer's keys and values are kept;
3. flow matching: x_1 = noise (B, chunk_size, max_action_dim), t from 1 to 0 in `num_inference_steps`
   Euler steps of dt = -1/steps, x += dt * v(x, t); v from the action expert, whose tokens attend to the
   cached prefix and to each other:
   - pi0: suffix [state token (state_proj of the zero-padded state), action tokens]; an action token is
     action_in_proj(x) fused with the sine-cosine time embedding by action_time_mlp_in/out (SiLU); the
     state token attends to the prefix and itself only, so its keys and values do not depend on (x, t):
     `encode_prefix` computes them once and appends them to the cache (the same arithmetic);
   - pi0.5: no state token (the state is in the prompt, see `pi05.prompt_with_state`); action tokens are
     action_in_proj(x); the time embedding goes through time_mlp_in/out (SiLU, SiLU) into the expert's
     adaptive RMSNorms (scale, shift, gate);
4. the first `action_dim` of x_0 are the normalized actions.

The stages are methods with tensors in and out (`embed_images`, `encode_prefix`, `denoise_step` run by the
Euler loop from t_start 1 to t_end 0, `unpad_actions`); `forward` is their composition. Tensor names equal
LeRobot's `PI0Pytorch` / `PI05Pytorch` state dict (model.safetensors keys without `model.`); PaliGemma's
`lm_head.weight` and `embed_tokens.weight` are one tied parameter (LeRobot's checkpoints hold one of them).
`dtype: bfloat16` builds LeRobot's mixed precision (bfloat16 except the patch/position embeddings and the
RMSNorms) and computes with its casts.

Example:
    >>> net = build(json.loads((folder / "config.json").read_text()), folder)
    >>> actions = net({"observation.images.top": img, "observation.state": state, "noise": noise,
    ...                "observation.language.tokens": ids, "observation.language.attention_mask": mask})
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaedge.models.lerobot.features import MASK_KEY, TOKENS_KEY
from vlaedge.models.lerobot.flow_matching import FlowMatchingVLA
from vlaedge.models.lerobot.pi0_gemma import PaliGemmaSizes, PaliGemmaWithExpert
from vlaedge.models.lerobot.pi0_spec import PI0Spec, noise_shapes

__all__ = ["ROOT", "PI0", "PI0Spec", "build", "noise_shapes", "resize_with_pad"]
ROOT = "model"  # PI0Policy / PI05Policy hold the network as `self.model`: the checkpoint's key prefix


def build(config: dict, root: Path, sizes: PaliGemmaSizes | None = None) -> nn.Module:
    """The pi0 / pi0.5 network (by config.json's `type`) for a LeRobot `pretrained_model/` folder, in eval
    mode.

    Args:
        config: parsed `config.json` (`"type": "pi0"` or `"pi05"`).
        root: the `pretrained_model/` folder (unused: LeRobot builds PaliGemma from sizes in its code, and
            the tokenizer is the adapter's).
        sizes: LeRobot's size constants replaced (tests with tiny networks); default: the variants'.

    Returns:
        `PI0`: `net(batch) -> (B, chunk_size, action_dim)` float32 normalized actions; its state dict keys
        are the checkpoint's without the `model.` prefix. Under `vlaedge.models.weights.empty_parameters()`
        its parameters are on the meta device.

    Raises:
        VlaedgeError: a config field this module does not build (named, with its value).
    """
    del root
    spec = PI0Spec.from_config(config, sizes)
    return PI0(spec).eval()


def resize_with_pad(images: Tensor, size: int) -> Tensor:
    """LeRobot's pi0 `resize_with_pad_torch` on a [0, 1] image: (B, C, h, w) -> (B, C, size, size).

    Bilinear resize so the image fits keeping its aspect ratio (sides truncated to int), clamp to [-1, 1],
    then pad with -1, half on each side (the odd pixel at the bottom / right).
    """
    h, w = images.shape[2:]
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    x = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    ph, pw = size - rh, size - rw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)


def time_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """(B,) time -> (B, dim) [sin, cos] of t * 2 pi / period, periods log-spaced in [min, max]; computed in
    float64 as LeRobot does on CPU/CUDA, returned in t's dtype."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = (1.0 / period * 2 * math.pi)[None, :] * t.double()[:, None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(t.dtype)


class PI0(FlowMatchingVLA):
    """LeRobot's `PI0Pytorch` / `PI05Pytorch` for inference (module names as there). Build it with `build`.

    Args:
        spec: the parsed config.
    """

    def __init__(self, spec: PI0Spec):
        super().__init__()
        self.spec = spec
        pi05 = spec.kind == "pi05"
        self.paligemma_with_expert = PaliGemmaWithExpert(spec.sizes, spec.image_size, pi05, spec.dtype)
        width = spec.sizes.expert.width
        self.action_in_proj = nn.Linear(spec.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, spec.max_action_dim)
        if pi05:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        else:
            self.state_proj = nn.Linear(spec.max_state_dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)

    def prefix_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """pi0.5's prefix takes no state (its state is in the tokens)."""
        if self.spec.kind == "pi05":
            return batch[TOKENS_KEY], batch[MASK_KEY]
        return super().prefix_inputs(batch)

    def embed_images(self, *images: Tensor) -> Tensor:
        """Stage 1: image tokens of every camera.

        Args:
            *images: one float32 (B, 3, H, W) in [0, 1] per camera, in `spec.cameras` order.

        Returns:
            (B, cameras * patches, VLM width) in the VLM's dtype.
        """
        size, tokens = self.spec.image_size, []
        for img in images:
            if tuple(img.shape[2:]) != (size, size):
                img = resize_with_pad(img, size)
            tokens.append(self.paligemma_with_expert.embed_image(img * 2.0 - 1.0))
        return torch.cat(tokens, dim=1)

    def encode_prefix(self, image_tokens: Tensor, lang_tokens: Tensor, lang_mask: Tensor,
                      state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Stage 2: the prefix through the VLM as a key/value cache (pi0: plus its state token's).

        Args:
            image_tokens: (B, N_img, VLM width) from `embed_images`.
            lang_tokens: (B, L) int64 token ids, right-padded.
            lang_mask: (B, L) bool, False on padding.
            state: pi0 only: (B, state_dim) float32 normalized state.

        Returns:
            keys, values: (layers, B, kv_heads, Lp, head_dim), Lp = N_img + L (+ 1 state token for pi0),
            in the VLM's dtype; prefix_mask: (B, Lp) bool, False on language padding.
        """
        pwe = self.paligemma_with_expert
        lang = pwe.embed_language(lang_tokens)
        embs = torch.cat([image_tokens, lang.to(image_tokens.dtype)], dim=1)
        pad = torch.cat([torch.ones_like(image_tokens[:, :, 0], dtype=torch.bool), lang_mask.bool()], dim=1)
        mask = pad[:, None, :] & pad[:, :, None]
        positions = torch.cumsum(pad.long(), dim=1) - 1
        keys, values = pwe.prefix_cache(embs, mask, positions)
        if self.spec.kind == "pi05":
            return keys, values, pad
        return self._append_state(keys, values, pad, state)

    def _append_state(self, keys: Tensor, values: Tensor, pad: Tensor,
                      state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """pi0's state token through the expert (it sees the prefix and itself), its keys and values
        appended to the cache as one more always-valid position."""
        state = F.pad(state.float(), (0, self.spec.max_state_dim - state.shape[-1]))
        token = self.state_proj(state)[:, None, :]
        mask = torch.cat([pad, torch.ones_like(pad[:, :1])], dim=1)[:, None, :]  # (B, 1, Lp + 1)
        position = pad.long().sum(dim=1, keepdim=True)  # (B, 1)
        _, own_k, own_v = self.paligemma_with_expert.expert(token, None, keys, values, mask, position)
        return torch.cat([keys, own_k], dim=3), torch.cat([values, own_v], dim=3), mask[:, 0]

    def expert_hidden(self, x: Tensor, t: Tensor, keys: Tensor, values: Tensor,
                      prefix_mask: Tensor) -> Tensor:
        """The action expert's output (B, chunk_size, expert width) for the action tokens, attending to the
        cached prefix (pi0: with its state token) and to each other."""
        suffix, cond = self.embed_suffix(x, t)
        steps = suffix.shape[1]
        mask = torch.cat([prefix_mask[:, None, :].expand(-1, steps, -1),
                          torch.ones_like(prefix_mask[:, :1, None]).expand(-1, steps, steps)], dim=2)
        positions = prefix_mask.long().sum(dim=1, keepdim=True) + torch.arange(steps, device=x.device)[None]
        out, _, _ = self.paligemma_with_expert.expert(suffix, cond, keys, values, mask, positions)
        return out

    def embed_suffix(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, S, max_action_dim) sample and (B,) time -> action tokens (B, S, expert width) and the adaRMS
        condition (B, expert width) (pi0.5; None for pi0, whose time is fused into the tokens)."""
        action = self.action_in_proj(x)
        time = time_embedding(t, action.shape[-1], self.spec.min_period, self.spec.max_period)
        if self.spec.kind == "pi05":
            return action, F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time))))
        fused = torch.cat([action, time[:, None, :].expand_as(action)], dim=2)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused))), None
