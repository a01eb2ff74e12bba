"""The stage composition LeRobot's flow-matching VLAs share (SmolVLA, pi0, pi0.5): image tokens, a prefix
key/value cache, `num_steps` Euler steps of the action expert from t = 1 (noise) to t = 0, the action dims.

The stages are methods with tensors in and out, so vlaedge can export them as separate graphs and run the
loop outside (`vlaedge.models.stages`; t_start 1, t_end 0); `forward` is their composition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlaedge.models.lerobot.features import MASK_KEY, NOISE_KEY, STATE_KEY, TOKENS_KEY


class FlowMatchingVLA(nn.Module):
    """`forward`, `denoise_step` and `unpad_actions` of a flow-matching VLA. A subclass sets `spec` (with
    `cameras`, `num_steps`, `chunk_size` and `action_dim`) and `action_out_proj` (expert width ->
    max_action_dim), and defines `embed_images`, `encode_prefix` and `expert_hidden`."""

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """LeRobot's `predict_action_chunk` for the given noise.

        Args:
            batch: `observation.images.<cam>` float32 (B, 3, H, W) in [0, 1] for every camera,
                `observation.state` (B, state_dim) normalized (pi0.5 does not read it: its state is in the
                tokens), `observation.language.tokens` int64 (B, L), `observation.language.attention_mask`
                bool (B, L), `noise` float32 (B, chunk_size, max_action_dim).

        Returns:
            (B, chunk_size, action_dim) float32 normalized actions.
        """
        image_tokens = self.embed_images(*(batch[k] for k in self.spec.cameras))
        keys, values, prefix_mask = self.encode_prefix(image_tokens, *self.prefix_inputs(batch))
        x, dt = batch[NOISE_KEY], -1.0 / self.spec.num_steps
        for step in range(self.spec.num_steps):
            t = torch.full_like(x[:, 0, 0], 1.0 + step * dt)
            x = x + dt * self.denoise_step(x, t, keys, values, prefix_mask)
        return self.unpad_actions(x)

    def prefix_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """What `encode_prefix` takes after the image tokens: the language tokens and mask, the state."""
        return batch[TOKENS_KEY], batch[MASK_KEY], batch[STATE_KEY]

    def denoise_step(self, x: Tensor, t: Tensor, keys: Tensor, values: Tensor, prefix_mask: Tensor) -> Tensor:
        """Stage 3: the flow velocity at (x, t), run `num_steps` times by the Euler loop.

        Args:
            x: (B, chunk_size, max_action_dim) float32 current sample.
            t: (B,) float32 time in [0, 1] (1 = noise).
            keys, values: (layers, B, kv_heads, Lp, head_dim) from `encode_prefix`.
            prefix_mask: (B, Lp) bool from `encode_prefix`.

        Returns:
            (B, chunk_size, max_action_dim) float32 velocity v; the loop does x += dt * v, dt = -1/num_steps.
        """
        out = self.expert_hidden(x, t, keys, values, prefix_mask)
        return self.action_out_proj(out[:, -self.spec.chunk_size:].float())

    def unpad_actions(self, x: Tensor) -> Tensor:
        """Stage 4: (B, chunk_size, max_action_dim) loop output -> (B, chunk_size, action_dim) actions."""
        return x[:, :, : self.spec.action_dim]
