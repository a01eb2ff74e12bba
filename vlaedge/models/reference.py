"""The reference VLA as a `Policy`: frames to inputs, outputs to actions, checkpoint save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import BATCH, ActionSpec, Policy, TensorSpec
from vlaedge.models.checkpoint import check_state_dict, load_weights, weight_files, write_checkpoint
from vlaedge.models.preprocess import DataInput, frame_field, resize_nearest
from vlaedge.models.tokenizer import WordTokenizer
from vlaedge.models.vla import SIZES, ReferenceVLA, VLAConfig
from vlaedge.models.weights import HALF, empty_parameters

FAMILY = "reference"


class ReferencePolicy(Policy):
    """The built-in VLA behind the adapter protocol.

    Args:
        config: the architecture.
        module: an existing module for `config` (a fresh randomly initialised one when omitted).
    """

    def __init__(self, config: VLAConfig, module: ReferenceVLA | None = None):
        self.config = config
        self.module = module if module is not None else ReferenceVLA(config)
        self.tokenizer = WordTokenizer(config.vocab, config.max_instruction_len)
        self.name = f"reference-{config.head}"
        c = config
        specs = [
            TensorSpec("image", (BATCH, 3, c.image_size, c.image_size), "uint8", 0, 255),
            TensorSpec("instruction_ids", (BATCH, c.max_instruction_len), "int64", 0,
                       self.tokenizer.size - 1),
            TensorSpec("state", (BATCH, c.state_dim), "float32", -1.0, 1.0),
        ]
        if c.head == "flow":
            specs.append(TensorSpec("noise", (BATCH, c.chunk, c.action_dim), "float32", -4.0, 4.0))
        self.input_spec = tuple(specs)
        self.output_names = ("action_logits",) if c.head == "tokens" else ("actions",)
        self.action_spec = ActionSpec(tuple(c.action_names), tuple(c.action_low), tuple(c.action_high),
                                      tuple(c.gripper_dims), c.chunk)

    @classmethod
    def build(cls, size: str = "nano", head: str = "chunk", **overrides) -> ReferencePolicy:
        """A fresh (untrained) reference policy of a named size, e.g. `build("small", "flow")`."""
        if size not in SIZES:
            raise VlaedgeError(f"size: {size!r} is not a reference size", f"use one of {', '.join(SIZES)}")
        return cls(VLAConfig(head=head, **{**SIZES[size], **overrides}))

    action_head = ("action_head*",)  # the output MLP (tokens, chunk) or the flow expert's velocity MLP

    def data_inputs(self) -> list[DataInput]:
        return [DataInput("image", "image", "image"), DataInput("instruction_ids", "instruction", "task"),
                DataInput("state", "state", "observation.state")]

    @property
    def noise_inputs(self) -> tuple[str, ...]:
        return ("noise",) if self.config.head == "flow" else ()

    @property
    def logits_output(self) -> str | None:
        return "action_logits" if self.config.head == "tokens" else None

    def make_inputs(self, frames: dict, seed: int = 0) -> dict[str, np.ndarray]:
        image, text, state = (self.fed(name)[0] for name in ("image", "instruction_ids", "state"))
        images = np.asarray(frame_field(frames, image.feature, "image"))
        c = self.config
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise VlaedgeError(f"frames: image has shape {images.shape} {images.dtype}, "
                               "expected uint8 [B,H,W,3]", "store camera frames as RGB uint8")
        feeds = {
            "image": np.ascontiguousarray(resize_nearest(images, c.image_size, c.image_size)
                                          .transpose(0, 3, 1, 2)),
            "instruction_ids": self.tokenizer.encode(list(frame_field(frames, text.feature, "instruction"))),
            "state": np.asarray(frame_field(frames, state.feature, "state"), np.float32)
            .reshape(len(images), c.state_dim),
        }
        if c.head == "flow":
            rng = np.random.default_rng(seed)
            feeds["noise"] = rng.standard_normal((len(images), c.chunk, c.action_dim)).astype(np.float32)
        return feeds

    def decode(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        c = self.config
        if c.head == "tokens":
            bins = outputs["action_logits"].argmax(-1)  # (B, T, A)
            normalised = (bins.astype(np.float32) + 0.5) / c.num_bins * 2.0 - 1.0
        else:
            normalised = np.clip(outputs["actions"], -1.0, 1.0)
        return self.denormalise(normalised)

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        low = np.asarray(self.config.action_low, np.float32)
        high = np.asarray(self.config.action_high, np.float32)
        return (low + (x + 1.0) * 0.5 * (high - low)).astype(np.float32)

    def normalise(self, actions: np.ndarray) -> np.ndarray:
        low = np.asarray(self.config.action_low, np.float32)
        high = np.asarray(self.config.action_high, np.float32)
        return ((actions - low) / (high - low) * 2.0 - 1.0).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        config = {"family": FAMILY, "config": self.config.to_dict()}
        return write_checkpoint(Path(path), config, self.module.state_dict())

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, raw: dict, allow_pickle: bool = False,
                        dtype: str = "float32") -> ReferencePolicy:
        """Builds the policy from a parsed config.json (parameters on the meta device) and puts its weights
        in, memory-mapped, in `dtype` ("float32", "float16" or "bfloat16")."""
        fields = raw.get("config")
        if not isinstance(fields, dict):
            raise VlaedgeError(f"checkpoint: {checkpoint}/config.json has no 'config' object",
                               "re-save the checkpoint with vlaedge")
        unknown = sorted(set(fields) - set(VLAConfig.field_names()))
        if unknown:
            raise VlaedgeError(f"checkpoint: config.json has unknown key(s) {', '.join(unknown)}",
                               f"valid keys: {', '.join(VLAConfig.field_names())}")
        try:
            config = VLAConfig(**fields)
        except (TypeError, ValueError) as e:
            raise VlaedgeError(f"checkpoint: config.json is invalid: {e}", "fix the value or re-save") from e
        with empty_parameters(bool(weight_files(checkpoint, allow_pickle))):
            policy = cls(config)
        check_state_dict(policy.module, load_weights(checkpoint, allow_pickle), checkpoint,
                         dtype if dtype in HALF else None)
        policy.module.eval()
        return policy

