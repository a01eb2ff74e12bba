"""What the pi0 / pi0.5 network is built from: config.json's fields (LeRobot 0.4.4's `PI0Config` /
`PI05Config`), checked, and the sizes LeRobot fixes in code (`get_gemma_config`'s variants, SigLIP So400m,
the 257,152-token vocabulary)."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
from vlaedge.models.lerobot.pi0_gemma import GemmaSize, PaliGemmaSizes

KINDS = ("pi0", "pi05")
# LeRobot's get_gemma_config (openpi's gemma.py): (width, depth, mlp_dim, num_heads, num_kv_heads, head_dim)
VARIANTS = {"gemma_300m": GemmaSize(1024, 18, 4096, 8, 1, 256),
            "gemma_2b": GemmaSize(2048, 18, 16_384, 8, 1, 256)}
PROJECTION_WIDTH = 2048  # LeRobot sets the SigLIP projector's output to 2048 whatever the VLM variant
# PI0Config / PI05Config defaults (LeRobot 0.4.4), for config.json files written before a field existed
_DEFAULTS = {"paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m", "dtype": "float32",
             "chunk_size": 50, "max_state_dim": 32, "max_action_dim": 32, "num_inference_steps": 10,
             "min_period": 4e-3, "max_period": 4.0, "rtc_config": None, "image_resolution": [224, 224],
             "empty_cameras": 0}


@dataclass(frozen=True)
class PI0Spec:
    """The network's build parameters, read and checked from config.json by `PI0Spec.from_config`."""

    kind: str  # "pi0" or "pi05"
    cameras: tuple[str, ...]  # VISUAL inputs fed to the network, config order, empty cameras left out
    image_size: int  # the square side SigLIP gets (`image_resolution`)
    state_dim: int  # `observation.state` size (pi0 zero-pads it to max_state_dim; pi0.5 does not read it)
    action_dim: int  # the first action_dim of max_action_dim are the actions
    chunk_size: int  # actions per chunk
    max_state_dim: int
    max_action_dim: int
    num_steps: int  # Euler steps (`num_inference_steps`)
    min_period: float  # time embedding period range
    max_period: float
    dtype: str  # "float32" or "bfloat16" (LeRobot's mixed precision)
    sizes: PaliGemmaSizes

    @classmethod
    def from_config(cls, config: dict, sizes: PaliGemmaSizes | None = None) -> PI0Spec:
        """Reads config.json's fields (LeRobot's defaults where absent).

        Args:
            config: parsed config.json.
            sizes: replaces the variants' sizes (tests with tiny networks), else from the variant names.

        Raises:
            VlaedgeError: a field this module does not build, naming it and its value.
        """
        c = {**_DEFAULTS, **config}
        _check_supported(c)
        sizes = sizes or lerobot_sizes(c)
        _check_sizes(sizes)
        inputs, cameras, action = c.get("input_features") or {}, camera_keys(c), action_feature(c)
        state = inputs.get(STATE_KEY)
        _check_features(c, cameras, state, action)
        return cls(
            kind=c["type"], cameras=cameras, image_size=c["image_resolution"][0],
            state_dim=state["shape"][0] if state else 0, action_dim=action["shape"][0],
            chunk_size=c["chunk_size"], max_state_dim=c["max_state_dim"], max_action_dim=c["max_action_dim"],
            num_steps=c["num_inference_steps"], min_period=float(c["min_period"]),
            max_period=float(c["max_period"]), dtype=c["dtype"], sizes=sizes)


def lerobot_sizes(config: dict) -> PaliGemmaSizes:
    """The sizes LeRobot 0.4.4 builds for config.json's variants (SigLIP So400m, 257,152 tokens). Tests
    that load a tiny checkpoint through an adapter replace this function (the sizes are not in the folder)."""
    c = {**_DEFAULTS, **config}
    return PaliGemmaSizes(VARIANTS[c["paligemma_variant"]], VARIANTS[c["action_expert_variant"]])


# LeRobot's PI0Policy / PI05Policy.from_pretrained (`_fix_pytorch_state_dict_keys`), for keys saved
# without the `model.` prefix (openpi's PyTorch checkpoints): norm weights dropped when the expert is adaptive
_ADAPTIVE_NORM = re.compile(r"paligemma_with_expert\.gemma_expert\.model\."
                            r"(layers\.\d+\.(input_layernorm|post_attention_layernorm)|norm)\.weight")
_RENAMES = {"pi0": ("time_mlp_", "action_time_mlp_"), "pi05": ("action_time_mlp_", "time_mlp_")}


def lerobot_key(key: str, kind: str) -> str | None:
    """The name LeRobot's `from_pretrained` loads model.safetensors' tensor `key` under, or None where it
    drops the tensor.

    Keys already under `model.` (what LeRobot's save_pretrained writes) are kept. Others (openpi's
    checkpoints) get LeRobot's fixes, then the prefix: pi0 renames `time_mlp_in/out.*` to
    `action_time_mlp_in/out.*`; pi0.5 renames the reverse and drops `state_proj.*` and the expert's
    non-adaptive norm weights.

    Example:
        >>> lerobot_key("time_mlp_in.weight", "pi0")
        'model.action_time_mlp_in.weight'
    """
    if key.startswith("model."):
        return key
    if kind == "pi05" and (_ADAPTIVE_NORM.match(key) or key.startswith("state_proj.")):
        return None
    old, new = _RENAMES[kind]
    for part in ("in.", "out."):
        if key.startswith(old + part):
            key = new + key[len(old):]
    return f"model.{key}"


def noise_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """{"noise": (chunk_size, max_action_dim)}: the flow-matching start sample, standard normal."""
    c = {**_DEFAULTS, **config}
    return {NOISE_KEY: (c["chunk_size"], c["max_action_dim"])}


def _check_supported(c: dict) -> None:
    if c.get("type") not in KINDS:
        raise refuse("type", c.get("type"), f"this module builds {', '.join(KINDS)}")
    if c["paligemma_variant"] != "gemma_2b":
        raise refuse("paligemma_variant", c["paligemma_variant"],
                     f"LeRobot 0.4.4 projects SigLIP to {PROJECTION_WIDTH} wide, which only gemma_2b reads "
                     "(it cannot run another variant either); set it to gemma_2b")
    if c["action_expert_variant"] not in VARIANTS:
        raise refuse("action_expert_variant", c["action_expert_variant"],
                     f"use one of {', '.join(VARIANTS)}")
    if c["dtype"] not in ("float32", "bfloat16"):
        raise refuse("dtype", c["dtype"], "LeRobot builds float32 or bfloat16")
    rtc = c["rtc_config"]
    if rtc is not None and (not isinstance(rtc, dict) or rtc.get("enabled", False)):
        raise refuse("rtc_config", rtc, "vlaedge does not port Real-Time Chunking (it guides the denoising "
                     "with the previous chunk); set rtc_config to null or enabled to false")
    for field in ("chunk_size", "num_inference_steps", "max_state_dim", "max_action_dim"):
        if not isinstance(c[field], int) or isinstance(c[field], bool) or c[field] < 1:
            raise refuse(field, c[field], "it must be a positive integer")
    for field in ("min_period", "max_period"):
        if not isinstance(c[field], int | float) or isinstance(c[field], bool) or c[field] <= 0:
            raise refuse(field, c[field], "it must be a positive number")
    size = c["image_resolution"]
    if (not isinstance(size, list | tuple) or len(size) != 2 or size[0] != size[1]
            or not isinstance(size[0], int) or size[0] < 1):
        raise refuse("image_resolution", size, "PaliGemma takes square images: give [side, side]")
    if not isinstance(c["empty_cameras"], int) or c["empty_cameras"] < 0:
        raise refuse("empty_cameras", c["empty_cameras"], "a count of placeholder cameras, 0 or more")


def _check_sizes(sizes: PaliGemmaSizes) -> None:
    vlm, expert = sizes.vlm, sizes.expert
    if (vlm.depth, vlm.num_kv_heads, vlm.head_dim) != (expert.depth, expert.num_kv_heads, expert.head_dim):
        raise VlaedgeError(f"lerobot: pi0 sizes: the expert ({expert}) must match the VLM's ({vlm}) in "
                           "depth, key/value heads and head width (it reads the VLM's cache layer by layer)",
                           "use LeRobot's variants")


def _check_features(c: dict, cameras: tuple, state: dict | None, action: dict | None) -> None:
    check_cameras(c, cameras, c["type"])
    if c["type"] == "pi0":  # pi0.5 reads the state from the prompt
        check_state(c, state, "pi0")
    check_action(c, action, c["type"])
