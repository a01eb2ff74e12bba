"""SmolVLA as LeRobot 0.4.4 builds it, for inference, without LeRobot and without the Hub.

Shukor et al. 2025, "SmolVLA: A Vision-Language-Action Model for Affordable and Efficient Robotics"
(https://arxiv.org/abs/2506.01844). What `build` returns computes LeRobot's
`SmolVLAPolicy.predict_action_chunk(batch)` for a given flow-matching `noise`:

1. each camera (B, 3, H, W) in [0, 1] is resized to fit `resize_imgs_with_padding` keeping its aspect
   ratio (bilinear), padded on the top/left with 0, scaled to [-1, 1], and encoded by the SmolVLM vision
   encoder and connector into image tokens, times sqrt(hidden) (patch position ids as transformers 4.57,
   LeRobot 0.4.4's, computes them: see `smolvla_expert.patch_positions`);
2. the prefix is [image tokens of every camera, language token embeddings * sqrt(hidden), the projected
   state (zero-padded to `max_state_dim`)]; the images and language attend to each other, the state token
   attends to everything; one pass through the VLM layers keeps every layer's keys and values;
3. flow matching: x_1 = noise (B, chunk_size, max_action_dim), t from 1 to 0 in `num_steps` Euler steps of
   dt = -1/num_steps, x += dt * v(x, t), v from the action expert reading the cached prefix
   (`smolvla_expert.py`); the first `action_dim` dims of x_0 are the normalized actions.

The stages are methods with tensors in and out (`embed_images`, `encode_prefix`, `denoise_step` run by the
Euler loop, `unpad_actions`), so vlaedge can export them as separate graphs and run the loop outside
(`vlaedge.models.stages`; t_start 1, t_end 0); `forward` is their composition. Tensor names equal
LeRobot's `SmolVLAPolicy.model` state dict (checkpoint keys without the `model.` prefix). The backbone's
config.json is read from the folder `vlm_model_name` names (`vlm_folder`); its weights are in the policy's
model.safetensors.

Example:
    >>> net = build(json.loads((folder / "config.json").read_text()), folder)
    >>> actions = net({"observation.images.top": img, "observation.state": state, "noise": noise,
    ...                "observation.language.tokens": ids, "observation.language.attention_mask": mask})
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaedge.errors import VlaedgeError
from vlaedge.models.lerobot.features import (
    NOISE_KEY,
    STATE_KEY,
    action_feature,
    camera_keys,
    check_action,
    check_cameras,
    check_state,
    refuse,
)
from vlaedge.models.lerobot.flow_matching import FlowMatchingVLA
from vlaedge.models.lerobot.local_files import local_folder
from vlaedge.models.lerobot.smolvla_expert import SmolVLMWithExpert

ROOT = "model"  # SmolVLAPolicy holds the network as `self.model`: the checkpoint's key prefix
# SmolVLAConfig's defaults (LeRobot 0.4.4), for config.json files written before a field existed
_DEFAULTS = {"chunk_size": 50, "max_state_dim": 32, "max_action_dim": 32,
             "resize_imgs_with_padding": [512, 512], "empty_cameras": 0, "adapt_to_pi_aloha": False,
             "use_delta_joint_actions_aloha": False, "num_steps": 10, "use_cache": True,
             "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "load_vlm_weights": False,
             "add_image_special_tokens": False, "attention_mode": "cross_attn",
             "num_expert_layers": -1, "num_vlm_layers": 16, "self_attn_every_n_layers": 2,
             "expert_width_multiplier": 0.75, "min_period": 4e-3, "max_period": 4.0}


@dataclass(frozen=True)
class SmolVLASpec:
    """What the network is built from, read and checked from config.json by `SmolVLASpec.from_config`."""

    cameras: tuple[str, ...]  # VISUAL input keys fed to the network, in config.json's order
    image_size: tuple[int, int]  # (H, W) the vision encoder gets: resize_imgs_with_padding, else the cameras'
    resize: bool  # resize_with_pad to image_size (False: images already that size)
    state_dim: int  # `observation.state` size (zero-padded to max_state_dim)
    action_dim: int  # `action` size (the first action_dim of max_action_dim)
    chunk_size: int  # actions per chunk
    max_state_dim: int
    max_action_dim: int
    num_steps: int  # Euler steps
    num_vlm_layers: int  # text layers kept (<= 0: all)
    attention_mode: str  # "cross_attn" / "self_attn"
    self_attn_every_n_layers: int
    expert_width_multiplier: float
    min_period: float  # time embedding period range
    max_period: float
    load_vlm_weights: bool  # LeRobot loaded the Hub VLM in bfloat16, so its VLM runs in bfloat16

    @classmethod
    def from_config(cls, config: dict) -> SmolVLASpec:
        """Reads config.json's fields (LeRobot's defaults where absent).

        Raises:
            VlaedgeError: a field this module does not build, naming it and its value.
        """
        c = {**_DEFAULTS, **config}
        _check_supported(c)
        inputs, cameras, action = c.get("input_features") or {}, camera_keys(c), action_feature(c)
        state = inputs.get(STATE_KEY)
        _check_features(c, cameras, state, action)
        resize = c["resize_imgs_with_padding"]
        size = (resize[1], resize[0]) if resize else tuple(inputs[cameras[0]]["shape"][1:])
        return cls(
            cameras=cameras, image_size=size, resize=bool(resize), state_dim=state["shape"][0],
            action_dim=action["shape"][0], chunk_size=c["chunk_size"], max_state_dim=c["max_state_dim"],
            max_action_dim=c["max_action_dim"], num_steps=c["num_steps"], num_vlm_layers=c["num_vlm_layers"],
            attention_mode=c["attention_mode"], self_attn_every_n_layers=c["self_attn_every_n_layers"],
            expert_width_multiplier=c["expert_width_multiplier"], min_period=c["min_period"],
            max_period=c["max_period"], load_vlm_weights=bool(c["load_vlm_weights"]))


def _check_supported(c: dict) -> None:
    for field, fix in (("adapt_to_pi_aloha", "vlaedge does not port the Aloha state/action conversion"),
                       ("use_delta_joint_actions_aloha", "LeRobot does not implement it either"),
                       ("add_image_special_tokens", "vlaedge builds SmolVLA without image special tokens")):
        if c[field]:
            raise refuse(field, c[field], f"{fix}; set it to false")
    if not c["use_cache"]:
        raise refuse("use_cache", c["use_cache"],
                     "LeRobot's inference needs the prefix cache; set it to true")
    if c["num_expert_layers"] > 0 and c["num_expert_layers"] != c["num_vlm_layers"]:
        raise refuse("num_expert_layers", c["num_expert_layers"],
                     "only an expert with one layer per VLM layer loads; set it to -1 or "
                     f"{c['num_vlm_layers']}")
    for field in ("chunk_size", "num_steps", "max_state_dim", "max_action_dim"):
        if not isinstance(c[field], int) or c[field] < 1:
            raise refuse(field, c[field], "it must be a positive integer")
    resize = c["resize_imgs_with_padding"]
    if resize is not None and (not isinstance(resize, list | tuple) or len(resize) != 2):
        raise refuse("resize_imgs_with_padding", resize, "give [width, height] or null")


def _check_features(c: dict, cameras: tuple, state: dict | None, action: dict | None) -> None:
    shapes = check_cameras(c, cameras, "SmolVLA")
    if not c["resize_imgs_with_padding"] and len(shapes) > 1:
        raise refuse("resize_imgs_with_padding", None, "cameras of different sizes need a resize target")
    check_state(c, state, "SmolVLA")
    check_action(c, action, "SmolVLA")


def vlm_folder(config: dict, root: Path) -> Path:
    """The local backbone folder `vlm_model_name` names (config.json and the tokenizer); never the Hub.

    Raises:
        VlaedgeError: no local folder holds its config.json (the message names the file and where).
    """
    name = config.get("vlm_model_name", _DEFAULTS["vlm_model_name"])
    return local_folder(name, root, "config.json", "config.json: vlm_model_name")


def noise_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """{"noise": (chunk_size, max_action_dim)}: the flow-matching start sample, standard normal."""
    c = {**_DEFAULTS, **config}
    return {NOISE_KEY: (c["chunk_size"], c["max_action_dim"])}


def build(config: dict, root: Path) -> nn.Module:
    """The SmolVLA network for a LeRobot `pretrained_model/` folder, in eval mode.

    Args:
        config: parsed `config.json` (`"type": "smolvla"`).
        root: the `pretrained_model/` folder (`vlm_model_name` may be relative to it).

    Returns:
        `SmolVLA`: `net(batch) -> (B, chunk_size, action_dim)` float32 normalized actions; its state dict
        keys are the checkpoint's without the `model.` prefix. Under
        `vlaedge.models.weights.empty_parameters()` its parameters are on the meta device. With
        `load_vlm_weights: true` the VLM's parameters are bfloat16 (LeRobot loads the Hub VLM in bfloat16
        and copies the checkpoint into it), the rest float32.

    Raises:
        VlaedgeError: transformers is missing, a config field this module does not build, or the
            backbone's config.json is not on disk.
    """
    try:
        from transformers import SmolVLMConfig
    except ImportError as e:
        raise VlaedgeError("lerobot: SmolVLA needs transformers", "pip install 'vlaedge[hf]'") from e
    spec = SmolVLASpec.from_config(config)
    folder = vlm_folder(config, root)
    vlm_config = SmolVLMConfig.from_pretrained(str(folder), local_files_only=True)
    if vlm_config.model_type != "smolvlm":
        raise VlaedgeError(
            f"lerobot: {folder / 'config.json'} is a {vlm_config.model_type!r} model, not smolvlm",
            "point vlm_model_name at a SmolVLM(2) backbone folder")
    return SmolVLA(spec, vlm_config).eval()


def resize_with_pad(images: Tensor, height: int, width: int) -> Tensor:
    """Fits (B, C, h, w) into (B, C, height, width) keeping the aspect ratio: bilinear resize so the image
    fits, then 0-padding on the top and left (LeRobot's resize_with_pad with pad_value 0)."""
    h, w = images.shape[2:]
    ratio = max(w / width, h / height)
    size = (int(h / ratio), int(w / ratio))
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return F.pad(images, (max(0, width - size[1]), 0, max(0, height - size[0]), 0), value=0.0)


def time_frequencies(dim: int, min_period: float, max_period: float) -> Tensor:
    """(dim // 2,) float64 angular frequencies 2 pi / period, periods log-spaced in [min, max]."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** fraction
    return 1.0 / period * 2 * math.pi


class SmolVLA(FlowMatchingVLA):
    """LeRobot's `VLAFlowMatching` for inference (module names as there). Build it with `build`.

    Args:
        spec: the parsed config.
        vlm_config: the backbone's `SmolVLMConfig`.
    """

    def __init__(self, spec: SmolVLASpec, vlm_config):
        super().__init__()
        self.spec = spec
        vlm_dtype = torch.bfloat16 if spec.load_vlm_weights else torch.float32
        self.vlm_with_expert = SmolVLMWithExpert(
            vlm_config, spec.num_vlm_layers, spec.attention_mode, spec.self_attn_every_n_layers,
            spec.expert_width_multiplier, spec.image_size, vlm_dtype)
        hidden, expert = self.vlm_with_expert.hidden_size, self.vlm_with_expert.expert_hidden_size
        self.state_proj = nn.Linear(spec.max_state_dim, hidden)
        self.action_in_proj = nn.Linear(spec.max_action_dim, expert)
        self.action_out_proj = nn.Linear(expert, spec.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert, expert)
        self.action_time_mlp_out = nn.Linear(expert, expert)
        # a plain float64 tensor, not a buffer: a half-precision cast of the module must not round it
        self.time_freqs = time_frequencies(expert, spec.min_period, spec.max_period)

    def embed_images(self, *images: Tensor) -> Tensor:
        """Stage 1: image tokens of every camera.

        Args:
            *images: one float32 (B, 3, H, W) in [0, 1] per camera, in `spec.cameras` order.

        Returns:
            (B, cameras * tokens per image, text hidden) in the VLM's dtype, already scaled by sqrt(hidden).
        """
        tokens = []
        for img in images:
            if self.spec.resize:
                img = resize_with_pad(img, *self.spec.image_size)
            emb = self.vlm_with_expert.embed_image(img * 2.0 - 1.0)
            tokens.append(emb * torch.tensor(emb.shape[-1] ** 0.5, dtype=emb.dtype, device=emb.device))
        return torch.cat(tokens, dim=1)

    def encode_prefix(self, image_tokens: Tensor, lang_tokens: Tensor, lang_mask: Tensor,
                      state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Stage 2: the prefix through the VLM, as a key/value cache.

        Args:
            image_tokens: (B, N_img, text hidden) from `embed_images`.
            lang_tokens: (B, L) int64 token ids, right-padded.
            lang_mask: (B, L) bool, False on padding.
            state: (B, state_dim) float32 normalized state.

        Returns:
            keys, values: (layers, B, kv_heads, Lp, head_dim), Lp = N_img + L + 1, in the VLM's dtype;
            prefix_mask: (B, Lp) bool, False on language padding.
        """
        lang = self.vlm_with_expert.embed_language(lang_tokens)
        lang = lang * math.sqrt(lang.shape[-1])
        state = F.pad(state, (0, self.spec.max_state_dim - state.shape[-1]))
        state_emb = self.state_proj(state)[:, None, :]
        embs = torch.cat([image_tokens.to(state_emb.dtype), lang.to(state_emb.dtype), state_emb], dim=1)
        image_mask = torch.ones_like(image_tokens[:, :, 0], dtype=torch.bool)
        pad = torch.cat([image_mask, lang_mask.bool(), torch.ones_like(state_emb[:, :, 0], dtype=torch.bool)],
                        dim=1)
        # block ids: 0 for images and language, 1 for the state (sees all; nothing before it sees it)
        block = torch.cat([torch.zeros_like(pad[:, :-1], dtype=torch.int64),
                           torch.ones_like(pad[:, -1:], dtype=torch.int64)], dim=1)
        mask = (block[:, None, :] <= block[:, :, None]) & pad[:, None, :] & pad[:, :, None]
        positions = torch.cumsum(pad.long(), dim=1) - 1
        keys, values = self.vlm_with_expert.prefix_cache(embs, mask, positions)
        return keys, values, pad

    def expert_hidden(self, x: Tensor, t: Tensor, keys: Tensor, values: Tensor,
                      prefix_mask: Tensor) -> Tensor:
        """The action expert's output (B, chunk_size, expert hidden) for the action-time tokens, reading the
        cached prefix."""
        suffix = self.embed_suffix(x, t)
        return self.vlm_with_expert.expert(suffix, keys, values, prefix_mask)

    def embed_suffix(self, x: Tensor, t: Tensor) -> Tensor:
        """(B, S, max_action_dim) sample and (B,) time -> (B, S, expert hidden) action-time tokens.

        The sine/cosine time embedding is computed in float64 (as LeRobot does on CPU/CUDA), then cast.
        """
        action = self.action_in_proj(x)
        angles = self.time_freqs.to(t.device)[None, :] * t.double()[:, None]
        time = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(action.dtype)
        fused = torch.cat([action, time[:, None, :].expand_as(action)], dim=2)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))
